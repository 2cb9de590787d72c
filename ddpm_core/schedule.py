"""Noise schedules: every per-timestep quantity of DDPM, computed once in float64.

Ho et al. 2020 ("DDPM") define the forward process q(x_t | x_{t-1}) = N(sqrt(1 - beta_t) x_{t-1}, beta_t I)
(eq. 2) and its closed form q(x_t | x_0) = N(sqrt(abar_t) x_0, (1 - abar_t) I) with abar_t = prod_{s<=t} alpha_s,
alpha_t = 1 - beta_t (eq. 4). The posterior q(x_{t-1} | x_t, x_0) = N(mu~_t, beta~_t I) has the coefficients of
eq. 6-7. Everything here is a 1-D float64 tensor of length T, indexed by the 0-based timestep t = 0..T-1
(the paper's t = 1..T).

Why float64: the coefficients are products of up to T factors; diffusers computes them in float32 and its
cumprod drifts (about 3e-3 over a 1000-step sigmoid loop). We compute once in float64 and cast to the sample's
dtype/device when used, so the maths is exact to the dtype the user samples in.
"""

from __future__ import annotations

import math
from typing import Sequence

import torch

Tensor = torch.Tensor

#: Schedule names accepted by :meth:`NoiseSchedule.make` (aliases map onto these).
SCHEDULES = ("linear", "linear_improved", "scaled_linear", "squaredcos_cap_v2", "sigmoid")
_ALIASES = {"cosine": "squaredcos_cap_v2"}

#: The quantities a schedule holds, in the order of the teaching notes' ``get_noise_schedule`` plus the posterior.
QUANTITIES = (
    "betas",
    "alphas",
    "alphas_cumprod",
    "alphas_cumprod_prev",
    "alphas_cumprod_next",
    "sqrt_alphas_cumprod",
    "sqrt_one_minus_alphas_cumprod",
    "log_one_minus_alphas_cumprod",
    "sqrt_recip_alphas_cumprod",
    "sqrt_recipm1_alphas_cumprod",
    "posterior_variance",
    "posterior_log_variance_clipped",
    "posterior_mean_coef1",
    "posterior_mean_coef2",
    "snr",
)

# diffusers clamps the posterior variance before taking logs; t=0 has beta~_0 = 0 exactly.
POSTERIOR_VARIANCE_MIN = 1e-20


def _cosine_betas(num_timesteps: int, max_beta: float = 0.999) -> Tensor:
    """Nichol & Dhariwal 2021 eq. 17: abar(t) = cos^2(((t/T + s) / (1 + s)) pi/2), s = 0.008, betas capped."""

    def alpha_bar(u: float) -> float:
        return math.cos((u + 0.008) / 1.008 * math.pi / 2) ** 2

    return torch.tensor(
        [
            min(1 - alpha_bar((i + 1) / num_timesteps) / alpha_bar(i / num_timesteps), max_beta)
            for i in range(num_timesteps)
        ],
        dtype=torch.float64,
    )


def rescale_zero_terminal_snr(betas: Tensor) -> Tensor:
    """Lin et al. 2024 (Algorithm 1): shift and scale sqrt(abar) so that abar_{T-1} = 0 (zero terminal SNR)."""
    abar_sqrt = torch.cumprod(1.0 - betas, 0).sqrt()
    a0, aT = abar_sqrt[0].clone(), abar_sqrt[-1].clone()
    abar_sqrt = (abar_sqrt - aT) * (a0 / (a0 - aT))
    abar = abar_sqrt**2
    alphas = torch.cat([abar[:1], abar[1:] / abar[:-1]])
    return 1.0 - alphas


