"""DPM-Solver++ (Lu et al. 2022, "DPM-Solver++"): multistep solvers of the diffusion ODE (Algorithm 2, orders 1 to 3)
and SDE (sec. 5, "SDE-DPM-Solver++") in their data-prediction form, as diffusers'
``DPMSolverMultistepScheduler(algorithm_type="dpmsolver++" | "sde-dpmsolver++", solver_type="midpoint")``.

With alpha_t = sqrt(abar_t), sigma_t = sqrt(1 - abar_t), lambda_t = log(alpha_t / sigma_t) (half the log-SNR) and,
for a step from s (loop position k) to t (position k + 1), h = lambda_t - lambda_s, the first-order update
(Algorithm 2's first step; DDIM in these variables) is

    x_t = (sigma_t / sigma_s) x_s - alpha_t (e^{-h} - 1) x0_s

and the multistep updates replace x0_s by divided differences of the last two or three predictions x0_s,
x0_{s'}, x0_{s''} (the paper's D_i, r_i = h_{i-1} / h_i; third order: DPM-Solver's eq. 3.9 with diffusers'
D1, D2). The SDE variant (eq. 14 of "DPM-Solver++"):

    x_t = (sigma_t / sigma_s) e^{-h} x_s + alpha_t (1 - e^{-2h}) D + sigma_t sqrt(1 - e^{-2h}) z.

Every update is one fused sum per loop position k,

    x_prev = A[k] x + B[k] x0 + C[k] x0_prev + C2[k] x0_prev2 + S[k] z,

with ``x``, ``x0`` and the two previous predictions shaped like the samples (``[batch x C x H x W]``) and the
``[N]`` tables (``x_coef``, ``x0_coef``, ``prev_x0_coef``, ``prev2_x0_coef``, ``noise_coef``) computed once in
float64. ``state["prev_x0"]`` / ``state["prev2_x0"]`` hold the history (updated in place: the fast path replays
one captured step on them).

How the timesteps, the order at each position, the last step and the noise follow diffusers, and where this
project chooses otherwise (clipping x0, ``trailing`` spacing): ``docs/samplers.md``.
"""

from __future__ import annotations

import torch

from ..timesteps import multistep_timesteps
from .base import Plan, Sampler, Tensor


def multistep_orders(n: int, solver_order: int, lower_order_final: bool, final_sigmas_type: str) -> list[int]:
    """The order of each of ``n`` steps, as ``DPMSolverMultistepScheduler.step`` chooses it."""
    orders = []
    for k in range(n):
        final = k == n - 1 and ((lower_order_final and n < 15) or final_sigmas_type == "zero")
        second = k == n - 2 and lower_order_final and n < 15
        if solver_order == 1 or k < 1 or final:
            orders.append(1)
        elif solver_order == 2 or k < 2 or second:
            orders.append(2)
        else:
            orders.append(3)
    return orders


def final_abar(diffusion, final_sigmas_type: str) -> torch.Tensor:
    """abar after the last step ``[1]``: 1 (sigma = 0) or abar_0 (diffusers' ``final_sigmas_type="sigma_min"``)."""
    if final_sigmas_type == "zero":
        return torch.ones(1, dtype=torch.float64)
    if final_sigmas_type == "sigma_min":
        return diffusion.schedule.alphas_cumprod[:1]
    raise ValueError(f"final_sigmas_type must be 'zero' or 'sigma_min', got {final_sigmas_type!r}")


