"""DPM-Solver++ (2M) (ddpm_core.samplers.dpm_solver) against diffusers' DPMSolverMultistepScheduler, the reference.

The reference is ``DPMSolverMultistepScheduler(algorithm_type="dpmsolver++", solver_order=2, solver_type="midpoint",
lower_order_final=True, final_sigmas_type="zero")`` given our timesteps (``set_timesteps(timesteps=...)``) and our
tables (its ``alphas_cumprod``, ``alpha_t``, ``sigma_t``, ``lambda_t`` and ``sigmas`` from our float64 schedule), so
that it computes its own formulas on the same numbers. diffusers' DPM scheduler has no ``clip_sample``: every
comparison runs with ``clip_sample=False`` (thresholding, which both apply, is compared too).

* Single steps, float64: teacher-forced over whole sequences (both get the same x_t and the same model output at
  every step, so their multistep histories hold the same x0 predictions); equal to 1e-10 normwise relative. The
  two are the same formulas evaluated differently in float64 (unit roundoff 2^-53 ~ 1.1e-16): a difference of
  formula, order, history or final-step handling shows up orders of magnitude above 1e-10.
* Whole loops, float32, free-running from a shared generator on a tiny real UNet2DModel. Each step k adds a local
  rounding difference delta_k (both implementations' float32 arithmetic, bounded operation by operation by running
  error analysis, Higham 2002, sec. 3.3, plus twice the network's own float32 rounding rho_k once the inputs
  differ); a difference present after step k reaches the result multiplied by at most G_k, the infinity norm of
  the linearised remaining loop (from the network's Jacobians along the run). So
  |x_ours - x_ref| <= SAFETY * sum_k G_k delta_k <= SAFETY * N * max_k G_k * c u |x|: u = 2^-24 times the number
  of steps times the growth factor G, times the margin (c: the roundings a step adds, counted). The same runs
  teacher-forced (diffusers steps from our x_t with our model output): each step within SAFETY * delta_k.
* The bounds are worst cases (every rounding at its largest, aligned): on the runs here they lie two to three
  orders of magnitude above the differences seen; the float64 comparisons are what pin the formulas down.
* The fast path (FastLoop, eager and frozen) against the plain step at every step, teacher-forced.
* The step calls no host-synchronising operator (what a CUDA graph capture needs), checked at the dispatcher.
* The bundled MNIST model samples with it.
"""

import copy
import itertools
import math

import numpy as np
import pytest
import torch
from diffusers import DPMSolverMultistepScheduler
from sampler_checks import checks
from scheduler_reference import bundled_config, teacher_forced_float64
from teacher_forcing import model_rounding_scale, record
from torch.overrides import TorchFunctionMode

from conftest import tiny_unet
from ddpm_core.diffusion import GaussianDiffusion
from ddpm_core.fast import FastLoop
from ddpm_core.samplers import DPMSolverPP2M, get_sampler, sample_loop_progressive
from ddpm_core.tensors import call_model
from helpers import HostSyncs

U32, U64 = 2.0**-24, 2.0**-53
SAFETY = 4.0  # the one margin applied to every first-order bound below
REL64 = 1e-10  # float64 agreement, normwise relative

SCHEDULES = [
    dict(beta_schedule="linear"),
    dict(beta_schedule="scaled_linear", beta_start=0.00085, beta_end=0.012),
    dict(beta_schedule="squaredcos_cap_v2"),
]
SCHEDULE_IDS = ["linear", "scaled_linear", "cosine"]
PREDICTIONS = ["epsilon", "sample", "v_prediction"]
X0_MODES = [dict(clip_sample=False), dict(thresholding=True, dynamic_thresholding_ratio=0.9, sample_max_value=1.5)]
STEPS = [1, 2, 5, 10, 20, 50]
SPACINGS = ["leading", "linspace", "trailing"]
_DIFFUSERS_KEYS = (
    "num_train_timesteps",
    "beta_start",
    "beta_end",
    "beta_schedule",
    "trained_betas",
    "prediction_type",
    "thresholding",
    "dynamic_thresholding_ratio",
    "sample_max_value",
    "variance_type",
)

SAMPLER = get_sampler("dpmsolver++")


