"""Memorise or generalise: the bundled architecture trained on 1, 10 and 100 MNIST digits, and the bundled model
(the full 3,000-digit split), each sampled 64 times; how near is each sample to its nearest training digit?

    python bench/memorisation.py train        # the three small runs, one after the other (about 20 min, 1 thread)
    python bench/memorisation.py measure      # sample, measure, write bench/results/memorisation.{json,md} and grids

``train`` runs, one at a time (the command of each is printed and recorded)::

    python -m ddpm_core.train --data mnist --num-images N --steps S --batch-size 16 --lr 1e-3 --warmup 50 \\
        --threads 1 --save-every 0 --sample-every 0 --log-every 50 --out $TMP/memorise-N

with S = 400, 800, 800 for N = 1, 10, 100: a one-digit set is learnt in a few hundred steps (each batch holds the
digit 16 times); the larger sets get twice the steps, within a CPU budget of about 25 minutes for all three (each
digit is seen 6,400, 1,280 and 128 times). The runs are far shorter than the bundled model's 7,000 steps of batch 64:
what they show is what a few minutes of training reproduces, a lower bound on what a longer run would memorise.

``measure`` draws 64 samples from each (DDPM, 100 steps, seed 0: the Space's default), then, with the evaluator's
``nearest_distances`` (pixel L2 between 28x28 images in [0, 1]):

* each sample's distance to its nearest digit of that run's own training set;
* beside it, each of the 500 held-out digits' distance to its nearest digit of the same set: how near a new,
  real digit comes to the training set by chance;
* a copy: a sample nearer to a training digit than the 1% quantile of held-out digits' distances to the full
  3,000-digit split, one threshold for every N (the closest any real new digit comes to 3,000 training digits,
  the evaluator's own memorisation threshold for the bundled model).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import torch

import common  # noqa: F401 - offline environment, the repo on the import path
from common import ROOT, TMP, machine

RUNS = {1: 400, 10: 800, 100: 800}  # training digits -> optimiser steps of batch 16
BUNDLED = ("ddpm-mnist-28", 3000)
NUM_SAMPLES, STEPS, SEED = 64, 100, 0
RESULTS = ROOT / "bench" / "results"


def train_command(n: int, steps: int, out: Path) -> list[str]:
    return [
        *("python -m ddpm_core.train --data mnist --num-images").split(),
        str(n),
        *f"--steps {steps} --batch-size 16 --lr 1e-3 --warmup 50 --threads 1".split(),
        *"--save-every 0 --sample-every 0 --log-every 50 --out".split(),
        str(out),
    ]


def run_dir(n: int) -> Path:
    return TMP / f"memorise-{n}"


def train(only: list[int] | None) -> None:
    for n, steps in RUNS.items():
        if only and n not in only:
            continue
        cmd = train_command(n, steps, run_dir(n))
        print("$", " ".join(cmd), flush=True)
        env = {**os.environ, "OMP_NUM_THREADS": "1"}
        subprocess.run([sys.executable, *cmd[1:]], cwd=ROOT, check=True, env=env)


def training_info(n: int) -> dict:
    """The command of run ``n`` and its steps and seconds, from the run's own ``train_log.jsonl``."""
    last = json.loads((run_dir(n) / "train_log.jsonl").read_text().splitlines()[-1])
    cmd = " ".join(train_command(n, RUNS[n], Path("$TMP") / f"memorise-{n}"))
    return {"command": cmd, "steps": last["step"], "seconds": last["elapsed_s"]}


def training_digits(n: int) -> np.ndarray:
    """The ``n`` digits ``[n x 28 x 28]`` in [0, 1] a ``--num-images n`` run trains on (all 3,000 for the bundled)."""
    from ddpm_core.data import build_dataset, first_images

    data = build_dataset("mnist", 28, 1)
    if n < len(data):
        data = first_images(data, n)
        data = torch.utils.data.Subset(data.dataset, data.indices[:n])  # one copy of each
    x = torch.stack([data[i][0] for i in range(len(data))])
    return ((x[:, 0].double() + 1) / 2).numpy()


def sample(name_or_dir: str, threads: int) -> torch.Tensor:
    """64 samples ``[64 x 1 x 28 x 28]`` in [0, 1], DDPM at 100 steps, seed 0."""
    from ddpm_core.checkpoints import ModelCache, load_checkpoint
    from ddpm_core.sampling import generate

    torch.set_num_threads(threads)
    folder = Path(name_or_dir)
    # a run's folder is loaded as a bundled model of a cache rooted at its parent: the same loader as the Space's
    model = ModelCache(root=folder.parent).get(folder.name) if folder.is_dir() else load_checkpoint(name_or_dir)
    x = generate(model, batch_size=NUM_SAMPLES, seed=SEED, sampler="ddpm", num_inference_steps=STEPS).samples
    return (x.clamp(-1, 1).double() + 1) / 2


