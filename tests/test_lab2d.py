"""The core on points ``[B x 2]``: the forward process, the posterior and the loops behave as on images, the true
score of a Gaussian mixture reproduces the mixture, and the lab's denoiser learns its data."""

import math
import time

import numpy as np
import pytest
import torch

from ddpm_core import lab2d as L
from ddpm_core.diffusion import GaussianDiffusion
from ddpm_core.schedule import NoiseSchedule

pytestmark = pytest.mark.usefixtures("one_intra_op_thread")


def _diffusion(T=1000, **kw):
    return GaussianDiffusion(NoiseSchedule.make("linear", T), clip_sample=False, **kw)


@pytest.mark.parametrize("t", [0, 100, 500, 999])
def test_q_sample_on_points_has_the_closed_form_mean_and_covariance(t):
    """x_t = sqrt(abar) x_0 + sqrt(1 - abar) eps (eq. 4): given the x_0, the empirical mean and covariance of x_t are
    sqrt(abar) mean(x_0) and abar cov(x_0) + (1 - abar) I up to the noise's sampling error (5 standard errors)."""
    d = _diffusion()
    x0, _ = L.make_points("clusters", 200_000, seed=0)
    x0 = x0.double()
    xt = d.q_sample(x0, t, generator=torch.Generator().manual_seed(1))
    abar = float(d.schedule.alphas_cumprod[t])
    n, var_noise = len(x0), 1 - abar
    mean_err = (xt.mean(0) - math.sqrt(abar) * x0.mean(0)).abs()
    assert (mean_err < 5 * math.sqrt(var_noise / n) + 1e-12).all(), mean_err
    cov_expected = abar * torch.cov(x0.T) + var_noise * torch.eye(2, dtype=torch.float64)
    # the covariance of the sum: cross terms x_0 eps average out with standard error ~ sqrt(abar var0 var_noise / n)
    var0 = torch.cov(x0.T).diagonal().max()
    se = math.sqrt((2 * var_noise**2 + 4 * abar * float(var0) * var_noise) / n)
    assert ((torch.cov(xt.T) - cov_expected).abs() < 5 * se + 1e-12).all()


def test_points_and_their_image_shaped_twins_agree_in_every_core_call():
    """Nothing in the core assumes spatial dimensions: [B x 2] and the same numbers as [B x 2 x 1 x 1] give the same
    q_sample, posterior, prediction and reverse step, bit for bit."""
    d = _diffusion(prediction_type="epsilon")
    g = torch.Generator().manual_seed(0)
    x0, eps, xt = (torch.randn(64, 2, generator=g) for _ in range(3))
    t = torch.randint(0, 1000, (64,), generator=g)
    img = lambda a: a[:, :, None, None]  # noqa: E731
    assert torch.equal(img(d.q_sample(x0, t, noise=eps)), d.q_sample(img(x0), t, noise=img(eps)))
    for a, b in zip(d.q_posterior(x0, xt, t), d.q_posterior(img(x0), img(xt), t)):
        assert torch.equal(img(a) if a.ndim == 2 else a.reshape(b.shape), b)
    assert torch.equal(img(d.predict_start_from_noise(xt, t, eps)), d.predict_start_from_noise(img(xt), t, img(eps)))
    net = lambda x, tt: 0.1 * x  # noqa: E731
    a = d.p_sample(net, xt, t, generator=torch.Generator().manual_seed(3))
    b = d.p_sample(net, img(xt), t, generator=torch.Generator().manual_seed(3))
    assert torch.equal(img(a.prev_sample), b.prev_sample)


