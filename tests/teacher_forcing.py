"""Teacher-forced comparison of a recorded sampling run with the plain float32 step (used by the fast-path and
sampling tests).

The fast path changes only the UNet's summation order (channels_last, oneDNN, a trace, inductor, TF32 on a GPU),
so the model outputs may differ by two float32 rounding errors of the network; that rounding error is computed at
test time as the plain UNet's difference from its float64 copy at that x_t (like diffusers' table error in
test_core_vs_diffusers) and carried through the step with the step's own first-order bound. A free-running
comparison of whole loops would measure the UNet's sensitivity to its input instead (a random UNet's vector
field is expanding), which no rounding bound covers.
"""

import copy

import numpy as np
import torch
from error_analysis import (
    U32,
    Bounded,
    assert_within,
    ddim_step_bound,
    ddpm_step_bound,
    ours_ddim_coefs,
    ours_ddpm_coefs,
)

from ddpm_core.samplers import get_sampler
from ddpm_core.tensors import StepOutput, call_model


def same_tables(coefs):
    """Both sides read the same float32 tables: their rounding is common to both and cancels; keep the values."""
    return {k: Bounded(b.v, 0.0, b.u) for k, b in coefs.items()}


def model_rounding_scale(model, model64, x, t):
    """Per sample, max |model(x) - model64(x)|: the float32 rounding error of this network at x, computed at test
    time against its float64 copy. A reordering of the network's sums is a rounding error of the same kind."""
    with torch.inference_mode():
        m, m64 = call_model(model, x, t), call_model(model64, x.double(), t)
    return m, (m.double() - m64).abs().flatten(1).amax(1).reshape(-1, 1, 1, 1)


def compare_with_plain_steps(diffusion, steps, ref_model, sampler="ddpm", eta=0.0, generator=None, n_compared=6):
    """Teacher-forced check of a recorded run against the plain float32 step.

    ``steps``: copies of a run's :class:`StepOutput` (x_t, pred x0, x_{t-1}, timestep); ``generator``: seeded as the
    run's, positioned after x_T. Every step's noise is drawn from it in the run's order (DDPM: t > 0; DDIM: eta > 0);
    at ``n_compared`` steps spread over the run, the plain step (``ref_model`` on the same x_t, eq. 15 + 7 or DDIM
    eq. 12) must agree with the recorded one within SAFETY x the first-order bound of the step, given model outputs
    that differ by up to two float32 rounding errors of the network (:func:`model_rounding_scale`).
    """
    ts = [s.timestep for s in steps]
    n = len(ts)
    sampler_ = get_sampler(sampler)
    plan = sampler_.plan(diffusion, ts, steps[0].x_t.device, steps[0].x_t.dtype, eta)
    abar = diffusion.schedule.alphas_cumprod
    ref64 = copy.deepcopy(ref_model).double()
    picks = {int(k) for k in np.round(np.linspace(0, n - 1, min(n, n_compared)))}
    for k, s in enumerate(steps):
        x = s.x_t
        noisy = s.timestep > 0 if sampler == "ddpm" else eta > 0
        z = torch.randn(x.shape, generator=generator, device=x.device) if noisy else None
        if k not in picks:
            continue
        B, C = x.shape[:2]
        m, scale = model_rounding_scale(
            ref_model, ref64, x, torch.full((B,), s.timestep, dtype=torch.long, device=x.device)
        )
        Bm = 2 * scale  # |m_fast - m_plain| <= two rounding errors of the same network
        pos = torch.full((1,), k, dtype=torch.long, device=x.device)
        if sampler == "ddpm":
            prev, x0 = sampler_.step(plan, pos, m, x, z, {})
            co = same_tables(ours_ddpm_coefs(abar[ts[k]], abar[ts[k + 1]] if k + 1 < n else 1.0, U32))
            learned = diffusion.variance_type == "learned_range"
            Bx0, Bprev = ddpm_step_bound(
                diffusion,
                co,
                co,
                x.cpu(),
                m[:, :C].cpu(),
                m[:, C:].cpu() if learned else None,
                None if z is None else z.cpu(),
                U32,
                U32,
                Bm=Bm.cpu(),
                Bv=Bm.cpu(),
            )
        else:
            final = 1.0 if diffusion.set_alpha_to_one else abar[0]
            prev, x0 = sampler_.step(plan, pos, m, x, z, {})
            co = same_tables(ours_ddim_coefs(abar[ts[k]], abar[ts[k + 1]] if k + 1 < n else final, eta, U32))
            Bx0, Bprev = ddim_step_bound(
                diffusion, co, co, x.cpu(), m.cpu(), None if z is None else z.cpu(), U32, U32, Bm=Bm.cpu()
            )
        assert_within(s.pred_original_sample.cpu(), x0.cpu(), Bx0, f"pred x0 at step {k} (t={s.timestep})")
        assert_within(s.prev_sample.cpu(), prev.cpu(), Bprev, f"x_(t-1) at step {k} (t={s.timestep})")


def record(outputs):
    """Copies of a run's StepOutputs, taken as they come (the fast loop's are views of its static buffers), and
    whatever else the run yields last (generate_steps' SampleResult) or None."""
    steps, last = [], None
    for o in outputs:
        if isinstance(o, StepOutput):
            steps.append(
                StepOutput(
                    o.prev_sample.clone().contiguous(),
                    o.pred_original_sample.clone().contiguous(),
                    o.index,
                    o.timestep,
                    o.x_t.clone().contiguous(),
                )
            )
        else:
            last = o
    return steps, last
