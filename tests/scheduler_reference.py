"""A sampler of the registry against the diffusers scheduler it equals, built as a diffusers user builds it
(``<Scheduler>.from_config(model config, **kwargs)``), from the same x_T, end to end and step by step.

* Timesteps: the sampler's ``timesteps(diffusion, N)`` and diffusers' ``set_timesteps(N)`` for the same config.
  Integer timesteps are equal. Fractional ones (Karras sigmas) are compared computed from the same abar table
  (diffusers' float32 one): within one float32 ulp of t plus the float32 rounding of diffusers' sigmas carried
  through the log-sigma interpolation (|dt| <= |d log sigma| / min slope of log sigma per timestep).
* Float64 runs, diffusers given our float64 tables (its ``sigmas`` / ``alpha_t`` / ``sigma_t`` / ``lambda_t``,
  our evaluation timesteps) and its float32 casts of float64 samples kept in float64 (:class:`KeepFloat64`), so
  that it evaluates its own formulas on the same numbers: equal to REL64 = 1e-10 normwise relative. Each step
  is a few dozen roundings of u = 2^-53 (~1.1e-16) on O(1) coefficients; a difference of formula, order, history,
  timestep, sigma or final-step handling shows up orders of magnitude above 1e-10.

  - step by step, teacher-forced: diffusers steps from our x_t with the model output our loop got (its history
    its own), on a tiny random UNet (whose x0 predictions at high noise go far beyond [-1, 1]: clipping acts);
  - end to end, free-running from the same x_T (and for stochastic samplers the same noise draws): on the
    exact noise prediction of Gaussian data N(M, S^2) (an analytic model whose probability-flow map contracts,
    S < 1, so rounding differences do not grow: the error stays within N steps' roundings).
* Where the model clips x0 (``clip_sample=True``) and the diffusers scheduler cannot (multistep and Euler
  schedulers have no ``clip_sample``), clipping is emulated on diffusers' side by its model: the output is
  replaced by the one whose x0 prediction is the clipped one (eps' = (x - alpha clip(x0)) / sigma, likewise for
  v and x0 prediction), which diffusers turns back into clip(x0) up to rounding. DDIMScheduler and
  HeunDiscreteScheduler clip themselves and get the model's own output.
* Random draws: diffusers draws its step noise (float32, from the caller's generator, in its order) and so does
  the loop; the float32 runs check that both leave the generator in the same state, the float64 runs hand
  diffusers the loop's draws (``variance_noise``).
"""

import inspect

import numpy as np
import torch
from torch.overrides import TorchFunctionMode

from ddpm_core.diffusion import GaussianDiffusion
from ddpm_core.samplers import sample_loop_progressive
from ddpm_core.samplers.dpm_solver import final_abar
from ddpm_core.timesteps import t_to_sigma

REL64 = 1e-10
U32 = 2.0**-24
M, S = 0.6, 0.5  # Gaussian data N(M, S^2): x0 beyond 1 for a fifth of the pixels (clipping acts at the end)


class KeepFloat64(TorchFunctionMode):
    """diffusers' steps cast the sample to float32 before their update (an "upcast" meant for half precision),
    which in a float64 run rounds it to float32 (~1e-8 relative). Inside this mode that cast of a float64 tensor
    is the identity, so that diffusers evaluates its own formulas in float64."""

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = dict(kwargs or {})
        if func is torch.Tensor.to and isinstance(args[0], torch.Tensor) and args[0].dtype == torch.float64:
            if args[1:] in ((torch.float32,), (torch.float16,)) and not kwargs:
                return args[0]
            if kwargs.get("dtype") in (torch.float32, torch.float16):  # e.g. variance_noise.to(device=, dtype=)
                kwargs.pop("dtype")
                return func(*args, **kwargs)
        return func(*args, **kwargs)


def assert_rel(ours, ref, what, rel=REL64):
    """|ours - ref| <= rel * max |ref| (normwise relative)."""
    ours, ref = ours.double(), ref.double()
    err, scale = (ours - ref).abs().max(), ref.abs().max()
    assert err <= rel * scale, f"{what}: |ours - ref| = {err:.3g} > {rel:g} x max|ref| = {rel * scale:.3g}"


def ve_sigmas_all(diffusion) -> np.ndarray:
    abar = diffusion.schedule.alphas_cumprod.clamp(min=2.0**-24).numpy()  # finite at a zero terminal SNR
    return np.sqrt((1 - abar) / abar)


