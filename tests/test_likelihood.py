"""The variational bound (DDPM eq. 5) in bits/dim, against the papers' formulas written out here.

References, computed independently of ``ddpm_core.likelihood``: Ho et al. 2020 (eq. 5-7, 15; sec. 3.3 for the
decoder), Nichol & Dhariwal 2021 (eq. 15 for learned_range), with the variance conventions of their code (the
decoder's fixed variance is beta~ at index 1). The decoder's normal CDF is evaluated by mpmath at 60 digits (the
paper's integral, not improved-diffusion's tanh approximation).

Tolerances: the references are carried through error_analysis' running error analysis (``Bounded``, u = 2^-53);
the library evaluates the same formulas with the same number of rounded operations in another order, so its error
has the same first-order bound, and the two may differ by twice it, times SAFETY. The decoder adds the error of
log_ndtr's library evaluation (counted as 4u relative per call, 2u per exp / log1p) and propagates the edges'
errors with the exact derivatives. The Gaussian-data test sums magnitudes instead (see ``_magnitude_bound``).
"""

import math

import mpmath
import numpy as np
import pytest
import torch
from error_analysis import SAFETY, U64, Bounded

from conftest import tiny_unet
from ddpm_core import GaussianDiffusion, NoiseSchedule
from ddpm_core.likelihood import calc_bpd_loop, discretized_gaussian_log_likelihood, normal_kl, vb_terms_bpd

pytestmark = pytest.mark.usefixtures("one_intra_op_thread")

LN2 = math.log(2.0)
VARIANCES = ("fixed_small", "fixed_large", "learned_range")
PREDICTIONS = ("epsilon", "sample", "v_prediction")
T = 12
mpmath.mp.dps = 60


def _diffusion(variance, prediction, clip=True, T=T, schedule="cosine"):
    return GaussianDiffusion(
        NoiseSchedule.make(schedule, T), prediction_type=prediction, variance_type=variance, clip_sample=clip
    )


@pytest.fixture(scope="module")
def images():
    """Three 1-channel 8x8 images of 8-bit levels scaled to [-1, 1], with both edge levels present."""
    g = torch.Generator().manual_seed(3)
    k = torch.randint(0, 256, (3, 1, 8, 8), generator=g)
    k[0, 0, 0, :2] = torch.tensor([0, 255])
    return k.double() * (2 / 255) - 1


@pytest.fixture(scope="module")
def unets():
    return {1: tiny_unet(1, in_channels=1).double(), 2: tiny_unet(2, in_channels=1, seed=1).double()}


# ---------------------------------------------------------------- the references, written out
def _where(c, a: Bounded, b: Bounded) -> Bounded:
    return Bounded(torch.where(c, a.v, b.v), torch.where(c, a.E, b.E), U64)


def _b(x):
    return Bounded(torch.as_tensor(x, dtype=torch.float64), 0.0, U64)


def reference_step(d: GaussianDiffusion, out: torch.Tensor, x0: torch.Tensor, x_t: torch.Tensor, t: int):
    """The true posterior and the model's step at index t, from the papers; Bounded values ``[B x C x ...]``."""
    s = d.schedule
    beta, abar, abar_prev = (float(v[t]) for v in (s.betas, s.alphas_cumprod, s.alphas_cumprod_prev))
    C = x0.shape[1]
    pred = _b(out[:, :C])
    xt = _b(x_t)
    sa, s1 = _b(abar) ** 0.5, (1 - _b(abar)) ** 0.5
    if d.prediction_type == "epsilon":  # eq. 15 solved for x_0
        x0_hat = (xt - s1 * pred) / sa
    elif d.prediction_type == "sample":
        x0_hat = pred
    else:  # v = sqrt(abar) eps - sqrt(1 - abar) x_0  =>  x_0 = sqrt(abar) x_t - sqrt(1 - abar) v
        x0_hat = sa * xt - s1 * pred
    if d.clip_sample:
        x0_hat = _where(x0_hat.v > 1, _b(1.0), _where(x0_hat.v < -1, _b(-1.0), x0_hat))
    # eq. 7: mu~ = sqrt(abar_prev) beta / (1 - abar) x_0 + sqrt(alpha) (1 - abar_prev) / (1 - abar) x_t
    c1 = _b(abar_prev) ** 0.5 * _b(beta) / (1 - _b(abar))
    c2 = (1 - _b(beta)) ** 0.5 * (1 - _b(abar_prev)) / (1 - _b(abar))
    true_mean = c1 * _b(x0) + c2 * xt
    model_mean = c1 * x0_hat + c2 * xt

    def beta_tilde(i):  # eq. 7
        abar_i, abar_prev_i = _b(float(s.alphas_cumprod[i])), _b(float(s.alphas_cumprod_prev[i]))
        return _b(float(s.betas[i])) * (1 - abar_prev_i) / (1 - abar_i)

    true_log_var = beta_tilde(t).clamp_min(1e-20).log()
    if d.variance_type == "learned_range":  # IDDPM eq. 15: exp(v' log beta + (1 - v') log beta~), v' = (v + 1) / 2
        frac = (_b(out[:, C:]) + 1) / 2
        low = beta_tilde(1).log() if t == 0 else true_log_var  # beta~_0 = 0: beta~ at index 1 (their code)
        model_log_var = frac * _b(beta).log() + (1 - frac) * low
    elif t == 0:  # the decoder's fixed variance: beta~ at index 1 (Ho et al.'s and IDDPM's code)
        model_log_var = beta_tilde(1).log()
    elif d.variance_type == "fixed_small":
        model_log_var = true_log_var
    else:
        model_log_var = _b(beta).log()
    return true_mean, true_log_var, model_mean, model_log_var, x0_hat