def measure(threads: int) -> dict:
    from ddpm_core.data import mnist_split
    from ddpm_core.imaging import make_grid, tensor_to_pil
    from ddpm_core.metrics import nearest_distances

    heldout = mnist_split("heldout")[0].astype(np.float64) / 255.0
    full = training_digits(BUNDLED[1])
    copy_below = float(np.quantile(nearest_distances(heldout, full)[0], 0.01))
    rows = []
    sources = [(n, str(run_dir(n))) for n in RUNS] + [(BUNDLED[1], BUNDLED[0])]
    for n, source in sources:
        train01 = training_digits(n)
        t0 = time.time()
        x = sample(source, threads)
        d_samples = nearest_distances(x[:, 0].numpy(), train01)[0]
        d_heldout = nearest_distances(heldout, train01)[0]
        q = [0.05, 0.25, 0.5, 0.75, 0.95]
        rows.append(
            {
                "training_digits": n,
                "model": source if n == BUNDLED[1] else f"$TMP/memorise-{n}",
                "train": training_info(n) if n in RUNS else "checkpoints/ddpm-mnist-28/README.md",
                "quantiles": q,
                "samples_nn": [round(float(v), 3) for v in np.quantile(d_samples, q)],
                "heldout_nn": [round(float(v), 3) for v in np.quantile(d_heldout, q)],
                "copies": int((d_samples < copy_below).sum()),
                # the evaluator's rule against this run's own training set: nearer than 99% of held-out digits come
                "heldout_q01_own": round(float(np.quantile(d_heldout, 0.01)), 3),
                "copies_own": int((d_samples < np.quantile(d_heldout, 0.01)).sum()),
                "num_samples": NUM_SAMPLES,
                "distinct_training_digits_copied": int(
                    len(set(nearest_distances(x[:, 0].numpy(), train01)[1][d_samples < copy_below].tolist()))
                ),
                "sampling_seconds": round(time.time() - t0, 1),
            }
        )
        grid = make_grid(tensor_to_pil(x[:16] * 2 - 1), ncols=8, scale=2)
        grid.save(RESULTS / f"memorisation-N{n}.png", optimize=True)
        print(rows[-1], flush=True)
    return {
        "machine": machine(),
        "sampling": f"DDPM, {STEPS} steps, {NUM_SAMPLES} samples, seed {SEED}",
        "metric": "L2 between 28x28 images, pixels in [0, 1] (ddpm_core.metrics.nearest_distances)",
        "copy_threshold": round(copy_below, 3),
        "copy_threshold_is": "1% quantile of the 500 held-out digits' distance to the nearest of all 3,000 training digits",
        "rows": rows,
    }


def table(result: dict) -> str:
    lines = [
        f"Machine: {result['machine']}. Sampling: {result['sampling']}. Distances: {result['metric']}; a copy is a "
        f"sample nearer than {result['copy_threshold']} to a training digit ({result['copy_threshold_is']}).",
        "",
        "| training digits N | training | samples: nearest training digit, 5 / 25 / 50 / 75 / 95% | held-out digits: "
        "same | copies | distinct digits copied | nearer than 99% of held-out digits come to the same set |",
        "|---|---|---|---|---|---|---|",
    ]
    for r in result["rows"]:
        tr = r["train"]
        how = (
            f"{tr['steps']} steps of batch 16, {tr['seconds'] / 60:.0f} min"
            if isinstance(tr, dict)
            else "the bundled model (7,000 steps of batch 64)"
        )
        fmt = " / ".join(f"{v:.2f}" for v in r["samples_nn"])
        fmh = " / ".join(f"{v:.2f}" for v in r["heldout_nn"])
        lines.append(
            f"| {r['training_digits']:,} | {how} | {fmt} | {fmh} | {r['copies']} of {r['num_samples']} "
            f"({r['copies'] / r['num_samples']:.0%}) | {r['distinct_training_digits_copied']} | "
            f"{r['copies_own']} of {r['num_samples']} (below {r['heldout_q01_own']:.2f}) |"
        )
    return "\n".join(lines) + "\n"


def main():
    p = argparse.ArgumentParser()
    p.add_argument("stage", choices=("train", "measure"))
    p.add_argument("--only", type=int, nargs="*", help="train only these N")
    p.add_argument("--threads", type=int, default=1)
    args = p.parse_args()
    if args.stage == "train":
        train(args.only)
        return
    result = measure(args.threads)
    (RESULTS / "memorisation.json").write_text(json.dumps(result, indent=1) + "\n")
    (RESULTS / "memorisation.md").write_text(table(result))
    print(table(result))


if __name__ == "__main__":
    main()
