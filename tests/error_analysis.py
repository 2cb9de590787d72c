"""Running error analysis for the numerical tests: float32 / float64 rounding bounds of the core's arithmetic.

Every tolerance in the core's tests is a first-order rounding error bound derived here, never fitted (Higham 2002,
sec. 3.3): :class:`Bounded` carries a value and a bound on its absolute error through each operation of a
formula; the coefficient arithmetic of ours and diffusers' steps is mirrored operation by operation; a step's bound
is elementwise (k u kappa, kappa the step's condition number); :func:`assert_within` applies the one margin SAFETY.
"""

import numpy as np
import torch

U64 = 2.0**-53
UNIT_ROUNDOFF = {torch.float64: U64, torch.float32: 2.0**-24, torch.float16: 2.0**-11, torch.bfloat16: 2.0**-8}
U32 = UNIT_ROUNDOFF[torch.float32]
# Smallest positive subnormal: an absolute floor for results that underflow (only float16 reaches it here).
TINY = {torch.float64: 2.0**-1074, torch.float32: 2.0**-149, torch.float16: 2.0**-24, torch.bfloat16: 2.0**-133}
SAFETY = 4.0  # the one margin applied to every first-order bound below


class Bounded:
    """A float64 value ``v`` with a first-order bound ``E`` on the absolute error of computing it in arithmetic of
    unit roundoff ``u`` (running error analysis, Higham 2002, sec. 3.3). Basic operations and sqrt (correctly
    rounded) add u|result|, library functions (pow, log, exp) 2u|result|. ``v`` and ``E`` broadcast like tensors."""

    def __init__(self, v, E=0.0, u=0.0):
        self.v = torch.as_tensor(v, dtype=torch.float64)
        self.E = torch.as_tensor(E, dtype=torch.float64)
        self.u = u

    def _lift(self, other):
        return other if isinstance(other, Bounded) else Bounded(other, 0.0, self.u)

    def _new(self, v, E):
        return Bounded(v, E, self.u)

    def __add__(self, o):
        o = self._lift(o)
        v = self.v + o.v
        return self._new(v, self.E + o.E + self.u * v.abs())

    __radd__ = __add__

    def __sub__(self, o):
        o = self._lift(o)
        v = self.v - o.v
        return self._new(v, self.E + o.E + self.u * v.abs())

    def __rsub__(self, o):
        return self._lift(o) - self

    def __mul__(self, o):
        o = self._lift(o)
        v = self.v * o.v
        return self._new(v, o.v.abs() * self.E + self.v.abs() * o.E + self.u * v.abs())

    __rmul__ = __mul__

    def __truediv__(self, o):
        o = self._lift(o)
        v = self.v / o.v
        E = (self.E + v.abs() * o.E) / o.v.abs() + self.u * v.abs()
        return self._new(v, torch.where(o.v == 0, 0.0, E))  # x / 0 is exactly +-inf (or nan) in both: compared exactly

    def __rtruediv__(self, o):
        return self._lift(o) / self

    def _sqrt(self, ulps):
        v = self.v.sqrt()
        # |sqrt(a + d) - sqrt(a)| <= min(|d| / (2 sqrt(a)), sqrt(|d|)): finite at a = 0
        prop = torch.minimum(torch.where(v > 0, self.E / (2 * v), torch.inf), self.E.sqrt())
        return self._new(v, prop + ulps * self.u * v)

    def sqrt(self):
        return self._sqrt(1)

    def __pow__(self, p):
        if p == 0.5:
            return self._sqrt(2)
        if p == 2:
            v = self.v**2
            return self._new(v, 2 * self.v.abs() * self.E + 2 * self.u * v)
        raise NotImplementedError(p)

    def log(self):
        v = self.v.log()
        return self._new(v, self.E / self.v.abs() + 2 * self.u * v.abs())

    def exp(self):
        v = self.v.exp()
        return self._new(v, v * self.E + 2 * self.u * v)

    def clamp_min(self, c):
        below = self.v < c
        return self._new(torch.where(below, c, self.v), torch.where(below, self.u * c, self.E))

    def cast(self, u_to):
        """Rounding to a narrower dtype: one more rounding of the result."""
        return Bounded(self.v, self.E + u_to * self.v.abs(), u_to)


