"""DPM-Solver++ (3M) against diffusers' DPMSolverMultistepScheduler(algorithm_type="dpmsolver++", solver_order=3):
timesteps, every step (teacher-forced), whole runs from the same x_T, the random stream and the fast path (checks
and tolerances: sampler_checks, scheduler_reference)."""

import pytest
from sampler_checks import checks

pytestmark = pytest.mark.usefixtures("one_intra_op_thread")
globals().update(checks("dpmsolver++3m", 1, True, "DPMSolverMultistepScheduler"))
