"""Closed-form properties of the core, bad input, dtypes and the training loss."""

import math

import pytest
import torch

from ddpm_core import GaussianDiffusion, NoiseSchedule, inference_timesteps
from ddpm_core.schedule import QUANTITIES


@pytest.fixture(scope="module")
def diffusion():
    return GaussianDiffusion(NoiseSchedule.make("linear", 1000), variance_type="fixed_small")


def test_schedule_holds_every_quantity_in_float64():
    s = NoiseSchedule.make("cosine", 500)
    for key in QUANTITIES:
        v = getattr(s, key)
        assert v.dtype == torch.float64 and v.shape == (500,), key
    b, a = s.betas, s.alphas_cumprod
    torch.testing.assert_close(a, torch.cumprod(1 - b, 0), rtol=1e-15, atol=0)
    torch.testing.assert_close(s.alphas_cumprod_prev[1:], a[:-1], rtol=0, atol=0)
    assert s.alphas_cumprod_prev[0] == 1 and s.alphas_cumprod_next[-1] == 0
    torch.testing.assert_close(s.sqrt_recipm1_alphas_cumprod, torch.sqrt(1 / a - 1), rtol=1e-14, atol=0)
    torch.testing.assert_close(s.snr, a / (1 - a), rtol=1e-14, atol=0)


def test_linear_improved_scales_by_1000_over_T():
    s = NoiseSchedule.make("linear_improved", 250, beta_start=1e-4, beta_end=0.02)
    assert s.betas[0].item() == pytest.approx(4e-4) and s.betas[-1].item() == pytest.approx(0.08)
    same = NoiseSchedule.make("linear", 250)
    assert same.betas[-1].item() == pytest.approx(0.02)  # diffusers' form does not scale
    # the point of the scaling: the total noise at t = T-1 is comparable to T = 1000's
    full = NoiseSchedule.make("linear", 1000)
    assert abs(math.log(s.alphas_cumprod[-1]) - math.log(full.alphas_cumprod[-1])) < 0.05 * abs(math.log(full.alphas_cumprod[-1]))


def test_zero_terminal_snr():
    s = NoiseSchedule.make("linear", 1000, rescale_betas_zero_snr=True)
    assert s.alphas_cumprod[-1] == 0 and s.snr[-1] == 0
    torch.testing.assert_close(s.alphas_cumprod[0], NoiseSchedule.make("linear", 1000).alphas_cumprod[0], rtol=1e-12, atol=0)


def test_predict_start_from_noise_inverts_q_sample(diffusion):
    g = torch.Generator().manual_seed(0)
    x0 = torch.rand(4, 3, 8, 8, generator=g, dtype=torch.float64) * 2 - 1
    eps = torch.randn(4, 3, 8, 8, generator=g, dtype=torch.float64)
    t = torch.tensor([0, 10, 500, 999])
    x_t = diffusion.q_sample(x0, t, eps)
    torch.testing.assert_close(diffusion.predict_start_from_noise(x_t, t, eps), x0, rtol=1e-9, atol=1e-9)
    torch.testing.assert_close(diffusion.predict_noise_from_start(x_t, t, x0), eps, rtol=1e-9, atol=1e-9)
    v = diffusion.get_v(x0, eps, t)
    torch.testing.assert_close(diffusion.predict_start_from_v(x_t, t, v), x0, rtol=1e-9, atol=1e-9)


def test_q_posterior_matches_its_formula_in_float64(diffusion):
    s = diffusion.schedule
    g = torch.Generator().manual_seed(1)
    x0 = torch.randn(3, 2, 4, 4, generator=g, dtype=torch.float64)
    x_t = torch.randn(3, 2, 4, 4, generator=g, dtype=torch.float64)
    for t in (1, 37, 999):
        a_t, a_prev, b_t = s.alphas_cumprod[t], s.alphas_cumprod[t - 1], s.betas[t]
        mean = (a_prev.sqrt() * b_t / (1 - a_t)) * x0 + ((1 - b_t).sqrt() * (1 - a_prev) / (1 - a_t)) * x_t
        var = (1 - a_prev) / (1 - a_t) * b_t
        m, v, logv = diffusion.q_posterior(x0, x_t, t)
        torch.testing.assert_close(m, mean, rtol=1e-13, atol=1e-13)
        assert v.flatten()[0].item() == pytest.approx(var.item(), rel=1e-13)
        assert logv.flatten()[0].item() == pytest.approx(math.log(var.item()), rel=1e-12)


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
    assert abs(resid.mean().item()) < 4 * math.sqrt(var.flatten()[0].item() / n)
    assert resid.var().item() == pytest.approx(var.flatten()[0].item(), rel=0.01)


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
        assert small_v.item() == pytest.approx(s.posterior_variance[t].item(), rel=1e-12)  # beta~_t: the *small* one
        assert large_v.item() == pytest.approx(s.betas[t].item(), rel=1e-12)  # beta_t: the *large* one
        assert small_v < large_v


