"""Closed-form properties of the core, bad input, dtypes and the training loss.

Tolerances are first-order rounding error bounds (k u kappa, u = 2^-53 in float64, 2^-24 in float32, counted per
operation, or carried through a formula by error_analysis' running error analysis), times the same
SAFETY = 4; Monte Carlo checks use 5 standard errors.
"""

import math

import pytest
import torch
from error_analysis import (
    SAFETY,
    TINY,
    U32,
    U64,
    UNIT_ROUNDOFF,
    Bounded,
    assert_within,
    ddpm_step_bound,
    ours_ddpm_coefs,
    rescale_first_order_bound,
)

from ddpm_core import GaussianDiffusion, NoiseSchedule, inference_timesteps
from ddpm_core.schedule import QUANTITIES

pytestmark = pytest.mark.usefixtures("one_intra_op_thread")


@pytest.fixture(scope="module")
def diffusion():
    return GaussianDiffusion(NoiseSchedule.make("linear", 1000), variance_type="fixed_small")


def test_schedule_holds_every_quantity_in_float64():
    s = NoiseSchedule.make("cosine", 500)
    for key in QUANTITIES:
        v = getattr(s, key)
        assert v.dtype == torch.float64 and v.shape == (500,), key
    b, a = s.betas, s.alphas_cumprod
    # cumprod of 1 - beta: one rounding per subtraction and per product, (2t + 1) u relative, in each evaluation
    assert_within(a, torch.cumprod(1 - b, 0), 2 * (2 * torch.arange(500) + 1) * U64 * a, "alphas_cumprod")
    assert torch.equal(s.alphas_cumprod_prev[1:], a[:-1])
    assert s.alphas_cumprod_prev[0] == 1 and s.alphas_cumprod_next[-1] == 0
    # both sides evaluate the formula once: twice its running error bound (1/a - 1 cancels near a = 1)
    A = Bounded(a, 0.0, U64)
    assert_within(
        s.sqrt_recipm1_alphas_cumprod, torch.sqrt(1 / a - 1), 2 * (1.0 / A - 1.0).sqrt().E, "sqrt(1/abar - 1)"
    )
    assert_within(s.snr, a / (1 - a), 2 * (A / (1.0 - A)).E, "snr")


def test_linear_improved_scales_by_1000_over_T():
    s = NoiseSchedule.make("linear_improved", 250, beta_start=1e-4, beta_end=0.02)
    # a linspace returns its end points exactly; they are beta_start * (1000 / T) and beta_end * (1000 / T)
    assert s.betas[0].item() == 1e-4 * (1000 / 250) and s.betas[-1].item() == 0.02 * (1000 / 250)
    same = NoiseSchedule.make("linear", 250)
    assert same.betas[-1].item() == 0.02  # diffusers' form does not scale
    # the point of the scaling: sum(beta) is the same as T = 1000's (T (start + end) / 2 both), so the total noise
    # -log abar_{T-1} = sum(beta) + R, 0 <= R <= sum(beta^2 / (2 (1 - beta))), differs by at most the larger R
    full = NoiseSchedule.make("linear", 1000)
    R = max(float((x.betas**2 / (2 * (1 - x.betas))).sum()) for x in (s, full))
    assert abs(math.log(s.alphas_cumprod[-1]) - math.log(full.alphas_cumprod[-1])) <= R + 1e-12


def test_zero_terminal_snr():
    s = NoiseSchedule.make("linear", 1000, rescale_betas_zero_snr=True)
    assert s.alphas_cumprod[-1] == 0 and s.snr[-1] == 0
    # the rescaling keeps abar_0: off by its float64 rounding (first-order bound of beta_0 = 1 - abar_0), and the
    # two schedules' 1 - beta_0 roundings
    plain = NoiseSchedule.make("linear", 1000)
    bound = rescale_first_order_bound(plain.betas, 0, U64)[0] + 2 * U64
    assert abs(s.alphas_cumprod[0] - plain.alphas_cumprod[0]) <= SAFETY * bound


