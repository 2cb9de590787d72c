"""DPM-Solver++ (2M SDE) against diffusers' DPMSolverMultistepScheduler(algorithm_type="sde-dpmsolver++"): timesteps,
every step (teacher-forced, the same noise), whole runs from the same x_T and noise draws, the random stream (one
draw per step, in diffusers' order) and the fast path (checks and tolerances: sampler_checks,
scheduler_reference)."""

import pytest
from sampler_checks import checks

pytestmark = pytest.mark.usefixtures("one_intra_op_thread")
globals().update(checks("dpmsolver++2m-sde", 1, False, "DPMSolverMultistepScheduler"))
