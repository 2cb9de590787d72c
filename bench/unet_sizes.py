"""What each training-CLI UNet size costs on this machine, side by side in one run: parameters, weights on disk,
one training step, and the Space's default grid (its default sampler, steps and batch, through the fast path).

    python bench/unet_sizes.py --threads 2 [--sizes small medium] [--repeats 3] [--json PATH]

Random weights (seeded): the cost of a UNet does not depend on what it learned. Sizes alternate within each repeat,
so that drift in a shared machine's speed hits all alike; medians are reported. The widths that were tried before
``medium`` was chosen can be timed the same way with ``--extra``, e.g. ``--extra 48,96,96 32,96,128``.
"""

import argparse
import copy
import statistics
import time

import torch

import common  # noqa: F401 - offline environment, the repo on the import path
from common import machine, write_json
from ddpm_core import GaussianDiffusion
from ddpm_core.checkpoints import LoadedModel
from ddpm_core.sampling import generate
from ddpm_core.train import MODEL_SIZES, build_unet
from ui.common import DEFAULT_BATCH, DEFAULT_SAMPLER, DEFAULT_STEPS

SCHEDULER = {"beta_schedule": "linear", "variance_type": "fixed_small", "clip_sample": True}


def unets(sizes: list[str], extra: list[str]) -> dict:
    """name -> a fresh seeded 28x28 one-channel UNet; ``extra`` entries are channel triples on small's layout."""
    from diffusers import UNet2DModel

    out = {}
    for size in sizes:
        torch.manual_seed(0)
        out[size] = build_unet(size, 28, 1)
    for widths in extra:
        channels = tuple(int(c) for c in widths.split(","))
        torch.manual_seed(0)
        kwargs = {**MODEL_SIZES["small"], "block_out_channels": channels}
        out[f"small{channels}"] = UNet2DModel(sample_size=28, in_channels=1, out_channels=1, **kwargs)
    return out


def train_step_seconds(unet, batch: int = 64, n: int = 5) -> float:
    """Mean wall time of one AdamW step of the training loss's shape (forward, backward, update) on a batch."""
    unet.train().requires_grad_(True)
    x, t = torch.randn(batch, 1, 28, 28), torch.randint(0, 1000, (batch,))
    opt = torch.optim.AdamW(unet.parameters(), 1e-4)

    def step():
        unet(x, t).sample.pow(2).mean().backward()
        opt.step()
        opt.zero_grad()

    step()  # first call: allocations
    t0 = time.perf_counter()
    for _ in range(n):
        step()
    return (time.perf_counter() - t0) / n


def grid_seconds(model: LoadedModel) -> float:
    """Wall time of the Space's default request: its sampler, steps and batch, noise in, images out."""
    t0 = time.perf_counter()
    generate(model, batch_size=DEFAULT_BATCH, sampler=DEFAULT_SAMPLER, num_inference_steps=DEFAULT_STEPS, n_frames=1)
    return time.perf_counter() - t0


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--sizes", nargs="+", default=["small", "medium"], choices=tuple(MODEL_SIZES))
    p.add_argument("--extra", nargs="*", default=[], help="channel triples on small's layout, e.g. 48,96,96")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--json", default=None)
    a = p.parse_args()
    torch.set_num_threads(a.threads)
    nets = unets(a.sizes, a.extra)
    # a separate copy samples: the fast path freezes (and may re-lay out) the module it is given
    models = {
        name: LoadedModel(
            name,
            copy.deepcopy(u).eval().requires_grad_(False),
            GaussianDiffusion.from_config(SCHEDULER),
            "bench",
            SCHEDULER,
        )
        for name, u in nets.items()
    }
    rows = {}
    for name, unet in nets.items():
        params = sum(q.numel() for q in unet.parameters())
        rows[name] = {"parameters": params, "weights_mb": round(params * 4 / 1e6, 2), "train": [], "grid": []}
        rows[name]["grid_first_s"] = grid_seconds(models[name])  # tracing and freezing: a start-up cost
    for _ in range(a.repeats):
        for name, unet in nets.items():
            rows[name]["train"].append(train_step_seconds(unet))
            rows[name]["grid"].append(grid_seconds(models[name]))
    print(f"{machine()}; default grid: {DEFAULT_SAMPLER}, {DEFAULT_STEPS} steps, batch {DEFAULT_BATCH}\n")
    print("| UNet size | channels | parameters | weights | train step, batch 64 | default grid |")
    print("|---|---|---|---|---|---|")
    for name, r in rows.items():
        cfg = nets[name].config
        r["train_s"], r["grid_s"] = statistics.median(r["train"]), statistics.median(r["grid"])
        print(
            f"| {name} | {tuple(cfg.block_out_channels)} x {cfg.layers_per_block} | {r['parameters'] / 1e6:.2f}M | "
            f"{r['weights_mb']:.1f} MB | {r['train_s']:.2f} s | {r['grid_s']:.2f} s |"
        )
    if a.json:
        write_json(a.json, {"command": "python bench/unet_sizes.py", "threads": a.threads, "rows": rows})


if __name__ == "__main__":
    main()