def test_predict_start_from_noise_inverts_q_sample(diffusion):
    g = torch.Generator().manual_seed(0)
    x0 = torch.rand(4, 3, 8, 8, generator=g, dtype=torch.float64) * 2 - 1
    eps = torch.randn(4, 3, 8, 8, generator=g, dtype=torch.float64)
    t = torch.tensor([0, 10, 500, 999])
    x_t = diffusion.q_sample(x0, t, eps)
    sa = diffusion.schedule.sqrt_alphas_cumprod[t].reshape(-1, 1, 1, 1)
    sb = diffusion.schedule.sqrt_one_minus_alphas_cumprod[t].reshape(-1, 1, 1, 1)
    # the same coefficients both ways, so their own rounding cancels; 3 roundings in q_sample (eq. 4) and 3 in the
    # inversion (eq. 15), each <= u (|sa x0| + |sb eps|), divided by the coefficient that is divided by
    mag = (sa * x0).abs() + (sb * eps).abs()
    assert_within(diffusion.predict_start_from_noise(x_t, t, eps), x0, 6 * U64 * mag / sa, "x0 from eps")
    assert_within(diffusion.predict_noise_from_start(x_t, t, x0), eps, 6 * U64 * mag / sb, "eps from x0")
    v = diffusion.get_v(x0, eps, t)
    # x0 = sa x_t - sb v = (sa^2 + sb^2) x0: 3 roundings each in x_t, v and the inversion, plus the tables'
    # |sa^2 + sb^2 - 1| <= 3u (sqrt(abar) squared: 2u; 1 - abar and its sqrt squared: 3u (1 - abar))
    vmag = sa * mag + sb * ((sa * eps).abs() + (sb * x0).abs())
    assert_within(diffusion.predict_start_from_v(x_t, t, v), x0, 9 * U64 * vmag + 3 * U64 * x0.abs(), "x0 from v")


def test_q_posterior_matches_its_formula_in_float64(diffusion):
    s = diffusion.schedule
    g = torch.Generator().manual_seed(1)
    x0 = torch.randn(3, 2, 4, 4, generator=g, dtype=torch.float64)
    x_t = torch.randn(3, 2, 4, 4, generator=g, dtype=torch.float64)
    for t in (1, 37, 999):
        a_t, a_prev, b_t = s.alphas_cumprod[t], s.alphas_cumprod[t - 1], s.betas[t]
        A_t, A_prev, B_t = (Bounded(q, 0.0, U64) for q in (a_t, a_prev, b_t))
        # eq. 7 written as here and as in schedule.py: each evaluation's running error bound
        c1 = A_prev.sqrt() * B_t / (1 - A_t)
        c2 = (1 - B_t).sqrt() * (1 - A_prev) / (1 - A_t)
        c1_ours, c2_ours = B_t * A_prev.sqrt() / (1 - A_t), (1 - A_prev) * (1 - B_t).sqrt() / (1 - A_t)
        var, var_ours = (1 - A_prev) / (1 - A_t) * B_t, B_t * (1 - A_prev) / (1 - A_t)
        mean = c1.v * x0 + c2.v * x_t
        m, v, logv = diffusion.q_posterior(x0, x_t, t)
        # coefficient errors, then two products and a sum in each evaluation
        bound = (
            (c1.E + c1_ours.E) * x0.abs()
            + (c2.E + c2_ours.E) * x_t.abs()
            + 4 * U64 * ((c1.v * x0).abs() + (c2.v * x_t).abs())
        )
        assert_within(m, mean, bound, f"posterior mean at t={t}")
        assert abs(v.flatten()[0].item() - var.v.item()) <= SAFETY * (var.E + var_ours.E).item()
        # log: the variance's relative error plus one ulp of each log (ours in torch, here math.log)
        log_bound = (var.E + var_ours.E).item() / var.v.item() + 4 * U64 * abs(math.log(var.v.item()))
        assert abs(logv.flatten()[0].item() - math.log(var.v.item())) <= SAFETY * log_bound


