"""Euler on Karras sigmas (Karras et al. 2022, "Elucidating the Design Space of Diffusion-Based Generative Models",
eq. 5 for the noise levels, Algorithm 1 without its second-order correction), as diffusers'
``EulerDiscreteScheduler.from_config(config, use_karras_sigmas=True)``.

diffusers integrates the probability-flow ODE dx/dsigma = (x - x0_hat) / sigma in the "VE" variables
x_VE = x / alpha, sigma = sqrt((1 - abar) / abar), from sigma_0 down to sigma_N = 0, with
sigma_i = (sigma_max^(1/rho) + i / (N - 1) (sigma_min^(1/rho) - sigma_max^(1/rho)))^rho, rho = 7, and calls the
model at the fractional timestep of each sigma (:func:`ddpm_core.timesteps.karras_timesteps`). The loop here keeps
the variance-preserving x = alpha x_VE (the x_t every sampler shows, and the model's input after diffusers'
``scale_model_input``), where an Euler step from sigma_s to sigma_t is the fused

    x_prev = A x + B x0_hat,   A = (alpha_t sigma_t) / (alpha_s sigma_s),   B = alpha_t (1 - sigma_t / sigma_s)

(alpha = 1 / sqrt(sigma^2 + 1); DDIM's update on these noise levels), x and x0_hat ``[batch x C x H x W]``, A, B
``[N]`` tables in float64. The last step (to sigma = 0) returns x0_hat. x_T is z times diffusers'
``init_noise_sigma`` (sigma_max for ``linspace``/``trailing``, sqrt(sigma_max^2 + 1) for ``leading``) times
alpha_0.

A zero terminal SNR schedule (abar_{T-1} = 0, sigma infinite there) gets diffusers' abar_{T-1} = 2^-24.

On purpose: x0_hat is clipped to [-1, 1] where the model's config asks (``clip_sample``, the bundled model does),
which EulerDiscreteScheduler cannot do. A run over given integer timesteps (from a given x_t) steps between their
sigmas without the Karras spacing, as ``set_timesteps(timesteps=...)`` without ``use_karras_sigmas``.
"""

from __future__ import annotations

import numpy as np
import torch

from ..timesteps import karras_timesteps, t_to_sigma
from .base import Plan, Sampler, Tensor


class EulerKarras(Sampler):
    name = "euler-karras"
    label = "Euler (Karras sigmas)"
    short_label = "Euler Karras"
    default_steps = 20
    offered_steps = (20, 10)
    diffusers_class = "EulerDiscreteScheduler"
    diffusers_kwargs = {"use_karras_sigmas": True}
    fractional_timesteps = True
    terminal_abar_floor = 2.0**-24  # EulerDiscreteScheduler's, for a zero terminal SNR schedule

    def timesteps(self, diffusion, num_inference_steps=None):
        n = diffusion.num_timesteps if num_inference_steps is None else num_inference_steps
        abar = self.alphas_cumprod(diffusion)
        return karras_timesteps(abar, n, diffusion.timestep_spacing, diffusion.steps_offset)[0]

    def ve_sigmas(self, diffusion, steps) -> np.ndarray:
        """The VE sigma of each step ``[N]`` and 0 after the last: ``[N + 1]`` float64."""
        abar = self.alphas_cumprod(diffusion).numpy()
        return np.append(t_to_sigma(steps, np.sqrt((1 - abar) / abar)), 0.0)

    def x_T_scale(self, diffusion, steps):
        if diffusion.timestep_spacing == "leading":
            return 1.0  # sqrt(sigma_max^2 + 1) alpha_0 = 1
        sigma = self.ve_sigmas(diffusion, steps)[0]
        return float(sigma / np.sqrt(sigma**2 + 1))

    def tables(self, diffusion, timesteps, eta):
        sig = torch.as_tensor(self.ve_sigmas(diffusion, timesteps))
        alpha = 1 / (sig**2 + 1).sqrt()
        s, t = slice(0, -1), slice(1, None)
        ratio = sig[t] / sig[s]
        return {
            "alpha": alpha[s],
            "sigma": sig[s] * alpha[s],
            "x_coef": alpha[t] / alpha[s] * ratio,
            "x0_coef": alpha[t] * (1 - ratio),
        }

    def step(
        self, plan: Plan, k: Tensor, model_output: Tensor, x: Tensor, noise: Tensor | None, state
    ) -> tuple[Tensor, Tensor]:
        x0 = plan.diffusion.x0_at(model_output, x, plan.at("alpha", k, x), plan.at("sigma", k, x))
        return plan.at("x_coef", k, x) * x + plan.at("x0_coef", k, x) * x0, x0
