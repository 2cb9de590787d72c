"""The Space's two CPU jobs with one core taken by another process: torch's thread settings side by side.

    python bench/cpu_contention.py [--json bench/results/cpu-contention.json] [--lab-steps 500] [--repeats 2]

A Space's CPU is shared: another process (a neighbour, a second worker) may keep a core busy. With that load (here a
second process running a Python busy loop on one core) and without it, this runs in fresh processes, one per
setting (OpenMP reads its settings once, at start-up):

- the default grid: the bundled model, 8 samples by DDPM in 100 steps on the fast path (median of ``--repeats``
  after a warm-up run), and
- the 2D lab's default training: ``ddpm_core.lab2d.train`` on the moons for ``--lab-steps`` steps, reported per step
  and for the default TRAIN_STEPS,

each with 1 torch thread, with 2 (OpenMP's default wait policy: a thread spins while it waits for the other), and
with 2 under ``OMP_WAIT_POLICY=PASSIVE`` (a waiting thread sleeps). Each row records the load average before it.
For the Space's setting it also times the lab's training under its time budget, the lab's quality against steps
and Steps compared's default six pairs.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time

import common

#: The setting the Space runs with (``ui.common.cpu_threads``).
SPACE = "1 thread"
SETTINGS = {
    "1 thread": {"threads": 1, "env": {}},
    "2 threads": {"threads": 2, "env": {}},
    "2 threads, OMP_WAIT_POLICY=PASSIVE": {"threads": 2, "env": {"OMP_WAIT_POLICY": "PASSIVE"}},
}


def worker(threads: int, lab_steps: int, repeats: int, space: bool) -> dict:
    """One setting's figures, measured in this process; with ``space``, also the Space's other waits as its
    handlers run them: the lab's training with its time budget, its quality against steps, Steps compared."""
    import torch

    torch.set_num_threads(threads)
    from ddpm_core import lab2d as L
    from ddpm_core.checkpoints import load_checkpoint
    from ddpm_core.sampling import compare_steps, generate

    m = load_checkpoint()
    generate(m, batch_size=8, num_inference_steps=10, seed=0)  # the trace, as the Space's warm-up does
    grid = []
    for seed in range(repeats):
        t0 = time.perf_counter()
        generate(m, batch_size=8, num_inference_steps=100, seed=seed)
        grid.append(time.perf_counter() - t0)
    data, labels = L.make_points("moons", 4000, seed=0)
    t0 = time.perf_counter()
    L.train(L.make_diffusion(), data, labels, steps=lab_steps)
    per_step = (time.perf_counter() - t0) / lab_steps
    out = {
        "grid_s": grid,
        "grid_median_s": statistics.median(grid),
        "lab_ms_per_step": 1000 * per_step,
        "lab_default_s": per_step * L.TRAIN_STEPS,
    }
    if space:
        from ui.common import fast_path
        from ui.tabs.compare import DEFAULT_PAIRS, PAIRS
        from ui.tabs.lab2d import TRAIN_BUDGET_S

        d = L.make_diffusion()
        run = L.train(d, data, labels, time_budget=TRAIN_BUDGET_S)
        out["lab_budget_s"], out["lab_budget_steps"] = run.seconds, len(run.losses)
        held, _ = L.make_points("moons", 2000, seed=10)
        t0 = time.perf_counter()
        L.quality_by_steps(d, L.guided(run.model), held)
        out["lab_quality_s"] = time.perf_counter() - t0
        t0 = time.perf_counter()
        list(compare_steps(m, [PAIRS[c] for c in DEFAULT_PAIRS], 0, **fast_path(m)))
        out["compare_s"] = time.perf_counter() - t0
    return out


def busy_core() -> subprocess.Popen:
    """Another process keeping one core busy (a Python busy loop)."""
    return subprocess.Popen([sys.executable, "-c", "while True: pass"])


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--json", default=None)
    p.add_argument("--lab-steps", type=int, default=500)
    p.add_argument("--repeats", type=int, default=2)
    p.add_argument("--worker", type=int, default=None, help=argparse.SUPPRESS)
    p.add_argument("--space", action="store_true", help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.worker is not None:
        print(json.dumps(worker(args.worker, args.lab_steps, args.repeats, args.space)))
        return
    rows = []
    print(f"machine: {common.machine()}\n")
    print("| load | setting | default grid, s (median) | 2D lab, ms per step | 2D lab default training, s |")
    print("|---|---|---|---|---|")
    for load in ("idle", "one core busy"):
        hog = busy_core() if load != "idle" else None
        try:
            time.sleep(2)
            for name, s in SETTINGS.items():
                env = {**os.environ, **s["env"], "OMP_NUM_THREADS": str(s["threads"])}
                before = os.getloadavg()[0]
                out = subprocess.run(
                    [sys.executable, __file__, "--worker", str(s["threads"]), "--lab-steps", str(args.lab_steps)]
                    + ["--repeats", str(args.repeats)]
                    + (["--space"] if name == SPACE else []),
                    env=env,
                    capture_output=True,
                    text=True,
                    check=True,
                )
                r = {"load": load, "setting": name, "load_average_before": before, **json.loads(out.stdout)}
                rows.append(r)
                print(
                    f"| {load} | {name} | {r['grid_median_s']:.2f} | {r['lab_ms_per_step']:.1f} | "
                    f"{r['lab_default_s']:.1f} |",
                    flush=True,
                )
        finally:
            if hog is not None:
                hog.kill()
    print("\nThe Space's setting (" + SPACE + "), as its handlers run:\n")
    print("| load | 2D lab training (15 s budget): s, steps | 2D lab quality against steps, s | Steps compared, s |")
    print("|---|---|---|---|")
    for r in rows:
        if r["setting"] == SPACE:
            print(
                f"| {r['load']} | {r['lab_budget_s']:.1f}, {r['lab_budget_steps']:,} | {r['lab_quality_s']:.1f} | "
                f"{r['compare_s']:.1f} |"
            )
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"machine": common.machine(), "lab_steps": args.lab_steps, "rows": rows}, f, indent=1)


if __name__ == "__main__":
    main()
