"""DPM-Solver++ (2M SDE): the second-order multistep SDE solver (Lu et al. 2022, "DPM-Solver++", sec. 5),
stochastic, as ``DPMSolverMultistepScheduler.from_config(config, algorithm_type="sde-dpmsolver++",
solver_order=2)``: each step keeps e^{-h} of the deterministic part's noise and adds fresh noise
sigma_t sqrt(1 - e^{-2h}) z, z drawn from the caller's generator at every step (the last one too, as diffusers
draws it). The update and what this project does on purpose (x0 clipped where the model's config asks) are those
of :mod:`ddpm_core.samplers.dpm_solver`."""

from __future__ import annotations

from .dpm_solver import DPMSolverPP2M


class DPMSolverPP2MSDE(DPMSolverPP2M):
    name = "dpmsolver++2m-sde"
    label = "DPM-Solver++ (2M SDE)"
    short_label = "DPM-Solver++ 2M SDE"
    deterministic = False
    diffusers_kwargs = {"algorithm_type": "sde-dpmsolver++", "solver_order": 2}
    sde = True
    offered_steps = (50, 20)
