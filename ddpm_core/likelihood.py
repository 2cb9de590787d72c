"""The variational bound of DDPM in bits per dimension, term by term.

Ho et al. 2020, eq. 5: -log p(x_0) <= L = L_T + sum_{t>1} L_{t-1} + L_0, with

- L_T = KL(q(x_T | x_0) || N(0, I)), the prior term (:func:`prior_bpd`);
- L_{t-1} = KL(q(x_{t-1} | x_t, x_0) || p_theta(x_{t-1} | x_t)), a KL of two Gaussians (:func:`normal_kl`) between
  the true posterior (``GaussianDiffusion.q_posterior``) and the model's reverse step (``p_mean_variance``);
- L_0 = -log p_theta(x_0 | x_1), a discretised Gaussian decoder over the 256 pixel levels (sec. 3.3,
  :func:`discretized_gaussian_log_likelihood`).

Each expectation over x_t ~ q(x_t | x_0) is estimated with one draw per t, as Ho et al. and Nichol & Dhariwal
(2021, "IDDPM") do. Every term is a mean over the data's dimensions divided by log 2: bits per dimension, the unit of
the papers' tables (DDPM Table 2: 3.75 bits/dim on CIFAR-10 for the L_simple model). ``t`` counts from 0 as in the
rest of the core: index 0 is the paper's t = 1, the decoder step.

The reverse step is the one the samplers take, with one exception where the sampler takes none: the last step
(index 0) adds no noise when sampling, so its variance is the decoder's own choice. beta~ at index 0 is 0; the
decoder takes beta~ at index 1 in its place, as Ho et al.'s and Nichol & Dhariwal's code do ("to get a better
decoder log likelihood"): the fixed variances' decoder variance, and the lower end of learned_range's interpolation
(:func:`reverse_log_variance`).
Everything is computed in float64: the KLs of nearly equal Gaussians cancel, and the decoder's bin probabilities
reach 1e-30 and below.

Names follow improved-diffusion (``normal_kl``, ``discretized_gaussian_log_likelihood``, ``vb_terms_bpd`` for its
``_vb_terms_bpd``, ``prior_bpd`` for its ``_prior_bpd``, ``calc_bpd_loop``).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import TYPE_CHECKING, Callable

import torch

from .tensors import call_model, randn

if TYPE_CHECKING:
    from .diffusion import GaussianDiffusion

Tensor = torch.Tensor

LOG2 = math.log(2.0)
#: The decoder term's two treatments: the discretised Gaussian over 8-bit pixel bins (images, sec. 3.3) or the
#: Gaussian log-density itself (continuous data, e.g. point clouds; then the total is a bound on -log density).
DECODERS = ("discretized", "continuous")
#: Half the width of one of the 256 pixel bins of data scaled to [-1, 1].
HALF_BIN = 1.0 / 255.0


def normal_kl(mean1: Tensor, logvar1: Tensor, mean2: Tensor, logvar2: Tensor) -> Tensor:
    """KL(N(mean1, e^logvar1) || N(mean2, e^logvar2)) elementwise, in nats (the tensors broadcast).

    KL = 1/2 (log s2^2 - log s1^2 + s1^2 / s2^2 + (m1 - m2)^2 / s2^2 - 1), the closed form behind every L_{t-1}
    (DDPM eq. 5, "Rao-Blackwellized").
    """
    return 0.5 * (-1.0 + logvar2 - logvar1 + torch.exp(logvar1 - logvar2) + (mean1 - mean2) ** 2 * torch.exp(-logvar2))


def _log1mexp(x: Tensor) -> Tensor:
    """log(1 - e^x) for x <= 0 without cancellation (Maechler 2012): log(-expm1 x) near 0, log1p(-e^x) below -log 2."""
    return torch.where(x > -LOG2, torch.log(-torch.expm1(x)), torch.log1p(-torch.exp(x)))


def _log_gaussian_mass(lo: Tensor, hi: Tensor) -> Tensor:
    """log(Phi(hi) - Phi(lo)) for standardised bin edges lo < hi (finite), without cancellation in either tail."""
    # Mirror bins right of 0 so that both edges lie in the lower tail, where log_ndtr keeps full relative precision.
    flip = (lo + hi) > 0
    a, b = torch.where(flip, -hi, lo), torch.where(flip, -lo, hi)
    log_b = torch.special.log_ndtr(b)
    return log_b + _log1mexp(torch.special.log_ndtr(a) - log_b)


def discretized_gaussian_log_likelihood(x: Tensor, means: Tensor, log_scales: Tensor) -> Tensor:
    """log p(x) elementwise, in nats, under the discretised Gaussian decoder of DDPM sec. 3.3 (eq. 13).

    ``x`` ``[B x C x ...]`` holds 8-bit data scaled to [-1, 1] (x = 2k/255 - 1); p(x) is the mass N(means,
    e^(2 log_scales)) gives to x's bin [x - 1/255, x + 1/255], with the outer bins extended to -inf at x = -1 and
    +inf at x = 1. Computed with the exact normal CDF in log space (improved-diffusion approximates the CDF by a
    tanh and clamps probabilities at 1e-12; here a bin of mass 1e-300 still has its logarithm).
    """
    inv_std = torch.exp(-log_scales)
    centered = x - means
    lo = (centered - HALF_BIN) * inv_std
    hi = (centered + HALF_BIN) * inv_std
    # The edge bins are one-sided tails; their finite stand-ins in `middle` are dropped by the `where`.
    middle = _log_gaussian_mass(lo, hi)
    lowest = torch.special.log_ndtr(hi)  # x = -1: Phi(hi)
    highest = torch.special.log_ndtr(-lo)  # x = 1: 1 - Phi(lo)
    return torch.where(x < -1 + HALF_BIN, lowest, torch.where(x > 1 - HALF_BIN, highest, middle))


def gaussian_log_likelihood(x: Tensor, means: Tensor, log_var: Tensor) -> Tensor:
    """log N(x; means, e^log_var) elementwise, in nats: the decoder term for continuous data."""
    return -0.5 * (math.log(2 * math.pi) + log_var + (x - means) ** 2 * torch.exp(-log_var))


def mean_over_dims(x: Tensor) -> Tensor:
    """``[B x ...]`` -> ``[B]``: the mean over every dimension but the first."""
    return x.flatten(1).mean(1)


def _check_decoder(decoder: str) -> None:
    if decoder not in DECODERS:
        raise ValueError(f"unknown decoder {decoder!r}; choose one of {DECODERS}")


def _check_data(x_start: Tensor, decoder: str) -> None:
    if x_start.ndim < 2:
        raise ValueError(f"x_start must be [B x C x ...], got shape {tuple(x_start.shape)}")
    if not torch.isfinite(x_start).all():
        raise ValueError("x_start must be finite")
    if decoder == "discretized" and (x_start.min() < -1 or x_start.max() > 1):
        raise ValueError(
            f"x_start must lie in [-1, 1] for the discretised decoder (8-bit data scaled as 2k/255 - 1), got values "
            f"in [{x_start.min().item():.3g}, {x_start.max().item():.3g}]"
        )


def decoder_min_log_variance(diffusion: "GaussianDiffusion") -> float:
    """log beta~ at index 1 (log beta_0 for T = 1): the decoder's stand-in for log beta~_0 = log 0."""
    s = diffusion.schedule
    return float(s.posterior_log_variance_clipped[1] if s.num_timesteps > 1 else s.betas[0].log())