class NoiseSchedule:
    """All per-timestep quantities of a DDPM noise schedule, as float64 CPU tensors of shape ``[T]``.

    Build one with :meth:`make` (by name) or directly from betas. Attributes are named as in the teaching notes
    and improved-diffusion: ``betas``, ``alphas``, ``alphas_cumprod`` (abar_t), ``alphas_cumprod_prev``
    (abar_{t-1}, with abar_{-1} = 1), ``alphas_cumprod_next``, ``sqrt_alphas_cumprod``,
    ``sqrt_one_minus_alphas_cumprod``, ``log_one_minus_alphas_cumprod``, ``sqrt_recip_alphas_cumprod``,
    ``sqrt_recipm1_alphas_cumprod``, the true posterior's ``posterior_variance`` (beta~_t, eq. 7),
    ``posterior_log_variance_clipped`` (log of beta~_t clamped at 1e-20, as diffusers clamps it),
    ``posterior_mean_coef1/2`` (eq. 7) and the signal-to-noise ratio ``snr`` = abar_t / (1 - abar_t).
    """

    def __init__(self, betas: Tensor | Sequence[float], name: str = "custom", alphas_cumprod: Tensor | None = None):
        betas = torch.as_tensor(betas, dtype=torch.float64).detach().clone().cpu()
        if betas.ndim != 1 or betas.numel() < 1:
            raise ValueError(f"betas must be a non-empty 1-D sequence, got shape {tuple(betas.shape)}")
        if not torch.isfinite(betas).all():
            raise ValueError("betas must be finite")
        if not ((betas > 0).all() and (betas <= 1).all()):
            raise ValueError(
                f"betas must lie in (0, 1]; got min {betas.min().item():.3g}, max {betas.max().item():.3g}"
            )
        self.name = name
        self.beta_start: float | None = None  # set by make() for named schedules (kept for configs)
        self.beta_end: float | None = None
        self.num_timesteps = int(betas.numel())
        self.betas = betas
        self.alphas = 1.0 - betas
        # A respaced schedule passes its exact abar: re-multiplying 1 - beta'_i loses digits where abar is tiny.
        self.alphas_cumprod = (
            torch.cumprod(self.alphas, 0) if alphas_cumprod is None else alphas_cumprod.to(torch.float64)
        )
        if self.alphas_cumprod.shape != betas.shape:
            raise ValueError(
                f"alphas_cumprod must have shape {tuple(betas.shape)} like betas, got {tuple(self.alphas_cumprod.shape)}"
            )
        one = torch.ones(1, dtype=torch.float64)
        self.alphas_cumprod_prev = torch.cat([one, self.alphas_cumprod[:-1]])
        self.alphas_cumprod_next = torch.cat([self.alphas_cumprod[1:], torch.zeros(1, dtype=torch.float64)])

        # q(x_t | x_0), eq. 4, and its inversion x_0 = sqrt(1/abar) x_t - sqrt(1/abar - 1) eps (eq. 15 rearranged).
        abar = self.alphas_cumprod
        self.sqrt_alphas_cumprod = abar.sqrt()
        self.sqrt_one_minus_alphas_cumprod = (1.0 - abar).sqrt()
        self.log_one_minus_alphas_cumprod = torch.log1p(-abar)
        self.sqrt_recip_alphas_cumprod = abar.rsqrt()  # inf where abar = 0 (zero terminal SNR)
        self.sqrt_recipm1_alphas_cumprod = (1.0 / abar - 1.0).sqrt()

        # The true posterior q(x_{t-1} | x_t, x_0) = N(coef1 x_0 + coef2 x_t, beta~_t I), eq. 6-7.
        self.posterior_variance = betas * (1.0 - self.alphas_cumprod_prev) / (1.0 - abar)
        self.posterior_log_variance_clipped = self.posterior_variance.clamp(min=POSTERIOR_VARIANCE_MIN).log()
        self.posterior_mean_coef1 = betas * self.alphas_cumprod_prev.sqrt() / (1.0 - abar)
        self.posterior_mean_coef2 = (1.0 - self.alphas_cumprod_prev) * self.alphas.sqrt() / (1.0 - abar)
        self.snr = abar / (1.0 - abar)
        self._validate()

    def _validate(self) -> None:
        """Raise ``ValueError`` (never ``assert``: ``python -O`` would let NaN tables through) on unusable tables."""
        abar = self.alphas_cumprod
        if abar.shape != (self.num_timesteps,):
            raise ValueError(
                f"alphas_cumprod must have shape ({self.num_timesteps},) like betas, got {tuple(abar.shape)}"
            )
        if not torch.isfinite(abar).all() or (abar < 0).any() or (abar > 1).any():
            raise ValueError("alphas_cumprod must be finite and lie in [0, 1]")
        if (abar[1:] > abar[:-1]).any():
            t = int((abar[1:] > abar[:-1]).nonzero()[0]) + 1
            raise ValueError(
                f"alphas_cumprod must be non-increasing, but alphas_cumprod[{t}] > alphas_cumprod[{t - 1}]"
            )
        if (abar == 1).any():
            # abar_t = 1 makes 1 - abar_t = 0: eq. 7's posterior and the SNR divide by zero (NaN/inf tables).
            last = int((abar == 1).nonzero()[-1])
            raise ValueError(
                f"betas[{last}]={self.betas[last].item():.3g} is too small: 1 - alphas_cumprod[{last}] rounds to 0 in "
                f"float64 (1 - beta == 1 for betas below ~1.1e-16), so the posterior (eq. 7) and the SNR divide by "
                f"zero; use betas >= ~1e-15"
            )
        for key in ("posterior_variance", "posterior_mean_coef1", "posterior_mean_coef2", "snr"):
            value = getattr(self, key)
            if not (torch.isfinite(value).all() and (value >= 0).all()):
                t = int((~torch.isfinite(value) | (value < 0)).nonzero()[0])
                raise ValueError(
                    f"{key}[{t}]={value[t].item():.3g} is not a finite non-negative number; check betas near t={t}"
                )

    # ------------------------------------------------------------------ construction
    @classmethod
    def make(
        cls,
        name: str = "linear",
        num_timesteps: int = 1000,
        beta_start: float = 1e-4,
        beta_end: float = 0.02,
        trained_betas: Sequence[float] | None = None,
        rescale_betas_zero_snr: bool = False,
    ) -> "NoiseSchedule":
        """Build a named schedule of ``num_timesteps`` betas.

        - ``linear``: diffusers' form, betas evenly spaced from ``beta_start`` to ``beta_end`` (Ho et al. 2020, sec. 4).
        - ``linear_improved``: the teaching notes' / improved-diffusion form: ``beta_start`` and ``beta_end`` are
          first scaled by 1000/T, so any T keeps the total noise of the T=1000 schedule.
        - ``scaled_linear``: sqrt(beta) evenly spaced (latent diffusion).
        - ``squaredcos_cap_v2`` (alias ``cosine``): Nichol & Dhariwal 2021, eq. 17, betas capped at 0.999.
        - ``sigmoid``: sigmoid(linspace(-6, 6, T)) scaled into [beta_start, beta_end] (GeoDiff).
        - ``trained_betas``: explicit betas; then ``name`` and the beta range are ignored.
        ``rescale_betas_zero_snr`` rescales any of these to zero terminal SNR (Lin et al. 2024).
        """
        num_timesteps = int(num_timesteps)
        if num_timesteps < 1:
            raise ValueError(f"num_timesteps must be >= 1, got {num_timesteps}")
        if trained_betas is not None:
            betas = torch.as_tensor(trained_betas, dtype=torch.float64)
            name = "trained_betas"
        else:
            name = _ALIASES.get(name, name)
            betas = _named_betas(name, num_timesteps, beta_start, beta_end)
        if rescale_betas_zero_snr:
            if betas.numel() < 2:
                raise ValueError("rescale_betas_zero_snr needs at least 2 timesteps")
            betas = rescale_zero_terminal_snr(betas)
            name = f"{name}+zero_snr"
        schedule = cls(betas, name=name)
        if trained_betas is None:
            schedule.beta_start, schedule.beta_end = float(beta_start), float(beta_end)
        return schedule

    def respace(self, timesteps: Sequence[int] | Tensor) -> "NoiseSchedule":
        """The schedule restricted to the kept ``timesteps`` (any order; used ascending).

        The kept steps get beta'_i = 1 - abar_{t_i} / abar_{t_{i-1}} (abar of the previous kept step, 1 before the
        first), so abar' over the kept steps equals the original abar at those steps (Nichol & Dhariwal 2021,
        sec. 4) and every posterior coefficient follows. This is how diffusers steps with fewer inference steps.
        """
        ts = torch.as_tensor(timesteps, dtype=torch.long).flatten().sort().values
        if ts.numel() < 1 or ts[0] < 0 or ts[-1] >= self.num_timesteps or (ts[1:] == ts[:-1]).any():
            raise ValueError(f"respacing needs distinct timesteps in [0, {self.num_timesteps - 1}]")
        abar = self.alphas_cumprod[ts]
        abar_prev = torch.cat([torch.ones(1, dtype=torch.float64), abar[:-1]])
        return NoiseSchedule(1.0 - abar / abar_prev, name=f"{self.name}[{ts.numel()} steps]", alphas_cumprod=abar)

    def as_dict(self) -> dict[str, Tensor]:
        """Every quantity by name (the notes' ``get_noise_schedule`` dictionary, plus the posterior and SNR)."""
        return {key: getattr(self, key) for key in QUANTITIES}

    def __len__(self) -> int:
        return self.num_timesteps

    def __repr__(self) -> str:
        return f"NoiseSchedule({self.name!r}, T={self.num_timesteps})"


