"""Dragging t on the Forward tab in a real headless Chromium: the page draws x_t itself from /forward_scrub's data,
pixel for pixel what the core's q_sample gives, with no request while t moves; releasing t asks /forward."""

import base64
import os
from pathlib import Path

import numpy as np
import pytest
from test_browser import ARTIFACTS, browser, open_page  # noqa: F401 - the module's browser fixture

pytestmark = [pytest.mark.browser, pytest.mark.slow, pytest.mark.timeout(600)]

#: Where the screenshots go (DDPM_SHOTS, else the test artifacts).
SHOTS = Path(os.environ.get("DDPM_SHOTS", ARTIFACTS))

#: /forward_scrub's data of the given display size is in the page.
READY = "([w, h]) => window.ddpmScrub?.data?.d.width === w && window.ddpmScrub.data.d.height === h"
#: A programmatic move of the range input: the event a drag sends, at an exact t.
MOVE = """(t) => { const r = document.querySelector('#t-slider input[type=range]');
  r.value = String(t); r.dispatchEvent(new Event('input', {bubbles: true})); }"""
CANVAS = """() => { const c = document.querySelector('#xt-scrub');
  const px = c.getContext('2d').getImageData(0, 0, c.width, c.height).data;
  let s = ''; for (let i = 0; i < px.length; i += 8192) s += String.fromCharCode(...px.subarray(i, i + 8192));
  return {w: c.width, h: c.height, b64: btoa(s), shown: getComputedStyle(c).display !== 'none'}; }"""


def _canvas(page) -> tuple[np.ndarray, bool]:
    c = page.evaluate(CANVAS)
    rgba = np.frombuffer(base64.b64decode(c["b64"]), dtype=np.uint8).reshape(c["h"], c["w"], 4)
    return rgba, c["shown"]


def _core(path: Path, seed: int = 0, schedule: str = "linear", T: int = 1000):
    """The core's scrub data for the image as the Space decodes it, and a function t -> x_t as 8-bit HWC."""
    from ddpm_core import GaussianDiffusion, NoiseSchedule
    from ddpm_core.explore import forward_scrub
    from ddpm_core.imaging import MAX_SIDE_DEFAULT, load_image, pil_to_tensor, to_uint8
    from ui.tabs.forward import SCRUB_SIDE

    diffusion = GaussianDiffusion(NoiseSchedule.make(schedule, T))
    d = forward_scrub(pil_to_tensor(load_image(str(path), max_side=MAX_SIDE_DEFAULT)), diffusion, seed, SCRUB_SIDE)
    return d, lambda t: to_uint8(diffusion.q_sample(d.x0, t, d.eps))[0]


def _upload(page, tmp_path) -> Path:
    """A 300 x 200 image of random pixels (any pixel drawn wrong shows), uploaded; waits for its scrub data."""
    from PIL import Image

    path = tmp_path / "scrub-upload.png"
    rng = np.random.default_rng(0)
    Image.fromarray(rng.integers(0, 256, (200, 300, 3), dtype=np.uint8)).save(path)
    page.locator("#input-image input[type=file]").set_input_files(str(path))
    page.wait_for_function(READY, arg=[256, 171], timeout=60_000)
    return path


def test_dragging_t_draws_the_cores_x_t_with_no_request_and_release_asks_forward(browser, served, tmp_path):  # noqa: F811
    from ui.tabs.forward import forward_scrub

    page = open_page(browser, served[1], 1400, 900)
    path = _upload(page, tmp_path)
    page.locator("#xt-image img").first.wait_for(timeout=60_000)
    page.wait_for_timeout(1500)  # the upload's own /forward and /forward_scrub are over
    d, x_t = _core(path)
    cells = forward_scrub(str(path), "linear", 1000, 0)["readout"]

    requests = []
    page.on("request", lambda r: requests.append(r.url))
    for t in (0, 1, 137, 500, 998, 999):
        page.evaluate(MOVE, t)
        rgba, shown = _canvas(page)
        assert shown, f"the canvas is not shown at t={t}"
        assert (rgba[..., 3] == 255).all()
        diff = np.abs(rgba[..., :3].astype(int) - x_t(t).astype(int))
        assert diff.max() <= 1, (t, diff.max())  # to 1/255
        # the page computes in float32 as torch does: a level off only where a value lies on a rounding boundary
        assert (diff > 0).mean() < 1e-3, (t, int((diff > 0).sum()))
        assert [td.strip() for td in page.locator("#readout td").all_inner_texts()] == cells[t], t

    # a real drag: the browser's own input events while the button is held
    box = page.locator("#t-slider input[type=range]").bounding_box()
    y = box["y"] + box["height"] / 2
    page.mouse.move(box["x"] + 0.3 * box["width"], y)
    page.mouse.down()
    seen = set()
    for k in range(1, 21):
        page.mouse.move(box["x"] + (0.3 + 0.02 * k) * box["width"], y)
        t = int(page.locator("#t-slider input[type=range]").input_value())
        seen.add(t)
        rgba, shown = _canvas(page)
        assert shown and np.abs(rgba[..., :3].astype(int) - x_t(t).astype(int)).max() <= 1, t
        assert page.locator("#readout td").first.inner_text().strip() == str(t)
    page.wait_for_timeout(500)
    assert len(seen) >= 15, seen
    assert requests == [], f"{len(requests)} requests while t moved: {requests[:5]}"

    page.mouse.up()  # the release: /forward computes the full-size views for this t
    page.wait_for_function(
        "(t) => { const i = document.querySelector('#xt-image img');"
        " return i && i.complete && decodeURIComponent(i.src).endsWith(`/x_t-t${t}.png`); }",
        arg=t,
        timeout=60_000,
    )
    assert any("/queue/join" in u for u in requests), requests
    page.wait_for_function("() => getComputedStyle(document.querySelector('#xt-scrub')).display === 'none'")
    assert page.locator("#readout td").first.inner_text().strip() == str(t)
    page.close()


