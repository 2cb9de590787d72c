"""The 2D lab's reverse process played in a real headless Chromium: after Train (moons, the defaults) and its
sampling, the page draws every kept step from /lab_sample's paths itself; scrubbing and playing change the canvas
and the readout's t with no request, at a laptop's size in English and at a phone's in Chinese."""

import json
import os
from pathlib import Path

import pytest
import torch
from test_browser import ARTIFACTS, browser, open_page  # noqa: F401 - the module's browser fixture

pytestmark = [pytest.mark.browser, pytest.mark.slow, pytest.mark.timeout(900)]

#: Where the screenshots go (DDPM_SHOTS, else the test artifacts).
SHOTS = Path(os.environ.get("DDPM_SHOTS", ARTIFACTS))

#: A programmatic move of the player's scrubber: the event a drag sends, at an exact frame.
SCRUB = """(k) => { const r = document.querySelector('#lab-player-step');
  r.value = String(k); r.dispatchEvent(new Event('input', {bubbles: true})); }"""
PIXELS = """() => { const c = document.querySelector('#lab-player-canvas');
  const px = c.getContext('2d').getImageData(0, 0, c.width, c.height).data;
  let h = 0; for (let i = 0; i < px.length; i++) h = (h * 31 + px[i]) | 0;
  let ink = 0; for (let i = 0; i < px.length; i += 4) ink += px[i + 2] - px[i] > 40 ? 1 : 0;  // the cloud's blue
  return {hash: h, ink, frame: window.ddpmPlayer.frame}; }"""
READOUT = "() => document.querySelector('#lab-player-t').textContent"

TEXTS = {
    "en": {"tab": "2D lab", "play": "▶ Play", "pause": "❚❚ Pause", "t": "t = {t} · after {k} of 100 steps"},
    "zh": {"tab": "二维实验室", "play": "▶ 播放", "pause": "❚❚ 暂停", "t": "t = {t} · 已走 {k} / 100 步"},
}


def _timesteps() -> list[int]:
    """The default run's timesteps (DDPM, 100 steps on the linear schedule): frame k is x_t at the k-th of them."""
    from ddpm_core import lab2d as L

    return L.run_timesteps(L.make_diffusion("linear", 1000, "epsilon"), "ddpm", 100).tolist()


def _decoded_as_sent(page) -> None:
    """The page decodes the int16 paths to the core's coordinates: the training points it draws (moons' first
    2,000, seed 0) within half a quantisation step plus float32 rounding, and x_0's cloud all within the axes."""
    from ddpm_core import lab2d as L

    got = page.evaluate("() => ({d: window.ddpmPlayer.data.d, data: [...window.ddpmPlayer.data.data]})")
    d = got["d"]
    assert d["levels"] == L.QUANT_LEVELS and len(d["xy"]) < 1.1e6  # float32 took 2.2 MB
    data = torch.tensor(got["data"], dtype=torch.float64).reshape(-1, 2)
    exact = L.make_points("moons", 4000, seed=0)[0][: d["data_points"]].double()
    bound = d["lim"] / L.QUANT_LEVELS / 2 + d["lim"] * 2.0**-24
    assert (data - exact).abs().max().item() <= bound
    last = page.evaluate("() => { const P = window.ddpmPlayer.data; return [...P.xy.slice(-P.d.points * 2)]; }")
    assert len(last) == 2 * d["points"] and all(abs(v) <= d["lim"] for v in last if v == v)  # NaN: off the axes


