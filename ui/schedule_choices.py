"""The noise-schedule choices the Forward, Schedules and 2D-lab tabs share: the names, the T each allows, the
checked arguments and the cached diffusion."""

from __future__ import annotations

import functools

import gradio as gr

from ddpm_core import SCHEDULES, GaussianDiffusion, NoiseSchedule
from ddpm_core.schedule import min_timesteps
from ui.common import T_MAX, T_MIN, int_arg
from ui.components import short_repr

# the name readers know; diffusers' squaredcos_cap_v2 is the same schedule (the explanations say so)
SCHEDULE_CHOICES = ["cosine" if name == "squaredcos_cap_v2" else name for name in SCHEDULES]


@functools.lru_cache(maxsize=64)
def diffusion(schedule: str, T: int) -> GaussianDiffusion:
    return GaussianDiffusion(NoiseSchedule.make(schedule, T))


def schedule_name(schedule) -> str:
    if not isinstance(schedule, str) or schedule not in SCHEDULE_CHOICES:
        raise ValueError(f"unknown schedule {short_repr(schedule)}; choose one of {', '.join(SCHEDULE_CHOICES)}")
    return schedule


def t_min(schedules) -> int:
    """The smallest T every schedule in ``schedules`` allows (:func:`ddpm_core.schedule.min_timesteps`: 21 for
    linear_improved), and never below the Space's ``T_MIN``."""
    return max([T_MIN, *(min_timesteps(s) for s in schedules)])


def schedule_args(schedule, T) -> tuple[str, int]:
    schedule = schedule_name(schedule)
    lo = t_min([schedule])
    T = int_arg(T, "T", T_MIN, T_MAX)
    if T < lo:
        raise ValueError(f"{schedule} needs T ≥ {lo}: it scales β_end = 0.02 by 1000/T, which must stay below 1")
    return schedule, T


def T_slider_minimum(schedules, T):
    """Keep T within what the chosen schedule(s) allow, before the user can click into an error."""
    schedules = [schedules] if isinstance(schedules, str) else list(schedules or [])
    lo = t_min(schedules)
    value = T if isinstance(T, (int, float)) and not isinstance(T, bool) else T_MAX
    return gr.update(minimum=lo, value=max(lo, min(T_MAX, value)))
