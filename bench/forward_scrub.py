"""Dragging t on the Forward tab in headless Chromium: the time from a slider input event to the canvas redraw.

    python bench/forward_scrub.py [--moves 50] [--releases 5] [--out bench/results/cpu-forward-scrub.json]

Serves the Space on 127.0.0.1, opens it in Debian's chromium (playwright, 1400 x 900), waits for /forward_scrub's
data of the default example (512 x 384, drawn at 256 x 192), then drags the t slider with the mouse: ``--moves``
moves, each a new t. The page's script stamps each redraw (``window.ddpmScrub.last``): the input event's own time
stamp, the time the canvas and readouts were rewritten, and the next animation frame (the redraw on screen). Prints
the median and p90 of both in ms, and for comparison the full-size round trip after ``--releases`` releases (mouse
up to /forward's x_t image loaded), which is what each move cost before the page drew x_t itself.
"""

from __future__ import annotations

import argparse
import shutil
import statistics
import time

import numpy as np

import common  # noqa: F401 - offline environment, the repo on the import path
from common import ROOT, free_port, write_json

CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
ARGS = ["--no-sandbox", "--headless", "--disable-gpu", "--disable-dev-shm-usage", "--disable-background-networking"]
ARGS += ["--disable-component-update", "--disable-sync", "--no-first-run", "--disable-quic"]
LOADED = "() => { const i = document.querySelector('#xt-image img'); return i && i.complete && i.src; }"


def stats(values: list[float]) -> dict:
    return {
        "n": len(values),
        "median_ms": round(statistics.median(values), 2),
        "p90_ms": round(float(np.percentile(values, 90)), 2),
        "max_ms": round(max(values), 2),
    }


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--moves", type=int, default=50)
    p.add_argument("--releases", type=int, default=5)
    p.add_argument("--out", default=str(ROOT / "bench" / "results" / "cpu-forward-scrub.json"))
    args = p.parse_args()

    from playwright.sync_api import sync_playwright

    import app

    demo = app.build_demo()
    port = free_port()
    app.launch(demo, warm=False, server_name="127.0.0.1", server_port=port, prevent_thread_lock=True, quiet=True)
    try:
        with sync_playwright() as pw:
            browser = pw.chromium.launch(executable_path=CHROMIUM, headless=True, args=ARGS)
            page = browser.new_page(viewport={"width": 1400, "height": 900})
            page.goto(f"http://127.0.0.1:{port}/", wait_until="domcontentloaded")
            page.wait_for_function("() => window.ddpmScrub && window.ddpmScrub.data", timeout=120_000)
            page.wait_for_function(LOADED, timeout=120_000)
            page.wait_for_timeout(1000)
            load_ms = page.evaluate("window.ddpmScrub.loadMs")
            size = page.evaluate("[window.ddpmScrub.data.d.width, window.ddpmScrub.data.d.height]")
            requests = []
            page.on("request", lambda r: requests.append(r.url))

            slider = page.locator("#t-slider input[type=range]")
            box = slider.bounding_box()
            y = box["y"] + box["height"] / 2
            x_at = lambda f: box["x"] + f * box["width"]  # noqa: E731
            drawn, frame, ts = [], [], []
            page.mouse.move(x_at(0.1), y)
            page.mouse.down()
            for k in range(1, args.moves + 1):
                before = page.evaluate("window.ddpmScrub.draws")
                page.mouse.move(x_at(0.1 + 0.8 * k / args.moves), y)
                page.wait_for_function(
                    "(n) => window.ddpmScrub.draws > n && window.ddpmScrub.last.frame !== null", arg=before
                )
                last = page.evaluate("window.ddpmScrub.last")
                drawn.append(last["drawn"] - last["since"])
                frame.append(last["frame"] - last["since"])
                ts.append(last["t"])
            scrub_requests = len(requests)
            page.mouse.up()

            rounds = []
            for k in range(args.releases):
                page.wait_for_function(LOADED, timeout=60_000)
                page.wait_for_timeout(500)
                src = page.evaluate(LOADED)
                page.mouse.move(x_at(0.2 + 0.12 * k), y)
                page.mouse.down()
                page.mouse.move(x_at(0.25 + 0.12 * k), y)
                t0 = time.perf_counter()
                page.mouse.up()
                page.wait_for_function(
                    "(s) => { const i = document.querySelector('#xt-image img');"
                    " return i && i.complete && i.src !== s; }",
                    arg=src,
                    timeout=60_000,
                )
                rounds.append((time.perf_counter() - t0) * 1e3)
            browser.close()
    finally:
        demo.close()

    result = {
        "command": "python bench/forward_scrub.py " + f"--moves {args.moves} --releases {args.releases}",
        "browser": "Debian chromium, headless, 1400 x 900, playwright mouse drag",
        "display_size": size,
        "data_decode_ms": round(load_ms, 2),
        "input_to_drawn": stats(drawn),
        "input_to_next_frame": stats(frame),
        "distinct_t": len(set(ts)),
        "requests_while_dragging": scrub_requests,
        "release_to_full_size_image": stats(rounds),
        "raw": {"input_to_drawn_ms": drawn, "input_to_next_frame_ms": frame, "t": ts, "release_ms": rounds},
    }
    write_json(args.out, result)
    print(f"display size {size[0]} x {size[1]}, data decoded once in {load_ms:.1f} ms; {len(set(ts))} distinct t")
    print("| from a slider input event to | n | median ms | p90 ms | max ms |\n|---|---|---|---|---|")
    for name, key in (("canvas and readouts rewritten", "input_to_drawn"), ("the next frame", "input_to_next_frame")):
        s = result[key]
        print(f"| {name} | {s['n']} | {s['median_ms']} | {s['p90_ms']} | {s['max_ms']} |")
    s = result["release_to_full_size_image"]
    print(
        f"| (release to /forward's full-size x_t shown) | {s['n']} | {s['median_ms']} | {s['p90_ms']} | {s['max_ms']} |"
    )
    print(f"requests while dragging: {scrub_requests}; raw: {args.out}")


if __name__ == "__main__":
    main()