@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    """Tensors of a few hundred elements gain nothing from a second thread, and on a busy machine OpenMP's
    hand-offs between two make the tiny UNet many times slower; restored for the modules that follow."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


def reference(cfg, diffusion, timesteps, dtype):
    """diffusers' DPM-Solver++ (2M) on our ``timesteps``, its tables replaced by ours in ``dtype`` (float64, or
    float64 rounded once to float32: the comparison is then of the step arithmetic, not of diffusers' float32
    cumprod, whose drift the schedule tests of test_core_vs_diffusers bound)."""
    sched = DPMSolverMultistepScheduler(
        algorithm_type="dpmsolver++",
        solver_order=2,
        solver_type="midpoint",
        lower_order_final=True,
        final_sigmas_type="zero",
        **{k: v for k, v in cfg.items() if k in _DIFFUSERS_KEYS},
    )
    sched.set_timesteps(timesteps=[int(t) for t in timesteps])
    assert sched.timesteps.tolist() == [int(t) for t in timesteps] and len(sched.sigmas) == len(timesteps) + 1
    assert sched.sigmas[-1] == 0  # final_sigmas_type="zero"
    abar = diffusion.schedule.alphas_cumprod
    sched.alphas_cumprod = abar.to(dtype)
    sched.alpha_t, sched.sigma_t = abar.sqrt().to(dtype), (1 - abar).sqrt().to(dtype)
    sched.lambda_t = (0.5 * (abar.log() - torch.log1p(-abar))).to(dtype)
    ve = ((1 - abar) / abar).sqrt()  # diffusers' "VE" sigma_t = sqrt((1 - abar) / abar)
    sched.sigmas = torch.cat([ve[torch.as_tensor(timesteps)], torch.zeros(1, dtype=torch.float64)]).to(dtype)
    return sched


class KeepFloat64(TorchFunctionMode):
    """diffusers' step casts the sample to float32 before its update (an "upcast" meant for half precision), which
    in a float64 run rounds x and (sigma_t / sigma_s) x to float32 (~1e-8 relative). Inside this mode that cast of
    a float64 tensor is the identity, so that diffusers' step evaluates its own formulas in float64."""

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        if (
            func is torch.Tensor.to
            and isinstance(args[0], torch.Tensor)
            and args[0].dtype == torch.float64
            and args[1:] == (torch.float32,)
            and not kwargs
        ):
            return args[0]
        return func(*args, **kwargs)


def assert_rel(ours, ref, what, rel=REL64):
    """|ours - ref| <= rel * max |ref| (normwise relative), non-finite values equal."""
    ours, ref = ours.double(), ref.double()
    assert torch.equal(torch.isfinite(ours), torch.isfinite(ref)), f"{what}: non-finite values differ"
    fin = torch.isfinite(ref)
    err, scale = (ours[fin] - ref[fin]).abs().max(), ref[fin].abs().max()
    assert err <= rel * scale, f"{what}: |ours - ref| = {err:.3g} > {rel:g} x max|ref| = {rel * scale:.3g}"


# ---------------------------------------------------------------- the sampler and its tables
def test_registered_deterministic_and_labelled():
    s = get_sampler("dpmsolver++")
    assert isinstance(s, DPMSolverPP2M) and s.label == "DPM-Solver++ (2M)" and s.default_steps == 20 and not s.uses_eta
    diffusion = GaussianDiffusion.from_config({"beta_schedule": "linear"})
    ts = diffusion.inference_timesteps(10)
    assert s.plan(diffusion, ts, "cpu").noise_steps == (False,) * 10
    # the loop draws x_T from the generator and nothing after it
    g, g_ref = torch.Generator().manual_seed(1), torch.Generator().manual_seed(1)
    torch.randn(2, 3, 4, 4, generator=g_ref)
    for _ in sample_loop_progressive(diffusion, s, lambda x, t: torch.zeros_like(x), (2, 3, 4, 4), ts, g):
        pass
    assert torch.equal(g.get_state(), g_ref.get_state())


@pytest.mark.parametrize("cfg", SCHEDULES, ids=SCHEDULE_IDS)
def test_tables_are_the_papers_update(cfg):
    """x_coef, x0_coef, prev_x0_coef against Algorithm 2 written with lambda, h, r and exp (its first-order first
    step and its D_i update), in float64; first order at the first and the last step; the last step returns x0."""
    diffusion = GaussianDiffusion.from_config(cfg)
    abar_full = diffusion.schedule.alphas_cumprod
    for N, spacing in itertools.product(STEPS, SPACINGS):
        ts = GaussianDiffusion.from_config(dict(cfg, timestep_spacing=spacing)).inference_timesteps(N)
        tab = SAMPLER.tables(diffusion, ts, 0.0)
        abar = torch.cat([abar_full[torch.as_tensor(ts)], torch.ones(1, dtype=torch.float64)])
        alpha, sigma = abar.sqrt(), (1 - abar).sqrt()
        lam = alpha.log() - sigma.log()  # +inf after the last step
        for k in range(N):
            h = lam[k + 1] - lam[k]
            phi = alpha[k + 1] * -torch.expm1(-h)  # -alpha_t (e^{-h} - 1)
            A, B, C = sigma[k + 1] / sigma[k], phi, torch.zeros((), dtype=torch.float64)
            if 0 < k < N - 1:
                r = (lam[k] - lam[k - 1]) / h
                B, C = phi * (1 + 1 / (2 * r)), -phi / (2 * r)
            for name, want in zip(("x_coef", "x0_coef", "prev_x0_coef"), (A, B, C)):
                got = tab[name][k]
                assert abs(got - want) <= 1e-13 * max(abs(want), 1e-300) or got == want, (name, N, spacing, k)
        assert tab["x_coef"][-1] == 0 and tab["x0_coef"][-1] == 1 and tab["prev_x0_coef"][-1] == 0
        assert tab["prev_x0_coef"][0] == 0


