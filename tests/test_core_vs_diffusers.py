"""ddpm_core against diffusers, the reference: schedules, add_noise, single steps, whole loops.

Two kinds of comparison, because two kinds of error exist:

* Logic, in float64: diffusers' scheduler is given float64 tables (betas/alphas_cumprod computed in float64
  exactly as ours) and float64 inputs. Any formula, indexing, RNG-order or branching difference shows up far
  above the 1e-10 tolerance used there; rounding alone stays below it.
* Precision, in float32 as users run it: diffusers computes its cumprod in float32, we in float64 and cast.
  Per step that moves results by a few float32 ulps of the coefficients: measured below 2e-6 relative on every
  schedule here, so 1e-5 (relative, with the same absolute floor) is tight. Whole 1000-step loops on a tiny
  UNet differ by ~4e-5 on the linear schedule (bound 2e-4, a 50th of an 8-bit level of 2/255 = 7.8e-3); the
  sigmoid schedule's float32 cumprod drift is larger (bound 5e-3, still under one 8-bit level).
"""

import copy
import itertools

import numpy as np
import pytest
import torch
from diffusers import DDIMScheduler, DDPMPipeline, DDPMScheduler

from ddpm_core import GaussianDiffusion, NoiseSchedule

SCHEDULES = [
    dict(beta_schedule="linear"),
    dict(beta_schedule="scaled_linear", beta_start=0.00085, beta_end=0.012),
    dict(beta_schedule="squaredcos_cap_v2"),
    dict(beta_schedule="sigmoid"),
    dict(beta_schedule="linear", rescale_betas_zero_snr=True),
    dict(trained_betas=np.linspace(2e-4, 0.03, 1000).tolist()),
]
SCHEDULE_IDS = ["linear", "scaled_linear", "cosine", "sigmoid", "linear_zero_snr", "trained"]
PREDICTIONS = ["epsilon", "sample", "v_prediction"]
VARIANCES = ["fixed_small", "fixed_large", "learned_range"]
X0_MODES = [dict(clip_sample=False), dict(clip_sample=True), dict(clip_sample=True, clip_sample_range=0.7),
            dict(thresholding=True, dynamic_thresholding_ratio=0.9, sample_max_value=1.5)]
SPACINGS = [("leading", 0), ("leading", 1), ("trailing", 0), ("linspace", 0)]
STEPS = [1000, 50, 7, 333]


def _float64_reference(sched):
    """Give a diffusers scheduler float64 tables so that it computes the same maths as ours in float64."""
    ours = NoiseSchedule.make(
        sched.config.beta_schedule, sched.config.num_train_timesteps, sched.config.beta_start, sched.config.beta_end,
        trained_betas=sched.config.trained_betas, rescale_betas_zero_snr=sched.config.rescale_betas_zero_snr,
    )
    sched.betas = ours.betas.clone()
    sched.alphas = ours.alphas.clone()
    sched.alphas_cumprod = ours.alphas_cumprod.clone()
    sched.one = torch.tensor(1.0, dtype=torch.float64)
    if hasattr(sched, "final_alpha_cumprod"):
        sched.final_alpha_cumprod = torch.tensor(1.0, dtype=torch.float64) if sched.config.set_alpha_to_one else ours.alphas_cumprod[0]
    return sched


def _close(ours, ref, rtol, what):
    ours, ref = ours.double(), ref.double()
    finite = torch.isfinite(ref)
    assert torch.equal(finite, torch.isfinite(ours)), f"{what}: non-finite values differ"
    err = ((ours - ref).abs() / ref.abs().clamp(min=1.0))[finite]
    assert err.numel() == 0 or err.max() <= rtol, f"{what}: max relative error {err.max():.3g} > {rtol:g}"


# ---------------------------------------------------------------- schedules and the forward process
@pytest.mark.parametrize("cfg", SCHEDULES, ids=SCHEDULE_IDS)
def test_schedule_matches_diffusers(cfg):
    ref = DDPMScheduler(**cfg)
    ours = GaussianDiffusion.from_config(cfg).schedule
    # diffusers' betas are float32 (rounded once), its cumprod accumulates float32 rounding over 1000 factors.
    # Zero-SNR rescaling recovers betas as 1 - abar_t / abar_{t-1}: in float32 that cancels to ~1e-6 absolute.
    atol = 2.5e-6 if cfg.get("rescale_betas_zero_snr") else 1e-9
    torch.testing.assert_close(ours.betas.float(), ref.betas, rtol=1e-6, atol=atol)
    torch.testing.assert_close(ours.alphas_cumprod.float(), ref.alphas_cumprod, rtol=2e-4, atol=1e-7)
    assert ours.betas.dtype == torch.float64