@pytest.mark.parametrize("spacing,N,expected_head,expected_tail", [
    ("leading", 10, [900, 800], [100, 0]),
    ("trailing", 10, [999, 899], [199, 99]),
    ("linspace", 10, [999, 888], [111, 0]),
    ("leading", 7, [852, 710], [142, 0]),
])
def test_timestep_spacings(spacing, N, expected_head, expected_tail):
    ts = inference_timesteps(1000, N, spacing)
    assert len(ts) == N and list(ts[:2]) == expected_head and list(ts[-2:]) == expected_tail


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16, torch.float32])
def test_loops_run_in_the_sample_dtype(dtype, unet3):
    d = GaussianDiffusion(NoiseSchedule.make("linear", 1000))
    unet = __import__("copy").deepcopy(unet3).to(dtype)
    x = d.p_sample_loop(unet, (1, 3, 8, 8), num_inference_steps=5, generator=torch.Generator().manual_seed(0))
    y = d.ddim_sample_loop(unet, (1, 3, 8, 8), 5, generator=torch.Generator().manual_seed(0))
    assert x.dtype == dtype and y.dtype == dtype and torch.isfinite(x).all() and torch.isfinite(y).all()
    ref = d.p_sample_loop(unet3, (1, 3, 8, 8), num_inference_steps=5, generator=torch.Generator().manual_seed(0))
    if dtype != torch.float32:  # half precision follows float32 to within its own resolution
        assert (x.float() - ref).abs().max() < (0.1 if dtype == torch.bfloat16 else 0.01)  # bf16 keeps 8 mantissa bits


def test_progressive_loop_exposes_t_x_t_and_pred_x0(diffusion, unet3):
    steps = list(diffusion.p_sample_loop_progressive(unet3, (2, 3, 8, 8), num_inference_steps=5, generator=torch.Generator().manual_seed(0)))
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
        GaussianDiffusion(diffusion.schedule, variance_type="learned_range").p_sample(None, x, 5, model_output=torch.zeros(2, 3, 8, 8))
    with pytest.raises(ValueError, match="learned-variance"):
        diffusion.p_sample(None, x, 5, model_output=torch.zeros(2, 6, 8, 8))
    with pytest.raises(ValueError, match="eta"):
        diffusion.ddim_sample_loop(unet3, (1, 3, 8, 8), 5, eta=2)
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

    assert d.p_losses(perfect, x0, t, noise).item() == pytest.approx(0, abs=1e-12)
    zero = lambda x, ts: torch.zeros_like(x)  # noqa: E731
    per = (target ** 2).flatten(1).mean(1)
    assert d.p_losses(zero, x0, t, noise).item() == pytest.approx(per.mean().item(), rel=1e-6)
    snr = d.schedule.snr[t].float()
    w = torch.minimum(snr, torch.tensor(5.0)) / {"epsilon": snr, "sample": torch.ones_like(snr), "v_prediction": snr + 1}[pred]
    assert d.p_losses(zero, x0, t, noise, snr_gamma=5).item() == pytest.approx((per * w).mean().item(), rel=1e-5)
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
    t, noise = torch.randint(0, 1000, (8,), generator=torch.Generator().manual_seed(1)), torch.randn(8, 3, 8, 8, generator=torch.Generator().manual_seed(2))
    opt = torch.optim.Adam(unet.parameters(), 1e-3)
    first = None
    for _ in range(15):
        loss = d.p_losses(unet, x0, t, noise)
        first = first if first is not None else loss.item()
        opt.zero_grad()
        loss.backward()
        opt.step()
    assert loss.item() < 0.8 * first