def test_zero_terminal_snr_tables_are_finite():
    """abar_{T-1} = 0 (Lin et al. 2024): the VE sigma is infinite there; our tables stay finite (A = sigma_t,
    B = alpha_t at the first step; the next step's r = inf makes it first order)."""
    diffusion = GaussianDiffusion.from_config(
        {
            "beta_schedule": "linear",
            "rescale_betas_zero_snr": True,
            "timestep_spacing": "trailing",
            "prediction_type": "v_prediction",
        }
    )
    ts = diffusion.inference_timesteps(10)
    assert diffusion.schedule.alphas_cumprod[ts[0]] == 0
    tab = SAMPLER.tables(diffusion, ts, 0.0)
    assert all(torch.isfinite(v).all() for v in tab.values())
    abar1 = diffusion.schedule.alphas_cumprod[ts[1]]
    assert torch.isclose(tab["x_coef"][0], (1 - abar1).sqrt(), rtol=1e-15) and tab["prev_x0_coef"][1] == 0
    out = None
    for out in sample_loop_progressive(
        diffusion, SAMPLER, lambda x, t: 0.1 * x, (1, 1, 4, 4), ts, torch.Generator().manual_seed(0)
    ):
        pass
    assert torch.isfinite(out.prev_sample).all()


# ---------------------------------------------------------------- single steps in float64, teacher-forced
def _teacher_forced_float64(cfg, N, seed=0):
    """Every step of an N-step run against diffusers' step (float64, its tables ours): both step from our x_t with
    the same random model output; diffusers' history is its own x0 predictions, ours our state."""
    diffusion = GaussianDiffusion.from_config(cfg)
    ts = diffusion.inference_timesteps(N)
    ref = reference(cfg, diffusion, ts, torch.float64)
    plan = SAMPLER.plan(diffusion, ts, "cpu", torch.float64)
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(2, 3, 4, 4, generator=g, dtype=torch.float64)
    state = SAMPLER.init_state(plan, x)
    out_channels = 6 if diffusion.variance_type == "learned_range" else 3
    for k, t in enumerate(ts.tolist()):
        m = torch.randn(2, out_channels, 4, 4, generator=g, dtype=torch.float64)
        with KeepFloat64():
            prev_ref = ref.step(m, t, x).prev_sample
        x0_ref = ref.model_outputs[-1]  # diffusers' data prediction (its convert_model_output) at this step
        buffer = state["prev_x0"]
        prev, x0 = SAMPLER.step(plan, torch.tensor([k]), m, x, None, state)
        assert state["prev_x0"] is buffer  # updated in place: the fast path replays one captured step on it
        what = f"{cfg} N={N} step {k} (t={t})"
        assert prev.dtype == prev_ref.dtype == torch.float64
        assert_rel(x0, x0_ref, f"x0 at {what}")
        assert_rel(prev, prev_ref, f"x_prev at {what}")
        assert torch.equal(state["prev_x0"], x0)
        x = prev
    assert torch.equal(prev, x0)  # the last step (to sigma = 0) returns x0 exactly


@pytest.mark.parametrize("pred", PREDICTIONS)
@pytest.mark.parametrize("cfg", SCHEDULES, ids=SCHEDULE_IDS)
def test_steps_equal_diffusers_in_float64(cfg, pred):
    for i, (x0_mode, N) in enumerate(itertools.product(X0_MODES, STEPS)):
        spacing = SPACINGS[i % len(SPACINGS)]  # every spacing, each N twice (other x0 mode, other spacing)
        _teacher_forced_float64(dict(cfg, prediction_type=pred, timestep_spacing=spacing, **x0_mode), N, seed=N)


def test_learned_range_variance_channels_are_ignored():
    """A learned-variance model (6 channels for 3): its variance half plays no part, in diffusers (epsilon) and here."""
    for N in (2, 10):
        _teacher_forced_float64(dict(beta_schedule="linear", variance_type="learned_range", clip_sample=False), N)


def test_diffusers_float64_step_needs_keep_float64():
    """Why KeepFloat64: without it diffusers' float64 step is only float32-accurate (~1e-8), far above 1e-10."""
    cfg = dict(beta_schedule="linear", clip_sample=False)
    diffusion = GaussianDiffusion.from_config(cfg)
    ts = diffusion.inference_timesteps(5)
    x, m = torch.randn(2, 3, 4, 4, dtype=torch.float64), torch.randn(2, 3, 4, 4, dtype=torch.float64)
    plan = SAMPLER.plan(diffusion, ts, "cpu", torch.float64)
    ours, _ = SAMPLER.step(plan, torch.tensor([0]), m, x, None, SAMPLER.init_state(plan, x))
    cast = reference(cfg, diffusion, ts, torch.float64).step(m, int(ts[0]), x).prev_sample
    assert (cast - ours).abs().max() > 10 * REL64 * ours.abs().max()
    with KeepFloat64():
        kept = reference(cfg, diffusion, ts, torch.float64).step(m, int(ts[0]), x).prev_sample
    assert_rel(ours, kept, "first step")