def noise_level(diffusion, t):
    """(alpha, sigma) ``[B, 1, 1, 1]`` float64 of the variance-preserving x_t at (fractional) model timesteps."""
    sig = torch.as_tensor(t_to_sigma(np.asarray(t, dtype=np.float64), ve_sigmas_all(diffusion)))
    alpha = 1 / (sig**2 + 1).sqrt()
    return alpha.reshape(-1, 1, 1, 1), (sig * alpha).reshape(-1, 1, 1, 1)


def gaussian_model(diffusion):
    """The exact prediction of Gaussian data N(M, S^2 I), for the diffusion's prediction type: eps* = sigma (x -
    alpha M) / (alpha^2 S^2 + sigma^2)."""

    def model(x, t):
        a, s = (v.to(x.dtype) for v in noise_level(diffusion, t.double().cpu().reshape(-1).expand(x.shape[0])))
        eps = s * (x - a * M) / (a * a * S * S + s * s)
        x0 = (x - s * eps) / a
        return {"epsilon": eps, "sample": x0, "v_prediction": a * eps - s * x0}[diffusion.prediction_type]

    return model


def clipping_emulated(diffusion, model_output, x, ve_sigma):
    """The output whose x0 prediction at the variance-preserving x is the clipped one, at the noise level the
    scheduler converts with (its VE ``sigmas[i]``); see above. Heun clips itself: its output is left alone."""
    if not diffusion.clip_sample or diffusion.thresholding:
        return model_output
    sig = torch.as_tensor(ve_sigma, dtype=torch.float64)
    a = (1 / (sig**2 + 1).sqrt()).to(x.dtype)
    s = (sig * a).to(x.dtype)
    pred = diffusion.prediction_type
    x0 = {"epsilon": (x - s * model_output) / a, "sample": model_output, "v_prediction": a * x - s * model_output}[
        pred
    ]
    x0 = x0.clamp(-diffusion.clip_sample_range, diffusion.clip_sample_range)
    eps = (x - a * x0) / s
    return {"epsilon": eps, "sample": x0, "v_prediction": a * eps - s * x0}[pred]


def emulated(sched, diffusion, model_output, x, i):
    if "clip_sample" in inspect.signature(type(sched).__init__).parameters:  # DDIM and Heun clip as configured
        return model_output
    return clipping_emulated(diffusion, model_output, x, sched.sigmas[i])


def is_ve(sched) -> bool:
    """Euler and Heun keep x / alpha ("VE" samples); the multistep schedulers keep x."""
    return type(sched).__name__ in ("EulerDiscreteScheduler", "HeunDiscreteScheduler")


def reference(sampler, cfg, N, float64=False):
    """diffusers' scheduler for ``sampler`` from ``cfg`` with ``set_timesteps(N)``; the sampler's diffusion and
    step timesteps; for ``float64`` its tables replaced by ours (see above)."""
    diffusion = GaussianDiffusion.from_config(cfg)
    steps = sampler.timesteps(diffusion, N)
    sched = sampler.diffusers_scheduler(cfg)
    sched.set_timesteps(N)
    evals = sampler.evaluation_timesteps(steps)
    assert len(sched.timesteps) == len(evals)
    if not sampler.fractional_timesteps:
        assert sched.timesteps.tolist() == evals.tolist()
    if float64:
        abar = sampler.alphas_cumprod(diffusion)  # with diffusers' zero-terminal-SNR floor where it has one
        sched.alphas_cumprod = abar
        if hasattr(sched, "lambda_t"):
            sched.alpha_t, sched.sigma_t = abar.sqrt(), (1 - abar).sqrt()
            sched.lambda_t = 0.5 * (abar.log() - torch.log1p(-abar))
        if sampler.fractional_timesteps:
            sig = torch.as_tensor(sampler.ve_sigmas(diffusion, steps))
            if type(sched).__name__ == "HeunDiscreteScheduler":
                sig = torch.cat([sig[:1], sig[1:-1].repeat_interleave(2), sig[-1:]])
            sched.sigmas = sig
            sched.timesteps = torch.as_tensor(evals, dtype=torch.float64)
        else:
            ve = ((1 - abar) / abar).sqrt()[torch.as_tensor(steps)]
            end = final_abar(diffusion, getattr(sampler, "final_sigmas_type", "zero"))
            sched.sigmas = torch.cat([ve, ((1 - end) / end).sqrt()])
    return sched, diffusion, steps