def reference_kl(m1, lv1, m2, lv2) -> Bounded:
    """KL(N(m1, e^lv1) || N(m2, e^lv2)) = 1/2 (log(s2^2 / s1^2) + s1^2 / s2^2 + (m1 - m2)^2 / s2^2 - 1), nats."""
    v1, v2 = lv1.exp(), lv2.exp()
    return 0.5 * ((lv2 - lv1) + v1 / v2 + (m1 - m2) ** 2 / v2 - 1)


def bits(x: Bounded) -> Bounded:
    """Mean over all but the first dimension, over log 2; the sum's rounding counted (n - 1) u sum |x|."""
    n = x.v[0].numel()
    v = x.v.flatten(1).mean(1) / LN2
    E = (x.E.flatten(1).sum(1) + n * U64 * x.v.abs().flatten(1).sum(1)) / n / LN2 + 2 * U64 * v.abs()
    return Bounded(v, E, U64)


def reference_decoder_nll(x0: torch.Tensor, mean: Bounded, log_var: Bounded) -> tuple[torch.Tensor, torch.Tensor]:
    """-log of the Gaussian's mass on x_0's bin (sec. 3.3), per element, with its error bound (edges' errors
    propagated with the exact derivatives, plus the library's own log_ndtr chain)."""
    inv_std = (-0.5 * log_var).exp()
    centered = _b(x0) - mean
    lo, hi = (centered - 1 / 255) * inv_std, (centered + 1 / 255) * inv_std
    nll = torch.empty_like(x0)
    err = torch.empty_like(x0)
    for i in range(x0.numel()):
        x, a, b = x0.flatten()[i].item(), lo.v.flatten()[i].item(), hi.v.flatten()[i].item()
        a_mp = -mpmath.inf if x < -1 + 1e-9 else mpmath.mpf(a)
        b_mp = mpmath.inf if x > 1 - 1e-9 else mpmath.mpf(b)
        # by symmetry, a bin right of 0 as its mirror image: 60 digits would not resolve 1 - Phi in the far tail
        mass = mpmath.ncdf(-a_mp) - mpmath.ncdf(-b_mp) if a_mp + b_mp > 0 else mpmath.ncdf(b_mp) - mpmath.ncdf(a_mp)
        logp = mpmath.log(mass)
        da = 0 if a_mp == -mpmath.inf else mpmath.npdf(a_mp) / mass
        db = 0 if b_mp == mpmath.inf else mpmath.npdf(b_mp) / mass
        # the library mirrors the bin to the lower tail: log_ndtr(b') + log1p(-exp(log_ndtr(a') - log_ndtr(b')))
        a2, b2 = (-b_mp, -a_mp) if a_mp + b_mp > 0 else (a_mp, b_mp)
        lb = mpmath.log(mpmath.ncdf(b2))
        own = 4 * abs(lb) + 4 * abs(logp)
        if a2 != -mpmath.inf:  # a one-sided edge bin is log_ndtr alone
            la = mpmath.log(mpmath.ncdf(a2))
            y = mpmath.exp(la - lb)
            own += (y / (1 - y)) * (4 * abs(la) + 4 * abs(lb) + 3)
        nll.view(-1)[i] = -float(logp)
        err.view(-1)[i] = (
            float(abs(da)) * lo.E.flatten()[i].item() + float(abs(db)) * hi.E.flatten()[i].item() + float(own) * U64
        )
    return nll, err