# ---------------------------------------------------------------- whole float32 loops
class _R:
    """A scalar value ``v`` (float64, the exact maths) with a first-order bound ``e`` on the absolute error of
    computing it in arithmetic of unit roundoff ``u`` (running error analysis): + - * / add u|result|; pow
    (``** 0.5``, ``** 2``), log and exp (library functions) 2u|result|."""

    def __init__(self, v, e=0.0, u=U32):
        self.v, self.e, self.u = float(v), float(e), u

    def _lift(self, o):
        return o if isinstance(o, _R) else _R(o, 0.0, self.u)

    def __add__(self, o):
        o = self._lift(o)
        v = self.v + o.v
        return _R(v, self.e + o.e + self.u * abs(v), self.u)

    __radd__ = __add__

    def __sub__(self, o):
        return self + _R(-self._lift(o).v, self._lift(o).e, self.u)

    def __rsub__(self, o):
        return self._lift(o) - self

    def __mul__(self, o):
        o = self._lift(o)
        v = self.v * o.v
        return _R(v, abs(o.v) * self.e + abs(self.v) * o.e + self.u * abs(v), self.u)

    __rmul__ = __mul__

    def __truediv__(self, o):
        o = self._lift(o)
        v = self.v / o.v
        return _R(v, (self.e + abs(v) * o.e) / abs(o.v) + self.u * abs(v), self.u)

    def __rtruediv__(self, o):
        return self._lift(o) / self

    def pow_half(self):
        v = math.sqrt(self.v)
        prop = self.e / (2 * v) if v > 0 else math.sqrt(self.e)  # |sqrt(a + d) - sqrt(a)| <= sqrt(|d|) at a = 0
        return _R(v, prop + 2 * self.u * v, self.u)

    def square(self):
        v = self.v**2
        return _R(v, 2 * abs(self.v) * self.e + 2 * self.u * v, self.u)

    def log(self):
        v = math.log(self.v)
        return _R(v, self.e / self.v + 2 * self.u * abs(v), self.u)

    def exp(self):
        v = math.exp(self.v)
        return _R(v, v * self.e + 2 * self.u * v, self.u)

    def cast(self, u_to):
        return _R(self.v, self.e + u_to * abs(self.v), u_to)


def _diffusers_coefs(ve_t, ve_s0, ve_s1, u=U32):
    """DPMSolverMultistepScheduler's coefficient arithmetic (0.42.1: _sigma_to_alpha_sigma_t, the first- and
    second-order dpmsolver++ midpoint updates), operation by operation, from VE sigmas rounded once to the run's
    dtype. Returns alpha_s, sigma_s (the data prediction's), a = sigma_t / sigma_s, Bh = alpha_t (e^{-h} - 1) and
    1 / r0 (None at the first step); the final step to sigma 0 is exact (a = 0, Bh = -1)."""

    def alpha_sigma(ve):
        s = _R(ve, u * ve, u)
        alpha = 1.0 / (s.square() + 1.0).pow_half()
        return alpha, s * alpha

    alpha_s, sigma_s = alpha_sigma(ve_s0)
    if ve_t == 0:
        return {"sa": alpha_s, "sb": sigma_s, "a": _R(0.0, 0.0, u), "Bh": _R(-1.0, 0.0, u), "invr": None}
    alpha_t, sigma_t = alpha_sigma(ve_t)
    lam_t, lam_s = alpha_t.log() - sigma_t.log(), alpha_s.log() - sigma_s.log()
    h = lam_t - lam_s
    out = {
        "sa": alpha_s,
        "sb": sigma_s,
        "a": sigma_t / sigma_s,
        "Bh": alpha_t * ((_R(0.0, 0.0, u) - h).exp() - 1.0),
        "invr": None,
    }
    if ve_s1 is not None:
        alpha_1, sigma_1 = alpha_sigma(ve_s1)
        out["invr"] = 1.0 / ((lam_s - (alpha_1.log() - sigma_1.log())) / h)
    return out


def _our_coefs(abar_s, abar_t, abar_1, second, u=U32):
    """Our float64 tables (DPMSolverPP2M.tables and the schedule's sqrt tables), each cast once to the run's dtype."""
    at, as_ = _R(abar_t, 0.0, U64), _R(abar_s, 0.0, U64)
    sa, sb = as_.pow_half(), (1.0 - as_).pow_half()
    A = (1.0 - at).pow_half() / sb
    B1 = at.pow_half() - sa * A
    half_inv_r = _R(0.0, 0.0, U64)
    if second:
        a1 = _R(abar_1, 0.0, U64)
        lam = lambda a: (a.log() - (1.0 - a).log()) * 0.5  # noqa: E731 (float64 log1p: within the log's 2u)
        half_inv_r = (lam(at) - lam(as_)) * 0.5 / (lam(as_) - lam(a1))
    out = {"sa": sa, "sb": sb, "A": A, "B": B1 * (half_inv_r + 1.0), "C": _R(0.0, 0.0, U64) - B1 * half_inv_r}
    return {k: v.cast(u) for k, v in out.items()}


def _x0_local(pred, co, cd, x, m, Bm, u=U32):
    """Bound on |x0 ours - x0 reference| for the same x_t and model outputs that differ by up to ``Bm``: the
    data prediction's rounding in each (3 operations) and the two's coefficient errors."""
    sa, sb = co["sa"].v, co["sb"].v
    Esa, Esb, r = co["sa"].e + cd["sa"].e, co["sb"].e + cd["sb"].e, 3 * (u + u)
    if pred == "epsilon":
        x0 = (x - sb * m) / sa
        return (m.abs() * Esb + x0.abs() * Esa + (x.abs() + (sb * m).abs()) * r) / sa + sb / sa * Bm
    if pred == "v_prediction":
        return x.abs() * Esa + m.abs() * Esb + ((sa * x).abs() + (sb * m).abs()) * r + sb * Bm
    return torch.zeros_like(x) + Bm  # x0 is the model output itself in both


