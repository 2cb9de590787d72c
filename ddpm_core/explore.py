"""What the Space's forward-process and schedule tabs show, computed by the core (app.py only formats it)."""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F

from .diffusion import GaussianDiffusion
from .schedule import NoiseSchedule
from .tensors import randn
from .timesteps import evenly_spaced

#: The keys of :func:`curves`' per-timestep schedule curves (besides ``t``, ``beta``, ``posterior_variance``).
#: log-SNR = log(abar / (1 - abar)).
CURVES = (
    "log10_beta",
    "alpha_bar",
    "sqrt_alpha_bar",
    "sqrt_one_minus_alpha_bar",
    "log_snr",
    "log10_posterior_variance",
)


def readout(schedule: NoiseSchedule, t: int) -> dict[str, float]:
    """Scalars at timestep ``t``: beta, abar, sqrt(abar), sqrt(1 - abar), SNR (and in dB), the posterior's sigma~."""
    if not 0 <= int(t) < schedule.num_timesteps:
        raise ValueError(f"t must be in [0, {schedule.num_timesteps - 1}], got {t}")
    t = int(t)
    snr = float(schedule.snr[t])
    return {
        "t": t,
        "beta": float(schedule.betas[t]),
        "alpha_bar": float(schedule.alphas_cumprod[t]),
        "sqrt_alpha_bar": float(schedule.sqrt_alphas_cumprod[t]),
        "sqrt_one_minus_alpha_bar": float(schedule.sqrt_one_minus_alphas_cumprod[t]),
        "snr": snr,
        "snr_db": 10 * math.log10(snr) if snr > 0 else -math.inf,
        "posterior_std": float(schedule.posterior_variance[t].sqrt()),
    }


def curves(schedule: NoiseSchedule) -> dict[str, np.ndarray]:
    """Each curve of :data:`CURVES` over t = 0..T-1 (float64 arrays of length T), plus ``t`` itself."""
    abar = schedule.alphas_cumprod
    return {
        "t": np.arange(schedule.num_timesteps),
        "beta": schedule.betas.numpy(),
        "alpha_bar": abar.numpy(),
        "sqrt_alpha_bar": schedule.sqrt_alphas_cumprod.numpy(),
        "sqrt_one_minus_alpha_bar": schedule.sqrt_one_minus_alphas_cumprod.numpy(),
        "log_snr": (abar.log() - torch.log1p(-abar)).numpy(),
        "posterior_variance": schedule.posterior_variance.numpy(),
        # log scale: cosine's betas reach 0.999 and would flatten every other curve; beta~_0 = 0 has no log (NaN)
        "log10_beta": schedule.betas.log10().numpy(),
        "log10_posterior_variance": torch.where(
            schedule.posterior_variance > 0,
            schedule.posterior_variance.log10(),
            torch.tensor(float("nan"), dtype=torch.float64),
        ).numpy(),
    }


@dataclass
class ForwardViews:
    """The forward-process tab's images, all ``[1 x C x H x W]`` in [-1, 1] (noise is N(0, I))."""

    x_t: torch.Tensor
    noise: torch.Tensor
    posterior_mean: torch.Tensor
    strip: list[tuple[int, torch.Tensor]]
    readout: dict[str, float]


def strip_timesteps(num_timesteps: int, n: int = 8) -> list[int]:
    """``n`` timesteps evenly spread over [0, T-1] (0 and T-1 included)."""
    return sorted(set(evenly_spaced(num_timesteps - 1, n).tolist()))


def forward_views(
    x0: torch.Tensor, diffusion: GaussianDiffusion, t: int, seed: int, n_strip: int = 8, thumb: int = 160
) -> ForwardViews:
    """x_t ~ q(x_t | x_0) (eq. 4), the noise that made it, the true posterior mean mu~_t(x_t, x_0) (eq. 7) and a strip
    of x_t at ``n_strip`` timesteps (downscaled to ``thumb`` px on the long side). Deterministic in ``seed``."""
    if x0.ndim != 4 or x0.shape[0] != 1:
        raise ValueError(f"x0 must be [1 x C x H x W], got {tuple(x0.shape)}")
    g = torch.Generator().manual_seed(int(seed))
    noise = randn(x0.shape, g, x0.device, x0.dtype)
    x_t = diffusion.q_sample(x0, t, noise)
    mean, _, _ = diffusion.q_posterior(x0, x_t, t)
    H, W = x0.shape[-2:]
    scale = min(1.0, thumb / max(H, W))
    small = (
        F.interpolate(x0, size=(max(1, round(H * scale)), max(1, round(W * scale))), mode="area") if scale < 1 else x0
    )
    strip_noise = randn(small.shape, torch.Generator().manual_seed(int(seed)), small.device, small.dtype)
    strip = [(s, diffusion.q_sample(small, s, strip_noise)) for s in strip_timesteps(diffusion.num_timesteps, n_strip)]
    return ForwardViews(x_t, noise, mean, strip, readout(diffusion.schedule, t))