def diffusers_ddpm_coefs(abar_t, abar_prev, u):
    """DDPMScheduler.step's (and _get_variance's) coefficient arithmetic, operation by operation (diffusers 0.42)."""
    at, ap = Bounded(abar_t, 0.0, u), Bounded(abar_prev, 0.0, u)
    beta_prod_t, beta_prod_t_prev = 1.0 - at, 1.0 - ap
    current_alpha_t = at / ap
    current_beta_t = 1.0 - current_alpha_t
    variance = ((1.0 - ap) / (1.0 - at) * current_beta_t).clamp_min(1e-20)
    return {
        "sa": at**0.5,
        "sb": beta_prod_t**0.5,
        "c1": (ap**0.5 * current_beta_t) / beta_prod_t,
        "c2": current_alpha_t**0.5 * beta_prod_t_prev / beta_prod_t,
        "std_small": variance**0.5,
        "std_large": current_beta_t**0.5,
        "log_var": variance.log(),
        "log_beta": current_beta_t.log(),
    }


def ours_ddpm_coefs(abar_t, abar_prev, u_cast):
    """Our float64 tables for the step abar_t -> abar_prev (schedule.py; respaced: beta' = 1 - abar_t / abar_prev;
    the full schedule's own betas agree with that to a float64 rounding), each cast once to the sample's dtype."""
    at, ap = Bounded(abar_t, 0.0, U64), Bounded(abar_prev, 0.0, U64)
    beta = 1.0 - at / ap
    alpha = 1.0 - beta
    one_minus = 1.0 - at
    log_var = (beta * (1.0 - ap) / one_minus).clamp_min(1e-20).log()
    out = {
        "sa": at.sqrt(),
        "sb": one_minus.sqrt(),
        "c1": beta * ap.sqrt() / one_minus,
        "c2": (1.0 - ap) * alpha.sqrt() / one_minus,
        "std_small": (0.5 * log_var).exp(),
        "std_large": beta.sqrt(),
        "log_var": log_var,
        "log_beta": beta.log(),
    }
    return {k: v.cast(u_cast) for k, v in out.items()}


def diffusers_ddim_coefs(abar_t, abar_prev, eta, u):
    """DDIMScheduler.step's coefficient arithmetic (eq. 12 and 16 of Song et al. 2021), operation by operation."""
    at, ap = Bounded(abar_t, 0.0, u), Bounded(abar_prev, 0.0, u)
    beta_prod_t = 1.0 - at
    variance = ((1.0 - ap) / beta_prod_t) * (1.0 - at / ap)
    std = Bounded(eta, u * eta, u) * variance**0.5  # eta is rounded to the sample's dtype
    return {"sa": at**0.5, "sb": beta_prod_t**0.5, "sap": ap**0.5, "dir": (1.0 - ap - std**2) ** 0.5, "sigma": std}


def ours_ddim_coefs(abar_t, abar_prev, eta, u_cast):
    """GaussianDiffusion._ddim_tables and the schedule's sqrt tables, in float64, cast once."""
    at, ap = Bounded(abar_t, 0.0, U64), Bounded(abar_prev, 0.0, U64)
    sigma = eta * ((1.0 - ap) / (1.0 - at) * (1.0 - at / ap)).clamp_min(0.0).sqrt()
    out = {
        "sa": at.sqrt(),
        "sb": (1.0 - at).sqrt(),
        "sap": ap.sqrt(),
        "dir": (1.0 - ap - sigma**2).clamp_min(0.0).sqrt(),
        "sigma": sigma,
    }
    return {k: v.cast(u_cast) for k, v in out.items()}


