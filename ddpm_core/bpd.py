"""Bits per dimension of a model on a folder of images: the variational bound (DDPM eq. 5), split over every process.

    python -m ddpm_core.bpd --model ddpm-mnist-28 --data digits/ --num 100 --out bpd.json
    torchrun --nproc_per_node 8 -m ddpm_core.bpd --model google/ddpm-cifar10-32 --data cifar10-test/ --batch 25 \\
        --out cifar10-bpd.json
    accelerate launch --multi_gpu --num_processes 8 -m ddpm_core.bpd ...   # the same through accelerate

The images (PNG, JPEG, ...; sorted by path, centre-cropped and resized to the model's size, then quantised to 8 bits
as the decoder needs) are cut into batches of ``--batch``; batch b draws its x_t with a generator seeded
``--seed + b`` and belongs to rank ``b % N`` of N processes, so the figures are the same whatever N. Each image
costs T network evaluations (1000 for the usual schedules), several timesteps per call (``--max-batch`` images per
call). Ho et al. 2020 report 3.75 bits/dim (Table 2) for their CIFAR-10 L_simple model (``google/ddpm-cifar10-32``)
on the 10,000 test images. Rank 0 writes ``--out``: the mean ± standard error, the mean of each term, and every
image's total.
"""

from __future__ import annotations

import argparse
import json
import math
import time
from pathlib import Path

import torch

from .sample import distributed_state


def parse_args(argv=None):
    p = argparse.ArgumentParser(prog="python -m ddpm_core.bpd", description=__doc__.split("\n\n")[0])
    p.add_argument("--model", default="ddpm-mnist-28", help="a bundled model name or a Hub id")
    p.add_argument("--data", required=True, help="a folder of images (searched recursively)")
    p.add_argument("--out", required=True, help="the JSON file rank 0 writes")
    p.add_argument("--num", type=int, default=0, help="the first N images only (0: all)")
    p.add_argument("--batch", type=int, default=16, help="images per batch (per process)")
    p.add_argument("--max-batch", type=int, default=256, help="images x timesteps per network call")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--dtype", default="float32", choices=("float32", "float16", "bfloat16"), help="the network's")
    return p.parse_args(argv)


def _load_batch(dataset, indices: list[int]) -> torch.Tensor:
    """The images at ``indices`` as ``[B x C x H x W]`` on the 8-bit grid in [-1, 1] (2k/255 - 1)."""
    x = torch.stack([dataset[i] for i in indices])
    return ((x + 1) * 127.5).round().clamp(0, 255) / 127.5 - 1  # resizing leaves the grid; the decoder needs it


def summarise(totals: list[float], terms: dict[str, list[float]]) -> dict:
    """Mean ± standard error of the per-image totals, and the mean of each named term."""
    n = len(totals)
    mean = sum(totals) / n
    sd = math.sqrt(sum((v - mean) ** 2 for v in totals) / (n - 1)) if n > 1 else float("nan")
    return {
        "images": n,
        "bits_per_dim": round(mean, 4),
        "standard_error": round(sd / math.sqrt(n), 4) if n > 1 else None,
        **{k: round(sum(v) / n, 5) for k, v in terms.items()},
    }


def main(argv=None) -> dict | None:
    """Compute this process's batches; rank 0 returns (and writes) the summary, other ranks None."""
    args = parse_args(argv)
    if args.batch < 1 or args.max_batch < 1 or args.num < 0:
        raise SystemExit("--batch and --max-batch must be >= 1, --num >= 0")
    from accelerate.utils import gather_object
    from tqdm.auto import tqdm

    from .checkpoints import load_checkpoint
    from .data import ImageFolder
    from .likelihood import calc_bpd_loop

    state = distributed_state()
    rank, world, device = state.process_index, state.num_processes, state.device
    model = load_checkpoint(args.model, device, getattr(torch, args.dtype))
    cfg = model.unet.config
    size = cfg.sample_size if isinstance(cfg.sample_size, int) else cfg.sample_size[0]
    dataset = ImageFolder(args.data, size, cfg.in_channels)
    n = min(args.num, len(dataset)) if args.num else len(dataset)
    batches = [list(range(b, min(n, b + args.batch))) for b in range(0, n, args.batch)]
    records, t0 = [], time.perf_counter()
    for b in tqdm(range(rank, len(batches), world), desc=f"rank {rank}", disable=not state.is_local_main_process):
        x0 = _load_batch(dataset, batches[b]).to(device)
        g = torch.Generator(device).manual_seed(args.seed + b)
        res = calc_bpd_loop(model.diffusion, model.unet, x0, generator=g, max_batch=args.max_batch)
        for k, i in enumerate(batches[b]):
            records.append(
                {
                    "index": i,
                    "file": str(dataset.files[i]),
                    "bpd": float(res.total_bpd[k]),
                    "prior_bpd": float(res.prior_bpd[k]),
                    "decoder_bpd": float(res.decoder_bpd[k]),
                    "terms_bpd": float(res.vb_bpd[k, 1:].sum()),
                }
            )
    seconds = time.perf_counter() - t0
    everything = gather_object([{"rank": rank, "records": records, "seconds": round(seconds, 1)}])
    summary = None
    if state.is_main_process:
        rows = sorted((r for part in everything for r in part["records"]), key=lambda r: r["index"])
        summary = {
            **vars(args),
            "num_timesteps": model.diffusion.num_timesteps,
            "variance_type": model.diffusion.variance_type,
            "device": str(device),
            "num_processes": world,
            "seconds_per_rank": [part["seconds"] for part in everything],
            **summarise(
                [r["bpd"] for r in rows],
                {
                    "prior_bpd_mean": [r["prior_bpd"] for r in rows],
                    "decoder_bpd_mean": [r["decoder_bpd"] for r in rows],
                    "terms_bpd_mean": [r["terms_bpd"] for r in rows],
                },
            ),
            "per_image": rows,
        }
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        Path(args.out).write_text(json.dumps(summary, indent=2) + "\n")
        print(
            f"{summary['bits_per_dim']} ± {summary['standard_error']} bits/dim over {len(rows)} images "
            f"({world} process{'es' if world > 1 else ''}) -> {args.out}",
            flush=True,
        )
    state.wait_for_everyone()
    state.destroy_process_group()
    return summary


if __name__ == "__main__":
    main()