class DPMSolverPP2M(Sampler):
    """DPM-Solver++ (2M): ``DPMSolverMultistepScheduler(algorithm_type="dpmsolver++", solver_order=2)``."""

    name = "dpmsolver++"
    label = "DPM-Solver++ (2M)"
    default_steps = 20
    offered_steps = (20, 10, 5)
    order = 2
    diffusers_class = "DPMSolverMultistepScheduler"
    diffusers_kwargs = {"algorithm_type": "dpmsolver++", "solver_order": 2}
    solver_order = 2
    sde = False

    def __init__(self, lower_order_final: bool = True, final_sigmas_type: str = "zero"):
        if final_sigmas_type not in ("zero", "sigma_min"):
            raise ValueError(f"final_sigmas_type must be 'zero' or 'sigma_min', got {final_sigmas_type!r}")
        self.lower_order_final = bool(lower_order_final)
        self.final_sigmas_type = final_sigmas_type

    def timesteps(self, diffusion, num_inference_steps=None):
        d = diffusion
        return multistep_timesteps(d.num_timesteps, num_inference_steps, d.timestep_spacing, d.steps_offset)

    def diffusers_scheduler(self, config, **overrides):
        kw = dict(lower_order_final=self.lower_order_final, final_sigmas_type=self.final_sigmas_type)
        return super().diffusers_scheduler(config, **kw, **overrides)

    def noise_steps(self, timesteps, eta):
        return [self.sde] * len(timesteps)

    def tables(self, diffusion, timesteps, eta):
        abar = diffusion.schedule.alphas_cumprod[torch.as_tensor(timesteps)]  # float64 [N], descending in t
        n = abar.numel()
        orders = torch.tensor(multistep_orders(n, self.solver_order, self.lower_order_final, self.final_sigmas_type))
        abar_next = torch.cat([abar[1:], final_abar(diffusion, self.final_sigmas_type)])
        sigma_s = (1 - abar).sqrt()
        alpha_t, sigma_t = abar_next.sqrt(), (1 - abar_next).sqrt()
        # lambda: -inf where abar = 0 (zero terminal SNR), +inf at sigma = 0; sigma_s > 0 (the schedule has abar < 1)
        lam_s = 0.5 * (abar.log() - torch.log1p(-abar))
        lam_t = 0.5 * (abar_next.log() - torch.log1p(-abar_next))
        h = lam_t - lam_s  # > 0, +inf on a step to sigma = 0 or from abar = 0
        em1 = -torch.expm1(-h)  # 1 - e^{-h}
        if self.sde:
            em2 = -torch.expm1(-2 * h)  # 1 - e^{-2h}
            A = sigma_t / sigma_s * (1 - em1)
            phi = alpha_t * em2
            noise = sigma_t * em2.sqrt()
        else:
            A = sigma_t / sigma_s
            phi = alpha_t * em1
            noise = torch.zeros(n, dtype=torch.float64)
        # 1 / r0 = h / h0, 1 / r1 = h / h1 (h0, h1: the previous steps' h); 0 where a previous lambda is -inf
        h0 = torch.cat([h[:1], h[:-1]])
        h1 = torch.cat([h[:2], h[:-2]])[:n]
        a = torch.where(orders >= 2, h / h0, 0.0)
        b = torch.where(orders >= 3, h / h1, 0.0)
        c0, c1, c2 = phi.clone(), torch.zeros(n, dtype=torch.float64), torch.zeros(n, dtype=torch.float64)
        two = orders == 2  # midpoint: D = x0 + (1 / 2r0) (x0 - x0_prev)
        c0 = torch.where(two, phi * (1 + 0.5 * a), c0)
        c1 = torch.where(two, -0.5 * phi * a, c1)
        three = orders == 3
        if three.any():
            hh = torch.where(three, h, 1.0)
            if self.sde:
                P1 = alpha_t * (em2 / (-2 * hh) + 1)
                P2 = alpha_t * ((em2 - 2 * hh) / (2 * hh) ** 2 - 0.5)
            else:
                P1 = alpha_t * (-em1 / hh + 1)
                P2 = -alpha_t * ((-em1 + hh) / hh**2 - 0.5)
            ab = torch.where(three, a + b, 1.0)
            q, w = b / ab, a * b / ab  # r0 / (r0 + r1), 1 / (r0 + r1)
            # D1 = (1 + q) a x0 - ((1 + q) a + q b) x0_prev + q b x0_prev2, D2 = w (a x0 - (a + b) x0_prev + b x0_prev2)
            c0 = torch.where(three, phi + P1 * (1 + q) * a + P2 * w * a, c0)
            c1 = torch.where(three, -P1 * ((1 + q) * a + q * b) - P2 * w * (a + b), c1)
            c2 = torch.where(three, P1 * q * b + P2 * w * b, c2)
        return {"x_coef": A, "x0_coef": c0, "prev_x0_coef": c1, "prev2_x0_coef": c2, "noise_coef": noise}

    def init_state(self, plan: Plan, x: Tensor) -> dict[str, Tensor]:
        state = {"prev_x0": torch.zeros_like(x)}
        if self.solver_order >= 3:
            state["prev2_x0"] = torch.zeros_like(x)
        return state

    def step(
        self, plan: Plan, k: Tensor, model_output: Tensor, x: Tensor, noise: Tensor | None, state
    ) -> tuple[Tensor, Tensor]:
        x0 = plan.diffusion.model_predictions(model_output, x, plan.index(k, x.shape[0])).pred_xstart
        prev = state["prev_x0"]
        x_prev = plan.at("x_coef", k, x) * x + plan.at("x0_coef", k, x) * x0 + plan.at("prev_x0_coef", k, x) * prev
        if "prev2_x0" in state:
            x_prev = x_prev + plan.at("prev2_x0_coef", k, x) * state["prev2_x0"]
            state["prev2_x0"].copy_(prev)
        if noise is not None:
            x_prev = x_prev + plan.at("noise_coef", k, x) * noise
        prev.copy_(x0)
        return x_prev, x0
