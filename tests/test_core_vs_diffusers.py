"""ddpm_core against diffusers, the reference: schedules, add_noise, single steps, whole loops.

Every tolerance here is a first-order rounding error bound, derived from the arithmetic, never fitted:

* Running error analysis (Higham 2002, sec. 3.3): :class:`Bounded` carries a value and a bound on its absolute
  error through each operation of a formula, each rounding adding u|result| (u = 2^-24 in float32, 2^-53 in
  float64; pow, log, exp: 2u, one ulp). The coefficient arithmetic of both implementations is mirrored operation by
  operation (ours: float64 tables cast once to the sample's dtype; diffusers: its step's arithmetic in the
  sample's dtype), so cancellation (1 - abar_t / abar_prev near t = 0) is accounted for where it happens.
* diffusers' float32 tables carry their own error (its float32 cumprod drifts). That error is computed exactly at
  test time: the coefficient formulas evaluated in float64 at diffusers' float32 table values minus the same at our
  float64 values. The schedule test bounds that table error itself from diffusers' float32 algorithm.
* A step's bound is elementwise: e.g. for x0 = (x_t - sqrt(1 - abar) eps) / sqrt(abar) it is
  (|x_t| + |sqrt(1 - abar) eps|) / sqrt(abar) * (3u per implementation + the coefficients' errors), i.e.
  k u kappa with kappa the step's condition number at each element.
* Every bound is multiplied by SAFETY = 4 (the only margin), and is checked elementwise.
* Whole loops are compared step by step ("teacher forcing"): diffusers' scheduler steps from our x_t with the
  model output our loop got and the random stream at the same state. A free-running comparison would measure
  the UNet's sensitivity instead: a randomly initialised UNet's vector field is expanding, so rounding-level
  differences grow from step to step by factors no step-local bound covers. Our loop's x_T, timesteps, model
  timesteps and random-stream consumption are checked to be identical to the reference's.

Float64 runs (diffusers given our float64 tables) check the logic with the same bounds at u = 2^-53: any formula,
indexing, RNG-order or branching difference shows up orders of magnitude above them.
"""

import copy
import itertools

import numpy as np
import pytest
import torch
from diffusers import DDIMScheduler, DDPMPipeline, DDPMScheduler
from diffusers.schedulers.scheduling_ddpm import rescale_zero_terminal_snr as diffusers_rescale
from error_analysis import (
    BETA_ROUNDINGS,
    U32,
    U64,
    UNIT_ROUNDOFF,
    assert_within,
    at_step,
    coefficient_pair,
    ddim_step_bound,
    ddpm_step_bound,
    rescale_first_order_bound,
    stacked,
)

from ddpm_core import GaussianDiffusion, NoiseSchedule
from ddpm_core.samplers import DDIM

pytestmark = pytest.mark.usefixtures("one_intra_op_thread")

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
X0_MODES = [
    dict(clip_sample=False),
    dict(clip_sample=True),
    dict(clip_sample=True, clip_sample_range=0.7),
    dict(thresholding=True, dynamic_thresholding_ratio=0.9, sample_max_value=1.5),
]
SPACINGS = [("leading", 0), ("leading", 1), ("trailing", 0), ("linspace", 0)]
STEPS = [1000, 50, 7, 333]


def _float64_reference(sched):
    """Give a diffusers scheduler float64 tables so that it computes the same maths as ours in float64."""
    ours = NoiseSchedule.make(
        sched.config.beta_schedule,
        sched.config.num_train_timesteps,
        sched.config.beta_start,
        sched.config.beta_end,
        trained_betas=sched.config.trained_betas,
        rescale_betas_zero_snr=sched.config.rescale_betas_zero_snr,
    )
    sched.betas = ours.betas.clone()
    sched.alphas = ours.alphas.clone()
    sched.alphas_cumprod = ours.alphas_cumprod.clone()
    sched.one = torch.tensor(1.0, dtype=torch.float64)
    if hasattr(sched, "final_alpha_cumprod"):
        sched.final_alpha_cumprod = (
            torch.tensor(1.0, dtype=torch.float64) if sched.config.set_alpha_to_one else ours.alphas_cumprod[0]
        )
    return sched