def _unet_jacobians(unet, x, t):
    """d unet(x)[b] / d x[b], ``[B, n, n]`` with n = C*H*W. Samples are independent (group norm and attention work
    per sample), so n copies of each sample in one batch, each back-propagating one output coordinate, give all
    rows in one backward pass."""
    B, n = x.shape[0], x[0].numel()
    xb = x.detach().float().repeat_interleave(n, 0).requires_grad_(True)
    with torch.enable_grad():
        out = unet(xb, torch.full((B * n,), int(t))).sample
        rows = torch.eye(n).reshape(n, *x.shape[1:]).repeat(B, 1, 1, 1)
        (grad,) = torch.autograd.grad((out * rows).sum(), xb)
    return grad.reshape(B, n, n).double()


def step_differences(diffusion, ts, steps, outputs, Bm):
    """delta_k: bounds (per sample, ``[B]``) on the local difference step k of our float32 loop and of diffusers'
    float32 step add given the same x_t and history, in x_{k+1} (``dx``) and in the x0 handed to the next step's
    history (``dp``): both implementations' rounding (coefficients operation by operation, :func:`_diffusers_coefs`
    and :func:`_our_coefs`; 3u per term of each update) and model outputs that differ by up to ``Bm[k]`` (``[B]``).
    ``steps``: our run's StepOutputs, ``outputs``: the model outputs it got."""
    abar, pred = diffusion.schedule.alphas_cumprod.tolist(), diffusion.prediction_type
    ve = [math.sqrt((1 - a) / a) for a in abar]
    N, dxs, dps = len(ts), [], []
    for k, t in enumerate(ts):
        x, x0 = steps[k].x_t.double(), steps[k].pred_original_sample.double()
        p = steps[k - 1].pred_original_sample.double() if k else torch.zeros_like(x)
        last, second = k == N - 1, 0 < k < N - 1
        cd = _diffusers_coefs(0.0 if last else ve[ts[k + 1]], ve[t], ve[ts[k - 1]] if second else None)
        co = _our_coefs(abar[t], 1.0 if last else abar[ts[k + 1]], abar[ts[k - 1]] if k else None, second)
        dx0 = _x0_local(pred, co, cd, x, outputs[k].double(), Bm[k].reshape(-1, 1, 1, 1))
        if last:  # both return x0 exactly (ours: A = C = 0, B = 1; diffusers': a = 0, Bh = -1)
            dx = dx0
        else:
            A, Bc, C, a, Bh = co["A"], co["B"], co["C"], cd["a"], cd["Bh"]
            dx = (
                x.abs() * A.e
                + x0.abs() * Bc.e
                + p.abs() * C.e
                + 3 * U32 * ((A.v * x).abs() + (Bc.v * x0).abs() + (C.v * p).abs())
                + abs(Bc.v) * dx0
            )
            dx = dx + x.abs() * a.e + x0.abs() * Bh.e + 3 * U32 * ((a.v * x).abs() + (Bh.v * x0).abs())
            if second:  # D1 = (1 / r0) (m0 - m1), then - 0.5 Bh D1 (0.5 x is exact)
                invr, diff = cd["invr"], x0 - p
                D1 = invr.v * diff
                dD1 = diff.abs() * invr.e + abs(invr.v) * U32 * diff.abs() + U32 * D1.abs()
                dx = dx + 0.5 * (D1.abs() * Bh.e + abs(Bh.v) * dD1) + 3 * U32 * (0.5 * Bh.v * D1).abs()
        dxs.append(dx.flatten(1).amax(1))
        dps.append(dx0.flatten(1).amax(1))
    return dxs, dps


def growth_factors(diffusion, ts, steps, unet):
    """G_k = (G_x, G_p) per sample: the infinity norms of the x and x0_prev blocks of the linearised rest of the loop
    after step k, P_k = M_{N-1} ... M_{k+1} on the state (x, x0_prev), M_j = [[A_j + B_j D_j, C_j], [D_j, 0]] with
    D_j = d x0 / d x = a I + b J_j from the network's Jacobian J_j at our x_j (exact coefficients). A difference
    (e_x, e_p) left after step k reaches the result as at most G_x |e_x| + G_p |e_p|."""
    abar, pred = diffusion.schedule.alphas_cumprod, diffusion.prediction_type
    tab = SAMPLER.tables(diffusion, np.asarray(ts), 0.0)
    N, (B, n) = len(ts), (steps[0].x_t.shape[0], steps[0].x_t[0].numel())
    eye = torch.eye(n, dtype=torch.float64).expand(B, n, n)
    Ms = []
    for k, t in enumerate(ts):
        sa, sb = float(abar[t].sqrt()), float((1 - abar[t]).sqrt())
        a0, b0 = {"epsilon": (1 / sa, -sb / sa), "v_prediction": (sa, -sb), "sample": (0.0, 1.0)}[pred]
        D = a0 * eye + b0 * _unet_jacobians(unet, steps[k].x_t, t)
        A, Bc, C = (float(tab[name][k]) for name in ("x_coef", "x0_coef", "prev_x0_coef"))
        Ms.append(torch.cat([torch.cat([A * eye + Bc * D, C * eye], 2), torch.cat([D, 0 * eye], 2)], 1))
    P, G = torch.eye(2 * n, dtype=torch.float64).expand(B, 2 * n, 2 * n), [None] * N
    for k in range(N - 1, -1, -1):
        G[k] = (P[:, :n, :n].abs().sum(-1).amax(-1), P[:, :n, n:].abs().sum(-1).amax(-1))
        P = P @ Ms[k]
    return G