@pytest.mark.parametrize("cfg", SCHEDULES, ids=SCHEDULE_IDS)
def test_q_sample_equals_add_noise(cfg):
    ref = DDPMScheduler(**cfg)
    diffusion = GaussianDiffusion.from_config(cfg)
    g = torch.Generator().manual_seed(0)
    x0 = torch.rand(6, 3, 8, 8, generator=g) * 2 - 1
    noise = torch.randn(6, 3, 8, 8, generator=g)
    t = torch.tensor([0, 1, 250, 500, 998, 999])
    _close(diffusion.q_sample(x0, t, noise), ref.add_noise(x0, noise, t), 1e-5, "float32 add_noise")
    _close(diffusion.q_sample(x0.double(), t, noise.double()),
           _float64_reference(ref).add_noise(x0.double(), noise.double(), t), 1e-12, "float64 add_noise")


# ---------------------------------------------------------------- single reverse steps, the whole grid
def _step_case(ref, diffusion, N, spacing_offset, x0_mode, dtype, var):
    """Compare every 3rd-ish timestep of an N-step run: prev_sample and pred_original_sample, same generator."""
    ref.set_timesteps(N)
    ts = ref.timesteps.numpy()
    assert np.array_equal(ts, diffusion.inference_timesteps(N)), "timestep selection differs"
    spaced = diffusion.respace(ts)
    C = 3
    out_c = 2 * C if var == "learned_range" else C
    picks = sorted({0, 1, len(ts) // 2, len(ts) - 2, len(ts) - 1} & set(range(len(ts))))
    for k in picks:
        t = int(ts[k])
        g = torch.Generator().manual_seed(k)
        x = torch.randn(2, C, 4, 4, generator=g, dtype=dtype)
        out = torch.randn(2, out_c, 4, 4, generator=g, dtype=dtype)
        if var == "learned_range":
            out[:, C:] = torch.rand(2, C, 4, 4, generator=g, dtype=dtype) * 2 - 1
        ref_out = ref.step(out, t, x, generator=torch.Generator().manual_seed(100 + k))
        ours = spaced.p_sample(None, x, len(ts) - 1 - k, generator=torch.Generator().manual_seed(100 + k), model_output=out)
        if dtype == torch.float64:
            rtol = 1e-10  # float64 rounding, amplified by 1/sqrt(abar) ~ 2e4 at the cosine schedule's last step
        else:
            # diffusers' float32 tables carry their own error: its cumprod drifts, and 1 - abar cancels near t = 0
            # (abar_0 = 1 - 1e-4 keeps ~3 digits of 1 - abar_0). Measure that error at the step's two indices and
            # allow 1e-5 plus four times it (eq. 7 and 15 combine a handful of such factors).
            idx = [t] + ([int(ts[k + 1])] if k + 1 < len(ts) else [])
            ref64 = diffusion.schedule.alphas_cumprod[idx]
            ref32 = ref.alphas_cumprod[idx].double()
            own_err = torch.cat([(ref32 / ref64 - 1).abs(), ((1 - ref32) / (1 - ref64) - 1).abs()])
            rtol = 1e-5 + 4 * own_err[torch.isfinite(own_err)].max().item()
        _close(ours.pred_original_sample, ref_out.pred_original_sample, rtol, f"pred x0 at t={t}")
        _close(ours.prev_sample, ref_out.prev_sample, rtol, f"prev sample at t={t}")


@pytest.mark.parametrize("var", VARIANCES)
@pytest.mark.parametrize("pred", PREDICTIONS)
@pytest.mark.parametrize("cfg", SCHEDULES, ids=SCHEDULE_IDS)
def test_step_grid_matches_ddpm_scheduler(cfg, pred, var):
    for (spacing, offset), x0_mode, N in itertools.product(SPACINGS, X0_MODES, STEPS):
        if spacing == "leading" and offset and N == 1000:
            continue  # leading + offset 1 with N = T asks for timestep T: diffusers fails on it, we raise ValueError
        full = dict(cfg, prediction_type=pred, variance_type=var, timestep_spacing=spacing, steps_offset=offset, **x0_mode)
        diffusion = GaussianDiffusion.from_config(full)
        _step_case(DDPMScheduler(**full), diffusion, N, offset, x0_mode, torch.float32, var)
        _step_case(_float64_reference(DDPMScheduler(**full)), diffusion, N, offset, x0_mode, torch.float64, var)


def test_leading_offset_beyond_T_is_a_value_error():
    diffusion = GaussianDiffusion.from_config(dict(steps_offset=1))
    with pytest.raises(ValueError, match="outside"):
        diffusion.inference_timesteps(1000)


@pytest.mark.parametrize("eta", [0.0, 1.0, 0.3])
@pytest.mark.parametrize("pred", PREDICTIONS)
@pytest.mark.parametrize("cfg", SCHEDULES, ids=SCHEDULE_IDS)
def test_ddim_steps_match_ddim_scheduler(cfg, pred, eta):
    """DDIM steps in float64: diffusers' t - T//N previous step equals ours for leading spacing and N | T."""
    for (spacing, N), x0_mode, one in itertools.product([("leading", 50), ("leading", 7), ("trailing", 50), ("linspace", 1000)],
                                                        X0_MODES[:2] + X0_MODES[3:], [True, False]):
        full = dict(cfg, prediction_type=pred, timestep_spacing=spacing, set_alpha_to_one=one, **x0_mode)
        if full.get("beta_schedule") == "sigmoid":  # DDIMScheduler has no sigmoid schedule: pass its betas
            full = dict(full, trained_betas=NoiseSchedule.make("sigmoid", 1000).betas.tolist())
        ref = _float64_reference(DDIMScheduler(**full))
        ref.set_timesteps(N)
        ts = ref.timesteps.numpy()
        noise0 = torch.randn(2, 3, 4, 4, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
        outs = [torch.randn(2, 3, 4, 4, generator=torch.Generator().manual_seed(10 + k), dtype=torch.float64) for k in range(len(ts))]
        calls = iter(range(len(ts)))

        def model(x, t):
            return outs[next(calls)]

        g_ref, g_ours = torch.Generator().manual_seed(7), torch.Generator().manual_seed(7)
        x = noise0.clone()
        ref_traj = []
        for k, t in enumerate(ts):
            step = ref.step(outs[k], int(t), x, eta=eta, generator=g_ref)
            ref_traj.append(step.prev_sample)
            x = step.prev_sample
        diffusion = GaussianDiffusion.from_config(full)
        ours = [o.prev_sample for o in diffusion.ddim_sample_loop_progressive(model, noise=noise0.clone(), num_inference_steps=N, eta=eta, generator=g_ours)]
        assert len(ours) == len(ref_traj)
        for k, (a, b) in enumerate(zip(ours, ref_traj)):
            _close(a, b, 1e-10, f"DDIM {spacing} N={N} step {k}")


# ---------------------------------------------------------------- whole loops on a real UNet2DModel
def _pipeline_images(unet, sched, N, seed, batch=2):
    pipe = DDPMPipeline(unet=unet, scheduler=sched)
    pipe.set_progress_bar_config(disable=True)
    return pipe(batch_size=batch, generator=torch.Generator().manual_seed(seed), num_inference_steps=N, output_type="np").images


def _our_images(diffusion, unet, N, seed, batch=2):
    x = diffusion.p_sample_loop(unet, (batch, unet.config.in_channels, 8, 8), num_inference_steps=N,
                                generator=torch.Generator().manual_seed(seed))
    return (x / 2 + 0.5).clamp(0, 1).permute(0, 2, 3, 1).numpy()


LOOP_CASES = [
    # (schedule, prediction, variance, x0 mode, spacing, N, tolerance in [0, 1] pixel units)
    ("linear", "epsilon", "fixed_large", dict(clip_sample=True), "leading", 50, 1e-4),
    ("linear", "epsilon", "fixed_small", dict(clip_sample=False), "trailing", 7, 1e-4),
    ("linear", "v_prediction", "fixed_small", dict(thresholding=True), "linspace", 333, 1e-4),
    ("linear", "sample", "learned_range", dict(clip_sample=True), "leading", 50, 1e-4),
    ("squaredcos_cap_v2", "epsilon", "learned_range", dict(clip_sample=True), "trailing", 50, 1e-4),
    ("sigmoid", "epsilon", "fixed_small", dict(clip_sample=True), "linspace", 50, 2.5e-3),
]


@pytest.mark.parametrize("schedule,pred,var,x0_mode,spacing,N,tol", LOOP_CASES)
def test_p_sample_loop_reproduces_ddpm_pipeline(schedule, pred, var, x0_mode, spacing, N, tol, unet3, unet6):
    cfg = dict(beta_schedule=schedule, prediction_type=pred, variance_type=var, timestep_spacing=spacing, **x0_mode)
    unet = unet6 if var == "learned_range" else unet3
    ref = _pipeline_images(unet, DDPMScheduler(**cfg), N, seed=3)
    ours = _our_images(GaussianDiffusion.from_config(cfg), unet, N, seed=3)
    err = np.abs(ours - ref).max()
    assert err <= tol, f"max abs pixel difference {err:.3g} > {tol:g}"
    # not trivially equal: another seed moves the images by far more than the tolerance
    other = _our_images(GaussianDiffusion.from_config(cfg), unet, N, seed=4)
    assert np.abs(other - ref).max() > 100 * tol


@pytest.mark.slow
@pytest.mark.parametrize("schedule,var,tol", [("linear", "fixed_large", 1e-4), ("linear", "fixed_small", 1e-4), ("sigmoid", "fixed_small", 2.5e-3)])
def test_full_1000_step_loop_reproduces_ddpm_pipeline(schedule, var, tol, unet3):
    """All T steps: the float32 cumprod drift accumulates; the bounds are measured margins (DESIGN.md)."""
    cfg = dict(beta_schedule=schedule, variance_type=var)
    ref = _pipeline_images(unet3, DDPMScheduler(**cfg), 1000, seed=5)
    ours = _our_images(GaussianDiffusion.from_config(cfg), unet3, None, seed=5)
    err = np.abs(ours - ref).max()
    assert err <= tol, f"1000-step max abs pixel difference {err:.3g} > {tol:g}"


@pytest.mark.parametrize("eta,spacing,N", [(0.0, "leading", 50), (1.0, "leading", 50), (0.0, "trailing", 20), (1.0, "leading", 7)])
def test_ddim_loop_reproduces_ddim_scheduler_on_unet(eta, spacing, N, unet3):
    """Whole DDIM loops on a real UNet, in float64 (diffusers given float64 tables).

    Why not float32: with eta = 0, DDIM integrates an ODE, and a randomly initialised UNet's vector field is
    expanding: a 1e-6 float32 difference at step 3 grows ~4x every 3 steps to 0.2 at step 50 (measured). That is
    the model's chaos, not a sampler difference; in float64 the trajectories agree to ~1e-12 per step.
    """
    unet = copy.deepcopy(unet3).double()
    cfg = dict(beta_schedule="linear", timestep_spacing=spacing, clip_sample=True)
    sched = _float64_reference(DDIMScheduler(**cfg))
    sched.set_timesteps(N)
    g = torch.Generator().manual_seed(11)
    x = torch.randn(2, 3, 8, 8, generator=g, dtype=torch.float64)
    with torch.no_grad():
        for t in sched.timesteps:
            x = sched.step(unet(x, t).sample, t, x, eta=eta, generator=g).prev_sample
    ours = GaussianDiffusion.from_config(cfg).ddim_sample_loop(unet, (2, 3, 8, 8), N, eta=eta, generator=torch.Generator().manual_seed(11))
    assert ours.dtype == torch.float64
    assert (ours - x).abs().max() <= 1e-8


# ---------------------------------------------------------------- config round trips
@pytest.mark.parametrize("cfg", SCHEDULES[:5], ids=SCHEDULE_IDS[:5])
def test_from_config_round_trips_a_saved_scheduler_config(cfg, tmp_path):
    full = dict(cfg, variance_type="fixed_large", prediction_type="v_prediction", clip_sample=False, timestep_spacing="trailing")
    DDPMScheduler(**full).save_config(tmp_path)
    diffusion = GaussianDiffusion.from_config(tmp_path / "scheduler_config.json")
    again = DDPMScheduler.from_config(diffusion.to_config())
    for key, value in DDPMScheduler.from_pretrained(tmp_path).config.items():
        if key.startswith("_"):
            continue
        got = again.config[key]
        if isinstance(value, float):
            assert got == pytest.approx(value, rel=1e-9), key
        else:
            assert got == value, key
    torch.testing.assert_close(diffusion.schedule.betas, GaussianDiffusion.from_config(diffusion.to_config()).schedule.betas, rtol=1e-12, atol=0)
