"""DDIM (Song et al. 2021, eq. 12): x_prev = sqrt(abar_prev) x0_hat + sqrt(1 - abar_prev - sigma^2) eps_hat + sigma z,
sigma = eta sqrt((1 - abar_prev) / (1 - abar_t)) sqrt(1 - abar_t / abar_prev) (eq. 16); eta = 0 is deterministic.

The timesteps are DDIMScheduler's (those of :func:`ddpm_core.timesteps.inference_timesteps`). The previous
timestep of t is diffusers' t - T // N on those (for ``linspace`` and ``trailing`` with N not dividing T it is not
the next timestep run: T = 1000, N = 3, ``trailing``: 999 -> 666 -> 333 from 332), and the next one run on other
timesteps (a run started from a given x_t). After the last step abar_prev is 1 (``set_alpha_to_one``) or abar_0.
"""

from __future__ import annotations

import numpy as np
import torch

from .base import Plan, Sampler, Tensor


class DDIM(Sampler):
    name = "ddim"
    label = "DDIM"
    default_steps = 50
    offered_steps = (1000, 200, 50, 10)
    uses_eta = True
    deterministic = True  # at eta = 0
    diffusers_class = "DDIMScheduler"

    def __init__(self, use_clipped_model_output: bool = False):
        #: eps recomputed from the clipped x0 (diffusers' use_clipped_model_output) instead of the model's own
        self.use_clipped_model_output = use_clipped_model_output

    def tables(self, diffusion, timesteps, eta):
        abar_full = diffusion.schedule.alphas_cumprod
        abar = abar_full[torch.as_tensor(timesteps)]
        final = torch.ones(1, dtype=torch.float64) if diffusion.set_alpha_to_one else abar_full[:1]
        n = len(timesteps)
        if np.array_equal(timesteps, self.timesteps(diffusion, n)):
            prev = torch.as_tensor(timesteps) - diffusion.num_timesteps // n  # DDIMScheduler.step's prev_timestep
            abar_prev = torch.where(prev >= 0, abar_full[prev.clamp(min=0)], final)
        else:
            abar_prev = torch.cat([abar[1:], final])
        sigma = eta * ((1 - abar_prev) / (1 - abar) * (1 - abar / abar_prev)).clamp(min=0).sqrt()
        return {
            "sqrt_abar_prev": abar_prev.sqrt(),
            "dir_coef": (1 - abar_prev - sigma**2).clamp(min=0).sqrt(),
            "sigma": sigma,
        }

    def noise_steps(self, timesteps, eta):
        return [eta > 0] * len(timesteps)  # as diffusers: a draw on every step, the last one too

    def step(
        self, plan: Plan, k: Tensor, model_output: Tensor, x: Tensor, noise: Tensor | None, state
    ) -> tuple[Tensor, Tensor]:
        d = plan.diffusion
        pred = d.model_predictions(model_output, x, plan.index(k, x.shape[0]))
        x0, eps = pred.pred_xstart, pred.pred_noise
        if self.use_clipped_model_output:
            eps = d.noise_from_start(x, plan.index(k, x.shape[0]), x0)
        # eq. 12: predicted x_0, direction pointing to x_t, random noise
        x_prev = plan.at("sqrt_abar_prev", k, x) * x0 + plan.at("dir_coef", k, x) * eps
        if noise is not None:
            x_prev = x_prev + plan.at("sigma", k, x) * noise
        return x_prev, x0
