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


def parse_args() -> argparse.Namespace:
    """The command line; ``--all-baselines`` left unset becomes on for the CPU, off on a GPU."""
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
    if args.all_baselines is None:
        args.all_baselines = torch.device(args.device).type != "cuda"
    return args


def diffusers_pipelines(model: LoadedModel, dtypes) -> dict:
    """A DDPMPipeline on a plain copy of the model's weights for each of ``dtypes``, keyed by the dtype's name."""
    pipes = {}
    for pdtype in dtypes:
        pipe = DDPMPipeline(
            unet=twin(model.unet, pdtype), scheduler=DDPMScheduler.from_config(model.diffusion.to_config())
        )
        pipe.set_progress_bar_config(disable=True)
        pipes[str(pdtype).replace("torch.", "")] = pipe
    return pipes


def pipeline_runner(pipe: DDPMPipeline, batch: int, steps: int):
    """One seeded end-to-end call of diffusers' pipeline, images out as numpy."""

    def run():
        return pipe(
            batch_size=batch,
            num_inference_steps=steps,
            generator=torch.Generator().manual_seed(0),
            output_type="np",
        )

    return run


def ours_runner(model: LoadedModel, batch: int, steps: int, info: dict, **kw):
    """One seeded call of ``generate`` with ``kw``; the path it took is kept in ``info`` ("path" or "path_compiled")."""

    def run():
        res = generate(model, batch_size=batch, seed=0, num_inference_steps=steps, n_snapshots=0, n_frames=0, **kw)
        info.setdefault("path" + ("_compiled" if kw else ""), res.path)

    return run


def build_runs(model: LoadedModel, args, device, dtype, info: dict) -> tuple[dict, dict]:
    """The runs, name -> callable, in the order they alternate: those ready to time (diffusers, ours) and those
    built at their first call (UNet only, loop alone), name -> maker of the callable."""
    C, H, W = model.sample_shape
    pipes = diffusers_pipelines(
        model, dict.fromkeys([torch.float32, dtype] if args.all_baselines else [torch.float32])
    )
    plain_unet = twin(model.unet, dtype)  # before x_fixed: twin's initialisation draws from the global generator
    x_fixed = torch.randn(args.batch, C, H, W, device=device, dtype=dtype)
    t_fixed = torch.full((1,), 500, device=device).expand(args.batch)  # the form the fast loop passes (no recompile)
    x_cl = x_fixed.contiguous(memory_format=torch.channels_last)
    runs = {f"diffusers DDPMPipeline {k}": pipeline_runner(pipe, args.batch, args.steps) for k, pipe in pipes.items()}
    runs["ours (fast path)"] = ours_runner(model, args.batch, args.steps, info)
    same = frozen_unet(model.unet, (C, H, W)) if device.type != "cuda" else channels_last(model.unet)
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
        runs["ours + torch.compile"] = ours_runner(
            model, args.batch, args.steps, info, mode=default_mode(device, compile=True)
        )
        lazy["UNet only, torch.compile"] = lambda: unet_only_runner(
            compiled(model.unet), x_cl, t_fixed, args.steps, device, graph=True
        )
    return runs, lazy


def timed(fn, device) -> float:
    """Seconds for one call of ``fn``, the device synchronized before and after."""
    sync(device)
    t0 = time.perf_counter()
    fn()
    sync(device)
    return time.perf_counter() - t0


def first_calls(runs: dict, lazy: dict, device) -> dict:
    """Seconds of each run's first call (tracing, compilation, CUDA graph capture); the lazy runs are built, timed
    with their building, and added to ``runs``."""
    first = {name: timed(fn, device) for name, fn in runs.items()}
    for name, make in lazy.items():
        t0 = time.perf_counter()
        runs[name] = make()
        runs[name]()
        sync(device)
        first[name] = time.perf_counter() - t0
    return first


def alternating_rounds(runs: dict, repeats: int, device) -> dict:
    """``repeats`` rounds of every run in turn: name -> its seconds, one per round."""
    times = {k: [] for k in runs}
    for _ in range(repeats):
        for name, fn in runs.items():
            times[name].append(timed(fn, device))
    return times


def device_name(device) -> str:
    if device.type == "cuda":
        return torch.cuda.get_device_name()
    return f"{platform.machine()} CPU, {os.cpu_count()} cores, {torch.get_num_threads()} threads"


def print_timings(model: LoadedModel, args, dev: str, info: dict, med: dict, first: dict) -> None:
    """The heading and the markdown table of medians, per-step times and first calls."""
    print(f"#### {model.name}: batch {args.batch}, {args.steps} steps, UNet in {args.dtype}, {dev}")
    print(
        f"torch {torch.__version__}, diffusers {diffusers.__version__}; median of {args.repeats} alternating runs; "
        f"ours ran: {info.get('path')}" + (f"; compiled: {info.get('path_compiled')}" if args.compile else "") + "\n"
    )
    print("| run | median s | per step ms | first call s |\n|---|---|---|---|")
    for k, v in med.items():
        print(f"| {k} | {v:.3f} | {1e3 * v / args.steps:.2f} | {first[k]:.1f} |")


def ratio_pairs(with_compile: bool) -> dict:
    """Ratio label -> (numerator run, denominator run)."""
    pairs = {
        "ours / diffusers fp32": ("ours (fast path)", "diffusers DDPMPipeline float32"),
        "ours / UNet-only (same settings)": ("ours (fast path)", "UNet only, same settings"),
    }
    if with_compile:
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
    return pairs


def report_ratios(times: dict, pairs: dict) -> dict:
    """Prints the markdown table of ratios and returns label -> the median of its per-round ratios."""
    # ratios are taken within each round (runs seconds apart) and their median reported: the machine's speed drifts
    # between rounds by more than the few percent that ours/UNet-only measures
    ratios = {}
    print("\n| ratio (median of per-round ratios) | value | range over rounds |\n|---|---|---|")
    for label, (a, b) in pairs.items():
        per_round = [x / y for x, y in zip(times[a], times[b])]
        ratios[label] = statistics.median(per_round)
        speed = f" ({1 / ratios[label]:.1f}x)" if "diffusers" in label else ""
        nd = 4 if ratios[label] < 0.1 else 3  # the loop-alone share is small: keep its digits
        print(f"| {label} | **{ratios[label]:.{nd}f}**{speed} | {min(per_round):.{nd}f} - {max(per_round):.{nd}f} |")
    return ratios


def main():
    args = parse_args()
    device, dtype = torch.device(args.device), getattr(torch, args.dtype)
    model = load_model(args.model, device, dtype)
    info = {}
    runs, lazy = build_runs(model, args, device, dtype, info)
    first = first_calls(runs, lazy, device)
    times = alternating_rounds(runs, args.repeats, device)
    med = {k: statistics.median(v) for k, v in times.items()}
    dev = device_name(device)
    print_timings(model, args, dev, info, med, first)
    ratios = report_ratios(times, ratio_pairs(args.compile))
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
