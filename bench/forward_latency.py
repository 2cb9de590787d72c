"""Server-side time of the forward-process handler (what a t-slider move costs), 512-px image, this machine.

    python bench/forward_latency.py [--repeats 40]

Times app.forward() in-process (decode cache warm, as it is while a user drags the slider), for several t and
schedules, and prints the median and p90 in ms. Gradio's own PNG encoding and transport are not included.
"""

import argparse
import os
import platform
import statistics
import time

import numpy as np  # noqa: E402
import torch  # noqa: E402
from PIL import Image  # noqa: E402

import app  # noqa: E402
import common  # noqa: F401 - offline environment, the repo on the import path
from common import TMP  # noqa: E402


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--repeats", type=int, default=40)
    args = p.parse_args()
    img = TMP / "ddpm-bench-512.png"
    rng = np.random.default_rng(0)
    Image.fromarray(rng.integers(0, 256, (384, 512, 3), dtype=np.uint8)).save(img)
    app.forward(str(img), 10, "linear", 1000, 0)  # warm: decode cache, schedule cache
    rows = []
    for schedule in ("linear", "cosine"):
        times = []
        for k in range(args.repeats):
            t = (k * 97) % 1000
            t0 = time.perf_counter()
            app.forward(str(img), t, schedule, 1000, k)
            times.append((time.perf_counter() - t0) * 1e3)
        rows.append((schedule, statistics.median(times), float(np.percentile(times, 90)), max(times)))
    cold = []
    for k in range(5):  # a new upload each time: decode + resize included
        fresh = TMP / f"ddpm-bench-512-{k}.png"
        Image.fromarray(rng.integers(0, 256, (384, 512, 3), dtype=np.uint8)).save(fresh)
        t0 = time.perf_counter()
        app.forward(str(fresh), 500, "linear", 1000, 0)
        cold.append((time.perf_counter() - t0) * 1e3)
    print(
        f"machine: {platform.machine()}, {os.cpu_count()} CPUs, torch {torch.__version__}, threads {torch.get_num_threads()}"
    )
    print("| schedule | median ms | p90 ms | max ms |\n|---|---|---|---|")
    for r in rows:
        print(f"| {r[0]} | {r[1]:.1f} | {r[2]:.1f} | {r[3]:.1f} |")
    print(
        f"| first call on a new 512x384 upload (decode included) | {statistics.median(cold):.1f} | | {max(cold):.1f} |"
    )


if __name__ == "__main__":
    main()