@pytest.mark.parametrize("width,height", [(1400, 900), (390, 844)], ids=["laptop", "phone"])
@pytest.mark.parametrize("lang", ["en", "zh"])
def test_the_scrubbed_x_t_sits_over_the_image_in_both_languages(browser, served, width, height, lang):  # noqa: F811
    """Mid-drag at a laptop's and a phone's size, in each language: the canvas lies over the x_t image, the page
    does not scroll sideways, the slider's note is in the page's language. Screenshots go to SHOTS."""
    page = open_page(browser, served[1], width, height)
    if lang == "zh":
        page.locator("#lang label", has_text="简体中文").click()
        page.get_by_text("拖动时 x_t 在浏览器中即时重绘", exact=False).first.wait_for(timeout=30_000)
    else:
        page.get_by_text("dragging redraws x_t in your browser", exact=False).first.wait_for(timeout=30_000)
    page.locator("#xt-image img").first.wait_for(timeout=60_000)
    page.wait_for_function(READY, arg=[256, 192], timeout=60_000)  # the default example, 512 x 384, drawn at 256 x 192
    page.locator("#t-slider").scroll_into_view_if_needed()
    page.evaluate(MOVE, 150)  # the image still shows through the noise
    canvas = page.locator("#xt-scrub").bounding_box()
    image = page.locator("#xt-image").bounding_box()
    assert canvas["width"] > 100 and canvas["height"] > 70, canvas
    assert image["x"] - 1 <= canvas["x"] and canvas["x"] + canvas["width"] <= image["x"] + image["width"] + 1
    assert image["y"] - 1 <= canvas["y"] and canvas["y"] + canvas["height"] <= image["y"] + image["height"] + 1
    assert abs(canvas["width"] / canvas["height"] - 4 / 3) < 0.02  # the image's own aspect
    assert page.evaluate("document.documentElement.scrollWidth") <= width
    assert page.locator("#readout td").first.inner_text().strip() == "150"
    SHOTS.mkdir(parents=True, exist_ok=True)
    page.locator("#xt-image").scroll_into_view_if_needed()
    page.screenshot(path=str(SHOTS / f"forward-scrub-{width}px-{lang}.png"))
    page.screenshot(path=str(SHOTS / f"forward-scrub-{width}px-{lang}-full.png"), full_page=True)
    page.close()


def test_the_drawn_x_t_follows_the_seed_the_schedule_and_T(browser, served):  # noqa: F811
    """A new seed, schedule or T brings new data (the seed's eps, the schedule's table at that T), and what is drawn
    is the core's x_t for them."""
    sunset = Path(__file__).resolve().parents[1] / "examples" / "sunset.png"
    page = open_page(browser, served[1], 1400, 900)
    page.wait_for_function(READY, arg=[256, 192], timeout=60_000)

    seed = page.locator("#forward-seed input")
    seed.fill("5")
    seed.press("Enter")
    page.wait_for_function("() => window.ddpmScrub?.data?.d.seed === 5", timeout=60_000)
    page.evaluate(MOVE, 300)  # drawn, not released: then T = 50 moves t to 49
    assert _canvas(page)[1]
    page.locator("#T-slider input[type=number]").fill("50")
    page.locator("#T-slider input[type=number]").press("Enter")
    page.wait_for_function("() => window.ddpmScrub?.data?.d.T === 50", timeout=60_000)
    page.wait_for_function(
        "() => decodeURIComponent(document.querySelector('#xt-image img').src).endsWith('/x_t-t49.png')"
    )
    assert not _canvas(page)[1], "the drawing of t = 300 stayed over the image of t = 49"
    page.locator("#forward-schedule input").click()
    page.get_by_role("option", name="cosine", exact=True).click()
    page.wait_for_function("() => window.ddpmScrub?.data?.d.schedule === 'cosine'", timeout=60_000)
    page.wait_for_timeout(1000)
    _, x_t = _core(sunset, seed=5, schedule="cosine", T=50)
    for t in (0, 17, 49):
        page.evaluate(MOVE, t)
        rgba, _ = _canvas(page)
        assert np.abs(rgba[..., :3].astype(int) - x_t(t).astype(int)).max() <= 1, t
    page.close()