def coefficient_pair(kind, abar64, abar_ref, t, prev, dtype, final=(1.0, 1.0), eta=0.0):
    """(ours, reference) coefficient bounds for the steps t -> prev (int tensors of the same shape; prev < 0: the
    abar after the last step, ``final`` = (ours, the reference's)).

    The reference's error is its rounding in ``dtype`` plus the exact effect of its own table: the coefficient
    formulas evaluated in float64 at its table values minus at ours (zero when it was given our float64 tables)."""
    u = UNIT_ROUNDOFF[dtype]
    t, prev = torch.as_tensor(t), torch.as_tensor(prev)
    abar_ref = abar_ref.double()
    at, at_r = abar64[t], abar_ref[t]
    ap = torch.where(prev >= 0, abar64[prev.clamp(min=0)], float(final[0]))
    ap_r = torch.where(prev >= 0, abar_ref[prev.clamp(min=0)], float(final[1]))
    if kind == "ddpm":
        ours, ref, exact, table = (
            ours_ddpm_coefs(at, ap, 0.0 if dtype == torch.float64 else u),
            diffusers_ddpm_coefs(at, ap, u),
            diffusers_ddpm_coefs(at, ap, 0.0),
            diffusers_ddpm_coefs(at_r, ap_r, 0.0),
        )
    else:
        ours, ref, exact, table = (
            ours_ddim_coefs(at, ap, eta, 0.0 if dtype == torch.float64 else u),
            diffusers_ddim_coefs(at, ap, eta, u),
            diffusers_ddim_coefs(at, ap, eta, 0.0),
            diffusers_ddim_coefs(at_r, ap_r, eta, 0.0),
        )
    ref = {k: Bounded(ref[k].v, ref[k].E + (table[k].v - exact[k].v).abs(), u) for k in ref}
    return ours, ref


def at_step(coefs, k):
    """The coefficients of step ``k`` out of :func:`coefficient_pair`'s per-step tables."""
    return {name: Bounded(b.v[k], b.E[k], b.u) for name, b in coefs.items()}


def stacked(coefs):
    """:func:`coefficient_pair`'s per-step tables shaped ``[K, 1, 1, 1, 1]`` against stacked ``[K, B, C, H, W]`` steps."""
    return {name: Bounded(b.v.reshape(-1, 1, 1, 1, 1), b.E.reshape(-1, 1, 1, 1, 1), b.u) for name, b in coefs.items()}


def pred_x0_and_eps(pred, X, E, x, m, r, Bm):
    """x0_hat and eps_hat from the model output (eq. 15 and its x_0 / v forms) with elementwise bounds."""
    sa, sb = X["sa"], X["sb"]
    Bm = torch.zeros_like(m) + Bm
    if pred == "epsilon":
        x0 = (x - sb * m) / sa
        Bx0 = (m.abs() * E["sb"] + x0.abs() * E["sa"] + (x.abs() + (sb * m).abs()) * r + sb * Bm) / sa
        return x0, torch.where(sa == 0, 0.0, Bx0), m, Bm
    if pred == "sample":
        eps = (x - sa * m) / sb
        return m, Bm, eps, (m.abs() * E["sa"] + eps.abs() * E["sb"] + (x.abs() + (sa * m).abs()) * r + sa * Bm) / sb
    x0, eps = sa * x - sb * m, sa * m + sb * x
    Bx0 = x.abs() * E["sa"] + m.abs() * E["sb"] + ((sa * x).abs() + (sb * m).abs()) * r + sb * Bm
    Beps = m.abs() * E["sa"] + x.abs() * E["sb"] + ((sa * m).abs() + (sb * x).abs()) * r + sa * Bm
    return x0, Bx0, eps, Beps


def clip_or_threshold(diffusion, x0, Bx0, u_sum):
    """Clipping is 1-Lipschitz; dynamic thresholding y = clamp(x0, -s, s) / s moves by (|dx0| + 2|ds|) / s, with
    |ds| <= max |dx0| over the sample (order statistics) plus the quantile's interpolation rounding (4u s).
    Elements clamped in both implementations beyond doubt are exact (the bound's margin decides)."""
    if diffusion.thresholding:  # per sample: over C x H x W
        s = torch.quantile(x0.abs().flatten(-3), diffusion.dynamic_thresholding_ratio, dim=-1)
        s = s.clamp(1, diffusion.sample_max_value)[..., None, None, None]
        Ds = Bx0.expand(x0.shape).flatten(-3).amax(-1)[..., None, None, None] + 4 * u_sum * s
        y = torch.maximum(torch.minimum(x0, s), -s) / s
        By = (Bx0 + 2 * Ds) / s + u_sum * y.abs()
        return y, torch.where(x0.abs() > s + SAFETY * (Bx0 + Ds), 0.0, By)
    if diffusion.clip_sample:
        lim = diffusion.clip_sample_range
        return x0.clamp(-lim, lim), torch.where(x0.abs() > lim + SAFETY * Bx0, 0.0, Bx0)
    return x0, Bx0