def reference_term(d, out, x0, x_t, t) -> tuple[torch.Tensor, torch.Tensor]:
    """L_{t-1} (t > 0) or L_0 (t = 0) per image in bits/dim, and its error bound, from the formulas above."""
    m1, lv1, m2, lv2, _ = reference_step(d, out, x0, x_t, t)
    if t > 0:
        term = bits(reference_kl(m1, lv1, m2, lv2))
        return term.v, term.E
    nll, err = reference_decoder_nll(x0, m2, lv2)
    term = bits(Bounded(nll, err, U64))
    return term.v, term.E


# ---------------------------------------------------------------- term by term and the whole loop
@pytest.mark.parametrize("variance", VARIANCES)
@pytest.mark.parametrize("prediction", PREDICTIONS)
def test_each_term_equals_the_papers_formula(variance, prediction, images, unets):
    d = _diffusion(variance, prediction)
    unet = unets[2 if variance == "learned_range" else 1]
    g = torch.Generator().manual_seed(0)
    for t in (0, 1, T // 2, T - 1):
        x_t = d.q_sample(images, t, generator=g)
        with torch.no_grad():
            out = d.model_output(unet, x_t, t)
        ours = vb_terms_bpd(d, None, images, x_t, t, model_output=out)["output"]
        ref, err = reference_term(d, out, images, x_t, t)
        bound = SAFETY * 2 * err
        assert ((ours - ref).abs() <= bound).all(), (variance, prediction, t, (ours - ref).abs() / bound)
        assert (bound / ref.abs()).max() < 1e-10  # the check is at float64 rounding level, not loose


@pytest.mark.parametrize("variance", VARIANCES)
@pytest.mark.parametrize("prediction", PREDICTIONS)
def test_whole_loop_equals_the_sum_of_the_papers_terms(variance, prediction, images, unets):
    d = _diffusion(variance, prediction)
    unet = unets[2 if variance == "learned_range" else 1]
    noise = torch.randn((T, *images.shape), generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    # max_batch = B: one model call per t, the same calls (hence the same output bits) as the reference's below
    res = calc_bpd_loop(d, unet, images, noise=noise, max_batch=images.shape[0])
    total, total_err = torch.zeros(3, dtype=torch.float64), torch.zeros(3, dtype=torch.float64)
    for t in range(T):
        x_t = d.q_sample(images, t, noise[t])
        with torch.no_grad():
            out = d.model_output(unet, x_t, t)
        ref, err = reference_term(d, out, images, x_t, t)
        assert ((res.vb_bpd[:, t] - ref).abs() <= SAFETY * 2 * err).all(), (t, res.vb_bpd[:, t], ref)
        total, total_err = total + ref, total_err + err + U64 * (total + ref).abs()
    # L_T = KL(N(sqrt(abar_T) x_0, 1 - abar_T) || N(0, 1)) (eq. 5)
    abar = float(d.schedule.alphas_cumprod[-1])
    prior = bits(reference_kl(_b(abar) ** 0.5 * _b(images), (1 - _b(abar)).log(), _b(0.0), _b(0.0)))
    assert ((res.prior_bpd - prior.v).abs() <= SAFETY * 2 * prior.E).all()
    ref_total = total + prior.v
    bound = SAFETY * 2 * (total_err + prior.E + U64 * ref_total.abs())
    assert ((res.total_bpd - ref_total).abs() <= bound).all(), (res.total_bpd, ref_total)
    assert (
        torch.equal(res.total_bpd, res.prior_bpd + res.vb_bpd.sum(1))
        or ((res.total_bpd - res.prior_bpd - res.vb_bpd.sum(1)).abs() <= T * U64 * res.total_bpd.abs()).all()
    )


def test_loop_does_not_depend_on_how_timesteps_are_batched(images, unets):
    d = _diffusion("learned_range", "epsilon")
    g = lambda: torch.Generator().manual_seed(5)  # noqa: E731
    one = calc_bpd_loop(d, unets[2], images, generator=g(), max_batch=3)
    many = calc_bpd_loop(d, unets[2], images, generator=g(), max_batch=3 * T)
    # the same draws; only the model's batched arithmetic may differ (float64 kernels of another batch size)
    assert torch.allclose(one.vb_bpd, many.vb_bpd, rtol=1e-9, atol=0)


def test_normal_kl_and_decoder_closed_forms():
    m1, m2 = torch.tensor([0.3], dtype=torch.float64), torch.tensor([-0.2], dtype=torch.float64)
    lv1, lv2 = torch.tensor([-1.0], dtype=torch.float64), torch.tensor([0.5], dtype=torch.float64)
    kl = normal_kl(m1, lv1, m2, lv2)
    ref = 0.5 * (0.5 + 1.0 + math.exp(-1.5) + 0.25 * math.exp(-0.5) - 1)
    assert abs(kl.item() - ref) <= SAFETY * 12 * U64 * 2
    assert normal_kl(m1, lv1, m1, lv1).item() == 0
    # the 256 bins' masses sum to 1: the decoder is a distribution over pixel levels
    levels = torch.arange(256, dtype=torch.float64) * (2 / 255) - 1
    for mean, log_scale in ((0.1, -3.0), (0.99, -6.0), (-2.0, 0.5)):
        logp = discretized_gaussian_log_likelihood(
            levels, torch.full_like(levels, mean), torch.full_like(levels, log_scale)
        )
        assert abs(logp.exp().sum().item() - 1) <= SAFETY * 256 * 8 * U64
    # far tails keep their logarithm (the tanh approximation would clamp at log 1e-12)
    far = discretized_gaussian_log_likelihood(*(torch.tensor([v], dtype=torch.float64) for v in (0.0, 0.9, -5.0)))
    lo, hi = (
        (mpmath.mpf(-0.9) - mpmath.mpf(1) / 255) * mpmath.e**5,
        (mpmath.mpf(-0.9) + mpmath.mpf(1) / 255) * mpmath.e**5,
    )
    exact = float(mpmath.log(mpmath.ncdf(hi) - mpmath.ncdf(lo)))  # about -8849 nats
    assert abs(far.item() - exact) <= SAFETY * 1e4 * U64 * abs(exact)  # |z| ~ 133: a 1e4 u relative budget


def test_bad_input_raises(images, unets):
    d = _diffusion("fixed_small", "epsilon")
    with pytest.raises(ValueError, match=r"\[-1, 1\]"):
        calc_bpd_loop(d, unets[1], images * 2)
    with pytest.raises(ValueError, match="decoder"):
        calc_bpd_loop(d, unets[1], images, decoder="logistic")
    with pytest.raises(ValueError, match="noise must have shape"):
        calc_bpd_loop(d, unets[1], images, noise=torch.zeros(3, *images.shape))
    with pytest.raises(ValueError, match="max_batch"):
        calc_bpd_loop(d, unets[1], images, max_batch=0)


# ---------------------------------------------------------------- Gaussian data: the bound is tight at the true model
MU0, S0 = 0.3, 0.5  # data x_0 ~ N(MU0, S0^2), one dimension


def _marginal(d):
    """Mean m_t and variance V_t of q(x_t) = N(sqrt(abar_t) MU0, abar_t S0^2 + 1 - abar_t) ``[T]``, with
    index -1 (the data) prepended as column 0."""
    abar = torch.cat([torch.ones(1, dtype=torch.float64), d.schedule.alphas_cumprod])
    return abar.sqrt() * MU0, abar * S0**2 + 1 - abar


def exact_reverse_model(d, mean_shift=0.0, log_var_shift=0.0):
    """p(x_{t-1} | x_t) = q(x_{t-1} | x_t) for Gaussian data, as a learned_range model callable: the joint of
    (x_{t-1}, x_t) is Gaussian with Cov = sqrt(alpha_t) V_{t-1}, so the reverse step is
    N(m_{t-1} + sqrt(alpha_t) V_{t-1} / V_t (x_t - m_t), beta_t V_{t-1} / V_t); its mean is written as the
    posterior mean (eq. 7) at an x0_hat, its variance as IDDPM's interpolation v. Optional perturbations."""
    s = d.schedule
    m, V = _marginal(d)

    def model(x_t, timesteps):
        t = timesteps
        shape = (-1,) + (1,) * (x_t.ndim - 1)
        col = lambda table: table[t].reshape(shape)  # noqa: E731
        m_prev, V_prev, m_t, V_t = col(m), col(V), col(m[1:]), col(V[1:])
        beta, alpha, abar = col(s.betas), col(s.alphas), col(s.alphas_cumprod)
        var = beta * V_prev / V_t * math.exp(log_var_shift)
        mean = m_prev + alpha.sqrt() * V_prev / V_t * (x_t - m_t) + mean_shift * var.sqrt()
        x0_hat = (mean - col(s.posterior_mean_coef2) * x_t) / col(s.posterior_mean_coef1)
        lo, hi = col(s.posterior_log_variance_clipped), beta.log()
        lo = torch.where(t.reshape(shape) == 0, s.posterior_log_variance_clipped[1], lo)  # the decoder's low end
        v = 2 * (var.log() - lo) / (hi - lo) - 1
        eps = (x_t - abar.sqrt() * x0_hat) / (1 - abar).sqrt()
        pred = {"epsilon": eps, "sample": x0_hat, "v_prediction": abar.sqrt() * eps - (1 - abar).sqrt() * x0_hat}
        return torch.cat([pred[d.prediction_type], v], dim=1)

    return model


def _expected_bound(d, model, x0, nodes, weights):
    """E over x_t ~ q(x_t | x_0) of every term, exactly: each term is quadratic in the one-dimensional x_t, and
    3-point Gauss-Hermite quadrature is exact for polynomials of degree <= 5. Returns the per-x_0 sums of
    L_{t-1} and L_0 (continuous decoder) ``[N]`` in bits."""
    k = len(nodes)
    xs = x0.repeat_interleave(k).reshape(-1, 1)  # [N*k x 1]
    noise = torch.tensor(nodes, dtype=torch.float64).repeat(len(x0)).reshape(1, -1, 1).expand(d.num_timesteps, -1, 1)
    res = calc_bpd_loop(d, model, xs, noise=noise.contiguous(), decoder="continuous", max_batch=10_000)
    w = torch.tensor(weights, dtype=torch.float64)
    return (res.vb_bpd.reshape(len(x0), k, -1) * w[None, :, None]).sum((1, 2))


def _first_order_bound(d, x0, nodes, weights, K=16):
    """A first-order bound (nats -> bits, per x_0) on the rounding error of the quadrature-summed terms.

    Every quantity passes through at most K rounded operations, each off by at most u times the largest magnitude
    it involves: the model's log-variance (IDDPM eq. 15 and back) by K u (|log beta~| + |log beta| + |lv|), its mean
    (eq. 7, x0_hat and the prediction type's round trip) by K u S with S the sum of |x_t| / sqrt(alpha), |mu|,
    |mu~|, |c1 x0_hat|, |c2 x_t|, |c1 x_0|. The KL 1/2 (lv2 - lv1 - 1 + e^(lv1 - lv2) + (m1 - m2)^2 e^-lv2) then
    moves by 1/2 (|d lv2| (1 + e^(lv1 - lv2) + g) + 2 |m1 - m2| |dm| e^-lv2) + K u (the sum of its parts'
    magnitudes), g = (m1 - m2)^2 e^-lv2; the decoder's -log N likewise with m1 = x_0 and no e^lv1 term."""
    s = d.schedule
    model = exact_reverse_model(d)
    t = torch.arange(d.num_timesteps)
    tb = lambda table: table[None, None, :]  # noqa: E731  [1 x 1 x T]
    x = x0[:, None, None]
    x_t = tb(s.sqrt_alphas_cumprod) * x + tb(s.sqrt_one_minus_alphas_cumprod) * torch.tensor(nodes)[None, :, None]
    flat = x_t.reshape(-1, 1)
    out = model(flat, t.repeat(flat.shape[0] // len(t)))
    res = d.p_mean_variance(None, flat, t.repeat(flat.shape[0] // len(t)), model_output=out)
    m2, lv2 = res["mean"].reshape(x_t.shape), res["log_variance"].reshape(x_t.shape)
    x0_hat = res["pred_xstart"].reshape(x_t.shape)
    c1, c2 = tb(s.posterior_mean_coef1), tb(s.posterior_mean_coef2)
    m1 = torch.where(t == 0, x, c1 * x + c2 * x_t)  # the true posterior mean; x_0 itself for the decoder
    lv1 = tb(s.posterior_log_variance_clipped)
    lv1 = torch.where(t == 0, s.posterior_log_variance_clipped[1], lv1)  # the decoder's low end
    u = K * U64
    S = x_t.abs() / tb(s.alphas).sqrt() + m1.abs() + m2.abs() + (c1 * x0_hat).abs() + (c2 * x_t).abs() + (c1 * x).abs()
    d_lv2 = u * (lv1.abs() + tb(s.betas).log().abs() + lv2.abs())
    g = (m1 - m2) ** 2 * torch.exp(-lv2)
    ratio = torch.where(t == 0, 0.0, torch.exp(lv1 - lv2))
    first = 0.5 * (d_lv2 * (1 + ratio + g) + 2 * (m1 - m2).abs() * u * S * torch.exp(-lv2))
    parts = u * (1 + math.log(2 * math.pi) + lv1.abs() + lv2.abs() + ratio + g)
    w = torch.tensor(weights)[None, :, None]
    return ((first + parts) * w).sum((1, 2)) / LN2


@pytest.mark.parametrize("prediction", PREDICTIONS)
def test_gaussian_data_bound_is_the_exact_nll_for_the_true_reverse_process(prediction):
    """For x_0 ~ N(MU0, S0^2) the reverse steps are Gaussian in closed form. With the exact reverse process as the
    model, the bound with q(x_T) in place of N(0, I) (that is, L - L_T + KL(q(x_T | x_0) || q(x_T))) equals
    -log q(x_0) for every x_0 (the model's joint is q's, so the bound's gap KL(q(x_{1:T} | x_0) || p(x_{1:T} | x_0))
    is 0). The data are continuous: L_0 is -log N(x_0; mu_theta(x_1, 1), sigma_1^2), the Gaussian density, not the
    discretised decoder. Any other model gives a larger bound."""
    d = _diffusion("learned_range", prediction, clip=False, T=40, schedule="linear")
    x0 = torch.tensor([-1.2, 0.3, 0.9, 2.0], dtype=torch.float64)
    nodes, weights = np.polynomial.hermite_e.hermegauss(3)
    weights = weights / weights.sum()
    terms = _expected_bound(d, exact_reverse_model(d), x0, nodes, weights)
    m, V = _marginal(d)
    abar_T = float(d.schedule.alphas_cumprod[-1])
    prior_to_marginal = normal_kl(
        math.sqrt(abar_T) * x0, torch.tensor(math.log1p(-abar_T), dtype=torch.float64), m[-1], V[-1].log()
    )  # KL(q(x_T | x_0) || q(x_T)), nats
    bound = terms + prior_to_marginal / LN2
    nll = 0.5 * (math.log(2 * math.pi * S0**2) + (x0 - MU0) ** 2 / S0**2) / LN2
    # plus the sum of T terms and the quadrature's (T k additions) and the reference NLL's few operations
    sums = (d.num_timesteps * len(nodes) + 8) * U64 * (bound.abs() + nll.abs())
    tol = SAFETY * (_first_order_bound(d, x0, nodes, weights) + sums)
    assert ((bound - nll).abs() <= tol).all(), ((bound - nll).abs(), tol)
    assert tol.max() < 1e-9  # float64 rounding level: u = 1.1e-16 per operation, 40 terms of 3 nodes

    # Any other model gives more on average over the data (pointwise, a model with more spread can give a tail x_0
    # a higher density than q does): E_q[bound] >= E_q[-log p(x_0)] >= H(q) = 1/2 log(2 pi e S0^2). The bound is
    # quadratic in (x_0, x_t) jointly, so 3 Gauss-Hermite nodes in x_0 as well give the expectation exactly.
    xs = MU0 + S0 * torch.tensor(nodes, dtype=torch.float64)
    w = torch.tensor(weights, dtype=torch.float64)
    to_marginal = normal_kl(
        math.sqrt(abar_T) * xs, torch.tensor(math.log1p(-abar_T), dtype=torch.float64), m[-1], V[-1].log()
    )
    entropy = 0.5 * math.log(2 * math.pi * math.e * S0**2) / LN2
    exact_mean = float(
        (w * (_expected_bound(d, exact_reverse_model(d), xs, nodes, weights) + to_marginal / LN2)).sum()
    )
    sums = (d.num_timesteps * len(nodes) ** 2 + 8) * U64 * (abs(exact_mean) + abs(entropy))
    margin = SAFETY * (float((_first_order_bound(d, xs, nodes, weights) * w).sum()) + sums)
    assert abs(exact_mean - entropy) <= margin
    exact = exact_reverse_model(d)
    others = {
        "mean shifted": (d, exact_reverse_model(d, mean_shift=0.05)),
        "variance x1.3": (d, exact_reverse_model(d, log_var_shift=math.log(1.3))),
        "variance x0.8": (d, exact_reverse_model(d, log_var_shift=math.log(0.8))),
    }
    for variance in ("fixed_small", "fixed_large"):
        others[variance] = (
            _diffusion(variance, prediction, clip=False, T=40, schedule="linear"),
            lambda x, t: exact(x, t)[:, :1],
        )
    for name, (diffusion, model) in others.items():
        worse = float((w * (_expected_bound(diffusion, model, xs, nodes, weights) + to_marginal / LN2)).sum())
        assert worse - entropy > margin, (name, worse, entropy)


# ---------------------------------------------------------------- training with the bound
@pytest.mark.parametrize("prediction", PREDICTIONS)
def test_hybrid_loss_is_simple_plus_lambda_t_vlb_with_the_mean_stopped(prediction, images):
    """L_hybrid = L_simple + 0.001 T L_t (IDDPM sec. 3.1): the bound's term moves the variance channels only."""
    d = _diffusion("learned_range", prediction)
    g = torch.Generator().manual_seed(2)
    t = torch.tensor([0, 5, T - 1])
    noise = torch.randn(images.shape, generator=g, dtype=torch.float64)
    raw = torch.randn((3, 2, 8, 8), generator=g, dtype=torch.float64)

    def run(loss_type):
        out = raw.clone().requires_grad_(True)
        loss = d.p_losses(lambda x, tt: out, images, t, noise, loss_type=loss_type)
        loss.backward()
        return loss, out.grad

    hybrid, g_hybrid = run("hybrid")
    x_t = d.q_sample(images, t, noise)
    target = {"epsilon": noise, "sample": images, "v_prediction": d.get_v(images, noise, t)}[prediction]
    simple = ((raw[:, :1].float() - target.float()) ** 2).mean()
    vb = vb_terms_bpd(d, None, images.float(), x_t.float(), t, model_output=raw.float(), clip_denoised=False)
    expected = simple + 0.001 * T * vb["output"].mean()
    # float32 arithmetic: the MSE (128 terms) and the bound's term, a few tens of operations each
    assert abs(hybrid.item() - expected.item()) <= SAFETY * 64 * 2.0**-24 * (simple.item() + 0.001 * T * 10)
    # the mean's gradient is L_simple's alone, 2 (pred - target) / n: float32 casts of both (u each), the
    # difference (u) and the scaling (2u), so within 4u (|pred| + |target|) 2 / n
    n = raw[:, :1].numel()
    mse_grad = 2 * (raw[:, :1] - target) / n
    within = SAFETY * 4 * 2.0**-24 * (raw[:, :1].abs() + target.abs()) * 2 / n
    assert ((g_hybrid[:, :1] - mse_grad).abs() <= within).all()
    assert g_hybrid[:, 1:].abs().sum() > 0  # the variance learns from the bound

    vlb, g_vlb = run("vlb")
    assert abs(vlb.item() - T * vb["output"].mean().item()) <= SAFETY * 64 * 2.0**-24 * T * 10
    assert g_vlb[:, :1].abs().sum() > 0  # the bound alone moves the mean as well


def test_loss_type_pairings_are_checked(images):
    zero = lambda x, t: torch.zeros(x.shape[0], 2 * x.shape[1], *x.shape[2:], dtype=x.dtype)  # noqa: E731
    with pytest.raises(ValueError, match="hybrid"):
        _diffusion("learned_range", "epsilon").p_losses(zero, images)
    with pytest.raises(ValueError, match="learned variance"):
        _diffusion("fixed_small", "epsilon").p_losses(lambda x, t: x, images, loss_type="hybrid")
    with pytest.raises(ValueError, match="snr_gamma"):
        _diffusion("fixed_small", "epsilon").p_losses(lambda x, t: x, images, loss_type="vlb", snr_gamma=5.0)
    with pytest.raises(ValueError, match="unknown loss_type"):
        _diffusion("fixed_small", "epsilon").p_losses(lambda x, t: x, images, loss_type="kl")
    # the bound trains a fixed-variance model too
    assert _diffusion("fixed_large", "epsilon").p_losses(lambda x, t: x, images, loss_type="vlb").item() > 0


# ---------------------------------------------------------------- the bits/dim CLI
@pytest.mark.slow
def test_bpd_cli_two_processes_give_the_one_process_figures(tmp_path):
    """``python -m ddpm_core.bpd`` on a folder of PNGs: the same per-image figures from 1 and 2 processes (batch b is
    seeded with seed + b and computed whole by one rank), and the file's mean is the images' mean."""
    import json

    from PIL import Image
    from test_multiprocess import _run, torchrun

    from helpers import save_pipeline_folder

    ckpts, images = tmp_path / "ckpts", tmp_path / "images"
    save_pipeline_folder(
        tiny_unet(1, in_channels=1),
        ckpts / "tiny-bpd",
        {"num_train_timesteps": 6, "beta_schedule": "squaredcos_cap_v2"},
    )
    images.mkdir()
    g = torch.Generator().manual_seed(0)
    for i in range(5):
        Image.fromarray(torch.randint(0, 256, (8, 8), generator=g, dtype=torch.uint8).numpy()).save(
            images / f"{i}.png"
        )
    args = ["-m", "ddpm_core.bpd", "--model", "tiny-bpd", "--data", images, "--batch", "2", "--seed", "4"]
    env = {"DDPM_CHECKPOINT_DIR": str(ckpts)}
    _run([__import__("sys").executable, *args, "--out", tmp_path / "one.json"], **env)
    _run(torchrun(2, *args, "--out", tmp_path / "two.json"), **env)
    one, two = (json.loads((tmp_path / f).read_text()) for f in ("one.json", "two.json"))
    assert one["images"] == two["images"] == 5 and two["num_processes"] == 2
    assert [r["bpd"] for r in one["per_image"]] == [r["bpd"] for r in two["per_image"]]
    totals = [r["bpd"] for r in one["per_image"]]
    assert abs(one["bits_per_dim"] - sum(totals) / 5) <= 1e-4  # rounded to 4 decimals in the file
    assert all(0 < v < 100 and math.isfinite(v) for v in totals)
    for r in one["per_image"]:  # the total is its terms
        assert abs(r["bpd"] - r["prior_bpd"] - r["decoder_bpd"] - r["terms_bpd"]) <= 16 * U64 * r["bpd"]


@pytest.mark.slow
def test_evaluate_writes_bits_per_dim_into_eval_json_and_the_card(tmp_path):
    """``evaluate --bpd-only``: the bound on held-out digits goes into eval.json beside the figures already there,
    and into the card's Evaluation section, replaced (not repeated) on a second run."""
    import json

    from ddpm_core import evaluate as ev
    from ddpm_core.checkpoints import ModelCache
    from ddpm_core.data import mnist_split, to_model_range
    from helpers import save_pipeline_folder

    folder = save_pipeline_folder(
        tiny_unet(1, sample_size=28, in_channels=1),
        tmp_path / "tiny-mnist",
        {"num_train_timesteps": 4, "beta_schedule": "squaredcos_cap_v2"},
    )
    (folder / "eval.json").write_text(json.dumps({"confident_fraction_0.9": 0.9}))
    (folder / "README.md").write_text("# tiny\n\n## Evaluation\n\nFigures.\n\n![samples](samples.png)\n")
    for _ in range(2):
        assert ev.main([str(folder), "--bpd-only", "--bpd-images", "3", "--seed", "7"]) is None
    r = json.loads((folder / "eval.json").read_text())
    entry = r["bits_per_dim"]
    assert r["confident_fraction_0.9"] == 0.9 and entry["images"] == 3 and entry["network_evaluations"] == 12
    # the figure is the loop's on the same digits and draws
    model = ModelCache(size=1, root=tmp_path).get("tiny-mnist")
    x0 = to_model_range(mnist_split("heldout")[0][:3])
    res = calc_bpd_loop(model.diffusion, model.unet, x0, generator=torch.Generator().manual_seed(7), max_batch=250)
    assert entry["bits_per_dim"] == round(float(res.total_bpd.mean()), 4)
    card = (folder / "README.md").read_text()
    assert (
        card.count("**Likelihood.**") == 1 and f"{entry['bits_per_dim']:.3f} ± {entry['standard_error']:.3f}" in card
    )
    assert card.index("**Likelihood.**") < card.index("![samples](samples.png)")
    assert "--bpd-only --bpd-images 3" in card
