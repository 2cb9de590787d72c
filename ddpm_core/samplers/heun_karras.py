"""Heun on Karras sigmas (Karras et al. 2022, Algorithm 1 with S_churn = 0): an Euler step to sigma_{i+1} and,
unless sigma_{i+1} = 0, a second network evaluation there and the trapezoidal correction

    x_VE(i+1) = x_VE(i) + (sigma_{i+1} - sigma_i) (d_i + d'_{i+1}) / 2,   d = (x_VE - x0_hat) / sigma,

as diffusers' ``HeunDiscreteScheduler.from_config(config, use_karras_sigmas=True)``: 2N - 1 network evaluations
for N steps, at the timesteps t_0, t_1, t_1, t_2, t_2, ..., t_{N-1}, t_{N-1}. Each evaluation is one loop position
(the loop and the tabs count evaluations). In the loop's variance-preserving x = alpha x_VE, with s = sigma_i,
n = sigma_{i+1}, dt = n - s, the correction is the fused

    x_prev = (alpha_n / alpha_s)(1 + dt / 2s) x_s - alpha_n dt / 2s x0_s + dt / 2n x - alpha_n dt / 2n x0_hat

from the Euler position's x_s and x0_s (``state``) and the predicted x at sigma_{i+1} with its x0_hat; the
Euler positions are those of :mod:`ddpm_core.samplers.euler_karras`. HeunDiscreteScheduler applies the config's
``clip_sample`` itself, so the two clip alike.
"""

from __future__ import annotations

import numpy as np
import torch

from .base import Plan, Tensor
from .euler_karras import EulerKarras


class HeunKarras(EulerKarras):
    name = "heun-karras"
    label = "Heun (Karras sigmas)"
    short_label = "Heun Karras"
    default_steps = 10
    offered_steps = (10, 5)  # 19 and 9 network evaluations
    order = 2
    evaluations_per_step = 2
    diffusers_class = "HeunDiscreteScheduler"
    terminal_abar_floor = None  # HeunDiscreteScheduler has none: a zero terminal SNR is a ValueError here

    def evaluation_timesteps(self, steps):
        steps = np.asarray(steps)
        return np.concatenate([steps[:1], np.repeat(steps[1:], 2)])

    def tables(self, diffusion, timesteps, eta):
        sig = torch.as_tensor(self.ve_sigmas(diffusion, timesteps))
        alpha = 1 / (sig**2 + 1).sqrt()
        n = len(timesteps)
        euler = super().tables(diffusion, timesteps, eta)
        s, t = slice(0, n - 1), slice(1, n)
        dt = sig[t] - sig[s]
        half_s, half_n = dt / (2 * sig[s]), dt / (2 * sig[t])
        zeros = torch.zeros(n, dtype=torch.float64)
        tables = {}
        # positions 0, 2, 4, ...: Euler from sigma_i; 1, 3, ...: the correction, x0_hat read at sigma_{i+1}
        for name, first, second in (
            ("alpha", euler["alpha"], alpha[t]),
            ("sigma", euler["sigma"], sig[t] * alpha[t]),
            ("x_coef", euler["x_coef"], half_n),
            ("x0_coef", euler["x0_coef"], -alpha[t] * half_n),
            ("xs_coef", zeros, alpha[t] / alpha[s] * (1 + half_s)),
            ("x0s_coef", zeros, -alpha[t] * half_s),
        ):
            both = torch.empty(2 * n - 1, dtype=torch.float64)
            both[0::2], both[1::2] = first, second
            tables[name] = both
        return tables

    def init_state(self, plan: Plan, x: Tensor) -> dict[str, Tensor]:
        return {"xs": torch.zeros_like(x), "x0s": torch.zeros_like(x)}

    def step(
        self, plan: Plan, k: Tensor, model_output: Tensor, x: Tensor, noise: Tensor | None, state
    ) -> tuple[Tensor, Tensor]:
        x0 = plan.diffusion.x0_at(model_output, x, plan.at("alpha", k, x), plan.at("sigma", k, x))
        xs, x0s = state["xs"], state["x0s"]
        x_prev = (
            plan.at("x_coef", k, x) * x
            + plan.at("x0_coef", k, x) * x0
            + plan.at("xs_coef", k, x) * xs
            + plan.at("x0s_coef", k, x) * x0s
        )
        xs.copy_(x)  # read by the next position only when it is a correction (else its coefficients are 0)
        x0s.copy_(x0)
        return x_prev, x0