def reverse_log_variance(diffusion: "GaussianDiffusion", out: dict[str, Tensor], t: Tensor) -> Tensor:
    """The log-variance of the model's reverse step at indices ``t`` ``[B]`` for the bound: ``p_mean_variance``'s,
    except at index 0 (see the module's notes), where log beta~_0 = log 0 is replaced by log beta~ at index 1: the
    fixed variances' decoder variance, and the lower end of learned_range's interpolation (IDDPM eq. 15), as in
    Ho et al.'s and Nichol & Dhariwal's code. diffusers clamps beta~_0 at 1e-20 instead, which changes no sample
    (the last step adds no noise) but would make the decoder's bins nearly points."""
    log_var = out["log_variance"]
    first = (t == 0).reshape(-1, *([1] * (log_var.ndim - 1)))
    if not bool(first.any()):
        return log_var
    low = decoder_min_log_variance(diffusion)
    if diffusion.variance_type == "learned_range":
        C = out["mean"].shape[1]
        frac = (out["model_output"][:, C:].to(log_var.dtype) + 1) / 2
        log_beta = float(diffusion.schedule.betas[0].log())
        return torch.where(first, frac * log_beta + (1 - frac) * low, log_var)
    return torch.where(first, torch.full_like(log_var, low), log_var)


