"""Diffusion in two dimensions, where every quantity can be drawn: data, a small denoiser, its score, its samples.

The same :class:`~ddpm_core.diffusion.GaussianDiffusion` and the same sampler registry as the image models run here
on points ``[B x 2]`` (the core indexes its tables per sample and broadcasts over whatever follows the batch
dimension). What is 2D-specific lives in this module: the named point clouds (two of them Gaussian mixtures, whose
noised density and score are known in closed form), a small MLP denoiser with a timestep embedding (and a class
embedding for classifier-free guidance), its training loop on ``p_losses``, and the energy distance that says how
near a generated cloud is to the data.
"""

from __future__ import annotations

import base64
import collections
import functools
import math
import time
from dataclasses import dataclass, field
from typing import Callable, Iterator

import numpy as np
import torch
import torch.nn as nn

from .diffusion import GaussianDiffusion
from .samplers import get_sampler, sample_loop_progressive
from .schedule import NoiseSchedule
from .timesteps import evenly_spaced

#: The named point clouds, in the order a UI lists them; ``clusters`` is labelled (three classes) for guidance. A
#: visitor's own drawing is the other source of data (:func:`points_from_mask`).
DATASETS = ("moons", "spiral", "ring", "checkerboard", "clusters")
#: The datasets that are Gaussian mixtures (their noised score is known in closed form): name -> (means, std).
RING_RADIUS, RING_STD = 2.0, 0.15
CLUSTER_STD = 0.3
#: Default optimiser steps: a good fit of every dataset in well under 15 s on a 2-core CPU (bench/lab2d.py).
TRAIN_STEPS = 2500
#: A run with a time budget plans its length from the pace of its last BUDGET_PACE steps, to end by BUDGET_AIM of
#: the budget (the pace wanders; past the whole budget the run stops where it is).
BUDGET_PACE, BUDGET_AIM = 100, 0.95
#: Training-set sizes a visitor can pick to watch memorisation turn into generalisation (besides the whole set).
TRAIN_SIZES = (1, 2, 4, 16, 64, 256)
#: A sample is a copy when it lies nearer to a training point than this quantile of held-out points does: a real
#: new point comes that close by chance 1% of the time (the image evaluator's rule, ``ddpm_core.evaluate``).
COPY_QUANTILE = 0.01
#: Shares of copies read as "essentially all" (memorised) and "essentially none" (generalising): a sample set drawn
#: like held-out data has 1% copies by construction, about 0.2 points of binomial noise on 2,000 samples.
ALL_COPIES, NO_COPIES = 0.9, 0.05


def mixture(name: str) -> tuple[torch.Tensor, float] | None:
    """``(means [K x 2], std)`` of an equally weighted isotropic Gaussian mixture dataset, or None for the others."""
    if name == "ring":
        angles = torch.arange(8, dtype=torch.float64) * (2 * math.pi / 8)
        return torch.stack([angles.cos(), angles.sin()], 1) * RING_RADIUS, RING_STD
    if name == "clusters":
        return torch.tensor([[-1.5, -1.0], [1.5, -1.0], [0.0, 1.6]], dtype=torch.float64), CLUSTER_STD
    return None


