"""Which training timesteps an inference run visits (diffusers' ``timestep_spacing``, Lin et al. 2024 Table 2)."""

from __future__ import annotations

import numpy as np

SPACINGS = ("leading", "trailing", "linspace")


def evenly_spaced(last: int, n: int) -> np.ndarray:
    """At most ``n`` int64 indices evenly spread over [0, ``last``], ascending, both ends included:
    ``round(linspace(0, last, min(n, last + 1)))`` (round half to even). Ties may repeat an index."""
    return np.round(np.linspace(0, int(last), min(int(n), int(last) + 1))).astype(np.int64)


def inference_timesteps(
    num_train_timesteps: int, num_inference_steps: int | None = None, spacing: str = "leading", steps_offset: int = 0
) -> np.ndarray:
    """The descending int64 timesteps ``[N]`` of an ``N``-step run over a ``T``-step schedule.

    ``None`` visits every step T-1..0 (the plain DDPM chain, whatever the spacing). Otherwise, for every N in
    [1, T], exactly N strictly decreasing timesteps in [0, T-1] (steps_offset permitting):

    - ``leading``: ``arange(N) * (T // N)`` reversed, plus ``steps_offset`` (ends at 0 + offset);
    - ``trailing``: the first N of ``round(arange(T, 0, -T / N)) - 1`` (starts at T-1, the noisiest step, and
      ends at ``round(T / N) - 1 >= 0``);
    - ``linspace``: ``round(linspace(0, T - 1, N))`` reversed (starts at T-1, ends at 0).

    Each equals diffusers' ``DDPMScheduler.set_timesteps`` (same float64 formulas, same round-half-even). One
    difference: for ``trailing``, float rounding in ``arange`` makes diffusers return N + 1 timesteps for some N
    (e.g. T=1000 and N=61, 103, 121, ...; 62 of the 1000 N), the extra last one being -1, outside the schedule.
    We return the first N of them, which are exactly diffusers' valid ones; an exact-rational formula would
    instead differ from diffusers at half-way ties (e.g. T=1000, N=48).

    Raises ``ValueError`` for N outside [1, T], an unknown spacing, or an offset that leaves [0, T-1].
    """
    T = int(num_train_timesteps)
    if num_inference_steps is None:
        return np.arange(T - 1, -1, -1, dtype=np.int64)
    N = num_inference_steps
    if isinstance(N, bool) or not isinstance(N, (int, np.integer)) or not 1 <= N <= T:
        raise ValueError(f"num_inference_steps must be an integer in [1, {T}], got {num_inference_steps!r}")
    N = int(N)
    if spacing not in SPACINGS:
        raise ValueError(f"unknown timestep_spacing {spacing!r}; choose one of {SPACINGS}")
    if spacing == "linspace":
        ts = np.linspace(0, T - 1, N).round()[::-1].astype(np.int64)
    elif spacing == "leading":
        ts = (np.arange(0, N) * (T // N)).round()[::-1].astype(np.int64) + int(steps_offset)
    else:
        # arange(T, 0, -T/N) has ceil(T / (T/N)) points: N + 1 where T / (T/N) rounds above N, the extra one ~0.
        ts = np.round(np.arange(T, 0, -T / N)[:N]).astype(np.int64) - 1
    return _checked(ts, T, N, spacing, steps_offset)


def _checked(ts: np.ndarray, T: int, N: int, spacing: str, steps_offset: int) -> np.ndarray:
    """``ts`` if it holds N strictly decreasing timesteps within [0, T-1], else ``ValueError`` naming the cause."""
    ts = np.ascontiguousarray(ts)
    if ts.size != N or ts.min() < 0 or ts.max() > T - 1 or (np.diff(ts) >= 0).any():
        raise ValueError(
            f"timestep_spacing={spacing!r} with steps_offset={steps_offset} gives timesteps outside [0, {T - 1}] "
            f"or repeated for {N} steps (first {ts[0]}, last {ts[-1]}); choose fewer steps or another spacing"
        )
    return ts


def multistep_timesteps(
    num_train_timesteps: int, num_inference_steps: int | None = None, spacing: str = "leading", steps_offset: int = 0
) -> np.ndarray:
    """The descending int64 timesteps ``[N]`` of diffusers' multistep solvers (``DPMSolverMultistepScheduler``,
    ``UniPCMultistepScheduler``): N + 1 points with the last (t = 0, or the offset) dropped, since their final
    step goes to sigma = 0 (or sigma_min) on its own:

    - ``leading``: ``arange(N + 1) * (T // (N + 1))`` reversed, the last dropped, plus ``steps_offset``
      (T = 1000, N = 20: 940, 893, ..., 47);
    - ``linspace``: ``round(linspace(0, T - 1, N + 1))`` reversed, the last dropped (999, 949, ..., 50);
    - ``trailing``: the same as :func:`inference_timesteps` (999, 949, ..., 49).

    ``None`` visits every step T-1..0. ``ValueError`` where the rule leaves [0, T-1] or repeats a timestep
    (``leading`` needs N + 1 <= T). diffusers' ``lambda_min_clipped`` (default -inf, absent from DDPM configs) is
    not applied.
    """
    T = int(num_train_timesteps)
    if num_inference_steps is None or spacing == "trailing":
        return inference_timesteps(T, num_inference_steps, spacing, steps_offset)
    N = num_inference_steps
    if isinstance(N, bool) or not isinstance(N, (int, np.integer)) or not 1 <= N <= T:
        raise ValueError(f"num_inference_steps must be an integer in [1, {T}], got {num_inference_steps!r}")
    N = int(N)
    if spacing == "linspace":
        ts = np.linspace(0, T - 1, N + 1).round()[::-1][:-1].astype(np.int64)
    elif spacing == "leading":
        ts = (np.arange(0, N + 1) * (T // (N + 1))).round()[::-1][:-1].astype(np.int64) + int(steps_offset)
    else:
        raise ValueError(f"unknown timestep_spacing {spacing!r}; choose one of {SPACINGS}")
    return _checked(ts, T, N, spacing, steps_offset)


def karras_timesteps(
    alphas_cumprod, num_inference_steps: int, spacing: str = "leading", steps_offset: int = 0, rho: float = 7.0
) -> tuple[np.ndarray, np.ndarray]:
    """The Karras et al. (2022, eq. 5) noise levels of diffusers' ``EulerDiscreteScheduler`` /
    ``HeunDiscreteScheduler`` with ``use_karras_sigmas=True``: (fractional timesteps ``[N]`` float64, VE sigmas
    ``[N]`` float64), both descending.

    The VE sigma of timestep t is sqrt((1 - abar_t) / abar_t). As diffusers: the N spacing timesteps (``leading``
    and ``trailing`` as :func:`inference_timesteps`; ``linspace`` unrounded ``linspace(0, T - 1, N)``) give
    sigma_max and sigma_min (sigma linearly interpolated there); the N sigmas are
    ``(sigma_max^(1/rho) + i / (N - 1) (sigma_min^(1/rho) - sigma_max^(1/rho)))^rho``, and each one's timestep is
    its position in the log-sigma table, interpolated linearly (what the model is called with).
    """
    abar = np.asarray(alphas_cumprod, dtype=np.float64)
    T = abar.size
    N = num_inference_steps
    if isinstance(N, bool) or not isinstance(N, (int, np.integer)) or not 1 <= N <= T:
        raise ValueError(f"num_inference_steps must be an integer in [1, {T}], got {num_inference_steps!r}")
    if spacing == "linspace":
        ts = np.linspace(0, T - 1, int(N))[::-1]
    else:
        ts = inference_timesteps(T, int(N), spacing, steps_offset).astype(np.float64)
    sigmas_all = np.sqrt((1 - abar) / abar)
    if not np.isfinite(sigmas_all).all():
        raise ValueError("Karras sigmas need abar_t > 0 at every t (a zero terminal SNR schedule has sigma = inf)")
    ends = np.interp(ts[[0, -1]], np.arange(T), sigmas_all)
    ramp = np.linspace(0, 1, int(N))
    hi, lo = ends[0] ** (1 / rho), ends[1] ** (1 / rho)
    sigmas = (hi + ramp * (lo - hi)) ** rho
    return sigma_to_t(sigmas, sigmas_all), sigmas


def sigma_to_t(sigmas, sigmas_all) -> np.ndarray:
    """The fractional timestep of each VE sigma: its place in ``log(sigmas_all)`` ``[T]`` (increasing in t),
    linearly interpolated and clamped to [0, T - 1] (diffusers' ``_sigma_to_t``; its inverse is
    :func:`t_to_sigma`)."""
    log_all = np.log(np.asarray(sigmas_all, dtype=np.float64))
    return np.interp(np.log(np.maximum(np.asarray(sigmas, dtype=np.float64), 1e-10)), log_all, np.arange(log_all.size))


def t_to_sigma(timesteps, sigmas_all) -> np.ndarray:
    """The VE sigma at (fractional) timesteps: log sigma interpolated linearly between the integer timesteps."""
    log_all = np.log(np.asarray(sigmas_all, dtype=np.float64))
    return np.exp(np.interp(np.asarray(timesteps, dtype=np.float64), np.arange(log_all.size), log_all))