def diffusers_step(sched, out, t, x, noise=None, generator=None):
    """``sched.step`` with the noise or generator handed over where its step takes them."""
    takes = inspect.signature(sched.step).parameters
    kw = {}
    if noise is not None and "variance_noise" in takes:
        kw["variance_noise"] = noise
    if generator is not None and "generator" in takes:
        kw["generator"] = generator
    return sched.step(out, t, x, **kw).prev_sample


def to_vp(sched, i, x):
    """diffusers' sample after its step i in the loop's variables."""
    if not is_ve(sched):
        return x
    return x / (sched.sigmas[i + 1] ** 2 + 1).sqrt().to(x.dtype)


def from_vp(sched, i, x):
    if not is_ve(sched):
        return x
    return x * (sched.sigmas[i] ** 2 + 1).sqrt().to(x.dtype)


def ours(sampler, diffusion, steps, model, x_T, seed, dtype):
    """Our loop (its StepOutputs, the model outputs it got, its noise draws) from x_T = ``x_T`` times the
    sampler's x_T scale (as the loop scales the x_T it draws)."""
    outputs, g = [], torch.Generator().manual_seed(seed)

    def recording(x, t):
        outputs.append(model(x, t))
        return outputs[-1]

    plan = sampler.plan(diffusion, steps, "cpu", dtype)
    runs = list(
        out.__class__(out.prev_sample.clone(), out.pred_original_sample.clone(), out.index, out.timestep, out.x_t)
        for out in sample_loop_progressive(
            diffusion, sampler, recording, None, steps, g, noise=(x_T * plan.x_T_scale).to(dtype), dtype=dtype
        )
    )
    return runs, outputs, plan


def noises_drawn(plan, shape, seed, dtype):
    """The loop's noise draws with ``seed``: one per position that draws, in order."""
    g = torch.Generator().manual_seed(seed)
    return [torch.randn(shape, generator=g, dtype=dtype) if d else None for d in plan.noise_steps]


def teacher_forced_float64(sampler, cfg, N, unet64, x_T, seed=5):
    """Every step of our float64 loop on ``unet64`` against diffusers' step from our x_t with our model output."""
    sched, diffusion, steps = reference(sampler, cfg, N, float64=True)

    def model(x, t):
        with torch.no_grad():
            return unet64(x, t).sample

    runs, outputs, plan = ours(sampler, diffusion, steps, model, x_T.double(), seed, torch.float64)
    noises = noises_drawn(plan, x_T.shape, seed, torch.float64)
    with KeepFloat64():
        for i, (run, t) in enumerate(zip(runs, sched.timesteps)):
            out = emulated(sched, diffusion, outputs[i], run.x_t, i)
            x = from_vp(sched, i, run.x_t)
            prev = to_vp(sched, i, diffusers_step(sched, out, t, x, noises[i]))
            assert_rel(run.prev_sample, prev, f"{sampler.name} {cfg} N={N} step {i} (t={float(t):g})")
    return runs


def free_running_float64(sampler, cfg, N, x_T, seed=5):
    """Our float64 loop on the Gaussian model against diffusers' own loop from the same x_T (and noise draws),
    every step's sample compared."""
    sched, diffusion, steps = reference(sampler, cfg, N, float64=True)
    model = gaussian_model(diffusion)
    runs, _, plan = ours(sampler, diffusion, steps, model, x_T.double(), seed, torch.float64)
    noises = noises_drawn(plan, x_T.shape, seed, torch.float64)
    x = x_T.double() * sched.init_noise_sigma
    with KeepFloat64():
        for i, t in enumerate(sched.timesteps):
            inp = sched.scale_model_input(x, t)
            t_model = torch.as_tensor(t).reshape(1).expand(x.shape[0])
            if (
                sampler.fractional_timesteps
            ):  # the model is called with float32 timesteps, as diffusers and the loop do
                t_model = t_model.float()
            out = model(inp, t_model)
            out = emulated(sched, diffusion, out, inp, i)
            x = diffusers_step(sched, out, t, x, noises[i])
            assert_rel(runs[i].prev_sample, to_vp(sched, i, x), f"{sampler.name} {cfg} N={N} free-running step {i}")
    return runs