def vb_terms_bpd(
    diffusion: "GaussianDiffusion",
    model: Callable | None,
    x_start: Tensor,
    x_t: Tensor,
    t: int | Tensor,
    model_output: Tensor | None = None,
    clip_denoised: bool = True,
    decoder: str = "discretized",
) -> dict[str, Tensor]:
    """One term of the bound per image at index ``t``: L_{t-1} (t > 0) or L_0 (t = 0), in bits/dim.

    ``x_start``, ``x_t``: ``[B x C x ...]``; ``t``: int or ``[B]``. L_{t-1} = KL(q(x_{t-1} | x_t, x_0) ||
    p_theta(x_{t-1} | x_t)) (DDPM eq. 5), L_0 = -log p_theta(x_0 | x_1) (sec. 3.3, or the Gaussian density with
    ``decoder="continuous"``). The model's step is ``diffusion.p_mean_variance`` on ``model_output`` (``[B x C x
    ...]``, ``[B x 2C x ...]`` for learned_range; run on ``model`` if not given) with x_0 clipped as configured unless
    ``clip_denoised=False``. Computed in the dtype of ``x_t`` (use float64 for the bound itself). Returns
    ``output`` ``[B]`` (bits/dim) and the step's ``pred_xstart``, ``mean`` and ``log_variance``.
    """
    _check_decoder(decoder)
    t = diffusion._timesteps(t, x_t)
    true_mean, _, true_log_var = diffusion.q_posterior(x_start, x_t, t)
    out = diffusion.p_mean_variance(model, x_t, t, model_output=model_output, clip_denoised=clip_denoised)
    log_var = reverse_log_variance(diffusion, out, t)
    kl = mean_over_dims(normal_kl(true_mean, true_log_var, out["mean"], log_var)) / LOG2
    if decoder == "discretized":
        nll = -discretized_gaussian_log_likelihood(x_start, out["mean"], 0.5 * log_var)
    else:
        nll = -gaussian_log_likelihood(x_start, out["mean"], log_var)
    decoder_nll = mean_over_dims(nll) / LOG2
    return {
        "output": torch.where(t == 0, decoder_nll, kl),
        "pred_xstart": out["pred_xstart"],
        "mean": out["mean"],
        "log_variance": log_var,
    }


def prior_bpd(diffusion: "GaussianDiffusion", x_start: Tensor) -> Tensor:
    """L_T = KL(q(x_T | x_0) || N(0, I)) per image ``[B]`` in bits/dim, for ``x_start`` ``[B x C x ...]`` (eq. 5).

    Independent of the model; about 1e-5 bits/dim for the linear schedule at T = 1000, 0 at zero terminal SNR.
    """
    x = x_start.to(torch.float64)
    mean, _, log_var = diffusion.q_mean_variance(x, diffusion.num_timesteps - 1)
    zero = torch.zeros((), dtype=torch.float64, device=x.device)
    return mean_over_dims(normal_kl(mean, log_var, zero, zero)) / LOG2


@dataclass
class BoundTerms:
    """The bound of DDPM eq. 5 per image, in bits/dim: ``total_bpd`` ``[B]`` = ``prior_bpd`` ``[B]`` (L_T) +
    ``vb_bpd.sum(1)``, where ``vb_bpd`` ``[B x T]`` holds L_0 (column 0, the decoder) and L_{t-1} (column t > 0).
    ``mse`` ``[B x T]`` is the eps-prediction error per dimension at each t (the L_simple term, eq. 14) and
    ``xstart_mse`` ``[B x T]`` that of the predicted x_0, both at the same draws."""

    total_bpd: Tensor
    prior_bpd: Tensor
    vb_bpd: Tensor
    mse: Tensor
    xstart_mse: Tensor

    @property
    def decoder_bpd(self) -> Tensor:
        """L_0 per image ``[B]``."""
        return self.vb_bpd[:, 0]