def min_timesteps(name: str, beta_end: float = 0.02) -> int:
    """The smallest T the schedule ``name`` allows: 1, except ``linear_improved``, whose beta_end 1000 / T must stay
    below 1 (21 for the default beta_end = 0.02)."""
    if _ALIASES.get(name, name) != "linear_improved":
        return 1
    T = max(1, int(1000.0 * beta_end))
    while not beta_end * (1000.0 / T) < 1:
        T += 1
    return T


def _named_betas(key: str, T: int, beta_start: float, beta_end: float) -> torch.Tensor:
    """``[T]`` float64 betas of the schedule ``key`` (see :meth:`NoiseSchedule.make`)."""
    if key not in SCHEDULES:
        raise ValueError(f"unknown beta_schedule {key!r}; choose one of {SCHEDULES + tuple(_ALIASES)}")
    if key != "squaredcos_cap_v2" and not (0 < beta_start <= beta_end < 1):
        raise ValueError(f"need 0 < beta_start <= beta_end < 1, got beta_start={beta_start}, beta_end={beta_end}")
    if key == "linear":
        return torch.linspace(beta_start, beta_end, T, dtype=torch.float64)
    if key == "linear_improved":
        scale = 1000.0 / T
        if T < min_timesteps(key, beta_end):
            raise ValueError(f"linear_improved with T={T} scales beta_end to {beta_end * scale:.3g} >= 1")
        return torch.linspace(beta_start * scale, beta_end * scale, T, dtype=torch.float64)
    if key == "scaled_linear":
        return torch.linspace(beta_start**0.5, beta_end**0.5, T, dtype=torch.float64) ** 2
    if key == "squaredcos_cap_v2":
        return _cosine_betas(T)
    # sigmoid
    return torch.sigmoid(torch.linspace(-6, 6, T, dtype=torch.float64)) * (beta_end - beta_start) + beta_start
