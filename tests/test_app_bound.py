"""The bound's view through the real server: gradio_client calls ``/bound`` on the bundled model."""

import numpy as np
import pytest
import torch
from test_browser import browser  # noqa: F401, F811  (the fixture)

from ddpm_core.likelihood import calc_bpd_loop

pytestmark = pytest.mark.timeout(600)


@pytest.fixture(scope="module")
def client(served, tmp_path_factory):
    from gradio_client import Client

    return Client(served[1], verbose=False, analytics_enabled=False, download_files=str(tmp_path_factory.mktemp("dl")))


@pytest.mark.slow  # two runs of 1000 network evaluations
def test_the_bound_of_a_digit_term_by_term(client):
    from ui.tabs import bound

    plot, text, image = client.predict("ddpm-mnist-28", 3, 5, api_name="/bound")
    rows = plot["data"]
    series = {row[2] for row in rows}
    assert len(series) == 2 and len(rows) == 2 * 999  # t = 1 .. 999, the bound's terms and L_simple's
    # the same figures as the library's loop on the same digit and draws (the view adds nothing of its own)
    from ddpm_core.checkpoints import load_checkpoint

    m = load_checkpoint("ddpm-mnist-28")
    x0, _ = bound.digit_tensor(3, 1, 28)
    res = calc_bpd_loop(m.diffusion, m.unet, x0, generator=torch.Generator().manual_seed(5), max_batch=bound.MAX_BATCH)
    assert f"**{float(res.total_bpd[0]):.3f} bits/dim**" in text
    ours = np.array([row[1] for row in rows if row[2] == bound.SERIES["bound"]])
    expected = np.log10(np.maximum(res.vb_bpd[0, 1:].numpy(), 1e-12))
    # the same computation in the server's process: equal up to float32 network outputs on other threads
    assert np.allclose(ours, expected, atol=1e-4)
    # where the loss lives: the bound's half lies in far fewer steps than L_simple's
    assert bound.half_point(res.vb_bpd[0, 1:].numpy()) < bound.half_point(res.mse[0, 1:].numpy())


def test_a_digit_out_of_range_is_a_clear_error(client):
    from gradio_client.exceptions import AppError

    with pytest.raises(AppError, match="greater than maximum value 499"):
        client.predict("ddpm-mnist-28", 500, 0, api_name="/bound")


def test_the_summary_speaks_the_visitors_language():
    from ddpm_core.likelihood import BoundTerms
    from ui.tabs import bound

    T = 5
    vb = torch.tensor([[0.9, 0.5, 0.2, 0.1, 0.05]], dtype=torch.float64)
    res = BoundTerms(vb.sum(1) + 1e-5, torch.tensor([1e-5]), vb, torch.ones(1, T), torch.ones(1, T))
    en, zh = bound.summary(res, 1.0, "en"), bound.summary(res, 1.0, "zh")
    assert "1.750 bits/dim" in en and "1.750 比特/维" in zh
    assert "t ≤ 1;" in en and "t ≤ 2." in en  # half the bound in the first step, half of L_simple's in two
    assert set(bound.TEXT["en"]) == set(bound.TEXT["zh"])


@pytest.mark.slow
def test_the_bound_tab_in_the_browser_in_both_languages(browser, served):  # noqa: F811
    """A visitor computes the bound of a digit in English, then in Chinese: the plot and the summary appear in the
    page's language. Screenshots kept as test artifacts (bound-tab.png, bound-tab-zh.png)."""
    from test_browser import ARTIFACTS, open_page

    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    page = open_page(browser, served[1], 1400, 1000)
    page.get_by_role("tab", name="Where the loss lives").click()
    page.locator("#bound-run").click()
    page.locator("#bound-summary", has_text="bits/dim").wait_for(timeout=240_000)
    page.wait_for_timeout(1500)  # the plot draws after the text
    page.screenshot(path=str(ARTIFACTS / "bound-tab.png"), full_page=True)
    page.locator("#lang label", has_text="简体中文").click()
    page.get_by_role("tab", name="损失在哪里").click()
    page.locator("#bound-run").click()
    page.locator("#bound-summary", has_text="比特/维").wait_for(timeout=240_000)
    page.wait_for_timeout(1500)
    page.screenshot(path=str(ARTIFACTS / "bound-tab-zh.png"), full_page=True)
    page.close()
