"""What a model's quality curve costs: the points the plan draws, priced by a measured pace of this CPU.

    python bench/curve_cost.py [checkpoints/ddpm-mnist-28] [--threads 2]

Replays ``ddpm_core.curve.follow_plan`` on a measured ``curve.json`` (its own figures stand in for what a new run of
the same weights would measure) and, side by side, the plan before it (every sampler at every base budget, each at
the extended budgets while its two costliest points differ at all). Prices both in network evaluations x samples
and in minutes, at the pace of one measured batch (250 digits by DDPM in 20 steps with the curve's batch, this
CPU's ``--threads``); the classifier's share (a forward pass per sample, once a point) is left out.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import torch

import common
from ddpm_core import GaussianDiffusion
from ddpm_core.curve import EXTENDED_EVALUATIONS, curve_points, follow_plan, steps_for
from ddpm_core.quality import DEFAULT_FD_RATIO, rate_margin


def changed(rows: list[dict], margin: float) -> bool:
    """The plan before: a sampler was extended while its two costliest points differed beyond the resolution in
    either direction (a worse point or a trade counted as a change)."""
    if len(rows) < 2:
        return True
    a, b = sorted(rows, key=lambda r: r["evaluations"])[-2:]
    return abs(a["confident"] - b["confident"]) > margin or max(a["fd"], b["fd"]) > DEFAULT_FD_RATIO * min(
        a["fd"], b["fd"]
    )


def old_plan(d, rows: dict, margin: float) -> list[tuple]:
    order = list(curve_points(d))
    for budget in EXTENDED_EVALUATIONS:
        for sampler in dict.fromkeys(s for s, _ in order):
            steps = steps_for(d, sampler, budget)
            mine = [rows[p] for p in order if p[0] == sampler]
            if steps is not None and (sampler, steps) in rows and changed(mine, margin):
                order.append((sampler, steps))
    return order


def pace(folder: Path, batch: int) -> float:
    """Seconds per sample per network evaluation, as the curve draws its samples (``draw_runs``): one batch by DDPM
    in 20 steps, after a warm-up batch of 2 steps."""
    from ddpm_core.checkpoints import ModelCache
    from ddpm_core.scoring import draw_runs

    m = ModelCache(size=1, root=folder.resolve().parent).get(folder.resolve().name)
    draw_runs(m, [0], batch, batch, "ddpm", 2)
    t0 = time.perf_counter()
    draw_runs(m, [0], batch, batch, "ddpm", 20)
    return (time.perf_counter() - t0) / (batch * 20)


def main():
    p = argparse.ArgumentParser()
    p.add_argument("folder", nargs="?", default=str(common.ROOT / "checkpoints" / "ddpm-mnist-28"))
    p.add_argument("--threads", type=int, default=2)
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    folder = Path(args.folder)
    curve = json.loads((folder / "curve.json").read_text())
    d = GaussianDiffusion.from_config(str(folder / "scheduler" / "scheduler_config.json"))
    rows = {(r["sampler"], r["steps"]): r for r in curve["points"]}
    samples = curve["num_samples"] * len(curve["sampling_seeds"])
    new = follow_plan(d, curve_points(d), lambda s, n: rows[(s, n)], samples)
    old = old_plan(d, rows, rate_margin(curve))
    sec = pace(folder, curve["batch"])
    print(f"machine: {common.machine()}; {samples} samples a point; {1000 * sec:.2f} ms per sample-evaluation\n")
    print("| plan | points | network evaluations x samples | minutes at this pace | points not drawn |")
    print("|---|---|---|---|---|")
    for name, plan in (("every base budget, extended while changing", old), ("follow_plan", new)):
        evals = sum(rows[p]["evaluations"] for p in plan) * samples
        left = sorted(set(old) - set(plan))
        shown = ", ".join(f"{s} {n}" for s, n in left) or "-"
        print(f"| {name} | {len(plan)} | {evals:,} | {evals * sec / 60:.0f} | {shown} |")


if __name__ == "__main__":
    main()
