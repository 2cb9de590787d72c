"""How long the "Where the loss lives" tab takes for one digit: the handler itself, as the Space runs it.

    python bench/bound_time.py --repeats 3 --threads 2

Calls ``ui.tabs.bound.bound_view`` (all T = 1000 terms of the bundled model's bound for held-out digit 0, batched
as the tab batches them on this device) ``--repeats`` times after one untimed call, and prints the median and every
time with the bits/dim it reports.
"""

from __future__ import annotations

import argparse
import statistics
import time

import common  # noqa: F401 - offline environment, the repo on the import path
from common import machine


def main() -> None:
    import torch

    p = argparse.ArgumentParser()
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--digit", type=int, default=0)
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    from ui.tabs.bound import MAX_BATCH, bound_view

    bound_view("ddpm-mnist-28", args.digit, 0)  # loads the model and the digits
    times, summaries = [], []
    for _ in range(args.repeats):
        t0 = time.perf_counter()
        _, summary, _ = bound_view("ddpm-mnist-28", args.digit, 0)
        times.append(time.perf_counter() - t0)
        summaries.append(summary.splitlines()[0][:120])
    print(f"bound of digit {args.digit}, {MAX_BATCH} evaluations a call; {machine()}")
    print(f"median {statistics.median(times):.2f} s; all {', '.join(f'{t:.2f}' for t in times)} s")
    print(summaries[0])


if __name__ == "__main__":
    main()