def _model_dtype(model: Callable, default: torch.dtype) -> torch.dtype:
    """The dtype of ``model``'s first floating parameter (what it must be fed), else ``default``."""
    params = getattr(model, "parameters", None)
    if callable(params):
        for p in params():
            if p.dtype.is_floating_point:
                return p.dtype
    return default


@torch.no_grad()
def calc_bpd_loop(
    diffusion: "GaussianDiffusion",
    model: Callable,
    x_start: Tensor,
    generator: torch.Generator | None = None,
    noise: Tensor | None = None,
    clip_denoised: bool = True,
    decoder: str = "discretized",
    max_batch: int = 256,
    progress: Callable[[int, int], None] | None = None,
) -> BoundTerms:
    """Every term of the bound (DDPM eq. 5) for each image of ``x_start`` ``[B x C x ...]``, in bits/dim.

    One x_t ~ q(x_t | x_0) per image and t (eq. 4), with ``noise[t]`` when ``noise`` ``[T x B x C x ...]`` is given,
    else drawn from ``generator`` for t = T-1 down to 0 (the same draws whatever ``max_batch``). The model sees
    several timesteps at once, at most ``max_batch`` images per call, in its own dtype; the terms are computed in
    float64 from its outputs. ``progress(done, T)`` is called after each model call. The cost is T network
    evaluations per image (1000 for the usual schedules), batched. Returns :class:`BoundTerms`.
    """
    _check_decoder(decoder)
    _check_data(x_start, decoder)
    if max_batch < 1:
        raise ValueError(f"max_batch must be >= 1, got {max_batch}")
    T, B = diffusion.num_timesteps, x_start.shape[0]
    if noise is not None and noise.shape != (T, *x_start.shape):
        raise ValueError(f"noise must have shape {(T, *x_start.shape)} ([T x B x ...]), got {tuple(noise.shape)}")
    x0 = x_start.to(torch.float64)
    model_dtype = _model_dtype(model, torch.float64)
    per_call = max(1, max_batch // B)
    vb = torch.zeros(B, T, dtype=torch.float64, device=x0.device)
    mse, xstart_mse = torch.zeros_like(vb), torch.zeros_like(vb)
    order = list(range(T - 1, -1, -1))
    for start in range(0, T, per_call):
        ts = order[start : start + per_call]
        eps = torch.stack(
            [
                (noise[t] if noise is not None else randn(x0.shape, generator, x0.device, x_start.dtype)).to(x0)
                for t in ts
            ]
        ).flatten(0, 1)
        t = torch.tensor(ts, device=x0.device).repeat_interleave(B)
        x0_rep = x0.repeat(len(ts), *([1] * (x0.ndim - 1)))
        x_t = diffusion.q_sample(x0_rep, t, eps)
        output = call_model(model, x_t.to(model_dtype), diffusion.model_timesteps(t)).to(torch.float64)
        terms = vb_terms_bpd(diffusion, None, x0_rep, x_t, t, output, clip_denoised, decoder)
        eps_hat = diffusion.noise_from_start(x_t, t, terms["pred_xstart"])
        rows = [T - 1 - i for i in range(start, start + len(ts))]  # column of each t in ts
        vb[:, rows] = terms["output"].reshape(len(ts), B).T
        mse[:, rows] = mean_over_dims((eps_hat - eps) ** 2).reshape(len(ts), B).T
        xstart_mse[:, rows] = mean_over_dims((terms["pred_xstart"] - x0_rep) ** 2).reshape(len(ts), B).T
        if progress is not None:
            progress(min(start + per_call, T), T)
    prior = prior_bpd(diffusion, x0)
    return BoundTerms(prior + vb.sum(1), prior, vb, mse, xstart_mse)