def test_posterior_is_the_bayes_posterior_by_sampling():
    """Monte Carlo: draw x_{t-1} ~ q(x_{t-1}|x_0), x_t ~ q(x_t|x_{t-1}); E[x_{t-1} | x_t] is linear in x_t with
    the posterior's coefficient, and the residual variance is beta~_t (scalar data, 400k draws)."""
    d = GaussianDiffusion(NoiseSchedule.make("linear", 100))
    s, t, n = d.schedule, 40, 400_000
    g = torch.Generator().manual_seed(2)
    x0 = torch.full((n, 1), 0.7, dtype=torch.float64)
    x_prev = d.q_sample(x0, t - 1, torch.randn(n, 1, generator=g, dtype=torch.float64))
    x_t = (1 - s.betas[t]).sqrt() * x_prev + s.betas[t].sqrt() * torch.randn(n, 1, generator=g, dtype=torch.float64)
    mean, var, _ = d.q_posterior(x0, x_t, t)
    resid = x_prev - mean
    # 5 standard errors (the draws are seeded; rounding, ~1e-16, is far below): the mean's is sqrt(var / n), a
    # Gaussian sample variance's relative one sqrt(2 / (n - 1))
    assert abs(resid.mean().item()) < 5 * math.sqrt(var.flatten()[0].item() / n)
    assert resid.var().item() == pytest.approx(var.flatten()[0].item(), rel=5 * math.sqrt(2 / (n - 1)))


def test_last_step_adds_no_noise(diffusion):
    x = torch.randn(2, 3, 4, 4)
    out = torch.randn(2, 3, 4, 4)
    a = diffusion.p_sample(None, x, 0, generator=torch.Generator().manual_seed(0), model_output=out)
    b = diffusion.p_sample(None, x, 0, generator=torch.Generator().manual_seed(1), model_output=out)
    assert torch.equal(a.prev_sample, b.prev_sample)
    mean = diffusion.p_mean_variance(None, x, 0, model_output=out)["mean"]
    assert torch.equal(a.prev_sample, mean)
    c = diffusion.p_sample(None, x, 1, generator=torch.Generator().manual_seed(1), model_output=out)
    assert not torch.equal(c.prev_sample, diffusion.p_mean_variance(None, x, 1, model_output=out)["mean"])


def test_variance_choices(diffusion):
    s = diffusion.schedule
    x, out = torch.zeros(1, 1, 2, 2, dtype=torch.float64), torch.zeros(1, 1, 2, 2, dtype=torch.float64)
    large = GaussianDiffusion(s, variance_type="fixed_large")
    for t in (1, 500):
        small_v = diffusion.p_mean_variance(None, x, t, model_output=out)["variance"].flatten()[0]
        large_v = large.p_mean_variance(None, x, t, model_output=out)["variance"].flatten()[0]
        # the step's std is exp(log(var) / 2): log off by 2u |log var| (one ulp), halved, exp 2u, so std is within
        # u |log var| + 2u relative; its square within twice that plus u
        rel_small = SAFETY * U64 * (2 * abs(math.log(s.posterior_variance[t].item())) + 5)
        # beta~_t is the *small* one; beta_t the *large* one (its std is sqrt(beta_t): sqrt, square, 3u)
        assert small_v.item() == pytest.approx(s.posterior_variance[t].item(), rel=rel_small)
        assert large_v.item() == pytest.approx(s.betas[t].item(), rel=SAFETY * 3 * U64)
        assert small_v < large_v


@pytest.mark.parametrize(
    "spacing,N,expected_head,expected_tail",
    [
        ("leading", 10, [900, 800], [100, 0]),
        ("trailing", 10, [999, 899], [199, 99]),
        ("linspace", 10, [999, 888], [111, 0]),
        ("leading", 7, [852, 710], [142, 0]),
    ],
)
def test_timestep_spacings(spacing, N, expected_head, expected_tail):
    ts = inference_timesteps(1000, N, spacing)
    assert len(ts) == N and list(ts[:2]) == expected_head and list(ts[-2:]) == expected_tail


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16, torch.float32])
def test_loops_run_in_the_sample_dtype(dtype, unet3):
    d = GaussianDiffusion(NoiseSchedule.make("linear", 1000))
    unet = __import__("copy").deepcopy(unet3).to(dtype)
    g = torch.Generator().manual_seed(0)
    outputs = []

    def model(x, t):
        outputs.append(unet(x, t).sample)
        return outputs[-1]

    steps = [
        (o.x_t, o.pred_original_sample, o.prev_sample, o.timestep)
        for o in d.p_sample_loop_progressive(model, (1, 3, 8, 8), num_inference_steps=5, generator=g, dtype=dtype)
    ]
    y = d.p_sample_loop(unet, (1, 3, 8, 8), 5, generator=torch.Generator().manual_seed(0), sampler="ddim")
    x = steps[-1][2]
    assert x.dtype == dtype and y.dtype == dtype and torch.isfinite(x).all() and torch.isfinite(y).all()
    # each step in the sample dtype follows the float32 step from the same x_t, model output and noise to the
    # step's first-order bound at the two unit roundoffs (tables cast to each dtype), plus an underflow floor
    ts = [t for *_, t in steps]
    spaced, abar, u = d.respace(ts), d.schedule.alphas_cumprod, UNIT_ROUNDOFF[dtype]
    g = torch.Generator().manual_seed(0)
    torch.randn((1, 3, 8, 8), generator=g, dtype=dtype)  # x_T
    for k, ((x_t, x0, prev, t), m) in enumerate(zip(steps, outputs)):
        z = torch.randn(x_t.shape, generator=g, dtype=dtype) if t > 0 else None
        ref = spaced.p_sample(
            None, x_t.float(), len(ts) - 1 - k, model_output=m.float(), noise=None if z is None else z.float()
        )
        ap = abar[ts[k + 1]] if k + 1 < len(ts) else 1.0
        Bx0, Bprev = ddpm_step_bound(
            d,
            ours_ddpm_coefs(abar[t], ap, u),
            ours_ddpm_coefs(abar[t], ap, U32),
            x_t.float(),
            m.float(),
            None,
            None if z is None else z.float(),
            u,
            U32,
        )
        floor = 16 * TINY[dtype]  # results below the normal range round to the subnormal grid
        assert_within(x0, ref.pred_original_sample, Bx0 + floor, f"{dtype} pred x0 at t={t}")
        assert_within(prev, ref.prev_sample, Bprev + floor, f"{dtype} x_(t-1) at t={t}")


