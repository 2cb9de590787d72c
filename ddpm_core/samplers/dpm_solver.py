"""DPM-Solver++ (2M) (Lu et al. 2022, "DPM-Solver++", Algorithm 2): a multistep second-order solver of the diffusion
ODE in its data-prediction form, deterministic (no noise draws).

With alpha_t = sqrt(abar_t), sigma_t = sqrt(1 - abar_t), lambda_t = log(alpha_t / sigma_t) (half the log-SNR) and,
for a step from s (loop position k) to t (position k + 1), h = lambda_t - lambda_s, the first-order update
(Algorithm 2's first step; DDIM in these variables) is

    x_t = (sigma_t / sigma_s) x_s - alpha_t (e^{-h} - 1) x0_s

and Algorithm 2's second-order multistep update replaces x0_s by D = (1 + 1 / (2 r)) x0_s - 1 / (2 r) x0_{s'},
with x0_{s'} the previous position's prediction and r = h' / h, h' = lambda_s - lambda_{s'} (the paper's D_i, r_i,
h_i). Per loop position k the step is therefore one fused update

    x_prev = A[k] x + B[k] x0 + C[k] x0_prev,   A = sigma_t / sigma_s,   B = alpha_t (1 - e^{-h}) (1 + 1 / (2 r)),
                                                C = -alpha_t (1 - e^{-h}) / (2 r)

(C = 0 and no r where the order is 1), with ``x``, ``x0``, ``x0_prev`` shaped like the samples (``[batch x C x H x W]``)
and A, B, C ``[N]`` tables computed once in float64. ``state["prev_x0"]`` holds x0_prev (updated in place: the fast path replays one step).

Equal to diffusers' ``DPMSolverMultistepScheduler(algorithm_type="dpmsolver++", solver_order=2,
solver_type="midpoint", lower_order_final=True, final_sigmas_type="zero")``:

* The order: first order at the first step (no history) and at the last step; second order everywhere else.
  The paper's last step is second order and ends at a small t_M > 0; diffusers' ``final_sigmas_type="zero"`` ends
  at sigma = 0 with a first-order step whatever the number of steps (its ``lower_order_final`` would only lower
  the second-to-last step of a third-order solver).
* The last step goes to sigma = 0 (abar = 1, lambda = +inf): A = 0 and B = 1, so it returns x0_pred exactly,
  whatever timestep the run ends at and whatever ``set_alpha_to_one`` says (that flag is DDIM's).
* diffusers keeps a "VE" sigma_t = sqrt((1 - abar) / abar) per step and converts it back with
  alpha = 1 / sqrt(sigma^2 + 1), sigma_VP = sigma alpha; the maths is the same as computing A, B, C from abar
  directly, which we do (finite at abar = 0, zero terminal SNR, where the VE sigma is infinite; diffusers instead
  moves abar_{T-1} to 2^-24 there, so zero-SNR runs are not comparable).
* The data prediction: diffusers' ``convert_model_output`` applies the config's ``thresholding`` but never its
  ``clip_sample`` (the DPM scheduler has no such option). We take x0 from the diffusion's
  :meth:`~ddpm_core.diffusion.GaussianDiffusion.model_predictions`, clipped or thresholded as the diffusion is
  configured, as our DDIM does (the bundled model clips to [-1, 1]); with ``clip_sample=False`` the two agree.
  A ``learned_range`` model's variance channels are ignored: we split its output at the samples' channel count
  for every prediction type; diffusers keeps ``model_output[:, :3]``, for epsilon prediction only (the same for
  3-channel models predicting epsilon).
* The timesteps are whatever the caller passes: in this project the diffusion's ``inference_timesteps`` (its
  ``timestep_spacing``, ``leading`` for the bundled model: 900, 800, ..., 0 for 10 steps). diffusers' own default
  for this scheduler is ``linspace`` over N + 1 points with the last dropped (999, 899, ..., 100); given our
  timesteps (``set_timesteps(timesteps=...)``) it computes what we compute.
"""

from __future__ import annotations

import torch

from .base import Plan, Sampler, Tensor


class DPMSolverPP2M(Sampler):
    name = "dpmsolver++"
    label = "DPM-Solver++ (2M)"
    default_steps = 20

    def tables(self, diffusion, timesteps, eta):
        abar = diffusion.schedule.alphas_cumprod[torch.as_tensor(timesteps)]  # float64 [N], descending in t
        n = abar.numel()
        one = torch.ones(1, dtype=torch.float64)
        abar_next = torch.cat([abar[1:], one])  # the last step goes to sigma = 0 (abar = 1)
        alpha_s, sigma_s = abar.sqrt(), (1 - abar).sqrt()
        alpha_t, sigma_t = abar_next.sqrt(), (1 - abar_next).sqrt()
        # sigma_s > 0 unless abar_s = 1, which the schedule rejects (its posterior would divide by zero)
        A = sigma_t / sigma_s
        # alpha_t (1 - e^{-h}) with e^{-h} = alpha_s sigma_t / (sigma_s alpha_t): no lambda_t = inf at sigma_t = 0
        B1 = alpha_t - alpha_s * A
        lam = 0.5 * (abar.log() - torch.log1p(-abar))  # lambda at positions 0..N-1 (-inf where abar = 0)
        second = torch.zeros(n, dtype=torch.bool)
        second[1 : n - 1] = True  # Algorithm 2: order 1 without a history (k = 0) and at the final step (to sigma = 0)
        h = torch.where(second, torch.cat([lam[1:], lam[-1:]]) - lam, 1.0)
        h_prev = torch.where(second, lam - torch.cat([lam[:1], lam[:-1]]), 1.0)
        half_inv_r = torch.where(second, 0.5 * h / h_prev, 0.0)  # 1 / (2 r), r = h' / h; 0 if h' = inf (abar_{s'} = 0)
        return {"x_coef": A, "x0_coef": B1 * (1 + half_inv_r), "prev_x0_coef": -B1 * half_inv_r}

    def init_state(self, plan: Plan, x: Tensor) -> dict[str, Tensor]:
        return {"prev_x0": torch.zeros_like(x)}

    def step(
        self, plan: Plan, k: Tensor, model_output: Tensor, x: Tensor, noise: Tensor | None, state
    ) -> tuple[Tensor, Tensor]:
        x0 = plan.diffusion.model_predictions(model_output, x, plan.index(k, x.shape[0])).pred_xstart
        prev = state["prev_x0"]
        # Algorithm 2: x_t = (sigma_t / sigma_s) x - alpha_t (e^{-h} - 1) D, D = (1 + 1/2r) x0 - 1/2r x0_prev
        x_prev = plan.at("x_coef", k, x) * x + plan.at("x0_coef", k, x) * x0 + plan.at("prev_x0_coef", k, x) * prev
        prev.copy_(x0)
        return x_prev, x0
