"""Every registered sampler at about the same number of network evaluations, side by side in one run.

    python bench/sampler_speed.py --batch 8 --evaluations 20 --repeats 3 --json bench/results/cpu-samplers-b8.json

Each sampler runs ``ddpm_core.sampling.generate`` (the Space's fast path) on the bundled model, at the most steps
whose network evaluations do not exceed ``--evaluations`` (Heun evaluates twice a step, except on its last), beside
DDPM at 100 steps (the Sample tab's default on a CPU). Rounds alternate over the samplers so that drift in the
machine's speed hits all alike; medians are reported as seconds per batch, per image and per evaluation. The first
call of each (the fast path's set-up) is not timed.
"""

from __future__ import annotations

import argparse
import statistics
import time

import common  # noqa: F401 - offline environment, the repo on the import path
from common import load_model, machine, write_json


def steps_within(diffusion, sampler: str, evaluations: int) -> int:
    """The most steps whose network evaluations are at most ``evaluations``."""
    from ddpm_core.sampling import evaluation_count

    return max(n for n in range(1, evaluations + 1) if evaluation_count(diffusion, n, sampler=sampler) <= evaluations)


def main() -> None:
    import torch

    from ddpm_core.samplers import SAMPLERS
    from ddpm_core.sampling import evaluation_count, generate

    p = argparse.ArgumentParser()
    p.add_argument("--model", default="ddpm-mnist-28")
    p.add_argument("--batch", type=int, default=8)
    p.add_argument("--evaluations", type=int, default=20)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--json")
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    model = load_model(args.model)
    runs = {name: steps_within(model.diffusion, name, args.evaluations) for name in SAMPLERS}
    runs = {(name, steps): None for name, steps in runs.items()} | {("ddpm", 100): None}
    nfe = {run: evaluation_count(model.diffusion, run[1], sampler=run[0]) for run in runs}
    for name, steps in runs:  # the fast path's set-up (TorchScript trace) happens once per shape and schedule
        generate(model, batch_size=args.batch, sampler=name, num_inference_steps=steps, n_snapshots=0, n_frames=0)
    times = {run: [] for run in runs}
    for _ in range(args.repeats):
        for name, steps in runs:
            t0 = time.perf_counter()
            generate(model, batch_size=args.batch, sampler=name, num_inference_steps=steps, n_snapshots=0, n_frames=0)
            times[(name, steps)].append(time.perf_counter() - t0)
    rows = []
    for (name, steps), ts in times.items():
        med = statistics.median(ts)
        rows.append(
            {
                "sampler": name,
                "steps": steps,
                "evaluations": nfe[(name, steps)],
                "seconds_per_batch": med,
                "seconds_per_image": med / args.batch,
                "seconds_per_evaluation": med / nfe[(name, steps)],
                "all_seconds": ts,
            }
        )
    print(f"#### {args.model}: batch {args.batch}, median of {args.repeats} alternating rounds; {machine()}\n")
    print("| sampler | steps | network evaluations | s per batch | s per image | ms per evaluation (batch) |")
    print("|---|---|---|---|---|---|")
    for r in rows:
        print(
            f"| {SAMPLERS[r['sampler']].short_label} | {r['steps']} | {r['evaluations']} | {r['seconds_per_batch']:.2f} "
            f"| {r['seconds_per_image']:.3f} | {1000 * r['seconds_per_evaluation']:.1f} |"
        )
    if args.json:
        write_json(args.json, {"args": vars(args), "results": rows})


if __name__ == "__main__":
    main()
