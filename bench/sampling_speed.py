"""Our sampler vs diffusers' DDPMPipeline vs the UNet alone: same weights, steps, batch and device, one run.

    python bench/sampling_speed.py --model ddpm-mnist-28 --batch 16 --steps 100 --repeats 5 [--compile]
    python bench/sampling_speed.py --model cifar10-arch --batch 1 --steps 20 --repeats 3
    python bench/sampling_speed.py --model cifar10-arch --batch 64 --steps 1000 --dtype float16 --compile  # GPU

Runs alternate (diffusers, ours, UNet-only, ...) so that drift in the machine's speed hits all alike; medians are
reported with ours/diffusers and ours/UNet-only. End to end: noise in, images out (on the host).

- "diffusers DDPMPipeline float32" is the baseline (with --all-baselines and --dtype float16, also the
  pipeline in fp16).
- "ours" is ``ddpm_core.sampling.generate`` with its defaults (the fast path: frozen TorchScript UNet on a CPU, one
  CUDA graph per whole step on a GPU), in --dtype (the UNet's dtype; the loop state stays float32).
- "UNet only, same settings" calls the very UNet the fast path runs (frozen on a CPU; channels_last and, on a GPU,
  replayed as a CUDA graph of the UNet alone) ``steps`` times on a fixed input: the network's own cost, so that
  ours/UNet-only is the loop's overhead. "UNet only, eager contiguous" is the plain network for reference.
- "loop alone" runs the fast loop with a model that costs nothing (x * 1): the loop's own cost, measured directly
  (on a shared CPU the end-to-end ours/UNet-only ratio moves by +-10% between runs; this does not).
- ``--compile`` adds the torch.compile variants of ours and of UNet-only.
- float32 vs half-precision samples from one seed: ``bench/half_precision.py``.

``--json PATH`` writes every number too. The first call of each run (tracing, compiling, CUDA graph capture) is
reported as its start-up cost.
"""

import argparse
import json
import os
import platform
import statistics
import time
from pathlib import Path

import diffusers  # noqa: E402
import torch  # noqa: E402
from diffusers import DDPMPipeline, DDPMScheduler, UNet2DModel  # noqa: E402

import common  # noqa: F401 - offline environment, the repo on the import path

diffusers.utils.logging.set_verbosity_error()  # its note on casting with .to() concerns fp32-pinned modules (none here)

from common import load_model  # noqa: E402
from ddpm_core.checkpoints import LoadedModel  # noqa: E402
from ddpm_core.fast import FastLoop, channels_last, compiled, default_mode, frozen_unet  # noqa: E402
from ddpm_core.sampling import generate  # noqa: E402


def twin(unet: torch.nn.Module, dtype) -> torch.nn.Module:
    """A separate, plain (contiguous) copy of the same weights: the fast path changes its own model in place."""
    copy = UNet2DModel.from_config(unet.config).to(unet.device, dtype).eval().requires_grad_(False)
    copy.load_state_dict(unet.state_dict())
    return copy


def sync(device):
    if device.type == "cuda":
        torch.cuda.synchronize()


def unet_only_runner(unet, x, t, steps: int, device, graph: bool):
    """``steps`` forward calls of ``unet`` on a fixed input; on CUDA, one captured graph replayed per call."""
    if not graph or device.type != "cuda":

        def run():
            with torch.inference_mode():
                for _ in range(steps):
                    unet(x, t)

        return run
    stream = torch.cuda.Stream()
    stream.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(stream), torch.no_grad():
        for _ in range(3):
            unet(x, t)
    torch.cuda.current_stream().wait_stream(stream)
    g = torch.cuda.CUDAGraph()
    with torch.no_grad(), torch.cuda.graph(g):
        unet(x, t)

    def run_graph():
        for _ in range(steps):
            g.replay()

    return run_graph


class Echo(torch.nn.Module):
    """A "model" that costs next to nothing (x * 1): timing the fast loop with it measures the loop's own cost."""

    def __init__(self, device, dtype):
        super().__init__()
        self.one = torch.nn.Parameter(torch.ones((), device=device, dtype=dtype), requires_grad=False)

    def forward(self, x, t):
        return x * self.one


