"""UniPC (Zhao et al. 2023, "UniPC: A Unified Predictor-Corrector Framework for Fast Sampling of Diffusion
Models"), the data-prediction variant with B(h) = e^h - 1 ("bh2"), as diffusers'
``UniPCMultistepScheduler.from_config(config)`` (``solver_order=2``, ``predict_x0=True``, ``lower_order_final``).

At each loop position k the network's x0_hat m_k (at the predictor's x_k) first corrects x_k (UniC, Algorithm 2:
the step from the previous position redone with m_k in its divided differences; no extra evaluation), then the
predictor (UniP, Algorithm 1) steps from the corrected x_k to x_{k+1}. With lambda = log(alpha / sigma),
h = lambda_{k+1} - lambda_k, r_i = (lambda_{k-i} - lambda_k) / h, D_i = (m_{k-i} - m_k) / r_i:

    x_{k+1} = (sigma_{k+1} / sigma_k) x_k^c + alpha_{k+1} (1 - e^{-h}) m_k - alpha_{k+1} (e^{-h} - 1) sum_i rho_i D_i

with the rho_i solving the order conditions (UniPC's eq. 8: rho = 1/2 at order 2). Both updates are linear in the
samples, so a position is two fused sums over ``[N]`` tables computed once in float64,

    x_k^c = [k = 0] x + L[k] x_{k-1}^c + sum_j Q_j[k] m_{k-j},   x_{k+1} = P[k] x_k^c + sum_j R_j[k] m_{k-j},

with x_{k-1}^c and the previous m's in ``state`` (updated in place for the fast path). The order: at most k + 1,
and N - k at the last steps (``lower_order_final``); the corrector at k uses the predictor's order at k - 1.
Timesteps as DPM-Solver++ (:func:`ddpm_core.timesteps.multistep_timesteps`), the last step to sigma = 0
(``final_sigmas_type="zero"``), where it returns m_{N-1}.

A zero terminal SNR schedule gets diffusers' abar_{T-1} = 2^-24 (lambda finite there).

On purpose: x0_hat is clipped to [-1, 1] where the model's config asks (UniPCMultistepScheduler has no
``clip_sample``), as for DPM-Solver++.
"""

from __future__ import annotations

import math

import torch

from .base import Plan, Sampler, Tensor
from .dpm_solver import DPMSolverPP2M, final_abar


def _rhos(hh: float, rks: list[float], predictor: bool) -> list[float]:
    """diffusers' rho (bh2) for hh = -h and the ratios r_1..r_{o-1}: the predictor's o - 1, the corrector's o."""
    order = len(rks) + 1
    if order == 1 and not predictor:
        return [0.5]
    if order == 2 and predictor:
        return [0.5]
    if order == 1:
        return []
    B_h = math.expm1(hh)
    rk = torch.tensor([*rks, 1.0], dtype=torch.float64)
    R, b, h_phi_k, fact = [], [], math.expm1(hh) / hh - 1, 1
    for i in range(1, order + 1):
        R.append(rk ** (i - 1))
        b.append(h_phi_k * fact / B_h)
        fact *= i + 1
        h_phi_k = h_phi_k / hh - 1 / fact
    R, b = torch.stack(R), torch.tensor(b, dtype=torch.float64)
    if predictor:
        return torch.linalg.solve(R[:-1, :-1], b[:-1]).tolist()
    return torch.linalg.solve(R, b).tolist()