LOOP_CASES = [
    ("linear", "epsilon", "leading", 10),
    ("cosine", "v_prediction", "linspace", 20),
    ("scaled_linear", "sample", "trailing", 5),
    ("linear", "epsilon", "linspace", 1),
]


def _float32_run(schedule, pred, spacing, N, unet3):
    """Our loop in float32 on ``unet3`` (2 samples of 3 x 4 x 4, x_T from seed 5), recorded: (cfg, diffusion, ts,
    steps, the model outputs it got, rho_k = the network's float32 rounding max |unet(x_k) - unet64(x_k)| [B])."""
    cfg = dict(
        SCHEDULES[SCHEDULE_IDS.index(schedule)], prediction_type=pred, timestep_spacing=spacing, clip_sample=False
    )
    diffusion = GaussianDiffusion.from_config(cfg)
    ts = diffusion.inference_timesteps(N).tolist()
    outputs = []

    def model(x, t):
        with torch.no_grad():
            outputs.append(unet3(x, t).sample)
        return outputs[-1]

    steps, _ = record(
        sample_loop_progressive(
            diffusion, SAMPLER, model, (2, 3, 4, 4), ts, torch.Generator().manual_seed(5), dtype=torch.float32
        )
    )
    assert [s.timestep for s in steps] == ts and steps[-1].prev_sample.dtype == torch.float32
    unet64 = copy.deepcopy(unet3).double()
    rho = [model_rounding_scale(unet3, unet64, s.x_t, torch.full((2,), s.timestep))[1].flatten() for s in steps]
    return cfg, diffusion, ts, steps, outputs, rho


@pytest.mark.parametrize("schedule,pred,spacing,N", LOOP_CASES)
def test_float32_loop_equals_diffusers_loop(schedule, pred, spacing, N, unet3):
    """Our loop and diffusers' scheduler loop in float32 on a tiny real UNet2DModel, free-running from the same x_T
    (4 x 4 samples keep the network's Jacobians, 48 columns a sample, cheap).

    |x_0 ours - x_0 diffusers| <= SAFETY sum_k (G_x delta_x + G_p delta_p)_k, the model outputs differing by up
    to twice the network's float32 rounding rho_k from step 1 on (the same x_T at step 0): u = 2^-24 times N steps
    times the growth factor G times the margin, in one line."""
    cfg, diffusion, ts, steps, outputs, rho = _float32_run(schedule, pred, spacing, N, unet3)
    ref = reference(cfg, diffusion, ts, torch.float32)
    x = torch.randn(steps[0].x_t.shape, generator=torch.Generator().manual_seed(5))  # diffusers' randn_tensor x_T
    assert torch.equal(x, steps[0].x_t)
    for t in ref.timesteps:
        with torch.no_grad():
            x = ref.step(unet3(x, t.expand(x.shape[0])).sample, t, x).prev_sample
    dx, dp = step_differences(diffusion, ts, steps, outputs, [2 * r if k else 0 * r for k, r in enumerate(rho)])
    G = growth_factors(diffusion, ts, steps, unet3)
    bound = SAFETY * sum(G[k][0] * dx[k] + G[k][1] * dp[k] for k in range(N))
    err = (steps[-1].prev_sample.double() - x.double()).abs().flatten(1).amax(1)
    growth = max(float(torch.maximum(*g).max()) for g in G)
    assert (err <= bound).all(), (
        f"{cfg} N={N}: |ours - diffusers| = {err.tolist()} exceeds SAFETY x the derived bound "
        f"{bound.tolist()} (growth factor {growth:.3g})"
    )


@pytest.mark.parametrize("schedule,pred,spacing,N", LOOP_CASES)
def test_float32_loop_teacher_forced_by_diffusers(schedule, pred, spacing, N, unet3):
    """diffusers steps from our x_t with our model output, keeping its own history: each step within
    SAFETY (delta_x + |C| delta_p of the step before), the same model outputs (no rho), no growth."""
    cfg, diffusion, ts, steps, outputs, rho = _float32_run(schedule, pred, spacing, N, unet3)
    ref = reference(cfg, diffusion, ts, torch.float32)
    dx, dp = step_differences(diffusion, ts, steps, outputs, [0 * r for r in rho])
    C = SAMPLER.tables(diffusion, np.asarray(ts), 0.0)["prev_x0_coef"].abs().tolist()
    for k, s in enumerate(steps):
        prev = ref.step(outputs[k], ts[k], s.x_t).prev_sample
        for got, want, bound, what in (
            (s.pred_original_sample, ref.model_outputs[-1], SAFETY * dp[k], "x0"),
            (s.prev_sample, prev, SAFETY * (dx[k] + (C[k] * dp[k - 1] if k else 0)), "x_prev"),
        ):
            err = (got.double() - want.double()).abs().flatten(1).amax(1)
            assert (err <= bound).all(), (
                f"{cfg} N={N} teacher-forced {what} at step {k}: {err.tolist()} > {bound.tolist()}"
            )


