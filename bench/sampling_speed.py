"""Our sampler vs diffusers' DDPMPipeline vs the UNet alone: same weights, steps, batch, device and dtype.

    python bench/sampling_speed.py --model ddpm-mnist-28 --batch 16 --steps 100 --repeats 5
    python bench/sampling_speed.py --model cifar10-arch --batch 1 --steps 20 --repeats 3

Runs alternate (diffusers, ours, UNet-only, ...) so that drift in the machine's speed hits all alike; medians are
reported, with ours/diffusers and ours/UNet-only (the loop's overhead over the network at the same settings).
"UNet only" = the same number of forward calls on a fixed input, channels_last like our fast path; the plain
contiguous UNet is shown too. End to end: noise in, images out.
"""

import argparse
import json
import os
import platform
import statistics
import sys
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import diffusers  # noqa: E402
import torch  # noqa: E402
from diffusers import DDPMPipeline, DDPMScheduler, UNet2DModel  # noqa: E402

from ddpm_core.checkpoints import LoadedModel, load_checkpoint  # noqa: E402
from ddpm_core.diffusion import GaussianDiffusion  # noqa: E402
from ddpm_core.sampling import generate  # noqa: E402


def load(name: str, device, dtype) -> LoadedModel:
    if name == "cifar10-arch":
        torch.manual_seed(0)
        cfg = json.loads((ROOT.parent / "shared" / "data" / "unet-ddpm-cifar10-32.config.json").read_text())
        unet = UNet2DModel.from_config(cfg).eval().requires_grad_(False).to(device, dtype)
        sched = {"beta_schedule": "linear", "variance_type": "fixed_large", "clip_sample": True}
        return LoadedModel("cifar10-arch (random weights)", unet, GaussianDiffusion.from_config(sched), "bench", sched)
    return load_checkpoint(name, device, dtype)


def sync(device):
    if device.type == "cuda":
        torch.cuda.synchronize()


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--model", default="ddpm-mnist-28")
    p.add_argument("--batch", type=int, default=16)
    p.add_argument("--steps", type=int, default=100)
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--dtype", default="float32", choices=("float32", "float16", "bfloat16"))
    p.add_argument("--compile", action="store_true", help="also time ours and the UNet under torch.compile")
    args = p.parse_args()
    device, dtype = torch.device(args.device), getattr(torch, args.dtype)

    model = load(args.model, device, dtype)
    C, H, W = model.sample_shape
    # diffusers gets its own copy of the same weights (our fast path switches ours to channels_last)
    ref_unet = UNet2DModel.from_config(model.unet.config).to(device, dtype).eval().requires_grad_(False)
    ref_unet.load_state_dict(model.unet.state_dict())
    pipe = DDPMPipeline(unet=ref_unet, scheduler=DDPMScheduler.from_config(model.diffusion.to_config()))
    pipe.set_progress_bar_config(disable=True)
    x_fixed = torch.randn(args.batch, C, H, W, device=device, dtype=dtype)
    t_fixed = torch.full((args.batch,), 500, device=device)

    def run_diffusers():
        pipe(batch_size=args.batch, num_inference_steps=args.steps, generator=torch.Generator().manual_seed(0), output_type="np")

    def run_ours():
        generate(model, batch_size=args.batch, seed=0, num_inference_steps=args.steps, n_snapshots=0, n_frames=0)

    def run_ours_compiled():
        generate(model, batch_size=args.batch, seed=0, num_inference_steps=args.steps, n_snapshots=0, n_frames=0, compile=True)

    def unet_only(unet, x):
        with torch.inference_mode():
            for _ in range(args.steps):
                unet(x, t_fixed)

    cl_unet = model.unet  # generate() left it channels_last
    x_cl = x_fixed.contiguous(memory_format=torch.channels_last)
    runs = {"diffusers DDPMPipeline": run_diffusers, "ours (ddpm_core, fast path)": run_ours,
            "UNet only, channels_last": lambda: unet_only(cl_unet, x_cl), "UNet only, contiguous": lambda: unet_only(ref_unet, x_fixed)}
    if args.compile:
        from ddpm_core.sampling import compiled_unet

        runs["ours + torch.compile"] = run_ours_compiled
        runs["UNet only, torch.compile"] = lambda: unet_only(compiled_unet(model.unet), x_cl)
    warm = {}
    for name, fn in runs.items():  # warm-up (and, for the compiled runs, the one-off compilation)
        t0 = time.perf_counter()
        fn()
        warm[name] = time.perf_counter() - t0
    times = {k: [] for k in runs}
    for _ in range(args.repeats):
        for name, fn in runs.items():
            sync(device)
            t0 = time.perf_counter()
            fn()
            sync(device)
            times[name].append(time.perf_counter() - t0)
    med = {k: statistics.median(v) for k, v in times.items()}
    dev = torch.cuda.get_device_name() if device.type == "cuda" else f"{platform.machine()} CPU, {os.cpu_count()} cores, {torch.get_num_threads()} threads"
    print(f"### {model.name}: batch {args.batch}, {args.steps} steps, {args.dtype}, {dev}")
    print(f"torch {torch.__version__}, diffusers {diffusers.__version__}; median of {args.repeats} alternating runs\n")
    print("| run | median s | per step ms |\n|---|---|---|")
    for k, v in med.items():
        print(f"| {k} | {v:.3f} | {1e3 * v / args.steps:.1f} |")
    ours = med["ours (ddpm_core, fast path)"]
    print(f"\nours / diffusers = **{ours / med['diffusers DDPMPipeline']:.3f}**; "
          f"ours / UNet-only (channels_last) = **{ours / med['UNet only, channels_last']:.3f}**")
    if args.compile:
        oc = med["ours + torch.compile"]
        print(f"\nwith torch.compile: ours / diffusers = **{oc / med['diffusers DDPMPipeline']:.3f}**; ours / UNet-only (compiled) = "
              f"**{oc / med['UNet only, torch.compile']:.3f}**; first call (compilation included) took {warm['ours + torch.compile']:.1f} s")


if __name__ == "__main__":
    main()
