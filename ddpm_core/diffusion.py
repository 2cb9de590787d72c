"""GaussianDiffusion: the forward process, the true posterior, the reverse step, the loss, in closed form.

The loops are the sampler registry's (:mod:`ddpm_core.samplers`); ``p_sample_loop`` and ``sample`` are the seed's
names for them.

Equation numbers refer to Ho et al. 2020, "Denoising Diffusion Probabilistic Models" (DDPM) unless marked
DDIM (Song et al. 2021) or IDDPM (Nichol & Dhariwal 2021). Method names follow the teaching notes
(``q_sample``, ``q_posterior``, ``predict_start_from_noise``, ``p_sample``, ``p_sample_loop``, ``sample``,
``p_losses``). diffusers' ``DDPMScheduler`` / ``DDIMScheduler`` are the numerical reference: with the same
``torch.Generator``, the loops draw the same random numbers in the same order (initial noise first, then one
draw per step) and reproduce DDPMPipeline and DDIMScheduler.

Shapes: samples are ``[B x C x H x W]`` (any trailing dims work) in [-1, 1]; ``t`` is a LongTensor ``[B]`` of
indices into this diffusion's schedule (a Python int is broadcast over the batch).
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass
from typing import Any, Callable, Iterator, Mapping, Sequence

import numpy as np
import torch
import torch.nn.functional as F

from .config import PREDICTION_TYPES, VARIANCE_TYPES, diffusion_config, diffusion_kwargs
from .samplers import DDIM, Sampler, get_sampler, sample_loop_progressive
from .samplers.loop import final_sample
from .schedule import NoiseSchedule
from .tensors import StepOutput, call_model, randn
from .timesteps import SPACINGS, inference_timesteps

Tensor = torch.Tensor

#: ``p_losses``' objectives: L_simple (eq. 14), IDDPM's L_hybrid = L_simple + lambda L_vlb (sec. 3.1), the bound L_vlb.
LOSS_TYPES = ("simple", "hybrid", "vlb")
_DDIM_DEPRECATED = "ddim_sample_loop* will go in the next release: use p_sample_loop*(..., sampler='ddim', eta=eta)"
#: IDDPM's lambda for L_hybrid (sec. 3.1): small enough that L_simple still drives the mean.
HYBRID_LAMBDA = 0.001


@dataclass
class ModelPrediction:
    """What a model output says about x_t ``[B x C x H x W]``: the predicted x_0 (clipped or thresholded as
    configured), the predicted noise eps (from the unclipped prediction, as diffusers derives it), and the
    learned-variance values v ``[B x C x ...]`` (``learned_range`` only, else None)."""

    pred_xstart: Tensor
    pred_noise: Tensor
    var_values: Tensor | None = None


class GaussianDiffusion:
    """DDPM on a :class:`NoiseSchedule`, numerically equal to diffusers' DDPMScheduler / DDIMScheduler.

    Args:
        schedule: the noise schedule (T steps).
        prediction_type: what the network predicts: ``epsilon`` (eq. 11), ``sample`` (x_0) or ``v_prediction``
            (v = sqrt(abar) eps - sqrt(1 - abar) x_0, Salimans & Ho 2022).
        variance_type: the reverse-step variance: ``fixed_small`` = the true posterior's beta~_t (eq. 7),
            ``fixed_large`` = beta_t (the paper's other choice, sigma_t^2 = beta_t; sec. 3.2), ``learned_range``
            (IDDPM eq. 15: the model outputs 2C channels, the second half v in [-1, 1] interpolating
            log beta~_t and log beta_t). ``fixed_small_log`` is diffusers' name for fixed_small via logs.
        clip_sample / clip_sample_range: clamp the predicted x_0 to +-range before the posterior step.
        thresholding / dynamic_thresholding_ratio / sample_max_value: Imagen's dynamic thresholding of x_0
            (wins over clip_sample, as in diffusers).
        timestep_spacing / steps_offset: how fewer inference steps are chosen (see :mod:`ddpm_core.timesteps`).
        set_alpha_to_one: DDIM only: abar after the final step is 1 (else abar_0).
        timestep_map: for a respaced diffusion, the original training timestep of each index (``[T']``).
    """

    def __init__(
        self,
        schedule: NoiseSchedule,
        prediction_type: str = "epsilon",
        variance_type: str = "fixed_small",
        clip_sample: bool = True,
        clip_sample_range: float = 1.0,
        thresholding: bool = False,
        dynamic_thresholding_ratio: float = 0.995,
        sample_max_value: float = 1.0,
        timestep_spacing: str = "leading",
        steps_offset: int = 0,
        set_alpha_to_one: bool = True,
        timestep_map: Sequence[int] | Tensor | None = None,
    ):
        if not isinstance(schedule, NoiseSchedule):
            raise ValueError(f"schedule must be a NoiseSchedule, got {type(schedule).__name__}")
        if prediction_type not in PREDICTION_TYPES:
            raise ValueError(f"unknown prediction_type {prediction_type!r}; choose one of {PREDICTION_TYPES}")
        if variance_type not in VARIANCE_TYPES:
            raise ValueError(f"unknown or unsupported variance_type {variance_type!r}; choose one of {VARIANCE_TYPES}")
        if timestep_spacing not in SPACINGS:
            raise ValueError(f"unknown timestep_spacing {timestep_spacing!r}; choose one of {SPACINGS}")
        if not clip_sample_range > 0:
            raise ValueError(f"clip_sample_range must be > 0, got {clip_sample_range}")
        if not 0 < dynamic_thresholding_ratio <= 1:
            raise ValueError(f"dynamic_thresholding_ratio must be in (0, 1], got {dynamic_thresholding_ratio}")
        if not sample_max_value >= 1:
            raise ValueError(f"sample_max_value must be >= 1, got {sample_max_value}")
        self.schedule = schedule
        self.num_timesteps = schedule.num_timesteps
        self.prediction_type = prediction_type
        self.variance_type = "fixed_small" if variance_type == "fixed_small_log" else variance_type
        self.clip_sample = bool(clip_sample)
        self.clip_sample_range = float(clip_sample_range)
        self.thresholding = bool(thresholding)
        self.dynamic_thresholding_ratio = float(dynamic_thresholding_ratio)
        self.sample_max_value = float(sample_max_value)
        self.timestep_spacing = timestep_spacing
        self.steps_offset = int(steps_offset)
        self.set_alpha_to_one = bool(set_alpha_to_one)
        if timestep_map is None:
            timestep_map = torch.arange(self.num_timesteps)
        self.timestep_map = torch.as_tensor(timestep_map, dtype=torch.long).cpu()
        if self.timestep_map.shape != (self.num_timesteps,):
            raise ValueError("timestep_map must have one entry per timestep")
        self._tables: dict[str, Tensor] = dict(schedule.as_dict())
        # Derived tables used by the reverse step (float64, computed once).
        self._tables["log_betas"] = schedule.betas.log()
        self._tables["posterior_std"] = (0.5 * schedule.posterior_log_variance_clipped).exp()
        self._tables["sqrt_betas"] = schedule.betas.sqrt()
        self._tables["timestep_map"] = self.timestep_map
        self._cache: dict[tuple[str, torch.device, torch.dtype], Tensor] = {}
        self._respaced: dict[tuple[int, ...], GaussianDiffusion] = {}

    # ------------------------------------------------------------------ config
    @classmethod
    def from_config(cls, config: Mapping[str, Any] | str, **overrides: Any) -> "GaussianDiffusion":
        """Build from a diffusers DDPMScheduler / DDIMScheduler config (a dict or a ``scheduler_config.json`` path).

        Every DDPMScheduler key is honoured; unknown keys or unsupported values raise ``ValueError`` naming them.
        ``overrides`` replace config values (e.g. ``variance_type="fixed_small"``). See :mod:`ddpm_core.config`.
        """
        schedule, kwargs = diffusion_kwargs(config, **overrides)
        return cls(schedule, **kwargs)

    def to_config(self) -> dict[str, Any]:
        """A DDPMScheduler config dict that rebuilds this diffusion (custom schedules as ``trained_betas``)."""
        return diffusion_config(self)

    # ------------------------------------------------------------------ tensors
    def _coef(self, name: str, device: torch.device, dtype: torch.dtype) -> Tensor:
        """A schedule table cast once to ``device``/``dtype`` and cached (no per-step host work)."""
        key = (name, torch.device(device), dtype)
        table = self._cache.get(key)
        if table is None:
            table = self._tables[name].to(device=device, dtype=dtype)
            self._cache[key] = table
        return table

    def _extract(self, name: str, t: Tensor, x: Tensor) -> Tensor:
        """``table[t]`` reshaped to ``[B, 1, 1, ...]`` to broadcast against ``x`` ([B x ...])."""
        table = self._coef(name, x.device, x.dtype)
        return table[t].reshape(t.shape[0], *([1] * (x.ndim - 1)))

    def _timesteps(self, t: int | Tensor, x: Tensor) -> Tensor:
        """Validate ``t`` (int or LongTensor ``[B]``) against the schedule and ``x``; return it as ``[B]`` on x.device."""
        if x.ndim < 2:
            raise ValueError(f"samples must be [B x C x ...], got shape {tuple(x.shape)}")
        B = x.shape[0]
        if isinstance(t, bool):
            raise ValueError("t must be an integer timestep or a LongTensor of shape [B]")
        if isinstance(t, (int, np.integer)):
            t = torch.full((B,), int(t), dtype=torch.long, device=x.device)
        if not isinstance(t, torch.Tensor):
            raise ValueError(f"t must be an int or a LongTensor, got {type(t).__name__}")
        if t.dtype.is_floating_point or t.dtype == torch.bool or t.is_complex():
            raise ValueError(f"t must hold integers, got dtype {t.dtype}")
        if t.ndim == 0:
            t = t.expand(B)
        if t.shape != (B,):
            raise ValueError(f"t must have shape [{B}] to match the batch, got {tuple(t.shape)}")
        lo, hi = int(t.min()), int(t.max())
        if lo < 0 or hi >= self.num_timesteps:
            raise ValueError(f"timestep out of range: got t in [{lo}, {hi}], allowed [0, {self.num_timesteps - 1}]")
        return t.to(device=x.device, dtype=torch.long)

    @staticmethod
    def _same_shape(a: Tensor, b: Tensor, what: str) -> None:
        if a.shape != b.shape:
            raise ValueError(f"{what}: shapes differ, {tuple(a.shape)} vs {tuple(b.shape)}")

    # ------------------------------------------------------------------ forward process
    def q_mean_variance(self, x_start: Tensor, t: int | Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """q(x_t | x_0) (eq. 4): mean sqrt(abar_t) x_0 ``[B x C x H x W]``, variance and log-variance ``[B x 1 x 1 x 1]``."""
        t = self._timesteps(t, x_start)
        mean = self._extract("sqrt_alphas_cumprod", t, x_start) * x_start
        return (
            mean,
            1.0 - self._extract("alphas_cumprod", t, x_start),
            self._extract("log_one_minus_alphas_cumprod", t, x_start),
        )

    def q_sample(
        self, x_start: Tensor, t: int | Tensor, noise: Tensor | None = None, generator: torch.Generator | None = None
    ) -> Tensor:
        """Sample x_t ~ q(x_t | x_0) in one shot (eq. 4): x_t = sqrt(abar_t) x_0 + sqrt(1 - abar_t) eps.

        ``x_start``, ``noise`` and the result are ``[B x C x H x W]``; equals ``DDPMScheduler.add_noise``.
        """
        t = self._timesteps(t, x_start)
        if noise is None:
            noise = randn(x_start.shape, generator, x_start.device, x_start.dtype)
        self._same_shape(x_start, noise, "q_sample(x_start, noise)")
        return self._q_sample(x_start, t, noise)

    def _q_sample(self, x_start: Tensor, t: Tensor, noise: Tensor) -> Tensor:
        return (
            self._extract("sqrt_alphas_cumprod", t, x_start) * x_start
            + self._extract("sqrt_one_minus_alphas_cumprod", t, x_start) * noise
        )

    def q_posterior(self, x_start: Tensor, x_t: Tensor, t: int | Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """The *true* posterior q(x_{t-1} | x_t, x_0) = N(mu~_t, beta~_t I), eq. 6-7.

        It is "true" because, given x_0, it is exactly computable from the forward process; it is the distribution
        the reverse step would ideally sample from. At sampling time x_0 is unknown, so the model's predicted x_0
        stands in for it (``p_mean_variance``). Returns the mean ``[B x C x H x W]``, the variance and the
        clipped log-variance ``[B x 1 x 1 x 1]``.
        """
        self._same_shape(x_start, x_t, "q_posterior(x_start, x_t)")
        t = self._timesteps(t, x_t)
        return (
            self.posterior_mean(x_start, x_t, t),
            self._extract("posterior_variance", t, x_t),
            self._extract("posterior_log_variance_clipped", t, x_t),
        )

    def posterior_mean(self, x_start: Tensor, x_t: Tensor, t: Tensor) -> Tensor:
        """mu~_t(x_t, x_0) of eq. 7 ``[B x C x H x W]``, tensor-only (``t``: indices ``[B]``)."""
        # mu~_t = sqrt(abar_{t-1}) beta_t / (1 - abar_t) x_0 + sqrt(alpha_t) (1 - abar_{t-1}) / (1 - abar_t) x_t
        return (
            self._extract("posterior_mean_coef1", t, x_t) * x_start
            + self._extract("posterior_mean_coef2", t, x_t) * x_t
        )

    # ------------------------------------------------------------------ parameterisations
    def predict_start_from_noise(self, x_t: Tensor, t: int | Tensor, noise: Tensor) -> Tensor:
        """x_0 from x_t and eps, eq. 4 solved for x_0 (used in eq. 15): (x_t - sqrt(1 - abar_t) eps) / sqrt(abar_t)."""
        self._same_shape(x_t, noise, "predict_start_from_noise(x_t, noise)")
        return self._start_from_noise(x_t, self._timesteps(t, x_t), noise)

    def _start_from_noise(self, x_t: Tensor, t: Tensor, eps: Tensor) -> Tensor:
        # The division form stays finite where abar_t is tiny and matches diffusers' float32 arithmetic.
        return (x_t - self._extract("sqrt_one_minus_alphas_cumprod", t, x_t) * eps) / self._extract(
            "sqrt_alphas_cumprod", t, x_t
        )

    def predict_start_from_v(self, x_t: Tensor, t: int | Tensor, v: Tensor) -> Tensor:
        """x_0 = sqrt(abar_t) x_t - sqrt(1 - abar_t) v (Salimans & Ho 2022, sec. 4)."""
        self._same_shape(x_t, v, "predict_start_from_v(x_t, v)")
        return self._start_from_v(x_t, self._timesteps(t, x_t), v)

    def _start_from_v(self, x_t: Tensor, t: Tensor, v: Tensor) -> Tensor:
        return (
            self._extract("sqrt_alphas_cumprod", t, x_t) * x_t
            - self._extract("sqrt_one_minus_alphas_cumprod", t, x_t) * v
        )

    def predict_noise_from_start(self, x_t: Tensor, t: int | Tensor, x_start: Tensor) -> Tensor:
        """eps = (x_t - sqrt(abar_t) x_0) / sqrt(1 - abar_t)."""
        self._same_shape(x_t, x_start, "predict_noise_from_start(x_t, x_start)")
        return self.noise_from_start(x_t, self._timesteps(t, x_t), x_start)

    def noise_from_start(self, x_t: Tensor, t: Tensor, x_start: Tensor) -> Tensor:
        """eps from x_t and x_0 ``[B x C x H x W]``, tensor-only (``t``: indices ``[B]``)."""
        return (x_t - self._extract("sqrt_alphas_cumprod", t, x_t) * x_start) / self._extract(
            "sqrt_one_minus_alphas_cumprod", t, x_t
        )

    def get_v(self, x_start: Tensor, noise: Tensor, t: int | Tensor) -> Tensor:
        """The v-prediction target v = sqrt(abar_t) eps - sqrt(1 - abar_t) x_0 (== DDPMScheduler.get_velocity)."""
        self._same_shape(x_start, noise, "get_v(x_start, noise)")
        return self._v(x_start, noise, self._timesteps(t, x_start))

    def _v(self, x_start: Tensor, noise: Tensor, t: Tensor) -> Tensor:
        return (
            self._extract("sqrt_alphas_cumprod", t, x_start) * noise
            - self._extract("sqrt_one_minus_alphas_cumprod", t, x_start) * x_start
        )

    def _threshold(self, x0: Tensor) -> Tensor:
        """Clip or dynamically threshold x_0 ``[B x ...]`` (Saharia et al. 2022, sec. 2.3), as diffusers does."""
        if self.thresholding:
            dtype, B = x0.dtype, x0.shape[0]
            flat = x0.reshape(B, -1)
            if dtype not in (torch.float32, torch.float64):
                flat = flat.float()  # quantile is not implemented in half precision
            s = torch.quantile(flat.abs(), self.dynamic_thresholding_ratio, dim=1)
            s = s.clamp(min=1, max=self.sample_max_value).unsqueeze(1)
            return (flat.clamp(-s, s) / s).reshape(x0.shape).to(dtype)
        if self.clip_sample:
            return x0.clamp(-self.clip_sample_range, self.clip_sample_range)
        return x0

    def _split_output(self, model_output: Tensor, x: Tensor) -> tuple[Tensor, Tensor | None]:
        """Split a ``learned_range`` model's ``[B x 2C x ...]`` output into (prediction, variance values v)."""
        C = x.shape[1]
        if self.variance_type == "learned_range":
            if model_output.shape[1] != 2 * C or model_output.shape[2:] != x.shape[2:]:
                raise ValueError(
                    f"variance_type='learned_range' needs a model output of {2 * C} channels (prediction and variance), "
                    f"got shape {tuple(model_output.shape)} for samples {tuple(x.shape)}"
                )
            return model_output[:, :C], model_output[:, C:]
        if model_output.shape != x.shape:
            hint = (
                " (a learned-variance model: use variance_type='learned_range')"
                if model_output.shape[1] == 2 * C
                else ""
            )
            raise ValueError(
                f"model output shape {tuple(model_output.shape)} does not match samples {tuple(x.shape)}{hint}"
            )
        return model_output, None

    def model_predictions(
        self, model_output: Tensor, x_t: Tensor, t: Tensor, clip_denoised: bool = True
    ) -> ModelPrediction:
        """x0_hat (clipped or thresholded unless ``clip_denoised=False``) and eps_hat from a model output, for every
        prediction type: the one place that reads a model output. Tensor-only (no checks, no host sync): ``t`` are
        indices ``[B]``."""
        pred, var_values = self._split_output(model_output, x_t)
        if self.prediction_type == "epsilon":
            x0, eps = self._start_from_noise(x_t, t, pred), pred  # eq. 15
        elif self.prediction_type == "sample":
            x0, eps = pred, self.noise_from_start(x_t, t, pred)
        else:  # v = sqrt(abar) eps - sqrt(1 - abar) x_0 (Salimans & Ho 2022)
            a, b = self._extract("sqrt_alphas_cumprod", t, x_t), self._extract("sqrt_one_minus_alphas_cumprod", t, x_t)
            x0, eps = self._start_from_v(x_t, t, pred), a * pred + b * x_t
        return ModelPrediction(self._threshold(x0) if clip_denoised else x0, eps, var_values)

    def x0_at(self, model_output: Tensor, x_t: Tensor, alpha: Tensor, sigma: Tensor) -> Tensor:
        """x0_hat (clipped or thresholded as configured) from a model output at the noise level x_t = alpha x_0 +
        sigma eps given by ``alpha``, ``sigma`` (``[B x 1 x ...]``) rather than by a timestep index: for samplers
        that step between the training timesteps (Karras sigmas). Tensor-only."""
        pred, _ = self._split_output(model_output, x_t)
        if self.prediction_type == "epsilon":
            x0 = (x_t - sigma * pred) / alpha  # eq. 15
        elif self.prediction_type == "sample":
            x0 = pred
        else:  # v = alpha eps - sigma x_0
            x0 = alpha * x_t - sigma * pred
        return self._threshold(x0)

    def reverse_std(self, x_t: Tensor, t: Tensor, var_values: Tensor | None = None) -> Tensor:
        """sigma_t of the reverse step: ``[B x 1 x ...]`` for fixed variances, ``[B x C x ...]`` for learned_range."""
        if self.variance_type == "fixed_small":
            return self._extract("posterior_std", t, x_t)
        if self.variance_type == "fixed_large":
            return self._extract("sqrt_betas", t, x_t)
        return torch.exp(0.5 * self._learned_log_variance(x_t, t, var_values))

    def _learned_log_variance(self, x_t: Tensor, t: Tensor, var_values: Tensor) -> Tensor:
        # IDDPM eq. 15: v in [-1, 1] interpolates log beta~_t and log beta_t
        frac = (var_values + 1) / 2
        return frac * self._extract("log_betas", t, x_t) + (1 - frac) * self._extract(
            "posterior_log_variance_clipped", t, x_t
        )

    def model_timesteps(self, t: Tensor) -> Tensor:
        """The original training timesteps the model sees at indices ``t`` ``[B]`` (respacing-aware)."""
        return self._coef("timestep_map", t.device, torch.long).index_select(0, t)

    # ------------------------------------------------------------------ reverse process
    def p_mean_variance(
        self,
        model: Callable | None,
        x_t: Tensor,
        t: int | Tensor,
        model_output: Tensor | None = None,
        clip_denoised: bool = True,
    ) -> dict[str, Tensor]:
        """p_theta(x_{t-1} | x_t) = N(mu_theta, Sigma_theta) (eq. 1), with mu from the true posterior at the predicted x_0.

        ``clip_denoised=False`` leaves the predicted x_0 unclipped (the training losses' step, as IDDPM's). Returns ``mean`` and ``pred_xstart`` ``[B x C x H x W]``, ``variance`` and ``log_variance`` (``[B x 1 x 1 x 1]``
        for fixed variances, ``[B x C x H x W]`` for ``learned_range``), and the raw ``model_output``.
        """
        t = self._timesteps(t, x_t)
        model_output = self._output_of(model, x_t, t, model_output, "p_mean_variance")
        return self._p_mean_variance(model_output, x_t, t, clip_denoised)

    def model_output(self, model: Callable, x_t: Tensor, t: int | Tensor) -> Tensor:
        """The raw output of ``model`` on ``x_t`` ``[B x C x H x W]`` at indices ``t`` (it sees the training timesteps)."""
        t = self._timesteps(t, x_t)
        return call_model(model, x_t, self.model_timesteps(t))

    def _output_of(self, model: Callable | None, x_t: Tensor, t: Tensor, model_output: Tensor | None, who: str):
        if model_output is not None:
            return model_output
        if model is None:
            raise ValueError(f"{who} needs a model or a model_output")
        return self.model_output(model, x_t, t)

    def _p_mean_variance(
        self, model_output: Tensor, x_t: Tensor, t: Tensor, clip_denoised: bool = True
    ) -> dict[str, Tensor]:
        # 1. predicted x_0 (eq. 15 for epsilon), clipped or thresholded; 2. the posterior mean there (eq. 7)
        pred = self.model_predictions(model_output, x_t, t, clip_denoised)
        mean = self.posterior_mean(pred.pred_xstart, x_t, t)
        # 3. the variance choice
        if self.variance_type == "learned_range":
            log_var = self._learned_log_variance(x_t, t, pred.var_values)
        else:
            log_var = self._extract(
                "posterior_log_variance_clipped" if self.variance_type == "fixed_small" else "log_betas", t, x_t
            )
        std = self.reverse_std(x_t, t, pred.var_values)
        return {
            "mean": mean,
            "variance": std * std,
            "log_variance": log_var,
            "std": std,
            "pred_xstart": pred.pred_xstart,
            "model_output": model_output,
        }

    def p_sample_step(
        self,
        model_output: Tensor,
        x_t: Tensor,
        t: Tensor,
        noise: Tensor | None = None,
        noise_mask: Tensor | float = 1.0,
    ) -> tuple[Tensor, Tensor]:
        """Algorithm 2, line 4: x_{t-1} = mu~_t(x_t, x0_hat) + sigma_t z, with mu~_t of eq. 7 at the predicted x_0
        (eq. 15); returns (x_{t-1}, x0_hat), both ``[B x C x H x W]``. Tensor-only (``t``: indices ``[B]``), the
        DDPM sampler's step and :meth:`p_sample`'s. ``noise=None`` returns the mean; ``noise_mask`` (``[B x 1 x
        ...]``, 0 or 1) zeroes the noise where the original timestep is 0."""
        pred = self.model_predictions(model_output, x_t, t)
        mean = self.posterior_mean(pred.pred_xstart, x_t, t)
        if noise is None:
            return mean, pred.pred_xstart
        return mean + noise_mask * self.reverse_std(x_t, t, pred.var_values) * noise, pred.pred_xstart

    def p_sample(
        self,
        model: Callable | None,
        x_t: Tensor,
        t: int | Tensor,
        generator: torch.Generator | None = None,
        model_output: Tensor | None = None,
        noise: Tensor | None = None,
    ) -> StepOutput:
        """One reverse step x_t -> x_{t-1} ~ p_theta(x_{t-1} | x_t) (Algorithm 2, line 4). Equals DDPMScheduler.step.

        Noise is added only where the original timestep is > 0 (the last step returns the mean). Pass
        ``model_output`` to skip the model call, ``noise`` to fix the draw.
        """
        t = self._timesteps(t, x_t)
        model_output = self._output_of(model, x_t, t, model_output, "p_sample")
        last = self.model_timesteps(t) == 0  # the last step (original t = 0) returns the mean
        if bool(last.all()):
            return StepOutput(*self.p_sample_step(model_output, x_t, t))
        if noise is None:
            noise = randn(x_t.shape, generator, x_t.device, x_t.dtype)
        mask = (~last).to(noise.dtype).reshape(-1, *([1] * (noise.ndim - 1)))
        return StepOutput(*self.p_sample_step(model_output, x_t, t, noise, mask))

    # ------------------------------------------------------------------ respacing
    def respace(self, timesteps: Sequence[int] | np.ndarray | Tensor) -> "GaussianDiffusion":
        """This diffusion restricted to ``timesteps`` (original indices), as IDDPM's SpacedDiffusion.

        The result has ``len(timesteps)`` steps; its index i maps to the i-th smallest kept timestep, which is
        what the model receives. The full chain returns ``self``.
        """
        ts = torch.as_tensor(np.asarray(timesteps), dtype=torch.long).flatten().sort().values
        key = tuple(ts.tolist())
        if len(key) == self.num_timesteps and key == tuple(range(self.num_timesteps)):
            return self
        cached = self._respaced.get(key)
        if cached is None:
            cached = GaussianDiffusion(
                self.schedule.respace(ts),
                prediction_type=self.prediction_type,
                variance_type=self.variance_type,
                clip_sample=self.clip_sample,
                clip_sample_range=self.clip_sample_range,
                thresholding=self.thresholding,
                dynamic_thresholding_ratio=self.dynamic_thresholding_ratio,
                sample_max_value=self.sample_max_value,
                timestep_spacing=self.timestep_spacing,
                steps_offset=self.steps_offset,
                set_alpha_to_one=self.set_alpha_to_one,
                timestep_map=self.timestep_map[ts],
            )
            if len(self._respaced) > 32:
                self._respaced.clear()
            self._respaced[key] = cached
        return cached

    def inference_timesteps(self, num_inference_steps: int | None = None) -> np.ndarray:
        """The descending original timesteps an ``N``-step run visits (this diffusion's spacing and offset)."""
        return inference_timesteps(self.num_timesteps, num_inference_steps, self.timestep_spacing, self.steps_offset)

    def p_sample_loop_progressive(
        self,
        model: Callable,
        shape: Sequence[int] | None = None,
        num_inference_steps: int | None = None,
        generator: torch.Generator | None = None,
        noise: Tensor | None = None,
        device: torch.device | str | None = None,
        dtype: torch.dtype | None = None,
        timesteps: Sequence[int] | None = None,
        sampler: str | Sampler = "ddpm",
        eta: float = 0.0,
    ) -> Iterator[StepOutput]:
        """Yield a :class:`StepOutput` after every reverse step of Algorithm 2 (or of ``sampler``, a name of
        :data:`ddpm_core.samplers.SAMPLERS` or a :class:`~ddpm_core.samplers.Sampler`), from x_T = ``noise`` (or
        fresh noise ``[B x C x H x W]`` of ``shape``): :func:`ddpm_core.samplers.sample_loop_progressive`.

        ``num_inference_steps=None`` runs all T steps; fewer steps use the sampler's timesteps (for DDPM and DDIM,
        this diffusion's ``timestep_spacing``) and respaced betas; ``timesteps`` (descending original timesteps)
        overrides both, e.g. to start from x_t. ``eta``: DDIM's (eq. 16).
        """
        sampler = get_sampler(sampler) if isinstance(sampler, str) else sampler
        if timesteps is None:
            timesteps = sampler.timesteps(self, num_inference_steps)
        yield from sample_loop_progressive(
            self, sampler, model, shape, timesteps, generator, noise, device, dtype, eta
        )

    def p_sample_loop(
        self, model: Callable, *args: Any, callback: Callable[[StepOutput], None] | None = None, **kwargs: Any
    ) -> Tensor:
        """Algorithm 2 of DDPM: from x_T ~ N(0, I) ``[B x C x H x W]`` down to x_0; returns x_0 (not clamped).
        Arguments as :meth:`p_sample_loop_progressive`; ``callback`` sees every :class:`StepOutput` (t, x_t,
        x_{t-1}, predicted x_0).

        With the same generator this reproduces DDPMPipeline (its ``output_type="np"`` is ``(x_0 / 2 + 0.5).clamp(0, 1)``).
        """
        return final_sample(self.p_sample_loop_progressive(model, *args, **kwargs), callback)

    def sample(
        self, model: Callable, image_size: int, batch_size: int = 16, channels: int = 3, **kwargs: Any
    ) -> Tensor:
        """``p_sample_loop`` for ``batch_size`` square images: returns ``[batch_size x channels x image_size x image_size]``."""
        return self.p_sample_loop(model, (batch_size, channels, image_size, image_size), **kwargs)

    def ddim_sample_loop_progressive(
        self,
        model: Callable,
        shape: Sequence[int] | None = None,
        num_inference_steps: int = 50,
        eta: float = 0.0,
        generator: torch.Generator | None = None,
        noise: Tensor | None = None,
        device: torch.device | str | None = None,
        dtype: torch.dtype | None = None,
        timesteps: Sequence[int] | None = None,
        use_clipped_model_output: bool = False,
    ) -> Iterator[StepOutput]:
        """Deprecated: ``p_sample_loop_progressive(..., sampler=DDIM(use_clipped_model_output), eta=eta)``."""
        warnings.warn(_DDIM_DEPRECATED, DeprecationWarning, stacklevel=2)
        args = (shape, num_inference_steps, generator, noise, device, dtype, timesteps)
        return self.p_sample_loop_progressive(model, *args, sampler=DDIM(use_clipped_model_output), eta=eta)

    def ddim_sample_loop(
        self,
        model: Callable,
        shape: Sequence[int] | None = None,
        num_inference_steps: int = 50,
        eta: float = 0.0,
        callback: Callable[[StepOutput], None] | None = None,
        **kwargs: Any,
    ) -> Tensor:
        """Deprecated: ``p_sample_loop(..., sampler="ddim", eta=eta)``."""
        warnings.warn(_DDIM_DEPRECATED, DeprecationWarning, stacklevel=2)
        steps = self.p_sample_loop_progressive(model, shape, num_inference_steps, sampler="ddim", eta=eta, **kwargs)
        return final_sample(steps, callback)

    # ------------------------------------------------------------------ the bound (eq. 5), see ddpm_core.likelihood
    def vb_terms_bpd(self, model: Callable | None, x_start: Tensor, x_t: Tensor, t: int | Tensor, **kwargs: Any):
        """L_{t-1} (t > 0) or L_0 (t = 0) per image ``[B]`` in bits/dim: :func:`ddpm_core.likelihood.vb_terms_bpd`."""
        from .likelihood import vb_terms_bpd

        return vb_terms_bpd(self, model, x_start, x_t, t, **kwargs)

    def prior_bpd(self, x_start: Tensor) -> Tensor:
        """L_T = KL(q(x_T | x_0) || N(0, I)) per image ``[B]``: :func:`ddpm_core.likelihood.prior_bpd`."""
        from .likelihood import prior_bpd

        return prior_bpd(self, x_start)

    def calc_bpd_loop(self, model: Callable, x_start: Tensor, **kwargs: Any):
        """Every term of the bound per image, in bits/dim: :func:`ddpm_core.likelihood.calc_bpd_loop`."""
        from .likelihood import calc_bpd_loop

        return calc_bpd_loop(self, model, x_start, **kwargs)

    # ------------------------------------------------------------------ training
    def p_losses(
        self,
        model: Callable,
        x_start: Tensor,
        t: int | Tensor | None = None,
        noise: Tensor | None = None,
        generator: torch.Generator | None = None,
        snr_gamma: float | None = None,
        loss_type: str = "simple",
    ) -> Tensor:
        """The training loss for this diffusion's prediction type; returns a scalar.

        ``loss_type``: ``simple`` is L_simple (eq. 14), the fixed variances' objective; ``hybrid`` is IDDPM's
        L_hybrid = L_simple + lambda L_vlb (Nichol & Dhariwal 2021, sec. 3.1, lambda = :data:`HYBRID_LAMBDA`), which
        trains a ``learned_range`` model's variance through the bound while a stop-gradient on the mean leaves the
        mean to L_simple; ``vlb`` is the bound alone (through mean and variance, any variance type). L_vlb is
        estimated at the drawn t as T L_{t-1} (T L_0 at t = 0) in bits/dim (:func:`ddpm_core.likelihood.vb_terms_bpd`,
        x_0 unclipped), an unbiased estimate of L - L_T, as improved-diffusion computes it.

        Draws ``t`` uniformly from [0, T-1] and ``noise`` ~ N(0, I) unless given. The target is eps (``epsilon``),
        x_0 (``sample``) or v (``v_prediction``). ``snr_gamma`` applies Min-SNR-gamma weighting (Hang et al. 2023),
        per sample with SNR_t = abar_t / (1 - abar_t): min(SNR, gamma) for x_0,
        min(SNR, gamma) / (SNR + 1) for v, and min(SNR, gamma) / SNR for eps. The eps weight is 0/0 where SNR = 0
        (zero terminal SNR, Lin et al. 2024); it is taken as its limit min(1, gamma / SNR) -> 1, computed as
        gamma / max(SNR, gamma), which never divides by zero and equals min(SNR, gamma) / SNR bit for bit where
        SNR > 0. ``x_start`` and ``noise`` are ``[B x C x ...]``, ``t`` is ``[B]``.
        """
        if x_start.ndim < 2:
            raise ValueError(f"x_start must be [B x C x ...], got shape {tuple(x_start.shape)}")
        if snr_gamma is not None and not 0 < snr_gamma < float("inf"):
            raise ValueError(f"snr_gamma must be a finite number > 0 (5.0 in Hang et al. 2023), got {snr_gamma}")
        self._check_loss_type(loss_type, snr_gamma)
        if t is None:
            device = generator.device if generator else x_start.device
            t = torch.randint(0, self.num_timesteps, x_start.shape[:1], generator=generator, device=device)
        t = self._timesteps(t, x_start)
        if noise is None:
            noise = randn(x_start.shape, generator, x_start.device, x_start.dtype)
        self._same_shape(x_start, noise, "p_losses(x_start, noise)")
        x_t = self._q_sample(x_start, t, noise)
        out = call_model(model, x_t, self.model_timesteps(t))
        pred, var_values = self._split_output(out, x_start)
        loss = 0.0
        if loss_type != "vlb":
            if self.prediction_type == "epsilon":
                target = noise
            elif self.prediction_type == "sample":
                target = x_start
            else:
                target = self._v(x_start, noise, t)
            per_sample = F.mse_loss(pred.float(), target.float(), reduction="none").flatten(1).mean(1)
            if snr_gamma is not None:
                per_sample = per_sample * self.min_snr_weight(t, snr_gamma)
            loss = per_sample.mean()
        if loss_type != "simple":
            from .likelihood import vb_terms_bpd

            if loss_type == "hybrid":  # the bound trains the variance only: the mean is L_simple's
                out = torch.cat([pred.detach(), var_values], dim=1)
            vb = vb_terms_bpd(
                self, None, x_start.float(), x_t.float(), t, model_output=out.float(), clip_denoised=False
            )
            weight = self.num_timesteps * (HYBRID_LAMBDA if loss_type == "hybrid" else 1.0)
            loss = loss + weight * vb["output"].mean()
        return loss

    def _check_loss_type(self, loss_type: str, snr_gamma: float | None) -> None:
        if loss_type not in LOSS_TYPES:
            raise ValueError(f"unknown loss_type {loss_type!r}; choose one of {LOSS_TYPES}")
        learned = self.variance_type == "learned_range"
        if learned and loss_type == "simple":
            raise ValueError(
                "a learned_range model learns its variance through the bound: use loss_type='hybrid' (IDDPM's "
                "L_simple + 0.001 L_vlb) or 'vlb'; L_simple alone leaves the variance untrained"
            )
        if loss_type == "hybrid" and not learned:
            raise ValueError(
                "loss_type='hybrid' trains a learned variance (its L_vlb term has no gradient with a fixed one): "
                "use variance_type='learned_range', or loss_type='simple' or 'vlb'"
            )
        if loss_type == "vlb" and snr_gamma is not None:
            raise ValueError("snr_gamma weights L_simple's terms; loss_type='vlb' has none (it is the bound itself)")

    def min_snr_weight(self, t: Tensor, snr_gamma: float) -> Tensor:
        """Min-SNR-gamma loss weights ``[B]`` (float32) at timesteps ``t`` ``[B]`` for this prediction type (see
        :meth:`p_losses`): min(SNR, gamma) for x_0, min(SNR, gamma) / (SNR + 1) for v, min(SNR, gamma) / SNR for eps."""
        snr = self._coef("snr", t.device, torch.float32)[t]
        gamma = torch.full_like(snr, float(snr_gamma))
        if self.prediction_type == "epsilon":
            # min(SNR, g) / SNR = g / max(SNR, g): the same value for SNR > 0, and the limit 1 at SNR = 0.
            return gamma / torch.maximum(snr, gamma)
        if self.prediction_type == "v_prediction":
            return torch.minimum(snr, gamma) / (snr + 1)
        return torch.minimum(snr, gamma)

    def __repr__(self) -> str:
        return (
            f"GaussianDiffusion({self.schedule!r}, prediction_type={self.prediction_type!r}, "
            f"variance_type={self.variance_type!r}, clip_sample={self.clip_sample})"
        )
