"""DDPM ancestral sampling (Ho et al. 2020, Algorithm 2): x_{t-1} = mu~_t(x_t, x0_hat) + sigma_t z.

With fewer steps, the kept timesteps form a respaced chain with beta'_t = 1 - abar_t / abar_prev (IDDPM sec. 4),
as diffusers' DDPMScheduler does. No noise is added where the original timestep is 0.
"""

from __future__ import annotations

from .base import Plan, Sampler, Tensor


class DDPM(Sampler):
    name = "ddpm"
    label = "DDPM (fewer steps)"
    default_steps = None  # the paper's chain: all T steps
    offered_steps = (1000, 100)
    deterministic = False
    diffusers_class = "DDPMScheduler"

    def noise_steps(self, timesteps, eta):
        return [bool(t > 0) for t in timesteps]

    def tables(self, diffusion, timesteps, eta):
        # the fast path replays one captured step for every position, noise included: the mask zeroes it at t = 0
        return {"noise_mask": [float(t > 0) for t in timesteps]}

    def step(
        self, plan: Plan, k: Tensor, model_output: Tensor, x: Tensor, noise: Tensor | None, state
    ) -> tuple[Tensor, Tensor]:
        t = plan.index(k, x.shape[0])
        return plan.diffusion.p_sample_step(model_output, x, t, noise, plan.at("noise_mask", k, x))