def ddpm_step_bound(diffusion, co, cd, x, m, v, z, u_o, u_d, Bm=0.0, Bv=0.0):
    """Elementwise first-order bounds on |ours - reference| for (pred x0, x_{t-1}) of one DDPM step.

    ``co``/``cd``: the two implementations' coefficient bounds; ``x``, ``m``, ``v``, ``z``: x_t, the predicted
    part of the model output, its variance channels (learned_range) and the noise (None: none added); ``u_o``, ``u_d``:
    unit roundoffs of the two steps' arithmetic; ``Bm``, ``Bv``: bounds on the difference of the model outputs the
    two were given. Returns (x0 bound, x_{t-1} bound), before SAFETY.
    """
    x, m = x.double(), m.double()
    X = {k: co[k].v for k in co}
    E = {k: co[k].E + cd[k].E for k in co}
    r = 3 * (u_o + u_d)  # each product in a sum: one multiplication and at most two additions, in each implementation
    x0, Bx0, _, _ = pred_x0_and_eps(diffusion.prediction_type, X, E, x, m, r, Bm)
    y, By = clip_or_threshold(diffusion, x0, Bx0, u_o + u_d)
    c1, c2 = X["c1"], X["c2"]  # eq. 7
    B = c1.abs() * By + y.abs() * E["c1"] + x.abs() * E["c2"] + ((c1 * y).abs() + (c2 * x).abs()) * r
    if z is not None:
        z = z.double()
        if diffusion.variance_type == "learned_range":
            # IDDPM eq. 15: sigma = exp((f log beta + (1 - f) log beta~) / 2)
            f = (v.double() + 1) / 2
            lb, lv = X["log_beta"], X["log_var"]
            sigma = ((f * lb + (1 - f) * lv) / 2).exp()
            EL = (
                f * E["log_beta"]
                + (1 - f) * E["log_var"]
                + 4 * (u_o + u_d) * (lb.abs() + lv.abs())
                + (lb - lv).abs() / 2 * Bv
            )
            Esigma = sigma * (EL / 2 + 3 * (u_o + u_d))  # 0.5 L and exp (2u)
        else:
            key = "std_small" if diffusion.variance_type == "fixed_small" else "std_large"
            sigma, Esigma = X[key], E[key]
        B = B + z.abs() * Esigma + (sigma * z).abs() * r
    return By, B


def ddim_step_bound(diffusion, co, cd, x, m, z, u_o, u_d, Bm=0.0, clipped_eps=False):
    """As :func:`ddpm_step_bound` for one DDIM step (Song et al. 2021, eq. 12): x_prev = sqrt(abar_prev) x0_hat +
    sqrt(1 - abar_prev - sigma^2) eps_hat + sigma z; with ``clipped_eps``, eps_hat = (x_t - sqrt(abar_t) y) /
    sqrt(1 - abar_t) from the clipped x0_hat y (diffusers' ``use_clipped_model_output``)."""
    x, m = x.double(), m.double()
    X = {k: co[k].v for k in co}
    E = {k: co[k].E + cd[k].E for k in co}
    r = 3 * (u_o + u_d)
    x0, Bx0, eps, Beps = pred_x0_and_eps(diffusion.prediction_type, X, E, x, m, r, Bm)
    y, By = clip_or_threshold(diffusion, x0, Bx0, u_o + u_d)
    if clipped_eps:
        sa, sb = X["sa"], X["sb"]
        eps = (x - sa * y) / sb
        Beps = (y.abs() * E["sa"] + sa * By + eps.abs() * E["sb"] + (x.abs() + (sa * y).abs()) * r) / sb
    sap, d = X["sap"], X["dir"]
    B = (
        sap.abs() * By
        + y.abs() * E["sap"]
        + d.abs() * Beps
        + eps.abs() * E["dir"]
        + ((sap * y).abs() + (d * eps).abs()) * r
    )
    if z is not None:
        z = z.double()
        B = B + z.abs() * E["sigma"] + (X["sigma"] * z).abs() * r
    return By, B