@pytest.mark.parametrize("width,height,lang", [(1400, 900, "en"), (390, 844, "zh")], ids=["laptop-en", "phone-zh"])
def test_the_reverse_process_plays_and_scrubs_in_the_browser_with_no_request(browser, served, width, height, lang):  # noqa: F811
    text = TEXTS[lang]
    page = open_page(browser, served[1], width, height)
    if lang == "zh":
        page.locator("#lang label", has_text="简体中文").click()
        page.get_by_role("tab", name=text["tab"]).wait_for(timeout=30_000)
    page.get_by_role("tab", name=text["tab"]).click()
    page.locator("#lab-train").click()
    page.wait_for_function("() => window.ddpmPlayer?.data?.d.frames === 101", timeout=300_000)
    # the events chained after the sampling (score field, reverse step) are over before requests are counted
    page.locator("#lab-post-info", has_text="x_t").wait_for(timeout=180_000)
    # and the images that load lazily once on screen beside the player (the reverse-step panel's) have loaded
    page.locator("#lab-player-canvas").scroll_into_view_if_needed()
    page.wait_for_timeout(1500)
    page.wait_for_function("() => [...document.querySelectorAll('#lab-post-click img')].every(i => i.complete)")
    requests = []
    page.on("request", lambda r: requests.append(r.url))
    _decoded_as_sent(page)

    ts = _timesteps()
    seen = {}
    for k in (0, 1, 37, 80, 99):
        page.evaluate(SCRUB, k)
        px = page.evaluate(PIXELS)
        assert px["frame"] == k and px["ink"] > 500, (k, px)  # the cloud is drawn
        seen[k] = px["hash"]
        assert page.evaluate(READOUT) == text["t"].format(t=ts[k], k=k), k
    page.evaluate(SCRUB, 100)
    assert page.evaluate(READOUT).startswith("x₀"), page.evaluate(READOUT)
    seen[100] = page.evaluate(PIXELS)["hash"]
    assert len(set(seen.values())) == len(seen), seen  # every frame drawn differently

    # play from x_T: the frames advance on their own, the canvas and readout with them, then it stops at x_0
    page.evaluate(SCRUB, 0)
    play = page.locator("#lab-player-play")
    assert play.inner_text() == text["play"]
    play.click()
    assert play.inner_text() == text["pause"]
    page.wait_for_function("() => window.ddpmPlayer.frame >= 20", timeout=10_000)
    play.click()  # pause
    paused = page.evaluate(PIXELS)
    k = paused["frame"]
    assert 20 <= k < 100 and paused["hash"] not in (seen[0], seen[100])
    assert page.evaluate(READOUT) == text["t"].format(t=ts[k], k=k)
    page.wait_for_timeout(500)
    assert page.evaluate(PIXELS) == paused and play.inner_text() == text["play"]  # paused: nothing moves
    play.click()
    page.wait_for_function("() => !window.ddpmPlayer.playing", timeout=20_000)
    assert page.evaluate(PIXELS)["hash"] == seen[100] and page.evaluate(READOUT).startswith("x₀")
    page.wait_for_timeout(500)
    assert requests == [], f"{len(requests)} requests while the player ran: {requests[:5]}"

    # the canvas fits its column, square; the page does not scroll sideways
    box = page.locator("#lab-player-canvas").bounding_box()
    host = page.locator("#lab-player").bounding_box()
    assert 250 < box["width"] <= host["width"] + 0.5 and abs(box["width"] - box["height"]) < 1, (box, host)
    assert page.evaluate("document.scrollingElement.scrollWidth") == width
    SHOTS.mkdir(parents=True, exist_ok=True)
    page.evaluate(SCRUB, 60)
    page.locator("#lab-player").scroll_into_view_if_needed()
    page.screenshot(path=str(SHOTS / f"lab-player-{width}px-{lang}.png"))
    page.close()


def test_the_player_script_has_both_languages():
    """Every text the player shows exists in both languages, and the script the page installs carries them."""
    from ui.tabs.lab2d import PLAYER_JS, PLAYER_KEYS, TEXT

    for key in PLAYER_KEYS:
        assert TEXT["en"][key] and TEXT["zh"][key], key
        assert json.dumps(TEXT["zh"][key]) in PLAYER_JS and json.dumps(TEXT["en"][key]) in PLAYER_JS, key
    assert "__TEXT__" not in PLAYER_JS and "__LANGS__" not in PLAYER_JS