def test_progressive_loop_exposes_t_x_t_and_pred_x0(diffusion, unet3):
    steps = list(
        diffusion.p_sample_loop_progressive(
            unet3, (2, 3, 8, 8), num_inference_steps=5, generator=torch.Generator().manual_seed(0)
        )
    )
    assert [s.timestep for s in steps] == [800, 600, 400, 200, 0]
    for a, b in zip(steps, steps[1:]):
        assert torch.equal(a.prev_sample, b.x_t)
    assert all(s.pred_original_sample.abs().max() <= 1 for s in steps)  # clip_sample


def test_from_config_rejects_unknown_keys_and_values():
    with pytest.raises(ValueError, match="unsupported scheduler config key 'beta_shedule'"):
        GaussianDiffusion.from_config({"beta_shedule": "linear"})
    with pytest.raises(ValueError, match="variance_type 'learned'"):
        GaussianDiffusion.from_config({"variance_type": "learned"})
    with pytest.raises(ValueError, match="unknown beta_schedule 'laplace'"):
        GaussianDiffusion.from_config({"beta_schedule": "laplace"})
    with pytest.raises(ValueError, match="prediction_type"):
        GaussianDiffusion.from_config({"prediction_type": "x0"})
    with pytest.raises(ValueError, match="timestep_spacing"):
        GaussianDiffusion.from_config({"timestep_spacing": "uniform"})
    # old keys: `timesteps` is the old name of num_train_timesteps, tensor_format is ignored
    d = GaussianDiffusion.from_config({"timesteps": 500, "tensor_format": "pt", "_class_name": "DDPMScheduler"})
    assert d.num_timesteps == 500


def test_bad_input_raises_value_errors(diffusion, unet3):
    x = torch.zeros(2, 3, 8, 8)
    for t in (-1, 1000, torch.tensor([0, 1000]), torch.tensor([0.5, 1.0]), torch.tensor([1, 2, 3])):
        with pytest.raises(ValueError):
            diffusion.q_sample(x, t)
    with pytest.raises(ValueError, match="shapes differ"):
        diffusion.q_sample(x, 3, torch.zeros(2, 3, 8, 9))
    for n in (0, 1001, -5, 2.5):
        with pytest.raises(ValueError, match="num_inference_steps"):
            diffusion.p_sample_loop(unet3, (1, 3, 8, 8), num_inference_steps=n)
    with pytest.raises(ValueError, match="learned_range"):
        GaussianDiffusion(diffusion.schedule, variance_type="learned_range").p_sample(
            None, x, 5, model_output=torch.zeros(2, 3, 8, 8)
        )
    with pytest.raises(ValueError, match="learned-variance"):
        diffusion.p_sample(None, x, 5, model_output=torch.zeros(2, 6, 8, 8))
    with pytest.raises(ValueError, match="eta"):
        diffusion.p_sample_loop(unet3, (1, 3, 8, 8), 5, sampler="ddim", eta=2)
    with pytest.raises(ValueError, match="betas must lie"):
        NoiseSchedule([0.1, 1.5])


