"""High-level sampling for the Space and the CLIs: a request, its timesteps before it runs, the fast path,
trajectory capture.

Every sample here is drawn by :class:`ddpm_core.GaussianDiffusion`'s steps (never by DDPMPipeline). The fast path
(:mod:`ddpm_core.fast`) runs those steps on static buffers: a frozen channels_last UNet on the CPU, one CUDA graph
per step on a GPU; ``mode="plain"`` runs the plain reference loop.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field, replace
from typing import Callable

import numpy as np
import torch

from .checkpoints import LoadedModel
from .diffusion import GaussianDiffusion
from .fast import UPGRADES, fast_loop
from .samplers import get_sampler, sample_loop_progressive
from .samplers.loop import plain_timestep
from .timesteps import evenly_spaced


def pick_device(prefer: str | None = None) -> tuple[torch.device, torch.dtype]:
    """CUDA with float16 when available (or ``prefer="cuda"``), else CPU with float32."""
    if prefer == "cpu" or not torch.cuda.is_available():
        return torch.device("cpu"), torch.float32
    return torch.device("cuda"), torch.float16


@dataclass
class SampleResult:
    """Samples ``[B x C x H x W]`` in [-1, 1] and what the UI shows of the reverse process. ``timesteps``: the
    model's timestep at each network evaluation (``len``: the evaluations)."""

    samples: torch.Tensor
    timesteps: list
    snapshots: list[tuple[int, torch.Tensor, torch.Tensor]] = field(default_factory=list)  # (t, x_t, pred x_0)
    frames: list[torch.Tensor] = field(default_factory=list)  # x_t along the way, [B x C x H x W] float32 CPU copies
    seconds: float = 0.0
    device: str = "cpu"
    dtype: str = "float32"
    path: str = "plain loop"  # what ran: the plain loop or the fast path's stages (ddpm_core.fast)
    setup_seconds: float = 0.0  # preparing the fast path (trace, compile, CUDA graph capture), 0 when cached


def snapshot_steps(n_steps: int, count: int) -> set[int]:
    """About ``count`` loop positions evenly spread over ``n_steps`` (always including the first and last)."""
    return set(evenly_spaced(n_steps - 1, count).tolist())


def diffusion_for(model: LoadedModel, variance_type: str | None = None) -> GaussianDiffusion:
    """The model's diffusion, or the same schedule with another reverse-process variance."""
    if not variance_type or variance_type == model.diffusion.variance_type:
        return model.diffusion
    learned = model.unet.config.out_channels == 2 * model.unet.config.in_channels
    if learned != (variance_type == "learned_range"):
        raise ValueError(
            f"variance {variance_type!r} does not fit this model: "
            + ("it predicts its variance (use learned_range)" if learned else "it has no variance output")
        )
    return GaussianDiffusion.from_config(model.scheduler_config, variance_type=variance_type)


def reverse_timesteps(
    diffusion: GaussianDiffusion,
    num_inference_steps: int | None = None,
    start_t: int | None = None,
    sampler: str = "ddpm",
) -> np.ndarray:
    """The step timesteps the reverse process visits, descending: ``sampler``'s own for ``num_inference_steps``
    (those its diffusers scheduler's ``set_timesteps`` chooses from the model's config), or, starting from x_t at
    ``start_t``, ``num_inference_steps`` (all t + 1 when None) evenly spread over [0, t]. Heun evaluates the
    network twice per step: :func:`evaluation_count` counts evaluations."""
    if start_t is None:
        return get_sampler(sampler).timesteps(diffusion, num_inference_steps)
    T = diffusion.num_timesteps
    if not 0 <= int(start_t) < T:
        raise ValueError(f"start timestep must be in [0, {T - 1}], got {start_t}")
    n = int(start_t) + 1 if num_inference_steps is None else min(int(num_inference_steps), int(start_t) + 1)
    return np.unique(evenly_spaced(int(start_t), n))[::-1].copy()


def evaluation_count(
    diffusion: GaussianDiffusion,
    num_inference_steps: int | None = None,
    start_t: int | None = None,
    sampler: str = "ddpm",
) -> int:
    """Network evaluations of that run (the loop's positions, its progress total)."""
    steps = reverse_timesteps(diffusion, num_inference_steps, start_t, sampler)
    return len(get_sampler(sampler).evaluation_timesteps(steps))


