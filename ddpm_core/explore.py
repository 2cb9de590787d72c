"""What the Space's forward-process and schedule tabs show, computed by the core (app.py only formats it)."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F

from .diffusion import GaussianDiffusion
from .imaging import to_model_range, to_uint8
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
    """Scalars at timestep ``t``: beta, abar, sqrt(abar), sqrt(1 - abar), SNR (and in dB), the posterior's sigma~
    (one row of :func:`readout_table`)."""
    if not 0 <= int(t) < schedule.num_timesteps:
        raise ValueError(f"t must be in [0, {schedule.num_timesteps - 1}], got {t}")
    t = int(t)
    return {key: (t if key == "t" else float(v[t])) for key, v in readout_table(schedule).items()}


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


def fit_size(height: int, width: int, max_side: int) -> tuple[int, int]:
    """(height, width) scaled down to at most ``max_side`` px on the long side, aspect kept; never scaled up."""
    scale = min(1.0, max_side / max(height, width))
    return max(1, round(height * scale)), max(1, round(width * scale))


def forward_noise(x0: torch.Tensor, seed: int) -> torch.Tensor:
    """The noise eps the forward-process views use for ``x0`` (``[1 x C x H x W]``): N(0, I) of x0's shape, drawn
    from a generator seeded with ``seed``. The same seed draws the same eps."""
    return randn(x0.shape, torch.Generator().manual_seed(int(seed)), x0.device, x0.dtype)


def forward_views(
    x0: torch.Tensor, diffusion: GaussianDiffusion, t: int, seed: int, n_strip: int = 8, thumb: int = 160
) -> ForwardViews:
    """x_t ~ q(x_t | x_0) (eq. 4), the noise that made it, the true posterior mean mu~_t(x_t, x_0) (eq. 7) and a strip
    of x_t at ``n_strip`` timesteps (downscaled to ``thumb`` px on the long side). Deterministic in ``seed``."""
    if x0.ndim != 4 or x0.shape[0] != 1:
        raise ValueError(f"x0 must be [1 x C x H x W], got {tuple(x0.shape)}")
    noise = forward_noise(x0, seed)
    x_t = diffusion.q_sample(x0, t, noise)
    mean, _, _ = diffusion.q_posterior(x0, x_t, t)
    H, W = x0.shape[-2:]
    size = fit_size(H, W, thumb)
    small = F.interpolate(x0, size=size, mode="area") if size != (H, W) else x0
    strip_noise = forward_noise(small, seed)
    strip = [(s, diffusion.q_sample(small, s, strip_noise)) for s in strip_timesteps(diffusion.num_timesteps, n_strip)]
    return ForwardViews(x_t, noise, mean, strip, readout(diffusion.schedule, t))


def readout_table(schedule: NoiseSchedule) -> dict[str, np.ndarray]:
    """:func:`readout` for every t at once: the same keys, each a float64 array of length T (``t`` an int64 one)."""
    snr = schedule.snr.numpy()
    with np.errstate(divide="ignore"):
        snr_db = np.where(snr > 0, 10 * np.log10(snr), -np.inf)
    return {
        "t": np.arange(schedule.num_timesteps),
        "beta": schedule.betas.numpy(),
        "alpha_bar": schedule.alphas_cumprod.numpy(),
        "sqrt_alpha_bar": schedule.sqrt_alphas_cumprod.numpy(),
        "sqrt_one_minus_alpha_bar": schedule.sqrt_one_minus_alphas_cumprod.numpy(),
        "snr": snr,
        "snr_db": snr_db,
        "posterior_std": schedule.posterior_variance.sqrt().numpy(),
    }


@dataclass
class ScrubData:
    """What a client needs to draw x_t for every t itself: ``x0`` and ``eps``, both ``[1 x C x h x w]``, and the
    schedule's :func:`readout_table`."""

    x0: torch.Tensor
    eps: torch.Tensor
    table: dict[str, np.ndarray]


def forward_scrub(x0: torch.Tensor, diffusion: GaussianDiffusion, seed: int, max_side: int = 256) -> ScrubData:
    """x0 and one noise draw eps at display size, with the schedule's table, so that a client can form
    x_t = sqrt(abar_t) x0 + sqrt(1 - abar_t) eps (eq. 4) at any t without asking again.

    ``x0``: ``[1 x C x H x W]`` in [-1, 1], 8-bit values (as decoded from an image). The display size (h, w) is
    (H, W) scaled down to at most ``max_side`` on the long side (:func:`fit_size`). Returned ``x0`` is the image
    area-averaged to that size and rounded to 8-bit values again (x / 127.5 - 1, what a client holds as bytes);
    ``eps`` is :func:`forward_views`' noise for the same seed (:func:`forward_noise`, N(0, I) at H x W) at the
    display grid's pixels (nearest), so it is still N(0, I) per pixel, and at full size it is that noise itself.
    ``diffusion.q_sample(x0, t, eps)`` is then what the client draws at t.
    """
    if x0.ndim != 4 or x0.shape[0] != 1:
        raise ValueError(f"x0 must be [1 x C x H x W], got {tuple(x0.shape)}")
    noise = forward_noise(x0, seed)
    H, W = x0.shape[-2:]
    size = fit_size(H, W, max_side)
    if size != (H, W):
        # nearest picks pixels of the one draw: the values stay independent N(0, 1); averaging would shrink them
        noise = F.interpolate(noise, size=size, mode="nearest-exact")
        x0 = to_model_range(to_uint8(F.interpolate(x0, size=size, mode="area"))).to(x0.device, x0.dtype)
    return ScrubData(x0, noise, readout_table(diffusion.schedule))