def make_points(name: str, n: int, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor | None]:
    """``n`` points ``[n x 2]`` (float32, roughly zero-mean, unit scale) of the dataset ``name``, and their class
    labels ``[n]`` for the labelled dataset (else None). Deterministic in ``seed``."""
    if name not in DATASETS:
        raise ValueError(f"unknown dataset {name!r}; choose one of {', '.join(DATASETS)}")
    if not isinstance(n, int) or not 1 <= n <= 1_000_000:
        raise ValueError(f"n must be a whole number between 1 and 1000000, got {n!r}")
    g = torch.Generator().manual_seed(seed)
    labels = None
    if name == "moons":
        a = torch.rand(n, generator=g, dtype=torch.float64) * math.pi
        inner = torch.rand(n, generator=g) < 0.5
        outer_xy = torch.stack([a.cos(), a.sin()], 1)
        inner_xy = torch.stack([1 - a.cos(), 0.5 - a.sin()], 1)
        x = torch.where(inner[:, None], inner_xy, outer_xy) - torch.tensor([0.5, 0.25], dtype=torch.float64)
        x = x * 1.6 + torch.randn(n, 2, generator=g, dtype=torch.float64) * 0.08
    elif name == "spiral":
        r = torch.rand(n, generator=g, dtype=torch.float64).sqrt() * 3 * math.pi
        x = torch.stack([r * r.cos(), r * r.sin()], 1) / (1.5 * math.pi)
        x = x + torch.randn(n, 2, generator=g, dtype=torch.float64) * 0.06
    elif name == "checkerboard":  # FFJORD's: 8 unit squares of [-2, 2]^2, alternating
        x1 = torch.rand(n, generator=g, dtype=torch.float64) * 4 - 2
        x2 = torch.rand(n, generator=g, dtype=torch.float64) - 2 * torch.randint(0, 2, (n,), generator=g)
        x = torch.stack([x1, x2 + x1.floor() % 2], 1)
    else:
        means, std = mixture(name)
        k = torch.randint(0, len(means), (n,), generator=g)
        x = means[k] + torch.randn(n, 2, generator=g, dtype=torch.float64) * std
        labels = k if name == "clusters" else None
    return x.float(), labels


def points_from_mask(mask, n: int, seed: int = 0, extent: float = 3.0) -> torch.Tensor:
    """``n`` points ``[n x 2]`` drawn uniformly from the ``True`` pixels of ``mask`` ``[H x W]`` (a sketch: row 0 at
    the top), the canvas spanning [-extent, extent] in both axes; a ``ValueError`` for a (nearly) empty sketch."""
    m = torch.as_tensor(np.asarray(mask, dtype=bool))
    if m.ndim != 2:
        raise ValueError(f"a sketch must be a 2D mask, got shape {tuple(m.shape)}")
    rows, cols = torch.nonzero(m, as_tuple=True)
    if len(rows) < 20:
        raise ValueError("Draw a shape on the canvas first: it is (nearly) empty.")
    g = torch.Generator().manual_seed(seed)
    k = torch.randint(0, len(rows), (n,), generator=g)
    u = torch.rand(n, 2, generator=g, dtype=torch.float64)  # anywhere within the pixel
    H, W = m.shape
    x = (cols[k] + u[:, 0]) / W * 2 * extent - extent
    y = extent - (rows[k] + u[:, 1]) / H * 2 * extent
    return torch.stack([x, y], 1).float()


# ---------------------------------------------------------------- closed forms for Gaussian mixtures
def mixture_noised(
    diffusion: GaussianDiffusion, means: torch.Tensor, std: float, t: int
) -> tuple[torch.Tensor, float]:
    """q(x_t) of the mixture: the same mixture with means ``sqrt(abar_t) mu_k`` ``[K x 2]`` and one standard
    deviation ``sqrt(abar_t std^2 + 1 - abar_t)`` (eq. 4 applied to each component)."""
    abar = float(diffusion.schedule.alphas_cumprod[t])
    return means * math.sqrt(abar), math.sqrt(abar * std**2 + 1 - abar)


def mixture_score(x: torch.Tensor, means: torch.Tensor, std: float) -> torch.Tensor:
    """grad_x log p(x) ``[B x 2]`` of an equally weighted isotropic mixture (means ``[K x 2]``) at ``x`` ``[B x 2]``:
    the responsibilities' average of (mu_k - x) / std^2."""
    x64 = x.double()
    d = means.double()[None] - x64[:, None]  # [B x K x 2]
    w = torch.softmax(-(d**2).sum(-1) / (2 * std**2), dim=1)  # responsibilities [B x K]
    return ((w[..., None] * d).sum(1) / std**2).to(x.dtype)