def test_the_implied_score_of_the_true_epsilon_is_the_mixtures_score():
    d = _diffusion()
    means, std = L.mixture("ring")
    x = torch.randn(256, 2, generator=torch.Generator().manual_seed(0)).double() * 2
    for t in (0, 300, 999):
        m, s = L.mixture_noised(d, means, std, t)
        got = L.score_of(d, L.true_epsilon(d, means, std), x, t)
        torch.testing.assert_close(got, L.mixture_score(x, m, s), rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("sampler,steps", [("ddpm", None), ("ddim", 100), ("dpmsolver++", 50)])
def test_the_true_score_of_a_mixture_reproduces_the_mixture(sampler, steps):
    """Every sampler of the registry, driven by the exact epsilon of the 8-Gaussian ring, draws points as near to
    the ring as a second draw of the data is (energy distance within 2x of data-vs-data plus its sampling noise)."""
    d = _diffusion()
    means, std = L.mixture("ring")
    n = 2000
    x, _ = L.sample(d, L.true_epsilon(d, means.float(), std), n, sampler, steps, seed=1)
    data, _ = L.make_points("ring", n, seed=2)
    other, _ = L.make_points("ring", n, seed=3)
    baseline = L.energy_distance(data, other)
    assert L.energy_distance(x, data) < 2 * baseline + 0.005, (L.energy_distance(x, data), baseline)
    # and not by collapsing onto a few modes: every component holds about 1/8 of the points
    share = torch.bincount(torch.cdist(x.double(), means).argmin(1), minlength=8) / n
    assert (share - 1 / 8).abs().max() < 0.04, share


def test_quality_improves_with_steps_for_every_sampler():
    d = _diffusion()
    means, std = L.mixture("ring")
    held, _ = L.make_points("ring", 1000, seed=2)
    rows = L.quality_by_steps(d, L.true_epsilon(d, means.float(), std), held, n=1000, steps=(5, 100))
    assert [(r["sampler"], r["steps"]) for r in rows] == [
        (s, k) for s in ("ddpm", "ddim", "dpmsolver++") for k in (5, 100)
    ]
    ed = {(r["sampler"], r["steps"]): r["energy_distance"] for r in rows}
    for sampler in ("ddpm", "ddim", "dpmsolver++"):
        assert ed[sampler, 100] < ed[sampler, 5], ed


def test_trajectories_start_at_x_T_and_end_at_the_samples():
    d = _diffusion(T=50)
    means, std = L.mixture("ring")
    x, paths = L.sample(d, L.true_epsilon(d, means.float(), std), 100, "ddim", 10, seed=0, keep=5)
    assert paths.shape == (11, 5, 2)
    assert torch.equal(paths[0], torch.randn(100, 2, generator=torch.Generator().manual_seed(0))[:5])
    assert torch.equal(paths[-1], x[:5])


def test_datasets_are_deterministic_and_labelled_where_they_say():
    for name in L.DATASETS:
        a, ya = L.make_points(name, 500, seed=4)
        b, yb = L.make_points(name, 500, seed=4)
        assert a.shape == (500, 2) and a.dtype == torch.float32 and torch.equal(a, b)
        assert torch.isfinite(a).all() and a.abs().max() < 6
        assert (ya is None) == (name != "clusters")
    _, y = L.make_points("clusters", 3000, seed=0)
    assert set(y.tolist()) == {0, 1, 2}
    with pytest.raises(ValueError, match="unknown dataset"):
        L.make_points("blobs", 10)
    with pytest.raises(ValueError, match="whole number"):
        L.make_points("moons", 0)


def test_points_from_a_sketch_lie_on_its_pixels():
    """A 30x30 canvas with its top-left quarter and one bottom row drawn: every point falls in a drawn pixel (row 0
    is the top, y grows upwards), in proportion to the drawn area."""
    mask = np.zeros((30, 30), bool)
    mask[:15, :15] = True  # 225 pixels
    mask[29, :] = True  # 30 pixels
    x = L.points_from_mask(mask, 5000, extent=3.0)
    col = ((x[:, 0] + 3) / 6 * 30).floor().long()
    row = ((3 - x[:, 1]) / 6 * 30).floor().long()
    assert mask[row.numpy(), col.numpy()].all()
    assert abs(float((row == 29).float().mean()) - 30 / 255) < 0.02
    with pytest.raises(ValueError, match="Draw a shape"):
        L.points_from_mask(np.zeros((30, 30), bool), 10)


def test_a_time_budget_plans_a_shorter_run_that_still_ends_its_learning_rate_schedule():
    """On a busy CPU (here: a caller that takes 5 ms a step) a run with a time budget plans fewer steps from its
    pace and ends at its plan, where the cosine has decayed, within the budget; without a budget it runs them all."""
    d = L.make_diffusion()
    data, _ = L.make_points("moons", 500, seed=0)
    budget = 1.0
    for run in L.train_steps(d, data, steps=100_000, batch=64, time_budget=budget):
        time.sleep(0.005)
    assert len(run.losses) == run.planned, (len(run.losses), run.planned)  # ended by its plan, not cut short
    assert 20 <= run.planned <= budget / 0.005 and run.seconds <= budget, (run.planned, run.seconds)
    full = L.train(d, data, steps=30, batch=64)
    assert len(full.losses) == full.planned == 30


@pytest.mark.slow
def test_default_training_fits_the_data():
    """The default training (bench/lab2d.py times it) reaches an energy distance to held-out points of at most twice
    that between two independent draws of the data."""
    d = L.make_diffusion()
    data, _ = L.make_points("moons", 4000, seed=0)
    run = L.train(d, data)
    x, _ = L.sample(d, run.model, 2000, "ddpm", 100, seed=1)
    held, _ = L.make_points("moons", 2000, seed=10)
    other, _ = L.make_points("moons", 2000, seed=11)
    assert L.energy_distance(x, held) <= 2 * L.energy_distance(other, held)


@pytest.mark.slow
def test_classifier_free_guidance_pulls_samples_to_their_class():
    d = L.make_diffusion()
    data, labels = L.make_points("clusters", 4000, seed=0)
    run = L.train(d, data, labels)
    means, _ = L.mixture("clusters")
    shares = {}
    for scale in (1.0, 3.0):
        x, _ = L.sample(d, L.guided(run.model, 2, scale), 1000, "ddim", 50, seed=1)
        shares[scale] = float((torch.cdist(x.double(), means).argmin(1) == 2).float().mean())
    assert shares[1.0] > 0.9 and shares[3.0] >= shares[1.0], shares
    with pytest.raises(ValueError, match="label must be in"):
        L.guided(run.model, 3)


def _empirical_epsilon(d, data):
    """The optimal epsilon-predictor for the finite point set ``data`` [N x 2] itself: eps = (x_t - sqrt(abar)
    E[x_0 | x_t]) / sqrt(1 - abar), E by Bayes over the points (computed here independently, in numpy)."""
    pts = data.double().numpy()

    def eps(x, t):
        out = []
        for xi, ti in zip(x.double().numpy(), t.tolist()):
            abar = float(d.schedule.alphas_cumprod[ti])
            logw = -((xi - math.sqrt(abar) * pts) ** 2).sum(1) / (2 * (1 - abar))
            w = np.exp(logw - logw.max())
            x0 = (w / w.sum()) @ pts
            out.append((xi - math.sqrt(abar) * x0) / math.sqrt(1 - abar))
        return torch.tensor(np.array(out), dtype=x.dtype)

    return eps


@pytest.mark.parametrize("t, jump", [(1, 1), (30, 1), (300, 1), (999, 1), (300, 100), (500, 500)])
def test_one_reverse_step_three_ways(t, jump):
    """At one x_t, from t to s = t - jump: the true posterior for one x_0 is eq. 6-7 written out with the jump's
    beta = 1 - abar_t / abar_s; the data's own reverse step has the mean mu~(x_t, E[x_0 | x_t]); and a network that
    predicts the optimal epsilon for the data has exactly that mean."""
    d = _diffusion()
    data, _ = L.make_points("moons", 300, seed=0)
    x_t = torch.tensor([0.4, -0.3])
    s = L.reverse_step(d, _empirical_epsilon(d, data), data, x_t, t, x0=data[7] + 0.01, jump=jump, draws=4000)
    a = d.schedule
    abar, abar_prev = float(a.alphas_cumprod[t]), float(a.alphas_cumprod[t - jump])
    beta = 1 - abar / abar_prev
    if jump == 1:
        assert beta == pytest.approx(float(a.betas[t]), rel=1e-5)
    c0, ct = math.sqrt(abar_prev) * beta / (1 - abar), math.sqrt(1 - beta) * (1 - abar_prev) / (1 - abar)
    assert s.x0_index == 7  # the training point nearest to the given x_0
    torch.testing.assert_close(s.q_mean, c0 * data[7].double() + ct * x_t.double(), rtol=1e-6, atol=1e-7)
    assert s.q_std == pytest.approx(math.sqrt(beta * (1 - abar_prev) / (1 - abar)), rel=1e-6)
    assert float(s.weights.sum()) == pytest.approx(1.0, abs=1e-12) and 1 <= s.candidates <= len(data)
    torch.testing.assert_close(s.exact_mean, c0 * s.exact_x0 + ct * x_t.double(), rtol=1e-6, atol=1e-7)
    # float32 network arithmetic: the mean is matched to float32 precision of its inputs' size
    torch.testing.assert_close(s.p_mean, s.exact_mean, rtol=0, atol=2e-5 * (1 + float(s.p_x0.abs().max())))
    # the draws of the data's reverse step: their mean is exact_mean within 5 standard errors
    se = s.exact_draws.std(0) / math.sqrt(len(s.exact_draws))
    assert ((s.exact_draws.mean(0) - s.exact_mean).abs() < 5 * se + 1e-9).all()


def test_a_reverse_step_picks_the_likeliest_x0_by_default_and_refuses_t_0():
    d = _diffusion()
    data = torch.tensor([[2.0, 0.0], [-2.0, 0.0]])
    s = L.reverse_step(d, _empirical_epsilon(d, data), data, [1.0, 0.2], 50)
    assert s.x0_index == 0 and s.weights[0] > 0.99 and s.candidates == pytest.approx(1.0, abs=0.02)
    # at t = 999 x_t says almost nothing about x_0: both points are nearly equally likely
    assert L.reverse_step(d, _empirical_epsilon(d, data), data, [1.0, 0.2], 999).candidates > 1.9
    with pytest.raises(ValueError, match="t must be between 1 and 999, got 0"):
        L.reverse_step(d, _empirical_epsilon(d, data), data, [0.0, 0.0], 0)
    with pytest.raises(ValueError, match="the jump must be between 1 and t = 50 steps, got 51"):
        L.reverse_step(d, _empirical_epsilon(d, data), data, [0.0, 0.0], 50, jump=51)


def _last_step_bound(d, n: int, p_fail: float = 1e-6, slack: float = 2.0) -> float:
    """How far from a single training point x0 a DDPM sample may land, from the sampler's final variance.

    DDPM's last step (t = 0) adds no noise: it returns x0_hat = (x - sqrt(1 - abar_0) eps_hat) / sqrt(abar_0) from
    its input x. For one training point the data's reverse step is the true posterior at every t, so a network that
    has learned it hands the last step an x distributed as q(x_0 | x0) = N(sqrt(abar_0) x0, (1 - abar_0) I): the
    chain's final variance 1 - abar_0 = beta_0. Then x0_hat - x0 = sqrt(beta_0 / abar_0) (eps - eps_hat): zero for
    the exact eps_hat, and within ``slack`` |eps| sqrt(beta_0 / abar_0) for a network whose eps_hat is off by up to
    the noise itself (slack 2: eps_hat anywhere between -eps and eps). In 2D |eps| is Rayleigh,
    P(|eps| > r) = exp(-r^2 / 2), so all ``n`` samples stay within r = sqrt(2 ln(n / p_fail)) but with probability
    ``p_fail``. For T = 1000, linear: sqrt(1e-4) = 0.01, and 2 x 0.01 x 6.3 = 0.13 for n = 500.
    """
    abar0 = float(d.schedule.alphas_cumprod[0])
    r = math.sqrt(2 * math.log(n / p_fail))
    return slack * math.sqrt((1 - abar0) / abar0) * r


def test_the_exact_denoiser_of_one_point_returns_that_point():
    """For a data set of one point x0, q(x0 | x_t) is that point for every x_t: the optimal eps is
    (x_t - sqrt(abar) x0) / sqrt(1 - abar), and every DDPM sample ends exactly on x0 (float32 rounding)."""
    d = _diffusion()
    x0 = torch.tensor([[0.7, -0.4]])

    def eps(x, t):
        abar = d.schedule.alphas_cumprod.to(x.dtype)[t][:, None]
        return (x - abar.sqrt() * x0) / (1 - abar).sqrt()

    x, _ = L.sample(d, eps, 200, "ddpm", 100, seed=3)
    assert float((x - x0).norm(dim=1).max()) < 1e-5


def test_a_network_trained_on_one_point_samples_that_point():
    """The lab's denoiser trained on one point: every DDPM sample lies within the bound the sampler's final variance
    sets (:func:`_last_step_bound`, about 0.13 here), 20 times nearer than held-out moons points typically come,
    and the readout calls them copies."""
    d = _diffusion()
    data, _ = L.make_points("moons", 4000, seed=0)
    x0, _ = L.first_points(data, None, 1)
    run = L.train(d, x0, steps=1000, batch=256)
    n = 500
    x, _ = L.sample(d, L.guided(run.model), n, "ddpm", 100, seed=1)
    dist = (x.double() - x0.double()).norm(dim=1)
    bound = _last_step_bound(d, n)
    assert float(dist.max()) < bound, (float(dist.max()), bound)
    m = L.memorisation(x, x0, L.make_points("moons", 2000, seed=10)[0])
    assert m.verdict == "copies" and m.copies == 1.0 and m.num_training == 1


def test_the_copies_readout_tells_copies_from_new_data():
    """Samples that are the training points (moved by far less than the spacing of the data) are all copies; a fresh
    draw of the distribution has about COPY_QUANTILE copies by construction (1% of 2,000, binomial standard error
    0.2 points, and as much again from estimating the quantile on 2,000 held-out points), far under NO_COPIES."""
    data, _ = L.make_points("moons", 4000, seed=0)
    held, _ = L.make_points("moons", 2000, seed=10)
    jitter = torch.randn(2000, 2, generator=torch.Generator().manual_seed(0)) * 1e-6
    copies = L.memorisation(data[:2000] + jitter, data, held)
    assert copies.copies == 1.0 and copies.verdict == "copies"
    fresh = L.memorisation(L.make_points("moons", 2000, seed=12)[0], data, held)
    assert fresh.copies < L.NO_COPIES and fresh.verdict == "new", fresh.copies
    assert fresh.radius == pytest.approx(float(np.quantile(fresh.heldout_nn, 0.01)))
    s, h = fresh.quantiles("samples"), fresh.quantiles("heldout")
    assert s[0] <= s[1] <= s[2] and h[0] <= h[1] <= h[2]


def test_with_one_training_point_the_datas_reverse_step_is_the_true_posterior():
    """q(x_0 | x_t) is the one point for every x_t: its weight is 1, and the data's reverse step and the true posterior
    have the same mean (posterior_gap 0 within float64 rounding) at any t and jump."""
    d = _diffusion()
    x0 = torch.tensor([[0.7, -0.4]])
    for t, jump in ((10, 1), (300, 100), (999, 999)):
        s = L.reverse_step(d, lambda x, tt: torch.zeros_like(x), x0, [2.5, 1.0], t, jump=jump)
        assert s.candidates == 1.0 and s.posterior_gap < 1e-9, (t, s.posterior_gap)
    many, _ = L.make_points("moons", 300, seed=0)
    # with many points the two differ wherever several could have made x_t
    assert L.reverse_step(d, lambda x, tt: torch.zeros_like(x), many, [0.4, -0.3], 300, jump=100).posterior_gap > 0.1


def test_first_points_keeps_smaller_picks_inside_larger_ones_and_refuses_bad_sizes():
    data, labels = L.make_points("clusters", 100, seed=0)
    a, la = L.first_points(data, labels, 4)
    b, lb = L.first_points(data, labels, 16)
    assert torch.equal(a, b[:4]) and torch.equal(la, lb[:4])
    assert L.first_points(data, None, None)[0] is data
    for bad in (0, 101, 2.5):
        with pytest.raises(ValueError, match="number of training points must be between 1 and 100"):
            L.first_points(data, None, bad)


def test_the_lab_runs_each_sampler_on_its_diffusers_timesteps():
    """A lab run visits the timesteps its sampler's diffusers scheduler chooses (DPM-Solver++: not DDPM's leading
    ones), and T steps run every step, also for the multistep samplers whose leading rule has no T-step run."""
    from ddpm_core import GaussianDiffusion, NoiseSchedule
    from ddpm_core.samplers import SAMPLERS, get_sampler

    d = GaussianDiffusion(NoiseSchedule.make("linear", 200))
    assert list(L.run_timesteps(d, "dpmsolver++", 5)) == list(get_sampler("dpmsolver++").timesteps(d, 5))
    assert list(L.run_timesteps(d, "dpmsolver++", 5)) != list(d.inference_timesteps(5))
    for name in SAMPLERS:
        ts = L.run_timesteps(d, name, 200)  # Karras sigmas: fractional timesteps, 199 up to rounding
        assert len(ts) == 200 and abs(ts[0] - 199) < 1e-9, name
    means, std = torch.tensor([[2.0, 0.0], [-2.0, 0.0]]), 0.3
    x, paths = L.sample(d, L.true_epsilon(d, means.float(), std), 8, "unipc", 200, keep=3)
    assert x.shape == (8, 2) and paths.shape == (201, 3, 2)


def _decode(p: dict, key: str, shape) -> torch.Tensor:
    """The player's decoding: int16 steps of lim / levels (float64, as JavaScript's numbers); off the axes: NaN."""
    import base64

    q = torch.from_numpy(np.frombuffer(base64.b64decode(p[key]), dtype="<i2").astype(np.float64)).reshape(shape)
    off = (q == L.OFF_AXES).any(dim=-1, keepdim=True)
    return torch.where(off, torch.nan, q * p["lim"] / p["levels"])


def _assert_quantised(decoded: torch.Tensor, exact: torch.Tensor, lim: float) -> None:
    """Every point within the axes decodes to within half a quantisation step, lim / 32767 / 2, plus float32's
    rounding of a coordinate (at most lim * 2**-24); every point beyond them decodes as off the axes (NaN)."""
    inside = (exact.abs() <= lim).all(dim=-1)
    assert inside.any() and torch.isnan(decoded[~inside]).all()
    bound = lim / 32767 / 2 + lim * 2.0**-24
    err = (decoded[inside] - exact[inside].double()).abs().max().item()
    assert err <= bound, (err, bound)


@pytest.mark.parametrize(
    "sampler,steps,frames", [("ddpm", 20, 21), ("ddim", 250, L.PLAYER_FRAMES), ("euler-karras", 7, 8)]
)
def test_the_players_paths_are_the_samplers_kept_steps(sampler, steps, frames):
    """What the browser's player decodes is the sampler's kept steps themselves, to the int16 quantisation step
    over the axes (|error| <= lim / 32767 / 2, plus float32 rounding; beyond the axes: left out): every step of
    a short run, evenly spaced ones (x_T and x_0 included) of a long one, each with the timestep the network sees
    next (none after the last step), the training points, and one pair of axis limits for every frame."""
    d = _diffusion(T=1000)
    means, std = L.mixture("ring")
    x, paths = L.sample(d, L.true_epsilon(d, means.float(), std), 300, sampler, steps, seed=3, keep=300)
    data = L.make_points("ring", 500, seed=0)[0]
    p = L.reverse_paths(d, sampler, steps, paths, data, 3.2)
    assert (p["frames"], p["points"], p["data_points"], p["lim"]) == (frames, 300, 500, 3.2)
    picks = p["step"]
    assert len(picks) == len(p["t"]) == frames and picks[0] == 0 and picks[-1] == steps
    assert picks == sorted(set(picks)) and (frames < steps + 1 or picks == list(range(steps + 1)))
    assert p["levels"] == 32767
    xy = _decode(p, "xy", (frames, 300, 2))
    _assert_quantised(xy, paths[picks].float(), 3.2)
    _assert_quantised(xy[-1], x.float(), 3.2)  # the last frame is the samples
    _assert_quantised(_decode(p, "data", (500, 2)), data.float(), 3.2)
    ts = L.run_timesteps(d, sampler, steps)
    assert p["t"][-1] is None
    np.testing.assert_allclose(p["t"][:-1], ts[picks[:-1]], atol=0.005)  # fractional (Karras) ones to 2 decimals
    with pytest.raises(ValueError, match="kept steps"):
        L.reverse_paths(d, sampler, steps + 1, paths, data, 3.2)


def test_the_players_payload_stays_compact_at_any_steps():
    """At most PLAYER_FRAMES frames whatever the steps: the lab's 2,000 points at 1,000 steps fit in about 1.1 MB
    (int16; float32 took 2.2 MB)."""
    import json

    d = _diffusion(T=1000)
    paths = torch.randn(1001, 2000, 2)
    p = L.reverse_paths(d, "ddpm", 1000, paths, paths[0], 3.2)
    assert p["frames"] == L.PLAYER_FRAMES and len(json.dumps(p)) < 1.1e6
