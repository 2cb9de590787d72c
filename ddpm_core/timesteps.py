"""Which training timesteps an inference run visits (diffusers' ``timestep_spacing``, Lin et al. 2024 Table 2)."""

from __future__ import annotations

import numpy as np

SPACINGS = ("leading", "trailing", "linspace")


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
    ts = np.ascontiguousarray(ts)
    if ts.size != N or ts.min() < 0 or ts.max() > T - 1 or (np.diff(ts) >= 0).any():
        raise ValueError(
            f"timestep_spacing={spacing!r} with steps_offset={steps_offset} gives timesteps outside [0, {T - 1}] "
            f"for {N} steps (first {ts[0]}, last {ts[-1]})"
        )
    return ts