def true_epsilon(diffusion: GaussianDiffusion, means: torch.Tensor, std: float) -> Callable:
    """The optimal epsilon-predictor of the mixture, ``(x_t [B x 2], t [B]) -> eps [B x 2]``:
    eps = -sqrt(1 - abar_t) * grad log q(x_t) (Song et al. 2021, the score of eq. 4's marginal)."""

    def eps(x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        out = torch.empty_like(x)
        for tt in t.unique().tolist():
            mask = t == tt
            m, s = mixture_noised(diffusion, means, std, int(tt))
            abar = float(diffusion.schedule.alphas_cumprod[int(tt)])
            out[mask] = -math.sqrt(1 - abar) * mixture_score(x[mask], m, s)
        return out

    return eps


# ---------------------------------------------------------------- the denoiser
def timestep_embedding(t: torch.Tensor, dim: int, max_period: float = 10_000.0) -> torch.Tensor:
    """Sinusoidal embedding ``[B x dim]`` of timesteps ``[B]`` (Vaswani et al. 2017, as in the DDPM UNet)."""
    half = dim // 2
    freqs = torch.exp(-math.log(max_period) * torch.arange(half, dtype=torch.float32, device=t.device) / half)
    args = t.float()[:, None] * freqs[None]
    return torch.cat([args.cos(), args.sin()], dim=1)


class ToyDenoiser(nn.Module):
    """An MLP ``(x_t [B x 2], t [B], y [B] or None) -> [B x 2]``: what the diffusion's ``prediction_type`` asks for.

    With ``num_classes`` > 0 it also takes a class label; label ``num_classes`` (or ``y=None``) is "no label", the
    unconditional model that classifier-free guidance (Ho & Salimans 2022) mixes with the conditional one.
    """

    def __init__(self, hidden: int = 128, depth: int = 3, t_dim: int = 32, num_classes: int = 0):
        super().__init__()
        self.t_dim, self.num_classes = t_dim, num_classes
        self.t_proj = nn.Sequential(nn.Linear(t_dim, hidden), nn.SiLU(), nn.Linear(hidden, hidden))
        self.y_emb = nn.Embedding(num_classes + 1, hidden) if num_classes else None
        self.inp = nn.Linear(2, hidden)
        self.blocks = nn.ModuleList(nn.Sequential(nn.SiLU(), nn.Linear(hidden, hidden)) for _ in range(depth))
        self.out = nn.Sequential(nn.SiLU(), nn.Linear(hidden, 2))

    def forward(self, x: torch.Tensor, t: torch.Tensor, y: torch.Tensor | None = None) -> torch.Tensor:
        c = self.t_proj(timestep_embedding(t, self.t_dim))
        if self.y_emb is not None:
            if y is None:
                y = torch.full((x.shape[0],), self.num_classes, dtype=torch.long, device=x.device)
            c = c + self.y_emb(y)
        h = self.inp(x) + c
        for block in self.blocks:
            h = h + block(h) + c  # residual, the condition added at every depth
        return self.out(h)


def guided(model: ToyDenoiser, label: int | None = None, scale: float = 1.0) -> Callable:
    """The network as the samplers call it, ``(x [B x 2], t [B]) -> [B x 2]``: unconditional for ``label=None``, else
    classifier-free guidance ``out_uncond + scale * (out_cond - out_uncond)`` (scale 1: the conditional model)."""
    if label is None:
        return lambda x, t: model(x, t)
    if not model.num_classes or not 0 <= int(label) < model.num_classes:
        raise ValueError(f"label must be in [0, {model.num_classes - 1}] for this model, got {label}")

    def fn(x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        y = torch.full((x.shape[0],), int(label), dtype=torch.long, device=x.device)
        cond = model(x, t, y)
        if scale == 1.0:
            return cond
        return model(x, t) + scale * (cond - model(x, t))

    return fn


# ---------------------------------------------------------------- training
@dataclass
class LabRun:
    """A trained 2D model: the network, its diffusion, the data it saw and its loss curve."""

    model: ToyDenoiser
    diffusion: GaussianDiffusion
    data: torch.Tensor  # [N x 2]
    labels: torch.Tensor | None  # [N] or None
    losses: list[float] = field(default_factory=list)
    seconds: float = 0.0
    planned: int = 0  # the steps the run expects to take (fewer than asked where a time budget is short)
    dataset: str = ""  # the name of ``data``'s dataset, where it has one
    heldout: tuple = ()  # (points [M x 2], their labels [M] or None, a second independent draw [M x 2])


def make_diffusion(schedule: str = "linear", T: int = 1000, prediction_type: str = "epsilon") -> GaussianDiffusion:
    """The lab's diffusion: no clipping of x_0 (2D data is not confined to [-1, 1])."""
    return GaussianDiffusion(NoiseSchedule.make(schedule, T), prediction_type=prediction_type, clip_sample=False)


def _with_labels(model: ToyDenoiser, x: torch.Tensor, t: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    return model(x, t, y)


def train_steps(
    diffusion: GaussianDiffusion,
    data: torch.Tensor,
    labels: torch.Tensor | None = None,
    steps: int = TRAIN_STEPS,
    batch: int = 512,
    lr: float = 3e-3,
    seed: int = 0,
    p_uncond: float = 0.15,
    hidden: int = 128,
    time_budget: float | None = None,
) -> Iterator[LabRun]:
    """Train a :class:`ToyDenoiser` on ``data`` ``[N x 2]`` with ``p_losses`` (eq. 14), AdamW and a cosine-decayed
    learning rate; yields the run after every step (its ``losses`` grows), so that a caller can draw the loss or
    stop. With ``labels``, each batch drops its labels with probability ``p_uncond`` (classifier-free guidance).
    ``time_budget`` (seconds): the run fits it whatever the machine's load, as a shorter run, not a cut one: at each
    step the steps left are re-estimated from the recent pace and the learning rate's cosine is
    laid over the steps that fit (at most ``steps``), so a run on a loaded CPU still ends at its low learning rate;
    past the budget it stops. ``run.planned`` is the number of steps it expects. One point is a data set too: its
    data's reverse step is the true posterior for that point, and a network trained on it learns to return it."""
    if data.ndim != 2 or data.shape[1] != 2 or len(data) < 1:
        raise ValueError(f"data must be [N x 2] with N >= 1, got shape {tuple(data.shape)}")
    torch.manual_seed(seed)
    num_classes = int(labels.max()) + 1 if labels is not None else 0
    model = ToyDenoiser(hidden=hidden, num_classes=num_classes)
    opt = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=0.0)
    run = LabRun(model, diffusion, data, labels)
    run.planned = steps
    cosine = lambda k: 0.05 + 0.95 * 0.5 * (1 + math.cos(math.pi * min(k / run.planned, 1.0)))  # noqa: E731
    sched = torch.optim.lr_scheduler.LambdaLR(opt, cosine)
    g = torch.Generator().manual_seed(seed)
    t0 = time.perf_counter()
    recent = collections.deque([t0], maxlen=BUDGET_PACE + 1)  # start times of the recent steps
    for k in range(steps):
        if time_budget is not None and k >= 10:
            pace = (recent[-1] - recent[0]) / (len(recent) - 1)  # the recent pace: the load may change in a run
            left = BUDGET_AIM * time_budget - (recent[-1] - t0)
            run.planned = min(steps, k + max(1, int(left / pace)))
        idx = torch.randint(0, len(data), (batch,), generator=g)
        x0 = data[idx]
        if labels is not None:
            y = torch.where(torch.rand(batch, generator=g) < p_uncond, num_classes, labels[idx])
            net = functools.partial(_with_labels, model, y=y)  # p_losses calls net(x_t, t)
        else:
            net = model
        loss = diffusion.p_losses(net, x0, generator=g)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        sched.step()
        run.losses.append(float(loss.detach()))
        run.seconds = time.perf_counter() - t0
        yield run
        recent.append(time.perf_counter())  # after the caller's turn: the budget is wall time, waits included
        if len(run.losses) >= run.planned or (time_budget is not None and run.seconds >= time_budget):
            break
    model.eval().requires_grad_(False)


def first_points(data: torch.Tensor, labels: torch.Tensor | None, n: int | None):
    """The first ``n`` points ``[n x 2]`` of ``data`` and their labels (None: all of them). The named clouds and a
    drawing's points are drawn in random order, so the first ``n`` are a random pick, and a larger ``n`` keeps the
    smaller one's points."""
    if n is None:
        return data, labels
    if not isinstance(n, int) or not 1 <= n <= len(data):
        raise ValueError(f"the number of training points must be between 1 and {len(data)}, got {n!r}")
    return data[:n], None if labels is None else labels[:n]


def train(diffusion: GaussianDiffusion, data: torch.Tensor, labels=None, **kwargs) -> LabRun:
    """:func:`train_steps` run to its end; returns the trained run."""
    run = None
    for run in train_steps(diffusion, data, labels, **kwargs):
        pass
    return run  # the generator ran to its end, which put the model in eval mode


# ---------------------------------------------------------------- sampling and measuring
def run_timesteps(diffusion: GaussianDiffusion, sampler: str, steps: int | None) -> np.ndarray:
    """The step timesteps ``[N]`` a ``steps``-step run of ``sampler`` visits, as its diffusers scheduler chooses them;
    ``steps`` = T (or None) runs every step T-1..0 (a multistep scheduler's leading rule has no T-step run)."""
    return get_sampler(sampler).timesteps(
        diffusion, None if steps is None or steps >= diffusion.num_timesteps else steps
    )


def sample(
    diffusion: GaussianDiffusion,
    net: Callable,
    n: int,
    sampler: str = "ddpm",
    steps: int | None = None,
    seed: int = 0,
    eta: float = 0.0,
    keep: int = 0,
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """``n`` points ``[n x 2]`` from x_T ~ N(0, I) by the registry's ``sampler`` in ``steps`` steps (all T: None),
    and, with ``keep`` > 0, the first ``keep`` points' whole paths ``[steps + 1 x keep x 2]`` (x_T first)."""
    timesteps = run_timesteps(diffusion, sampler, steps)
    g = torch.Generator().manual_seed(seed)
    paths, x = [], None
    for out in sample_loop_progressive(diffusion, get_sampler(sampler), net, (n, 2), timesteps, g, eta=eta):
        if keep and not paths:
            paths.append(out.x_t[:keep].clone())
        if keep:
            paths.append(out.prev_sample[:keep].clone())
        x = out.prev_sample
    return x, (torch.stack(paths) if keep else None)


#: The most frames a reverse-process player receives: every step of a run of up to 100 steps (x_T first), evenly
#: spaced steps of a longer one, so the payload stays under about 1.1 MB whatever the steps (int16, base64).
PLAYER_FRAMES = 101
#: Coordinates go to the player as int16 steps of lim / QUANT_LEVELS: at lim = 3.2 a step of 1e-4 is under
#: 1/40 of a pixel even on axes 1,400 px wide, and the payload is half of float32's.
QUANT_LEVELS = 32767
#: A point beyond the axes (x_T's tails) is sent as this in both coordinates: the player, which clips at the
#: frame, leaves it out rather than pile it on the frame's edge.
OFF_AXES = -32768


def _b64_int16(x: torch.Tensor, lim: float) -> str:
    """Base64 of little-endian int16 ``round(x / lim * QUANT_LEVELS)``; a point with a coordinate beyond ``lim``
    (or not finite) becomes ``OFF_AXES`` in both."""
    xy = x.detach().cpu().double().numpy()
    q = np.rint(np.clip(np.nan_to_num(xy, nan=0.0), -lim, lim) / lim * QUANT_LEVELS).astype("<i2")
    q[~(np.abs(xy) <= lim).all(axis=-1)] = OFF_AXES
    return base64.b64encode(q.tobytes()).decode("ascii")


def reverse_paths(
    diffusion: GaussianDiffusion,
    sampler: str,
    steps: int | None,
    paths: torch.Tensor,
    data: torch.Tensor,
    lim: float,
    max_frames: int = PLAYER_FRAMES,
) -> dict:
    """What a player needs to draw the reverse process at every kept step, JSON-ready and sent once.

    ``paths`` ``[S + 1 x N x 2]``: :func:`sample`'s kept paths of a ``steps``-step run of ``sampler`` (x_T first).
    Keeps every step when S + 1 <= ``max_frames``, else ``max_frames`` evenly spaced ones, x_T and x_0 included.
    Returns ``frames`` (F), ``points`` (N), ``step`` (each frame's index into ``paths``, length F), ``t`` (each
    frame's timestep: the one the network sees next, null for the final samples), ``xy`` (base64 of little-endian
    int16 ``[F x N x 2]``, coordinate = value * lim / ``levels``, to within half a step; a point beyond the axes
    is ``OFF_AXES`` in both coordinates), ``data`` and ``data_points`` (the training points ``[M x 2]``, the same
    encoding), ``lim`` (every frame is drawn in the same axes, [-lim, lim] on both) and ``levels``
    (``QUANT_LEVELS``)."""
    timesteps = run_timesteps(diffusion, sampler, steps).tolist()
    if len(paths) != len(timesteps) + 1:
        raise ValueError(f"{len(paths)} kept steps for a run of {len(timesteps)} steps: expected x_T and one per step")
    picks = sorted(set(evenly_spaced(len(paths) - 1, max_frames).tolist()))
    # Karras-sigma samplers visit fractional timesteps: two decimals say which without a long float in the readout
    ts = [int(t) if float(t).is_integer() else round(float(t), 2) for t in timesteps] + [None]
    return {
        "frames": len(picks),
        "points": int(paths.shape[1]),
        "step": picks,
        "t": [ts[k] for k in picks],
        "xy": _b64_int16(paths[picks], lim),
        "data": _b64_int16(data, lim),
        "data_points": int(data.shape[0]),
        "lim": float(lim),
        "levels": QUANT_LEVELS,
    }


@dataclass
class Memorisation:
    """How near samples come to the training points, beside how near new data comes (all distances Euclidean):

    ``samples_nn`` ``[S]`` and ``heldout_nn`` ``[H]``: each sample's and each held-out point's distance to its nearest
    training point; ``radius``: the ``COPY_QUANTILE`` quantile of ``heldout_nn``; ``copies``: the share of samples
    nearer than ``radius``, about 1% for samples drawn like new data and 100% for copies of the training points.
    """

    samples_nn: np.ndarray
    heldout_nn: np.ndarray
    radius: float
    copies: float
    num_training: int

    @property
    def verdict(self) -> str:
        """``"copies"`` (essentially every sample is one), ``"new"`` (essentially none) or ``"mixed"``."""
        return "copies" if self.copies >= ALL_COPIES else "new" if self.copies <= NO_COPIES else "mixed"

    def quantiles(self, which: str, q=(0.05, 0.5, 0.95)) -> list[float]:
        """Quantiles of ``samples_nn`` (``which="samples"``) or ``heldout_nn`` (``"heldout"``)."""
        return np.quantile(self.samples_nn if which == "samples" else self.heldout_nn, q).tolist()


def memorisation(samples: torch.Tensor, data: torch.Tensor, heldout: torch.Tensor) -> Memorisation:
    """Do ``samples`` ``[S x 2]`` copy the training points ``data`` ``[N x 2]``, or are they as new as the held-out
    points ``heldout`` ``[H x 2]`` of the same distribution? (Kadkhodaie et al., ICLR 2024: a diffusion model
    reproduces a small training set and generalises once the set is large enough.)"""
    from .metrics import nearest_distances  # the image evaluator's measure, on points

    samples_nn = nearest_distances(samples.double().numpy(), data.double().numpy())[0]
    heldout_nn = nearest_distances(heldout.double().numpy(), data.double().numpy())[0]
    radius = float(np.quantile(heldout_nn, COPY_QUANTILE))
    return Memorisation(samples_nn, heldout_nn, radius, float((samples_nn < radius).mean()), len(data))


def energy_distance(a: torch.Tensor, b: torch.Tensor) -> float:
    """The energy distance 2 E|X - Y| - E|X - X'| - E|Y - Y'| between point sets ``a`` ``[N x 2]`` and ``b``
    ``[M x 2]`` (Székely & Rizzo 2013): zero only for equal distributions, and in the data's units."""
    a, b = a.double(), b.double()
    return float(2 * torch.cdist(a, b).mean() - torch.cdist(a, a).mean() - torch.cdist(b, b).mean())


#: The step counts of the lab's quality-against-steps plot.
QUALITY_STEPS = (5, 10, 20, 50, 100, 250, 1000)


def quality_by_steps(
    diffusion: GaussianDiffusion,
    net: Callable,
    heldout: torch.Tensor,
    n: int = 1000,
    samplers=("ddpm", "ddim", "dpmsolver++"),
    steps=QUALITY_STEPS,
    seed: int = 0,
) -> list[dict]:
    """For each sampler and step count (at most T): ``n`` points from the same seed and their energy distance to
    ``heldout`` ``[M x 2]``; rows of {"sampler", "steps", "energy_distance"}. Every sampler here makes one network
    evaluation per step, so steps are the cost."""
    rows = []
    for name in samplers:
        for k in (k for k in steps if k <= diffusion.num_timesteps):
            x, _ = sample(diffusion, net, n, name, k, seed=seed)
            rows.append({"sampler": name, "steps": int(k), "energy_distance": energy_distance(x, heldout)})
    return rows


def score_of(diffusion: GaussianDiffusion, net: Callable, x: torch.Tensor, t: int) -> torch.Tensor:
    """The score grad log q(x_t) ``[B x 2]`` the network implies at ``x`` ``[B x 2]`` and timestep ``t``:
    -eps_hat / sqrt(1 - abar_t), whatever the network predicts (its x_0 or v is turned into eps first)."""
    tt = torch.full((x.shape[0],), int(t), dtype=torch.long)
    with torch.no_grad():
        pred = diffusion.model_predictions(net(x, tt), x, tt)
    return -pred.pred_noise / math.sqrt(1 - float(diffusion.schedule.alphas_cumprod[int(t)]))


# ---------------------------------------------------------------- one reverse step, seen at one point
@dataclass
class ReverseStep:
    """One reverse step (t to t - jump) at one point x_t, three ways (means ``[2]``, standard deviations isotropic):

    - ``q_mean``, ``q_std``: the true posterior q(x_{t-1} | x_t, x_0) for one training point x_0 (eq. 6-7), exact
      but only for someone who knows x_0;
    - ``exact_mean``, ``exact_draws`` ``[M x 2]``: the reverse step of the training data itself, q(x_{t-1} | x_t) =
      sum_i w_i q(x_{t-1} | x_t, x_0^i) with w_i = q(x_0^i | x_t) by Bayes over the training points (``weights``
      ``[N]``); its mean is mu~(x_t, E[x_0 | x_t]) because mu~ is linear in x_0 (eq. 7);
    - ``p_mean``, ``p_std``, ``model_draws`` ``[M x 2]``: the network's p_theta(x_{t-1} | x_t) (eq. 1), the
      posterior at its own guess ``p_x0`` of x_0 (eq. 15). Trained with eq. 14, it aims at the second, not the first.
    """

    t: int
    x_t: torch.Tensor
    x0: torch.Tensor
    x0_index: int
    q_mean: torch.Tensor
    q_std: float
    weights: torch.Tensor
    exact_x0: torch.Tensor
    exact_mean: torch.Tensor
    exact_draws: torch.Tensor
    p_x0: torch.Tensor
    p_mean: torch.Tensor
    p_std: float
    model_draws: torch.Tensor
    jump: int = 1  # the step goes from t to t - jump

    @property
    def candidates(self) -> float:
        """How many training points could have made x_t: the effective number 1 / sum w_i^2 of the weights."""
        return float(1.0 / (self.weights**2).sum())

    @property
    def posterior_gap(self) -> float:
        """The distance between the data's reverse step and the true posterior for x_0, in the step's standard
        deviations: 0 when x_0 is the only point that could have made x_t (always, for one training point, where
        q(x_0 | x_t) is that point), and the two steps are then the same Gaussian."""
        return float((self.exact_mean - self.q_mean).norm()) / self.q_std


def reverse_step(
    diffusion: GaussianDiffusion,
    net: Callable,
    data: torch.Tensor,
    x_t,
    t: int,
    x0=None,
    jump: int = 1,
    draws: int = 400,
    seed: int = 0,
) -> ReverseStep:
    """The reverse step from timestep ``t`` to ``t - jump`` at ``x_t`` (two numbers) for the training points
    ``data`` ``[N x 2]``: one step of the chain respaced to (t - jump, t), which is what a sampler with fewer steps
    takes (its posterior is eq. 6-7 with the jump's beta). ``x0`` (two numbers) picks the training point nearest to
    it for the true posterior; None picks the one most likely to have made x_t."""
    if not 1 <= int(t) < diffusion.num_timesteps:
        raise ValueError(f"t must be between 1 and {diffusion.num_timesteps - 1}, got {t}")
    if not 1 <= int(jump) <= int(t):
        raise ValueError(f"the jump must be between 1 and t = {t} steps, got {jump}")
    d, data64 = diffusion.respace([int(t) - int(jump), int(t)]), data.double()
    x_t = torch.as_tensor(x_t, dtype=torch.float64).reshape(2)
    abar = float(d.schedule.alphas_cumprod[1])
    logw = -((x_t - math.sqrt(abar) * data64) ** 2).sum(1) / (2 * (1 - abar))  # log q(x_t | x_0^i) + const
    weights = torch.softmax(logw, 0)
    if x0 is None:
        i = int(weights.argmax())
    else:
        i = int(((data64 - torch.as_tensor(x0, dtype=torch.float64).reshape(1, 2)) ** 2).sum(1).argmin())
    g = torch.Generator().manual_seed(seed)
    q_mean, q_var, _ = d.q_posterior(data64[i : i + 1], x_t[None], 1)
    q_std = math.sqrt(float(q_var.reshape(-1)[0]))
    exact_x0 = weights @ data64
    idx = torch.multinomial(weights, draws, replacement=True, generator=g)
    means = d.q_posterior(data64[idx], x_t.expand(draws, 2), 1)[0]
    exact_draws = means + q_std * torch.randn(draws, 2, generator=g, dtype=torch.float64)
    with torch.no_grad():
        p = d.p_mean_variance(net, x_t[None].float(), 1)
    p_mean, p_std = p["mean"][0].double(), float(p["std"].reshape(-1)[0])
    return ReverseStep(
        t=int(t),
        x_t=x_t,
        x0=data64[i],
        x0_index=i,
        q_mean=q_mean[0],
        q_std=q_std,
        weights=weights,
        exact_x0=exact_x0,
        exact_mean=d.q_posterior(exact_x0[None], x_t[None], 1)[0][0],
        exact_draws=exact_draws,
        p_x0=p["pred_xstart"][0].double(),
        p_mean=p_mean,
        p_std=p_std,
        model_draws=p_mean + p_std * torch.randn(draws, 2, generator=g, dtype=torch.float64),
        jump=int(jump),
    )
