"""The 2D lab's default training: how long it takes and how near its samples come to the data, per dataset.

    python bench/lab2d.py [--threads 2] [--repeats 1]

For each named dataset: 4,000 training points, the default training (``ddpm_core.lab2d.train``: TRAIN_STEPS steps
of batch 512), then 2,000 points by DDPM in 100 steps; the energy distance of those to 2,000 held-out points of the
dataset, beside that between two independent draws of 2,000 (the floor a perfect model reaches). Target: training
within 15 s on this 2-core CPU, and an energy distance at most twice the data-vs-data one.
"""

import argparse
import time

import torch

import common
from ddpm_core import lab2d as L


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--repeats", type=int, default=1)
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    print(f"machine: {common.machine()}, threads {args.threads}\n")
    print("| dataset | training s | steps | ED samples vs held-out | ED data vs held-out | ratio |")
    print("|---|---|---|---|---|---|")
    for name in L.DATASETS:
        data, labels = L.make_points(name, 4000, seed=0)
        held, _ = L.make_points(name, 2000, seed=10)
        other, _ = L.make_points(name, 2000, seed=11)
        floor = L.energy_distance(other, held)
        for _ in range(args.repeats):
            d = L.make_diffusion()
            t0 = time.perf_counter()
            run = L.train(d, data, labels)
            secs = time.perf_counter() - t0
            x, _ = L.sample(d, run.model, 2000, "ddpm", 100, seed=1)
            ed = L.energy_distance(x, held)
            print(
                f"| {name} | {secs:.1f} | {len(run.losses)} | {ed:.4f} | {floor:.4f} | {ed / floor:.2f} |", flush=True
            )


if __name__ == "__main__":
    main()