def same_draws_float32(sampler, cfg, N, x_T, seed=9):
    """float32 runs of both from one seed: diffusers' pipeline order (x_T, then its step draws) consumes the
    generator exactly as our loop does (x_T, then its ``noise_steps``)."""
    sched, diffusion, steps = reference(sampler, cfg, N)
    model = gaussian_model(diffusion)
    g_ref, g_ours = torch.Generator().manual_seed(seed), torch.Generator().manual_seed(seed)
    x = torch.randn(x_T.shape, generator=g_ref) * sched.init_noise_sigma
    for i, t in enumerate(sched.timesteps):
        inp = sched.scale_model_input(x, t)
        out = emulated(sched, diffusion, model(inp, t.reshape(1).expand(x.shape[0])), inp, i)
        x = diffusers_step(sched, out, t, x, generator=g_ref)
    last = None
    for last in sample_loop_progressive(diffusion, sampler, model, x_T.shape, steps, g_ours):
        pass
    assert torch.equal(g_ref.get_state(), g_ours.get_state())
    return last.prev_sample, to_vp(sched, len(sched.timesteps) - 1, x), table_drift(sched, diffusion)


def table_drift(sched, diffusion) -> float:
    """max over t of |sigma_diffusers(t) / sigma_ours(t) - 1|, VE sigmas from diffusers' float32 abar and from
    ours: how far apart the two sides' noise levels may lie (Karras sigmas and their timesteps come from them)."""
    theirs = sched.alphas_cumprod.double()
    ours = diffusion.schedule.alphas_cumprod.clamp(min=float(theirs.min()))
    return float((((1 - theirs) / theirs / ((1 - ours) / ours)).sqrt() - 1).abs().max())


def assert_karras_timesteps(sampler, cfg, N):
    """Fractional timesteps and sigmas computed from diffusers' own float32 abar table (see above)."""
    from ddpm_core.timesteps import karras_timesteps

    sched = sampler.diffusers_scheduler(cfg)
    sched.set_timesteps(N)
    abar = sched.alphas_cumprod.double().numpy()
    d = GaussianDiffusion.from_config(cfg)
    steps, sig = karras_timesteps(abar, N, d.timestep_spacing, d.steps_offset)
    want_t = torch.as_tensor(sampler.evaluation_timesteps(steps))
    ref_sig = sched.sigmas[:-1].double()
    if type(sched).__name__ == "HeunDiscreteScheduler":
        ref_sig = torch.cat([ref_sig[:1], ref_sig[2::2]])
    rel = (torch.as_tensor(sig) / ref_sig - 1).abs().max()
    assert rel <= 4 * 2 * U32, f"{sampler.name} N={N}: Karras sigmas differ by {rel:.3g} relative"
    slope = np.diff(np.log(np.sqrt((1 - abar) / abar))).min()  # min d log sigma per timestep
    bound = 4 * (2 * U32 / slope + np.spacing(np.float32(want_t.max())))
    err = (sched.timesteps.double() - want_t).abs().max()
    assert err <= bound, f"{sampler.name} N={N}: timesteps differ by {err:.3g} > {bound:.3g}"


def bundled_config() -> dict:
    """The bundled model's scheduler config (linear betas, epsilon, clip_sample=True, leading spacing)."""
    import json
    from pathlib import Path

    path = Path(__file__).resolve().parents[1] / "checkpoints/ddpm-mnist-28/scheduler/scheduler_config.json"
    return {k: v for k, v in json.loads(path.read_text()).items() if not k.startswith("_")}


#: (config changes, N): every spacing, an offset, no clipping, other schedules and prediction types, N from 1 to
#: past 15 (where lower_order_final stops lowering the order)
CASES = [
    (dict(timestep_spacing="leading"), 5),
    (dict(timestep_spacing="leading", steps_offset=1), 8),
    (dict(timestep_spacing="linspace"), 7),
    (dict(timestep_spacing="trailing"), 16),
    (dict(timestep_spacing="leading", clip_sample=False), 1),
    (dict(timestep_spacing="trailing", clip_sample=False), 2),
    (dict(beta_schedule="squaredcos_cap_v2", prediction_type="v_prediction", timestep_spacing="linspace"), 6),
    (dict(beta_schedule="scaled_linear", beta_start=0.00085, beta_end=0.012, prediction_type="sample"), 4),
]
CASE_IDS = [f"{'-'.join(f'{k}={v}' for k, v in c.items())}-N{n}" for c, n in CASES]


def case_config(changes: dict) -> dict:
    return dict(bundled_config(), **changes)


class AnalyticUNet(torch.nn.Module):
    """The Gaussian model as a module (one unused parameter: the fast path reads the device and dtype from it):
    elementwise arithmetic only, so its outputs do not depend on the memory layout."""

    def __init__(self, diffusion):
        super().__init__()
        self.anchor = torch.nn.Parameter(torch.zeros(()))
        self.model = gaussian_model(diffusion)

    def forward(self, x, t):
        return self.model(x.contiguous(), t)