@dataclass(frozen=True)
class SampleRequest:
    """One sampling run, as :func:`generate_steps` takes it.

    ``num_inference_steps=None`` runs all T steps (DDPM). ``start=(x_t, t)`` starts the reverse process from a
    given noisy batch ``x_t`` ``[B x C x H x W]`` at timestep ``t`` instead of pure noise ("noise, then denoise";
    ``batch_size`` is then x_t's). ``variance_type``: another reverse-step variance than the model's
    (:func:`diffusion_for`). ``n_snapshots`` / ``n_frames``: how many (t, x_t, x0_hat) and x_t copies the
    :class:`SampleResult` keeps. ``mode``: ``"plain"`` runs the reference loop
    (:func:`ddpm_core.samplers.sample_loop_progressive`); any other value runs :mod:`ddpm_core.fast` in that mode
    (one of its ``MODES``; None: its default for the device); ``upgrade``: a fast mode built in the background for
    later calls (:func:`ddpm_core.fast.fast_loop`).
    """

    batch_size: int = 8
    seed: int = 0
    sampler: str = "ddpm"
    num_inference_steps: int | None = None
    eta: float = 0.0
    variance_type: str | None = None
    start: tuple[torch.Tensor, int] | None = None
    n_snapshots: int = 10
    n_frames: int = 40
    mode: str | None = None
    upgrade: str | None = None

    @property
    def fast(self) -> bool:
        return self.mode != PLAIN


#: ``SampleRequest.mode`` for the plain reference loop
PLAIN = "plain"


class SamplingRun:
    """A sampling run set up but not started: ``timesteps`` (its N step timesteps, descending) and ``evaluations``
    (its network evaluations: the loop's positions, a progress bar's total) are known before it runs. Iterating
    it runs it: a :class:`ddpm_core.StepOutput` after every network evaluation, then the :class:`SampleResult`.
    A consumer that stops iterating (a cancelled web request) stops the loop there; ``before_step()`` is called
    before every evaluation (an exception it raises stops the run)."""

    def __init__(self, model: LoadedModel, request: SampleRequest, before_step: Callable[[], None] | None = None):
        self.model, self.request, self.before_step = model, request, before_step
        self.sampler = get_sampler(request.sampler)
        self.diffusion = diffusion_for(model, request.variance_type)
        start_t = None if request.start is None else request.start[1]
        self.timesteps = reverse_timesteps(self.diffusion, request.num_inference_steps, start_t, request.sampler)
        self.evaluation_timesteps = [plain_timestep(t) for t in self.sampler.evaluation_timesteps(self.timesteps)]

    @property
    def evaluations(self) -> int:
        return len(self.evaluation_timesteps)

    def __iter__(self):
        r, model = self.request, self.model
        device, dtype = model.device, model.dtype
        # the fast path draws its noise where it runs (a CPU generator cannot feed a CUDA graph without a sync)
        generator = torch.Generator(device if r.fast else "cpu").manual_seed(int(r.seed))
        shape, noise = _first_sample(model, r.batch_size, r.start, generator, r.fast)
        loop = None
        if r.fast:
            loop = fast_loop(
                model.unet, self.diffusion, shape, self.timesteps, r.sampler, r.eta, r.mode, upgrade=r.upgrade
            )
        if loop is not None and r.start is None and loop.plan.x_T_scale != 1.0:
            noise = noise * loop.plan.x_T_scale  # diffusers' init_noise_sigma (Euler, Heun), as the plain loop scales
        result = SampleResult(
            samples=torch.empty(0),
            timesteps=list(self.evaluation_timesteps),
            device=str(device),
            dtype=str(dtype).replace("torch.", ""),
            path=loop.path if loop else "plain loop",
            setup_seconds=loop.setup_seconds if loop and loop.runs == 0 and not loop.built_ahead else 0.0,
        )
        if noise is not None:
            result.frames.append(_copy(noise))
        if loop is not None:
            steps = loop.run(noise, generator)
        else:
            args = (None if noise is not None else shape, self.timesteps, generator, noise, device, dtype, r.eta)
            steps = sample_loop_progressive(self.diffusion, self.sampler, model.unet, *args)
        yield from _recorded(steps, result, r.n_snapshots, r.n_frames, self.before_step)


def generate_steps(
    model: LoadedModel,
    request: SampleRequest | None = None,
    before_step: Callable[[], None] | None = None,
    **fields,
) -> SamplingRun:
    """Sample from ``model`` with any registered sampler: the :class:`SamplingRun` of ``request`` (a
    :class:`SampleRequest`; ``fields`` replace its fields, or make one). The random stream is a
    ``torch.Generator`` seeded with ``seed``, on the model's device for the fast path (a CUDA graph cannot wait on
    host-drawn noise) and on the CPU for the plain loop: the same seed gives the same images on the same kind of
    device, and fast and plain loops agree on the CPU. Bad arguments raise ``ValueError`` here, before the run."""
    request = SampleRequest(**fields) if request is None else replace(request, **fields)
    return SamplingRun(model, request, before_step)


