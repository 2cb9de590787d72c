"""Write many samples as PNGs (FID-sized sets), split over every process that was launched, resuming where it stopped.

    python -m ddpm_core.sample --model ddpm-mnist-28 --num 1000 --out samples/
    torchrun --nproc_per_node 8 -m ddpm_core.sample --model google/ddpm-cifar10-32 --num 50000 --batch 256 --out cifar/
    accelerate launch --multi_gpu --num_processes 8 -m ddpm_core.sample ...   # the same through accelerate

Batch b holds images b*batch .. (b+1)*batch-1, is drawn, always as a full batch, with seed ``--seed + b``, and belongs
to rank ``b % N`` of N processes: the set is the same whatever N, every batch is drawn once, and a restarted run skips
every batch whose files all exist. Several processes on a CPU-only machine talk over gloo, on GPUs over NCCL.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import time
from pathlib import Path

import torch

from .samplers import SAMPLERS

#: Variables by which launchers announce how many processes they started (torchrun/accelerate, then MPI flavours).
WORLD_SIZE_VARS = ("WORLD_SIZE", "PMI_SIZE", "OMPI_COMM_WORLD_SIZE", "MV2_COMM_WORLD_SIZE")


def launched_processes() -> int:
    """How many processes the launcher says it started (1 when run directly)."""
    for var in WORLD_SIZE_VARS:
        if os.environ.get(var, "").strip():
            return int(os.environ[var])
    return 1


def _env_flag(name: str) -> bool:
    return os.environ.get(name, "").strip().lower() in ("1", "true", "yes", "on")


def use_cpu() -> bool:
    """Whether accelerate must be told ``cpu=True``: asked for (``ACCELERATE_USE_CPU``, set by ``accelerate launch
    --cpu``), or several processes on a machine without a GPU. ``PartialState`` forms a process group on a CPU
    (gloo) only when told ``cpu=True``; left at its default it finds no GPU and quietly stays one process per rank."""
    if _env_flag("ACCELERATE_USE_CPU"):
        return True
    return launched_processes() > 1 and not torch.cuda.is_available()


def check_launch(state) -> None:
    """Refuse to run N copies of the whole job: stop if the launcher announced several processes but they did not
    join one process group, or if ``accelerate launch --cpu --num_processes N`` (no ``--mpirun_hostfile``)
    started a single process where N were asked for."""
    expected = launched_processes()
    if expected > 1 and state.num_processes != expected:
        raise SystemExit(
            f"the launcher started {expected} processes but this one sees a group of {state.num_processes}; "
            "refusing to let every process do all the work"
        )
    if (
        expected == 1
        and state.num_processes == 1
        and _env_flag("ACCELERATE_USE_CPU")
        and os.environ.get("MASTER_ADDR")
        and "RANK" not in os.environ
    ):
        # accelerate sets MASTER_ADDR only for --num_processes > 1 or --num_machines > 1, and its --cpu launcher
        # starts those processes only through mpirun (--mpirun_hostfile)
        raise SystemExit(
            "`accelerate launch --cpu --num_processes N` started one process (accelerate starts several CPU "
            "processes only with --mpirun_hostfile and MPI); use `torchrun --nproc_per_node N -m ...` or "
            "`accelerate launch --multi_gpu --num_processes N -m ...`, which use gloo on a CPU-only machine"
        )


def distributed_state():
    """accelerate's ``PartialState`` for however this process was launched, checked by :func:`check_launch`."""
    from accelerate import PartialState

    state = PartialState(cpu=use_cpu())
    check_launch(state)
    return state


def parse_args(argv=None):
    p = argparse.ArgumentParser(prog="python -m ddpm_core.sample", description=__doc__.split("\n\n")[0])
    p.add_argument("--model", default="ddpm-mnist-28", help="a bundled model name or a Hub id")
    p.add_argument("--num", type=int, required=True)
    p.add_argument("--out", required=True)
    p.add_argument("--batch", type=int, default=64, help="images per batch (per process)")
    p.add_argument("--sampler", default="ddpm", choices=tuple(SAMPLERS))
    p.add_argument(
        "--steps",
        type=int,
        default=0,
        help="inference steps (0: the sampler's usual count: all T for DDPM, 50 for DDIM, 20 for DPM-Solver++)",
    )
    p.add_argument("--eta", type=float, default=0.0)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--dtype", default="auto", choices=("auto", "float32", "float16", "bfloat16"))
    p.add_argument(
        "--compile",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="torch.compile the UNet (pays 30-60 s once per process; default: on a GPU only, where it "
        "goes inside the CUDA graph; on a CPU the frozen UNet is within 10%% of it)",
    )
    return p.parse_args(argv)