# ---------------------------------------------------------------- schedules and the forward process
@pytest.mark.parametrize("cfg", SCHEDULES, ids=SCHEDULE_IDS)
def test_schedule_matches_diffusers(cfg):
    ref = DDPMScheduler(**cfg)
    ours = GaussianDiffusion.from_config(cfg).schedule
    assert ours.betas.dtype == torch.float64
    base = NoiseSchedule.make(
        cfg.get("beta_schedule", "linear"),
        1000,
        cfg.get("beta_start", 1e-4),
        cfg.get("beta_end", 0.02),
        trained_betas=cfg.get("trained_betas"),
    )
    k_beta = BETA_ROUNDINGS[base.name]
    if cfg.get("rescale_betas_zero_snr"):
        # logic, in float64: diffusers' own rescaling of our float64 betas equals ours to its float64 rounding
        # (two implementations of the same operations: twice one's bound)
        assert_within(
            ours.betas,
            diffusers_rescale(base.betas.clone()),
            2 * rescale_first_order_bound(base.betas, 0, U64),
            "float64 zero-SNR betas",
        )
        beta_bound = rescale_first_order_bound(base.betas, k_beta, U32)
    else:
        beta_bound = k_beta * U32 * ours.betas.abs()
    assert_within(ref.betas, ours.betas, beta_bound, "float32 betas")
    # diffusers' abar_t = cumprod(fl(1 - beta_s)) in float32: its betas' error (exact, measured against ours, and
    # bounded just above) over 1 - beta_s, plus one rounding per subtraction and per product, (2t + 1) u in all.
    one_minus = 1 - ours.betas
    beta_err = torch.where(one_minus > 0, (ref.betas.double() - ours.betas).abs() / one_minus.clamp(min=1e-300), 0.0)
    rel = torch.cumsum(beta_err, 0) + (2 * torch.arange(1000, dtype=torch.float64) + 1) * U32
    assert_within(ref.alphas_cumprod, ours.alphas_cumprod, rel * ours.alphas_cumprod, "float32 alphas_cumprod")


@pytest.mark.parametrize("cfg", SCHEDULES, ids=SCHEDULE_IDS)
def test_q_sample_equals_add_noise(cfg):
    ref = DDPMScheduler(**cfg)
    diffusion = GaussianDiffusion.from_config(cfg)
    g = torch.Generator().manual_seed(0)
    x0 = torch.rand(6, 3, 8, 8, generator=g) * 2 - 1
    noise = torch.randn(6, 3, 8, 8, generator=g)
    t = torch.tensor([0, 1, 250, 500, 998, 999])
    for dtype, sched in ((torch.float32, ref), (torch.float64, _float64_reference(DDPMScheduler(**cfg)))):
        u = UNIT_ROUNDOFF[dtype]
        co, cd = coefficient_pair(
            "ddpm", diffusion.schedule.alphas_cumprod, sched.alphas_cumprod.clone(), t, -torch.ones_like(t), dtype
        )
        sa, sb = co["sa"].v.reshape(-1, 1, 1, 1), co["sb"].v.reshape(-1, 1, 1, 1)
        Esa, Esb = (co["sa"].E + cd["sa"].E).reshape(-1, 1, 1, 1), (co["sb"].E + cd["sb"].E).reshape(-1, 1, 1, 1)
        # eq. 4: sqrt(abar) x0 + sqrt(1 - abar) eps, two products and a sum in each implementation
        bound = (
            x0.double().abs() * Esa + noise.double().abs() * Esb + ((sa * x0).abs() + (sb * noise).abs()) * 2 * (u + u)
        )
        ours = diffusion.q_sample(x0.to(dtype), t, noise.to(dtype))
        assert_within(ours, sched.add_noise(x0.to(dtype), noise.to(dtype), t), bound, f"{dtype} add_noise")