def loop_alone_runner(model: LoadedModel, shape, steps: int, device, dtype):
    loop = FastLoop(
        model.diffusion,
        Echo(device, dtype),
        shape,
        model.diffusion.inference_timesteps(steps),
        mode=default_mode(device),
    )
    x_T = torch.randn(shape, device=device)

    def run():
        out = None
        for out in loop.run(x_T, torch.Generator(device).manual_seed(0)):
            pass
        out.prev_sample.cpu()

    return run


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--model", default="ddpm-mnist-28")
    p.add_argument("--batch", type=int, default=16)
    p.add_argument("--steps", type=int, default=100)
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--dtype", default="float32", choices=("float32", "float16", "bfloat16"))
    p.add_argument("--compile", action="store_true", help="also time ours and the UNet under torch.compile")
    p.add_argument("--json", help="write the results here too")
    p.add_argument(
        "--all-baselines",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="also the eager contiguous UNet and (for --dtype other than float32) DDPMPipeline in --dtype; "
        "default: on for the CPU, off on a GPU where each costs a 1000-step eager run",
    )
    args = p.parse_args()
    device, dtype = torch.device(args.device), getattr(torch, args.dtype)
    cuda = device.type == "cuda"
    if args.all_baselines is None:
        args.all_baselines = not cuda

    model = load_model(args.model, device, dtype)
    C, H, W = model.sample_shape
    pipes = {}
    for pdtype in dict.fromkeys([torch.float32, dtype] if args.all_baselines else [torch.float32]):
        pipe = DDPMPipeline(
            unet=twin(model.unet, pdtype), scheduler=DDPMScheduler.from_config(model.diffusion.to_config())
        )
        pipe.set_progress_bar_config(disable=True)
        pipes[str(pdtype).replace("torch.", "")] = pipe
    plain_unet = twin(model.unet, dtype)
    x_fixed = torch.randn(args.batch, C, H, W, device=device, dtype=dtype)
    t_fixed = torch.full((1,), 500, device=device).expand(args.batch)  # the form the fast loop passes (no recompile)
    x_cl = x_fixed.contiguous(memory_format=torch.channels_last)
    info = {}

    def ours(**kw):
        def run():
            res = generate(
                model, batch_size=args.batch, seed=0, num_inference_steps=args.steps, n_snapshots=0, n_frames=0, **kw
            )
            info.setdefault("path" + ("_compiled" if kw else ""), res.path)

        return run

    runs = {
        f"diffusers DDPMPipeline {k}": (
            lambda pipe=pipe: pipe(
                batch_size=args.batch,
                num_inference_steps=args.steps,
                generator=torch.Generator().manual_seed(0),
                output_type="np",
            )
        )
        for k, pipe in pipes.items()
    }
    runs["ours (fast path)"] = ours()
    same = frozen_unet(model.unet, (C, H, W)) if not cuda else channels_last(model.unet)
    lazy = {
        "UNet only, same settings": lambda: unet_only_runner(same, x_cl, t_fixed, args.steps, device, graph=True),
        "loop alone (a model that costs nothing)": lambda: loop_alone_runner(
            model, x_fixed.shape, args.steps, device, dtype
        ),
    }
    if args.all_baselines:
        lazy["UNet only, eager contiguous"] = lambda: unet_only_runner(
            plain_unet, x_fixed, t_fixed, args.steps, device, graph=False
        )
    if args.compile:
        runs["ours + torch.compile"] = ours(compile=True)
        lazy["UNet only, torch.compile"] = lambda: unet_only_runner(
            compiled(model.unet), x_cl, t_fixed, args.steps, device, graph=True
        )
    first = {}
    for name, fn in runs.items():  # first calls: tracing, compilation, CUDA graph capture
        sync(device)
        t0 = time.perf_counter()
        fn()
        sync(device)
        first[name] = time.perf_counter() - t0
    for name, make in lazy.items():
        t0 = time.perf_counter()
        runs[name] = make()
        runs[name]()
        sync(device)
        first[name] = time.perf_counter() - t0
    times = {k: [] for k in runs}
    for _ in range(args.repeats):
        for name, fn in runs.items():
            sync(device)
            t0 = time.perf_counter()
            fn()
            sync(device)
            times[name].append(time.perf_counter() - t0)
    med = {k: statistics.median(v) for k, v in times.items()}
    dev = (
        torch.cuda.get_device_name()
        if cuda
        else f"{platform.machine()} CPU, {os.cpu_count()} cores, {torch.get_num_threads()} threads"
    )
    print(f"#### {model.name}: batch {args.batch}, {args.steps} steps, UNet in {args.dtype}, {dev}")
    print(
        f"torch {torch.__version__}, diffusers {diffusers.__version__}; median of {args.repeats} alternating runs; "
        f"ours ran: {info.get('path')}" + (f"; compiled: {info.get('path_compiled')}" if args.compile else "") + "\n"
    )
    print("| run | median s | per step ms | first call s |\n|---|---|---|---|")
    for k, v in med.items():
        print(f"| {k} | {v:.3f} | {1e3 * v / args.steps:.2f} | {first[k]:.1f} |")
    # ratios are taken within each round (runs seconds apart) and their median reported: the machine's speed drifts
    # between rounds by more than the few percent that ours/UNet-only measures
    pairs = {
        "ours / diffusers fp32": ("ours (fast path)", "diffusers DDPMPipeline float32"),
        "ours / UNet-only (same settings)": ("ours (fast path)", "UNet only, same settings"),
    }
    if args.compile:
        pairs.update(
            {
                "compiled / diffusers fp32": ("ours + torch.compile", "diffusers DDPMPipeline float32"),
                "compiled / UNet-only (compiled)": ("ours + torch.compile", "UNet only, torch.compile"),
            }
        )
    pairs["loop alone / UNet-only (the loop's own overhead)"] = (
        "loop alone (a model that costs nothing)",
        "UNet only, same settings",
    )
    ratios = {}
    print("\n| ratio (median of per-round ratios) | value | range over rounds |\n|---|---|---|")
    for label, (a, b) in pairs.items():
        per_round = [x / y for x, y in zip(times[a], times[b])]
        ratios[label] = statistics.median(per_round)
        speed = f" ({1 / ratios[label]:.1f}x)" if "diffusers" in label else ""
        nd = 4 if ratios[label] < 0.1 else 3  # the loop-alone share is small: keep its digits
        print(f"| {label} | **{ratios[label]:.{nd}f}**{speed} | {min(per_round):.{nd}f} - {max(per_round):.{nd}f} |")
    result = {
        "model": model.name,
        "batch": args.batch,
        "steps": args.steps,
        "dtype": args.dtype,
        "device": dev,
        "torch": torch.__version__,
        "diffusers": diffusers.__version__,
        "median_s": med,
        "first_call_s": first,
        "times_s": times,
        "ratios": ratios,
        "paths": info,
    }
    if args.json:
        Path(args.json).write_text(json.dumps(result, indent=2) + "\n")


if __name__ == "__main__":
    main()