@pytest.mark.parametrize("pred", ["epsilon", "sample", "v_prediction"])
def test_p_losses_targets_and_min_snr(pred):
    d = GaussianDiffusion(NoiseSchedule.make("linear", 1000), prediction_type=pred)
    g = torch.Generator().manual_seed(0)
    x0 = torch.rand(4, 1, 4, 4, generator=g) * 2 - 1
    noise = torch.randn(4, 1, 4, 4, generator=g)
    t = torch.tensor([3, 100, 600, 999])
    target = {"epsilon": noise, "sample": x0, "v_prediction": d.get_v(x0, noise, t)}[pred]

    def perfect(x, ts):
        assert torch.equal(ts, t)
        return target

    assert d.p_losses(perfect, x0, t, noise).item() == 0  # out - target is exactly 0
    zero = lambda x, ts: torch.zeros_like(x)  # noqa: E731
    per = (target**2).flatten(1).mean(1)
    # float32 means of n = 16 squares per sample, then of B = 4 samples, all terms >= 0: each evaluation is
    # within (n + B + 1) u relative (squares, sums, divisions); two evaluations
    n, B = x0[0].numel(), x0.shape[0]
    rel = SAFETY * 2 * (n + B + 1) * U32
    assert d.p_losses(zero, x0, t, noise).item() == pytest.approx(per.mean().item(), rel=rel)
    snr = d.schedule.snr[t].float()
    w = (
        torch.minimum(snr, torch.tensor(5.0))
        / {"epsilon": snr, "sample": torch.ones_like(snr), "v_prediction": snr + 1}[pred]
    )
    # the weights: min, + 1 and a division (3u), and one more product per sample
    rel = SAFETY * 2 * (n + B + 5) * U32
    assert d.p_losses(zero, x0, t, noise, snr_gamma=5).item() == pytest.approx((per * w).mean().item(), rel=rel)
    # drawn t and noise: reproducible with a generator
    a = d.p_losses(zero, x0, generator=torch.Generator().manual_seed(3))
    b = d.p_losses(zero, x0, generator=torch.Generator().manual_seed(3))
    assert a.item() == b.item()


def test_p_losses_trains_a_unet_a_little(unet3):
    """A real gradient step lowers the loss on a fixed batch (the loss is differentiable end to end)."""
    import copy

    unet = copy.deepcopy(unet3).train()
    d = GaussianDiffusion(NoiseSchedule.make("linear", 1000))
    x0 = torch.rand(8, 3, 8, 8, generator=torch.Generator().manual_seed(0)) * 2 - 1
    t, noise = (
        torch.randint(0, 1000, (8,), generator=torch.Generator().manual_seed(1)),
        torch.randn(8, 3, 8, 8, generator=torch.Generator().manual_seed(2)),
    )
    opt = torch.optim.Adam(unet.parameters(), 1e-3)
    first = None
    for _ in range(15):
        loss = d.p_losses(unet, x0, t, noise)
        first = first if first is not None else loss.item()
        opt.zero_grad()
        loss.backward()
        opt.step()
    assert loss.item() < 0.8 * first


def test_the_deprecated_ddim_loops_warn_and_run_the_ddim_sampler(unet3, one_intra_op_thread):
    """``ddim_sample_loop(_progressive)`` stay for one release: a DeprecationWarning, then the registry's DDIM."""
    d = GaussianDiffusion(NoiseSchedule.make("linear", 100))
    x_T = torch.randn(1, 3, 8, 8, generator=torch.Generator().manual_seed(1))
    new = d.p_sample_loop(
        unet3, noise=x_T, num_inference_steps=5, sampler="ddim", eta=0.5, generator=torch.Generator()
    )
    with pytest.warns(DeprecationWarning, match="p_sample_loop"):
        old = d.ddim_sample_loop(unet3, None, 5, eta=0.5, noise=x_T, generator=torch.Generator())
    with pytest.warns(DeprecationWarning, match="p_sample_loop"):
        steps = list(d.ddim_sample_loop_progressive(unet3, None, 5, 0.5, torch.Generator(), x_T))
    assert torch.equal(old, new) and torch.equal(steps[-1].prev_sample, new) and len(steps) == 5