# ---------------------------------------------------------------- the fast path
def _x0_bound_same_tables(diffusion, t_index, x, m, x0, Bm, u=U32):
    """|x0 fast - x0 plain|: the same float32 tables and operations on model outputs differing by up to ``Bm``;
    clipping is 1-Lipschitz, thresholding y = clamp(x0, -s, s) / s moves by (|dx0| + 2|ds|) / s with |ds| <=
    max |dx0| (order statistics) plus the quantile's rounding."""
    abar = float(diffusion.schedule.alphas_cumprod[t_index])
    sa, sb, r = math.sqrt(abar), math.sqrt(1 - abar), 3 * (u + u)
    pred = diffusion.prediction_type
    if pred == "epsilon":
        raw = (x - sb * m) / sa
        B = ((x.abs() + (sb * m).abs()) * r) / sa + sb / sa * Bm
    elif pred == "v_prediction":
        raw = sa * x - sb * m
        B = ((sa * x).abs() + (sb * m).abs()) * r + sb * Bm
    else:
        raw, B = m, torch.zeros_like(m) + Bm
    if diffusion.thresholding:
        s = torch.quantile(raw.abs().flatten(1), diffusion.dynamic_thresholding_ratio, dim=1)
        s = s.clamp(1, diffusion.sample_max_value).reshape(-1, 1, 1, 1)
        Ds = B.flatten(1).amax(1).reshape(-1, 1, 1, 1) + 4 * 2 * u * s
        return (B + 2 * Ds) / s + 2 * u * x0.abs()
    return B


FAST_CASES = [
    ({"beta_schedule": "linear"}, 20),  # clip_sample=True, as the bundled model
    ({"beta_schedule": "squaredcos_cap_v2", "prediction_type": "v_prediction", "thresholding": True}, 10),
    (
        {
            "beta_schedule": "scaled_linear",
            "beta_start": 0.00085,
            "beta_end": 0.012,
            "prediction_type": "sample",
            "timestep_spacing": "trailing",
        },
        7,
    ),
]


def compare_with_plain_steps(diffusion, ts, steps, ref):
    """Teacher-forced at every step: the plain step (the sampler's own, on contiguous tensors, the plain UNet
    ``ref``) from the fast run's x_t, with the fast run's previous x0 as history, equals the fast run's step, given
    model outputs that may differ by two float32 roundings of the network (channels_last, oneDNN, a trace, TF32
    reorder its sums; the network's rounding rho computed against its float64 copy). Bounds, elementwise: x0 as
    :func:`_x0_bound_same_tables`; x_prev: |B| times that plus the update's rounding (3u per term) in each."""
    ref64 = copy.deepcopy(ref).double()
    device = steps[0].x_t.device
    plan = SAMPLER.plan(diffusion, ts, device, torch.float32)
    for k, s in enumerate(steps):
        tt = torch.full((s.x_t.shape[0],), s.timestep, device=device)
        with torch.inference_mode():
            m = call_model(ref, s.x_t, tt)
            rho = (m.double() - call_model(ref64, s.x_t.double(), tt)).abs().flatten(1).amax(1).reshape(-1, 1, 1, 1)
            state = {"prev_x0": steps[k - 1].pred_original_sample.clone() if k else torch.zeros_like(s.x_t)}
            prev, x0 = SAMPLER.step(plan, torch.tensor([k], device=device), m, s.x_t, None, state)
        x, x0d, m64, rho = s.x_t.double().cpu(), x0.double().cpu(), m.double().cpu(), rho.cpu()
        Bx0 = _x0_bound_same_tables(diffusion, ts[k], x, m64, x0d, 2 * rho)
        A, Bc, C = (float(plan.tables[name][k]) for name in ("x_coef", "x0_coef", "prev_x0_coef"))
        p = steps[k - 1].pred_original_sample.double().cpu() if k else torch.zeros_like(x)
        Bprev = abs(Bc) * Bx0 + 2 * 3 * U32 * ((A * x).abs() + (Bc * x0d).abs() + (C * p).abs())
        for got, want, bound, what in (
            (s.pred_original_sample, x0, Bx0, "x0"),
            (s.prev_sample, prev, Bprev, "x_prev"),
        ):
            err = (got.double().cpu() - want.double().cpu()).abs()
            assert (err <= SAFETY * bound).all(), (
                f"{what} at step {k} (t={s.timestep}): {float(err.max()):.3g} > SAFETY x bound"
            )


@pytest.mark.parametrize("mode", ["eager", "frozen"])
@pytest.mark.parametrize("cfg,N", FAST_CASES)
def test_fast_loop_equals_the_plain_step(cfg, N, mode):
    diffusion = GaussianDiffusion.from_config(cfg)
    unet, ref = tiny_unet(3), tiny_unet(3)  # the fast path switches its model to channels_last
    ts = diffusion.inference_timesteps(N)
    x_T = torch.randn(3, 3, 8, 8, generator=torch.Generator().manual_seed(7))
    loop = FastLoop(diffusion, unet, x_T.shape, ts, "dpmsolver++", mode=mode)
    assert loop.path == ("frozen TorchScript" if mode == "frozen" else "eager channels_last")
    assert not any(loop.noise_steps)
    steps, _ = record(loop.run(x_T, torch.Generator().manual_seed(11)))
    assert torch.equal(steps[0].x_t, x_T) and [s.timestep for s in steps] == ts.tolist()
    compare_with_plain_steps(diffusion, ts, steps, ref)
    # reusable: the history is reset between runs, a second run repeats the first exactly
    last = None
    for last in loop.run(x_T, torch.Generator().manual_seed(11)):
        pass
    assert torch.equal(last.prev_sample, steps[-1].prev_sample)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