def generate(model: LoadedModel, request: SampleRequest | None = None, **fields) -> SampleResult:
    """Run :func:`generate_steps` to the end and return its :class:`SampleResult` (same arguments)."""
    for item in generate_steps(model, request, **fields):
        if isinstance(item, SampleResult):
            return item
    raise RuntimeError("generate_steps ended without a result")  # pragma: no cover


def _first_sample(model: LoadedModel, batch_size: int, start, generator: torch.Generator, fast: bool):
    """The batch shape ``(B, C, H, W)`` and where the reverse process starts: the given x_t, x_T drawn here for
    the fast loop (float32, on the model's device), or None when the plain loop draws x_T itself."""
    if start is not None:
        return tuple(start[0].shape), start[0].to(device=model.device, dtype=torch.float32 if fast else model.dtype)
    shape = (batch_size, *model.sample_shape)
    return shape, torch.randn(shape, generator=generator, device=model.device) if fast else None


def _recorded(steps, result: SampleResult, n_snapshots: int, n_frames: int, before_step):
    """Pass the loop's steps on, keeping the snapshots and frames ``result`` shows, calling ``before_step``
    before each; then fill in the samples and the time taken and yield ``result``."""
    n_steps = len(result.timesteps)
    snaps, frame_steps = snapshot_steps(n_steps, n_snapshots), snapshot_steps(n_steps, n_frames)
    t0 = time.perf_counter()
    x = None
    steps = iter(steps)
    while True:
        if before_step is not None:
            before_step()
        out = next(steps, None)
        if out is None:
            break
        if out.index in snaps:
            result.snapshots.append((out.timestep, _copy(out.x_t), _copy(out.pred_original_sample)))
        if out.index in frame_steps:
            result.frames.append(_copy(out.prev_sample))
        x = out.prev_sample
        yield out
    result.samples = _copy(x)
    result.seconds = time.perf_counter() - t0
    yield result


def compare_steps(
    model: LoadedModel,
    pairs,
    seed: int = 0,
    mode: str | None = None,
    upgrade: str | None = None,
    before_step: Callable[[], None] | None = None,
):
    """Each ``(sampler, steps)`` pair (``steps`` None: all T) run on one sample from the same x_T (the seed's first
    draw, as :func:`generate_steps` draws it), in order; yields ``(sampler, steps, SampleResult)`` as each ends.
    ``before_step`` is called before every step of every pair, as by :class:`SamplingRun`.

    Deterministic samplers (DDIM with eta = 0, DPM-Solver++) integrate the same probability-flow ODE from x_T, so
    their images converge to one image as steps grow (for DDIM only while x0_hat is not clipped, or with eps_hat
    recomputed from the clipped x0_hat: ``bench/ddim_clipping.py``); DDPM draws fresh noise at every step and ends
    elsewhere.
    ``len(result.timesteps)`` is the run's number of network evaluations (twice the steps, less one, for Heun)."""
    for sampler, steps in pairs:
        result = generate(
            model,
            before_step=before_step,
            batch_size=1,
            seed=seed,
            sampler=sampler,
            num_inference_steps=steps,
            n_snapshots=0,
            n_frames=0,
            mode=mode,
            upgrade=upgrade,
        )
        yield sampler, steps, result


def warm_up(
    model: LoadedModel,
    batch_size: int = 8,
    num_inference_steps: int | None = None,
    sampler: str = "ddpm",
    mode: str | None = None,
    upgrade: str | None = None,
) -> float:
    """Pay the fast path's one-off costs for these settings now (TorchScript trace on a CPU, CUDA graph capture,
    compilation) by sampling once; the cached loop then serves the first real request. Returns the seconds that
    request would otherwise have waited on set-up. ``upgrade``: also build that mode's loop (in the background
    thread of :func:`ddpm_core.fast.fast_loop`) and wait for it, so that the first request gets it and does not
    share the machine with its compilation; its time is included."""
    seconds = generate(
        model,
        batch_size=batch_size,
        num_inference_steps=num_inference_steps,
        sampler=sampler,
        n_snapshots=0,
        n_frames=0,
        mode=mode,
        upgrade=upgrade,
    ).setup_seconds
    if upgrade is not None:
        t0 = time.perf_counter()
        UPGRADES.wait()
        seconds += time.perf_counter() - t0
    return seconds


def _copy(x: torch.Tensor) -> torch.Tensor:
    """A float32 CPU copy in NCHW order (the fast path's tensors are static buffers, reused next step)."""
    return x.detach().to("cpu", torch.float32, copy=True).contiguous()