def assert_within(ours, ref, bound, what):
    """|ours - ref| <= SAFETY * bound elementwise; non-finite values must agree exactly."""
    ours, ref = ours.double(), ref.double()
    bound = torch.as_tensor(bound, dtype=torch.float64).expand(ref.shape)
    fin = torch.isfinite(ref)
    assert torch.equal(fin, torch.isfinite(ours)), f"{what}: non-finite values differ"
    assert torch.equal(torch.isnan(ours), torch.isnan(ref)) and torch.equal(
        ours[torch.isinf(ref)], ref[torch.isinf(ref)]
    ), what
    assert torch.isfinite(bound[fin]).all(), f"{what}: the error bound is not finite"
    ratio = torch.where(fin, (ours - ref).abs() / (SAFETY * bound).clamp(min=1e-300), 0.0)
    ratio = torch.where(fin & ((ours - ref).abs() == 0), 0.0, ratio)
    if (ratio > 1).any():
        where = np.unravel_index(int(ratio.argmax()), ratio.shape)
        raise AssertionError(
            f"{what}: |ours - ref| = {(ours - ref).abs()[where]:.3g} exceeds SAFETY x the derived bound "
            f"{bound[where]:.3g} at index {tuple(int(i) for i in where)} (ratio {ratio.max():.3g})"
        )


# Roundings of diffusers' float32 betas relative to the exact ones: a float32 linspace rounds start, end, the step
# (sub, div), idx * step and the sum: <= 7u |beta| (8 counted); scaled_linear squares it (2 * 8 + 2); sigmoid: the
# linspace of [-6, 6] is off by <= 18u absolute, sigmoid's derivative / value <= 1, sigmoid itself 4u, the
# scale and shift 3u; cosine and trained_betas: the same float64 numbers cast once.
BETA_ROUNDINGS = {"linear": 8, "scaled_linear": 18, "squaredcos_cap_v2": 1, "sigmoid": 25, "trained_betas": 1}


def rescale_first_order_bound(betas, k_beta, u):
    """Bound on |diffusers' rescale_zero_terminal_snr(betas) - exact| in arithmetic of unit roundoff u, from input
    betas off by k_beta u relative: sum over every rounding of |d beta_out / d delta| u (the first-order error,
    correlations included: consecutive cumprod entries share their drift, which cancels in abar_t / abar_{t-1})."""
    T = betas.numel()

    def rescale(d):  # d[k]: the relative rounding of each operation, 0 = exact
        b = betas * (1 + d[0])
        alphas = (1 - b) * (1 + d[1])
        s = torch.cumprod(alphas * (1 + d[2]), 0).sqrt() * (1 + d[3])
        s0, sT = s[0], s[-1]
        shifted = (s - sT) * (1 + d[4])
        scale = s0 / ((s0 - sT) * (1 + d[5, 0])) * (1 + d[5, 1])
        abar = (shifted * scale * (1 + d[6])) ** 2 * (1 + d[7])
        alphas = torch.cat([abar[:1], abar[1:] / abar[:-1] * (1 + d[8, 1:])])
        return (1 - alphas) * (1 + d[9])

    d = torch.zeros(10, T, dtype=torch.float64, requires_grad=True)
    out = rescale(d)
    weights = torch.full((10, 1), u, dtype=torch.float64)
    weights[0] = k_beta * u
    rows = [(torch.autograd.grad(out[t], d, retain_graph=True)[0].abs() * weights).sum() for t in range(T)]
    return torch.stack(rows).detach()