def batch_files(out: Path, b: int, batch: int, num: int) -> list[Path]:
    return [out / f"{i:06d}.png" for i in range(b * batch, min(num, (b + 1) * batch))]


def _resolve_dtype(name: str, device: torch.device) -> torch.dtype:
    """The ``--dtype`` to sample in; ``auto`` is float16 on a GPU and float32 elsewhere."""
    if name == "auto":
        return torch.float16 if device.type == "cuda" else torch.float32
    return getattr(torch, name)


def _remove_stale_tmp(out: Path, batch: int, world: int, rank: int) -> None:
    """Delete the temporary PNGs a killed run left in ``out`` for the batches this rank owns."""
    # only the owner of their batch may remove them: another rank may be writing its own right now
    for tmp in out.glob(".[0-9]*.png.*.tmp"):
        index = tmp.name[1:].split(".")[0]
        if index.isdigit() and int(index) // batch % world == rank:
            tmp.unlink(missing_ok=True)


def _draw_batch(model, args, b: int, steps: int, compile_: bool, out: Path, rank: int) -> int:
    """Draw batch ``b`` and write its PNGs to ``out``; returns how many images were written."""
    from .fast import default_mode
    from .imaging import tensor_to_pil
    from .sampling import generate

    # always a full batch (the extra images of the last one are dropped): one shape, one compiled/captured loop
    res = generate(
        model,
        batch_size=args.batch,
        seed=args.seed + b,
        sampler=args.sampler,
        num_inference_steps=steps,
        eta=args.eta,
        n_snapshots=0,
        n_frames=0,
        mode=default_mode(model.device, compile=True) if compile_ else None,
    )
    written = 0
    for path, img in zip(batch_files(out, b, args.batch, args.num), tensor_to_pil(res.samples.clamp(-1, 1))):
        tmp = path.with_name(f".{path.name}.{rank}-{os.getpid()}.tmp")  # unique even beside a stray second run
        img.save(tmp, format="PNG")
        tmp.replace(path)  # atomic: a killed run never leaves a half-written PNG
        written += 1
    return written


def _write_summary(out: Path, num: int, run: dict, ranks: list[dict], world: int) -> None:
    """Record every rank's ``ranks`` entry in ``sampling.json`` and print how many images ``out`` now holds."""
    total = len(list(out.glob("[0-9]*.png")))
    (out / "sampling.json").write_text(json.dumps({**run, "images": total, "ranks": ranks}, indent=2) + "\n")
    print(
        f"{total} / {num} images in {out} ({sum(r['images'] for r in ranks)} drawn now by {world} "
        f"process{'es' if world > 1 else ''}, batches per process {[len(r['drawn']) for r in ranks]})",
        flush=True,
    )


def main(argv=None) -> int:
    """Draw this process's missing batches; returns the number of images it wrote."""
    args = parse_args(argv)
    if args.num < 1 or args.batch < 1:
        raise SystemExit("--num and --batch must be >= 1")
    from accelerate.utils import gather_object
    from tqdm.auto import tqdm

    from .checkpoints import load_checkpoint

    state = distributed_state()
    rank, world = state.process_index, state.num_processes
    device = state.device
    dtype = _resolve_dtype(args.dtype, device)
    model = load_checkpoint(args.model, device, dtype)
    compile_ = device.type == "cuda" if args.compile is None else args.compile
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    steps = args.steps or SAMPLERS[args.sampler].default_steps
    n_batches = math.ceil(args.num / args.batch)
    mine = range(rank, n_batches, world)  # each batch has exactly one owner
    todo = [b for b in mine if not all(f.exists() for f in batch_files(out, b, args.batch, args.num))]
    _remove_stale_tmp(out, args.batch, world, rank)
    run = {
        **vars(args),
        "device": str(device),
        "dtype": str(dtype).replace("torch.", ""),
        "num_processes": world,
        "batches": n_batches,
    }
    if state.is_main_process:
        (out / "sampling.json").write_text(json.dumps(run, indent=2) + "\n")
    written, t0 = 0, time.perf_counter()
    for b in tqdm(todo, desc=f"rank {rank}", disable=not state.is_local_main_process):
        written += _draw_batch(model, args, b, steps, compile_, out, rank)
    record = {
        "rank": rank,
        "drawn": todo,
        "skipped": len(mine) - len(todo),
        "images": written,
        "seconds": round(time.perf_counter() - t0, 3),
    }
    ranks = gather_object([record])  # also waits for every process
    if state.is_main_process:
        _write_summary(out, args.num, run, ranks, world)
    # Leave the process group together before exiting: a process that exits with its gloo group alive can abort
    # ("terminate called without an active exception") after its images are written, failing the launcher.
    state.wait_for_everyone()
    state.destroy_process_group()
    return written


if __name__ == "__main__":
    main()
