"""Reverse-process samplers behind one protocol (:class:`Sampler`), one registry and one loop.

Adding a sampler is one module: a :class:`Sampler` subclass with its facts (label, deterministic or not, network
evaluations per step, the diffusers scheduler it equals), its timesteps, its tables and its tensor-only step,
registered in ``SAMPLERS`` below. The plain loops, the fast path, the Space and the CLIs all take their choices
from here.
"""

from __future__ import annotations

from .base import Plan, Sampler
from .ddim import DDIM
from .ddpm import DDPM
from .dpm_solver import DPMSolverPP2M
from .dpm_solver_3m import DPMSolverPP3M
from .dpm_solver_sde import DPMSolverPP2MSDE
from .euler_karras import EulerKarras
from .heun_karras import HeunKarras
from .loop import sample_loop_progressive
from .unipc import UniPC

#: name -> sampler, in the order a UI lists them
SAMPLERS: dict[str, Sampler] = {
    s.name: s
    for s in (
        DDPM(),
        DDIM(),
        DPMSolverPP2M(),
        DPMSolverPP3M(),
        DPMSolverPP2MSDE(),
        UniPC(),
        EulerKarras(),
        HeunKarras(),
    )
}


def get_sampler(name: str) -> Sampler:
    """The registered sampler ``name``; ``ValueError`` naming the choices for anything else."""
    if not isinstance(name, str) or name not in SAMPLERS:
        raise ValueError(f"unknown sampler {name!r}; choose one of {', '.join(SAMPLERS)}")
    return SAMPLERS[name]


__all__ = [
    "DDIM",
    "DDPM",
    "DPMSolverPP2M",
    "DPMSolverPP2MSDE",
    "DPMSolverPP3M",
    "EulerKarras",
    "HeunKarras",
    "SAMPLERS",
    "Plan",
    "Sampler",
    "UniPC",
    "get_sampler",
    "sample_loop_progressive",
]