# ---------------------------------------------------------------- single reverse steps, the whole grid
def _step_case(ref, diffusion, N, dtype):
    """Compare the first, second, middle and last two steps of an N-step run: prev_sample and pred_original_sample."""
    ref.set_timesteps(N)
    ts = ref.timesteps.numpy()
    assert np.array_equal(ts, diffusion.inference_timesteps(N)), "timestep selection differs"
    spaced = diffusion.respace(ts)
    learned = diffusion.variance_type == "learned_range"
    C, u = 3, UNIT_ROUNDOFF[dtype]
    picks = sorted({0, 1, len(ts) // 2, len(ts) - 2, len(ts) - 1} & set(range(len(ts))))
    prevs = [int(ts[k + 1]) if k + 1 < len(ts) else -1 for k in picks]
    coefs = coefficient_pair(
        "ddpm",
        diffusion.schedule.alphas_cumprod,
        ref.alphas_cumprod,
        torch.as_tensor(ts[picks]),
        torch.tensor(prevs),
        dtype,
    )
    for j, k in enumerate(picks):
        t = int(ts[k])
        g = torch.Generator().manual_seed(k)
        x = torch.randn(2, C, 4, 4, generator=g, dtype=dtype)
        out = torch.randn(2, 2 * C if learned else C, 4, 4, generator=g, dtype=dtype)
        if learned:
            out[:, C:] = torch.rand(2, C, 4, 4, generator=g, dtype=dtype) * 2 - 1
        ref_out = ref.step(out, t, x, generator=torch.Generator().manual_seed(100 + k))
        ours = spaced.p_sample(
            None, x, len(ts) - 1 - k, generator=torch.Generator().manual_seed(100 + k), model_output=out
        )
        z = torch.randn(x.shape, generator=torch.Generator().manual_seed(100 + k), dtype=dtype) if t > 0 else None
        co, cd = (at_step(c, j) for c in coefs)
        Bx0, Bprev = ddpm_step_bound(diffusion, co, cd, x, out[:, :C], out[:, C:] if learned else None, z, u, u)
        assert_within(ours.pred_original_sample, ref_out.pred_original_sample, Bx0, f"{dtype} pred x0 at t={t}")
        assert_within(ours.prev_sample, ref_out.prev_sample, Bprev, f"{dtype} prev sample at t={t}")


@pytest.mark.parametrize("var", VARIANCES)
@pytest.mark.parametrize("pred", PREDICTIONS)
@pytest.mark.parametrize("cfg", SCHEDULES, ids=SCHEDULE_IDS)
def test_step_grid_matches_ddpm_scheduler(cfg, pred, var):
    for (spacing, offset), x0_mode, N in itertools.product(SPACINGS, X0_MODES, STEPS):
        if spacing == "leading" and offset and N == 1000:
            continue  # leading + offset 1 with N = T asks for timestep T: diffusers fails on it, we raise ValueError
        full = dict(
            cfg, prediction_type=pred, variance_type=var, timestep_spacing=spacing, steps_offset=offset, **x0_mode
        )
        diffusion = GaussianDiffusion.from_config(full)
        _step_case(DDPMScheduler(**full), diffusion, N, torch.float32)
        _step_case(_float64_reference(DDPMScheduler(**full)), diffusion, N, torch.float64)


def test_leading_offset_beyond_T_is_a_value_error():
    diffusion = GaussianDiffusion.from_config(dict(steps_offset=1))
    with pytest.raises(ValueError, match="outside"):
        diffusion.inference_timesteps(1000)


# ---------------------------------------------------------------- teacher-forced loops
class _Replay:
    """A model that returns recorded outputs in order and records the timesteps it is called with."""

    def __init__(self, outputs):
        self.outputs, self.seen = list(outputs), []

    def __call__(self, x, t):
        self.seen.append(int(t[0]))
        return self.outputs[len(self.seen) - 1].to(x.dtype)


def _generator_at(state):
    g = torch.Generator()
    g.set_state(state)
    return g


def compare_ddpm_loop(diffusion, sched, steps, x_T, seed, dtype):
    """Our DDPM loop vs diffusers' DDPMScheduler.step, teacher-forced at every step.

    ``steps``: (t, model output) pairs the reference run produced; our loop gets those outputs in order, from its
    own x_T drawn with ``seed`` (equal to ``x_T`` when the dtypes agree); at each step ``sched.step`` runs from our
    x_t with the random stream in the state ours was in. Checks x_T, the timesteps the model saw and the random
    stream's state after every step exactly, then every step's pred x0 and x_{t-1} against the derived bounds
    (stacked ``[K, B, C, H, W]``, index 0 = loop step)."""
    u = UNIT_ROUNDOFF[dtype]
    ts = [t for t, _ in steps]
    model = _Replay([m for _, m in steps])
    g_ours, g_ref = torch.Generator().manual_seed(seed), torch.Generator().manual_seed(seed)
    x_T_ref = torch.randn(x_T.shape, generator=g_ref, dtype=dtype)
    if dtype == x_T.dtype:
        assert torch.equal(x_T_ref, x_T), "x_T differs from the reference's draw"
    rec = {key: [] for key in ("x", "x0", "prev", "x0_ref", "prev_ref", "z")}
    for k, out in enumerate(
        diffusion.p_sample_loop_progressive(model, x_T.shape, timesteps=ts, generator=g_ours, dtype=dtype)
    ):
        t, m = steps[k]
        if k == 0:
            assert torch.equal(out.x_t, x_T_ref), "our x_T differs from the reference's draw"
        z = (
            torch.randn(x_T.shape, generator=_generator_at(g_ref.get_state()), dtype=dtype)
            if t > 0
            else torch.zeros_like(out.x_t)
        )
        ref = sched.step(m.to(dtype), t, out.x_t, generator=g_ref)
        assert torch.equal(g_ours.get_state(), g_ref.get_state()), f"random stream out of step after t={t}"
        for key, value in zip(
            rec, (out.x_t, out.pred_original_sample, out.prev_sample, ref.pred_original_sample, ref.prev_sample, z)
        ):
            rec[key].append(value)
    assert model.seen == ts, "the model saw other timesteps"
    rec = {key: torch.stack(value) for key, value in rec.items()}
    m = torch.stack([m.to(dtype) for _, m in steps])
    C = x_T.shape[1]
    co, cd = (
        stacked(c)
        for c in coefficient_pair(
            "ddpm",
            diffusion.schedule.alphas_cumprod,
            sched.alphas_cumprod,
            torch.tensor(ts),
            torch.tensor(ts[1:] + [-1]),
            dtype,
        )
    )
    learned = diffusion.variance_type == "learned_range"
    Bx0, Bprev = ddpm_step_bound(
        diffusion, co, cd, rec["x"], m[:, :, :C], m[:, :, C:] if learned else None, rec["z"], u, u
    )
    assert_within(rec["x0"], rec["x0_ref"], Bx0, f"{dtype} DDPM loop pred x0 (index 0 = loop step)")
    assert_within(rec["prev"], rec["prev_ref"], Bprev, f"{dtype} DDPM loop prev sample (index 0 = loop step)")


def _pipeline_run(unet, sched, N, seed, batch=2):
    """DDPMPipeline's own run, recording x_T and each step's (t, model output)."""
    record = []
    step = sched.step

    def recording_step(model_output, timestep, sample, **kw):
        if not record:
            record.append(sample.clone())
        record.append((int(timestep), model_output.clone()))
        return step(model_output, timestep, sample, **kw)

    sched.step = recording_step
    pipe = DDPMPipeline(unet=unet, scheduler=sched)
    pipe.set_progress_bar_config(disable=True)
    pipe(batch_size=batch, generator=torch.Generator().manual_seed(seed), num_inference_steps=N, output_type="np")
    sched.step = step
    return record[0], record[1:]


LOOP_CASES = [
    # (schedule, prediction, variance, x0 mode, spacing, N)
    ("linear", "epsilon", "fixed_large", dict(clip_sample=True), "leading", 50),
    ("linear", "epsilon", "fixed_small", dict(clip_sample=False), "trailing", 7),
    ("linear", "v_prediction", "fixed_small", dict(thresholding=True), "linspace", 333),
    ("linear", "sample", "learned_range", dict(clip_sample=True), "leading", 50),
    ("squaredcos_cap_v2", "epsilon", "learned_range", dict(clip_sample=True), "trailing", 50),
    ("sigmoid", "epsilon", "fixed_small", dict(clip_sample=True), "linspace", 50),
]


@pytest.mark.parametrize("schedule,pred,var,x0_mode,spacing,N", LOOP_CASES)
def test_p_sample_loop_reproduces_ddpm_pipeline(schedule, pred, var, x0_mode, spacing, N, unet3, unet6):
    cfg = dict(beta_schedule=schedule, prediction_type=pred, variance_type=var, timestep_spacing=spacing, **x0_mode)
    unet = unet6 if var == "learned_range" else unet3
    x_T, steps = _pipeline_run(unet, DDPMScheduler(**cfg), N, seed=3)
    sched = DDPMScheduler(**cfg)
    sched.set_timesteps(N)
    assert [t for t, _ in steps] == sched.timesteps.tolist()
    diffusion = GaussianDiffusion.from_config(cfg)
    compare_ddpm_loop(diffusion, sched, steps, x_T, 3, torch.float32)
    f64 = _float64_reference(DDPMScheduler(**cfg))
    f64.set_timesteps(N)
    compare_ddpm_loop(diffusion, f64, steps, x_T, 3, torch.float64)


@pytest.mark.slow
@pytest.mark.parametrize(
    "schedule,var", [("linear", "fixed_large"), ("linear", "fixed_small"), ("sigmoid", "fixed_small")]
)
def test_full_1000_step_loop_reproduces_ddpm_pipeline(schedule, var, unet3):
    """All T steps: diffusers' float32 cumprod drift is in its table error, step by step."""
    cfg = dict(beta_schedule=schedule, variance_type=var)
    x_T, steps = _pipeline_run(unet3, DDPMScheduler(**cfg), 1000, seed=5)
    sched = DDPMScheduler(**cfg)
    sched.set_timesteps(1000)
    compare_ddpm_loop(GaussianDiffusion.from_config(cfg), sched, steps, x_T, 5, torch.float32)


def compare_ddim_loop(diffusion, sched, model, x_T, N, eta, seed, dtype, clipped_eps=False):
    """Our DDIM loop from ``x_T`` vs DDIMScheduler.step teacher-forced (as :func:`compare_ddpm_loop`); ``model``
    is called by our loop and its outputs are handed to the reference. ``clipped_eps``: both with
    ``use_clipped_model_output``."""
    u = UNIT_ROUNDOFF[dtype]
    sched.set_timesteps(N)
    ts = sched.timesteps.tolist()
    prevs = [t - sched.config.num_train_timesteps // N for t in ts]  # diffusers' previous step
    assert [max(p, -1) for p in prevs] == ts[1:] + [-1], "a case where diffusers' t - T//N is not the next kept step"
    seen = []

    def recording(x, t):
        seen.append(model(x, t))
        return seen[-1]

    g_ours, g_ref = torch.Generator().manual_seed(seed), torch.Generator().manual_seed(seed)
    rec = {key: [] for key in ("x", "x0", "prev", "x0_ref", "prev_ref", "z")}
    outs = diffusion.p_sample_loop_progressive(
        recording,
        noise=x_T.clone(),
        num_inference_steps=N,
        eta=eta,
        generator=g_ours,
        sampler=DDIM(use_clipped_model_output=clipped_eps),
    )
    for k, out in enumerate(outs):
        t = ts[k]
        assert out.timestep == t
        z = (
            torch.randn(x_T.shape, generator=_generator_at(g_ref.get_state()), dtype=dtype)
            if eta > 0
            else torch.zeros_like(x_T)
        )
        ref = sched.step(seen[k], t, out.x_t, eta=eta, generator=g_ref, use_clipped_model_output=clipped_eps)
        assert torch.equal(g_ours.get_state(), g_ref.get_state()), f"random stream out of step after t={t}"
        for key, value in zip(
            rec, (out.x_t, out.pred_original_sample, out.prev_sample, ref.pred_original_sample, ref.prev_sample, z)
        ):
            rec[key].append(value)
    assert len(rec["x"]) == len(ts)
    rec = {key: torch.stack(value) for key, value in rec.items()}
    final = (
        (1.0, 1.0)
        if sched.config.set_alpha_to_one
        else (diffusion.schedule.alphas_cumprod[0], sched.alphas_cumprod[0])
    )
    co, cd = (
        stacked(c)
        for c in coefficient_pair(
            "ddim",
            diffusion.schedule.alphas_cumprod,
            sched.alphas_cumprod,
            torch.tensor(ts),
            torch.tensor(prevs),
            dtype,
            final=final,
            eta=eta,
        )
    )
    Bx0, Bprev = ddim_step_bound(
        diffusion, co, cd, rec["x"], torch.stack(seen), rec["z"], u, u, clipped_eps=clipped_eps
    )
    assert_within(rec["x0"], rec["x0_ref"], Bx0, f"{dtype} DDIM N={N} pred x0 (index 0 = loop step)")
    assert_within(rec["prev"], rec["prev_ref"], Bprev, f"{dtype} DDIM N={N} prev sample (index 0 = loop step)")


@pytest.mark.parametrize("eta", [0.0, 1.0, 0.3])
@pytest.mark.parametrize("pred", PREDICTIONS)
@pytest.mark.parametrize("cfg", SCHEDULES, ids=SCHEDULE_IDS)
def test_ddim_steps_match_ddim_scheduler(cfg, pred, eta):
    """DDIM steps in float64 (diffusers given our tables): its previous step t - T//N equals ours for leading
    spacing and N | T."""
    for (spacing, N), x0_mode, one in itertools.product(
        [("leading", 50), ("leading", 7), ("trailing", 50), ("linspace", 1000)],
        X0_MODES[:2] + X0_MODES[3:],
        [True, False],
    ):
        full = dict(cfg, prediction_type=pred, timestep_spacing=spacing, set_alpha_to_one=one, **x0_mode)
        if full.get("beta_schedule") == "sigmoid":  # DDIMScheduler has no sigmoid schedule: pass its betas
            full = dict(full, trained_betas=NoiseSchedule.make("sigmoid", 1000).betas.tolist())
        noise0 = torch.randn(2, 3, 4, 4, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
        outs = [
            torch.randn(2, 3, 4, 4, generator=torch.Generator().manual_seed(10 + k), dtype=torch.float64)
            for k in range(N)
        ]
        calls = iter(outs)
        compare_ddim_loop(
            GaussianDiffusion.from_config(full),
            _float64_reference(DDIMScheduler(**full)),
            lambda x, t: next(calls),
            noise0,
            N,
            eta,
            7,
            torch.float64,
        )


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize(
    "eta,spacing,N", [(0.0, "leading", 50), (1.0, "leading", 50), (0.0, "trailing", 20), (1.0, "leading", 7)]
)
def test_ddim_loop_reproduces_ddim_scheduler_on_unet(eta, spacing, N, dtype, unet3):
    """Whole DDIM loops on a real UNet, teacher-forced, as users run them (float32) and in float64."""
    unet = copy.deepcopy(unet3).to(dtype)
    cfg = dict(beta_schedule="linear", timestep_spacing=spacing, clip_sample=True)
    sched = DDIMScheduler(**cfg) if dtype == torch.float32 else _float64_reference(DDIMScheduler(**cfg))
    x_T = torch.randn(2, 3, 8, 8, generator=torch.Generator().manual_seed(11), dtype=dtype)

    def model(x, t):
        with torch.no_grad():
            return unet(x, t).sample

    compare_ddim_loop(GaussianDiffusion.from_config(cfg), sched, model, x_T, N, eta, 12, dtype)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("eta,N", [(0.0, 50), (1.0, 7)])
def test_ddim_with_eps_from_the_clipped_x0_reproduces_ddim_scheduler(eta, N, dtype, unet3):
    """``use_clipped_model_output``: eps_hat recomputed from the clipped x0_hat, as diffusers' step does with it.
    The model's outputs are scaled up so that the clip acts on many elements at every step."""
    unet = copy.deepcopy(unet3).to(dtype)
    cfg = dict(beta_schedule="linear", clip_sample=True)
    sched = DDIMScheduler(**cfg) if dtype == torch.float32 else _float64_reference(DDIMScheduler(**cfg))
    x_T = torch.randn(2, 3, 8, 8, generator=torch.Generator().manual_seed(13), dtype=dtype)
    diffusion = GaussianDiffusion.from_config(cfg)
    clipped = []

    def model(x, t):
        with torch.no_grad():
            out = 3 * unet(x, t).sample
        clipped.append(diffusion.predict_start_from_noise(x, t, out).abs().gt(1).float().mean().item())
        return out

    compare_ddim_loop(diffusion, sched, model, x_T, N, eta, 12, dtype, clipped_eps=True)
    assert min(clipped) > 0.05, f"the clip acted on too few elements to test anything: {min(clipped):.3f}"


# ---------------------------------------------------------------- config round trips
@pytest.mark.parametrize("cfg", SCHEDULES[:5], ids=SCHEDULE_IDS[:5])
def test_from_config_round_trips_a_saved_scheduler_config(cfg, tmp_path):
    full = dict(
        cfg,
        variance_type="fixed_large",
        prediction_type="v_prediction",
        clip_sample=False,
        timestep_spacing="trailing",
    )
    DDPMScheduler(**full).save_config(tmp_path)
    diffusion = GaussianDiffusion.from_config(tmp_path / "scheduler_config.json")
    again = DDPMScheduler.from_config(diffusion.to_config())
    for key, value in DDPMScheduler.from_pretrained(tmp_path).config.items():
        if key.startswith("_"):
            continue
        got = again.config[key]
        assert got == value, key  # floats too: JSON and our dicts pass them through unchanged (repr round-trips)
    # the same config rebuilds the same float64 betas by the same operations: bitwise equal
    assert torch.equal(diffusion.schedule.betas, GaussianDiffusion.from_config(diffusion.to_config()).schedule.betas)