class UniPC(Sampler):
    name = "unipc"
    label = "UniPC (bh2)"
    short_label = "UniPC"
    default_steps = 10
    offered_steps = (10, 5)
    order = 3  # the corrector (UniC) raises the order-2 predictor's by one (Zhao et al. 2023)
    diffusers_class = "UniPCMultistepScheduler"
    diffusers_kwargs = {"solver_type": "bh2", "solver_order": 2}
    solver_order = 2
    lower_order_final = True
    final_sigmas_type = "zero"
    terminal_abar_floor = 2.0**-24  # UniPCMultistepScheduler's, for a zero terminal SNR schedule

    timesteps = DPMSolverPP2M.timesteps  # the same rule: multistep_timesteps

    def orders(self, n: int) -> list[int]:
        """The predictor's order at each of ``n`` steps (diffusers' ``this_order``)."""
        p = self.solver_order
        return [min(min(p, n - k) if self.lower_order_final else p, min(k, p) + 1) for k in range(n)]

    def tables(self, diffusion, timesteps, eta):
        abar = self.alphas_cumprod(diffusion)[torch.as_tensor(timesteps)]
        ab = torch.cat([abar, final_abar(diffusion, self.final_sigmas_type)]).tolist()  # positions 0..N
        n, p = len(timesteps), self.solver_order
        alpha = [math.sqrt(a) for a in ab]
        sigma = [math.sqrt(1 - a) for a in ab]
        lam = [math.log(a) - math.log(s) if s > 0 else math.inf for a, s in zip(alpha, sigma)]
        orders = self.orders(n)
        # j = 0..p: coefficient of m_{k-j}; L: of x_{k-1}^c; sel: of x itself (k = 0: no correction)
        tab = {f"c_m{j}": [0.0] * n for j in range(p + 1)}
        tab.update({f"p_m{j}": [0.0] * n for j in range(p + 1)})
        tab.update(sel=[0.0] * n, c_last=[0.0] * n, p_x=[0.0] * n)
        for k in range(n):
            # the predictor from position k to k + 1, order o
            o, h = orders[k], lam[k + 1] - lam[k]
            a_t = alpha[k + 1]
            tab["p_x"][k] = sigma[k + 1] / sigma[k]
            hp1 = math.expm1(-h) if math.isfinite(h) else -1.0
            rks = [(lam[k - i] - lam[k]) / h for i in range(1, o)]
            rho = _rhos(-h, rks, predictor=True) if o > 1 else []
            tab["p_m0"][k] = -a_t * hp1 + sum(a_t * hp1 * r / rk for r, rk in zip(rho, rks))
            for i, (r, rk) in enumerate(zip(rho, rks), start=1):
                tab[f"p_m{i}"][k] = -a_t * hp1 * r / rk
            if k == 0:
                tab["sel"][k] = 1.0
                continue
            # the corrector at k: the step from k - 1 redone, order of the predictor at k - 1
            oc, hc = orders[k - 1], lam[k] - lam[k - 1]
            a_t, hp1 = alpha[k], math.expm1(-hc)
            tab["c_last"][k] = sigma[k] / sigma[k - 1]
            rks = [(lam[k - 1 - i] - lam[k - 1]) / hc for i in range(1, oc)]
            rho = _rhos(-hc, rks, predictor=False)
            tab["c_m0"][k] = -a_t * hp1 * rho[-1]
            tab["c_m1"][k] = -a_t * hp1 + a_t * hp1 * (sum(r / rk for r, rk in zip(rho, rks)) + rho[-1])
            for i, (r, rk) in enumerate(zip(rho, rks), start=1):
                tab[f"c_m{i + 1}"][k] = -a_t * hp1 * r / rk
        tab.update(alpha=alpha[:n], sigma=sigma[:n])  # x0_hat at abar as the scheduler holds it (zero SNR floored)
        return {name: torch.tensor(v, dtype=torch.float64) for name, v in tab.items()}

    def init_state(self, plan: Plan, x: Tensor) -> dict[str, Tensor]:
        state = {"last": torch.zeros_like(x)}
        state.update({f"m{j}": torch.zeros_like(x) for j in range(1, self.solver_order + 1)})
        return state

    def step(
        self, plan: Plan, k: Tensor, model_output: Tensor, x: Tensor, noise: Tensor | None, state
    ) -> tuple[Tensor, Tensor]:
        m0 = plan.diffusion.x0_at(model_output, x, plan.at("alpha", k, x), plan.at("sigma", k, x))
        ms = [m0] + [state[f"m{j}"] for j in range(1, self.solver_order + 1)]
        xc = plan.at("sel", k, x) * x + plan.at("c_last", k, x) * state["last"]
        for j, m in enumerate(ms):
            xc = xc + plan.at(f"c_m{j}", k, x) * m
        x_next = plan.at("p_x", k, x) * xc
        for j, m in enumerate(ms[:-1]):
            x_next = x_next + plan.at(f"p_m{j}", k, x) * m
        state["last"].copy_(xc)
        for j in range(self.solver_order, 1, -1):  # shift the history: m_{k-j} <- m_{k-j+1}
            state[f"m{j}"].copy_(state[f"m{j - 1}"])
        state["m1"].copy_(m0)
        return x_next, m0
