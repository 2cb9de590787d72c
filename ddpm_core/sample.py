"""Write many samples as PNGs (FID-sized sets), on every GPU through accelerate, resuming where it stopped.

    python -m ddpm_core.sample --model ddpm-mnist-28 --num 1000 --out samples/
    accelerate launch -m ddpm_core.sample --model google/ddpm-cifar10-32 --num 50000 --batch 256 --out cifar/

Batch b holds images b*batch .. (b+1)*batch-1 and is drawn, always as a full batch, with seed ``--seed + b``: the
set is the same whatever the number of processes, and a restarted run skips every batch whose files all exist.
"""

from __future__ import annotations

import argparse
import json
import math
from pathlib import Path

import torch


def parse_args(argv=None):
    p = argparse.ArgumentParser(prog="python -m ddpm_core.sample", description=__doc__.split("\n\n")[0])
    p.add_argument("--model", default="ddpm-mnist-28", help="a bundled model name or a Hub id")
    p.add_argument("--num", type=int, required=True)
    p.add_argument("--out", required=True)
    p.add_argument("--batch", type=int, default=64)
    p.add_argument("--sampler", default="ddpm", choices=("ddpm", "ddim"))
    p.add_argument("--steps", type=int, default=0, help="inference steps (0: all T for DDPM, 50 for DDIM)")
    p.add_argument("--eta", type=float, default=0.0)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--dtype", default="auto", choices=("auto", "float32", "float16", "bfloat16"))
    p.add_argument("--compile", action=argparse.BooleanOptionalAction, default=None,
                   help="torch.compile the UNet (pays 30-60 s once per process; default: on a GPU only, where it "
                        "goes inside the CUDA graph; on a CPU the frozen UNet is within 10%% of it)")
    return p.parse_args(argv)


def main(argv=None) -> int:
    args = parse_args(argv)
    if args.num < 1 or args.batch < 1:
        raise SystemExit("--num and --batch must be >= 1")
    from accelerate import PartialState
    from tqdm.auto import tqdm

    from .checkpoints import load_checkpoint
    from .imaging import tensor_to_pil
    from .sampling import generate

    state = PartialState()
    device = state.device
    dtype = (torch.float16 if device.type == "cuda" else torch.float32) if args.dtype == "auto" else getattr(torch, args.dtype)
    model = load_checkpoint(args.model, device, dtype)
    compile_ = device.type == "cuda" if args.compile is None else args.compile
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    steps = args.steps or (50 if args.sampler == "ddim" else None)
    n_batches = math.ceil(args.num / args.batch)
    mine = [b for b in range(n_batches) if b % state.num_processes == state.process_index]
    todo = [b for b in mine if not all((out / f"{i:06d}.png").exists() for i in range(b * args.batch, min(args.num, (b + 1) * args.batch)))]
    if state.is_main_process:
        (out / "sampling.json").write_text(json.dumps({**vars(args), "device": str(device), "dtype": str(dtype)}, indent=2) + "\n")
    written = 0
    for b in tqdm(todo, desc=f"rank {state.process_index}", disable=not state.is_local_main_process):
        lo, hi = b * args.batch, min(args.num, (b + 1) * args.batch)
        # always a full batch (the extra images of the last one are dropped): one shape, one compiled/captured loop
        res = generate(model, batch_size=args.batch, seed=args.seed + b, sampler=args.sampler, num_inference_steps=steps,
                       eta=args.eta, n_snapshots=0, n_frames=0, compile=compile_)
        for i, img in zip(range(lo, hi), tensor_to_pil(res.samples.clamp(-1, 1))):
            tmp = out / f".{i:06d}.png.tmp"
            img.save(tmp, format="PNG")
            tmp.replace(out / f"{i:06d}.png")  # atomic: a killed run never leaves a half-written PNG
            written += 1
    state.wait_for_everyone()
    if state.is_main_process:
        print(f"{len(list(out.glob('[0-9]*.png')))} / {args.num} images in {out}")
    return written


if __name__ == "__main__":
    main()
