"""The 2D lab's default training as a visitor waits for it: from the Train click to the "Trained" line, in Chromium.

    python bench/lab_train_browser.py [--busy 1] [--repeats 2]

Starts the Space as a Space starts it (``python app.py``: its warm-up, its CPU thread setting), with ``--busy``
other processes each keeping one core busy (a Python busy loop) for the whole run, then in headless Chromium
(Debian's ``/usr/bin/chromium``) opens the 2D lab, presses Train with the defaults (moons, 4,000 points) and times
the wait until the result line appears, ``--repeats`` times. Prints the seconds and the steps the run took.
Target: at most 20 s with one core busy.
"""

from __future__ import annotations

import argparse
import os
import re
import subprocess
import sys
import time
import urllib.request

import common


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--busy", type=int, default=1, help="processes each keeping one core busy")
    p.add_argument("--repeats", type=int, default=2)
    args = p.parse_args()
    from playwright.sync_api import sync_playwright

    port = common.free_port()
    env = {**os.environ, "GRADIO_SERVER_NAME": "127.0.0.1", "GRADIO_SERVER_PORT": str(port)}
    server = subprocess.Popen([sys.executable, "app.py"], cwd=common.ROOT, env=env, stdout=subprocess.DEVNULL)
    hogs = []
    try:
        url = f"http://127.0.0.1:{port}/"
        for _ in range(300):  # the warm-up runs before serving
            try:
                urllib.request.urlopen(url, timeout=2)
                break
            except OSError:
                time.sleep(1)
        hogs = [subprocess.Popen([sys.executable, "-c", "while True: pass"]) for _ in range(args.busy)]
        time.sleep(2)
        print(f"machine: {common.machine()}; {args.busy} other process(es) each keeping a core busy\n")
        print("| try | Train click to result, s | steps | load average before |")
        print("|---|---|---|---|")
        with sync_playwright() as pw:
            browser = pw.chromium.launch(executable_path="/usr/bin/chromium", args=["--no-sandbox"])
            for k in range(args.repeats):
                page = browser.new_page(viewport={"width": 1400, "height": 900})
                page.goto(url, wait_until="domcontentloaded")
                page.get_by_role("tab", name="2D lab").click()
                load = os.getloadavg()[0]
                t0 = time.perf_counter()
                page.locator("#lab-train").click()
                done = page.locator("#lab-trained", has_text="Trained")
                done.wait_for(timeout=600_000)
                secs = time.perf_counter() - t0
                steps = re.search(r"Trained ([\d,]+) steps", done.inner_text()).group(1)
                print(f"| {k + 1} | {secs:.1f} | {steps} | {load:.2f} |", flush=True)
                page.close()
            browser.close()
    finally:
        for h in hogs:
            h.kill()
        server.kill()


if __name__ == "__main__":
    main()