@pytest.mark.parametrize("mode", ["graph", "compile+graph"])
def test_cuda_graph_loop_equals_the_plain_step(mode):
    """The captured step (history buffer included) replayed per step = the plain step, teacher-forced (float32)."""
    diffusion = GaussianDiffusion.from_config({"beta_schedule": "linear"})
    ts = diffusion.inference_timesteps(20)
    unet, ref = tiny_unet(3).cuda(), tiny_unet(3).cuda()
    x_T = torch.randn(4, 3, 8, 8, device="cuda")
    loop = FastLoop(diffusion, unet, x_T.shape, ts, "dpmsolver++", mode=mode)
    assert loop.graph is not None, loop.path
    steps, _ = record(loop.run(x_T, torch.Generator("cuda").manual_seed(5)))
    compare_with_plain_steps(diffusion, ts, steps, ref)
    last = None
    for last in loop.run(x_T, torch.Generator("cuda").manual_seed(5)):
        pass
    assert torch.equal(last.prev_sample, steps[-1].prev_sample)


# ---------------------------------------------------------------- no host synchronisation
@pytest.mark.parametrize(
    "cfg",
    [
        {"beta_schedule": "linear"},
        {"beta_schedule": "squaredcos_cap_v2", "prediction_type": "v_prediction", "thresholding": True},
    ],
)
def test_the_whole_step_never_waits_on_the_host(cfg):
    """What a CUDA graph capture requires, checked on the CPU at the dispatcher: the fast loop's whole step
    (diffusers' UNet, the data prediction, the 2M update, the in-place history) reads no tensor value on the host."""
    diffusion = GaussianDiffusion.from_config(cfg)
    loop = FastLoop(
        diffusion, tiny_unet(3, seed=1), (2, 3, 8, 8), diffusion.inference_timesteps(10), "dpmsolver++", mode="eager"
    )
    loop._body()  # the first call fills the schedule's device-table cache (the warm-up before a capture does so)
    loop.k.zero_()
    for _ in range(2):  # k = 0 (first order) and k = 1 (second order, the history read): one code path, other tables
        with torch.inference_mode(), HostSyncs() as syncs:
            loop._body()
        assert syncs.seen == []
    with torch.inference_mode(), HostSyncs() as check:
        loop.k.item()
    assert check.seen == ["aten.item.default"]


# ---------------------------------------------------------------- the bundled model
def test_bundled_model_samples_with_dpm_solver():
    from ddpm_core.checkpoints import load_checkpoint
    from ddpm_core.sampling import generate

    result = generate(
        load_checkpoint("ddpm-mnist-28"),
        sampler="dpmsolver++",
        num_inference_steps=10,
        batch_size=4,
        seed=0,
        n_snapshots=1,
        n_frames=1,
    )
    x = result.samples
    assert x.shape == (4, 1, 28, 28) and torch.isfinite(x).all()
    assert len(result.timesteps) == 10
    y = x.clamp(-1, 1)
    assert y.min() >= -1 and y.max() <= 1
    # the last step returns the clipped x0 prediction (clip_sample=True): already within [-1, 1]
    assert x.abs().max() <= 1


# ---------------------------------------------------------------- as diffusers users meet it
# its own timesteps (N + 1 points, the last dropped) from the model's config for every spacing and offset, the
# clipping model emulated on diffusers' side: sampler_checks / scheduler_reference
globals().update(checks("dpmsolver++", 1, True, "DPMSolverMultistepScheduler"))


@pytest.mark.parametrize("final_sigmas_type", ["zero", "sigma_min"])
@pytest.mark.parametrize("lower_order_final", [True, False])
@pytest.mark.parametrize("order", [2, 3])
def test_final_step_handling_equals_diffusers(order, lower_order_final, final_sigmas_type, unet3):
    """``final_sigmas_type`` and ``lower_order_final`` as DPMSolverMultistepScheduler's, below and above 15 steps:
    every step teacher-forced in float64 (scheduler_reference)."""
    cls = DPMSolverPP2M if order == 2 else get_sampler("dpmsolver++3m").__class__
    sampler = cls(lower_order_final=lower_order_final, final_sigmas_type=final_sigmas_type)
    unet64 = copy.deepcopy(unet3).double()
    x_T = torch.randn(2, 3, 8, 8, generator=torch.Generator().manual_seed(3))
    for N in (4, 16):
        runs = teacher_forced_float64(sampler, dict(bundled_config(), clip_sample=False), N, unet64, x_T)
        last = runs[-1]
        assert torch.equal(last.prev_sample, last.pred_original_sample) == (final_sigmas_type == "zero")


def test_bundled_model_runs_the_diffusers_timesteps():
    """The Space's DPM-Solver++ at 20 steps on the bundled model: 940, 893, ..., 47, then a step to sigma = 0."""
    from ddpm_core.checkpoints import load_checkpoint
    from ddpm_core.sampling import generate

    result = generate(load_checkpoint("ddpm-mnist-28"), sampler="dpmsolver++", num_inference_steps=20, batch_size=1)
    assert result.timesteps == list(range(940, 0, -47))
