"""Euler on Karras sigmas against diffusers' EulerDiscreteScheduler(use_karras_sigmas=True): fractional timesteps,
every step (teacher-forced), whole runs from the same x_T, the random stream and the fast path (checks and
tolerances: sampler_checks, scheduler_reference)."""

import pytest
from sampler_checks import checks

pytestmark = pytest.mark.usefixtures("one_intra_op_thread")
globals().update(checks("euler-karras", 1, True, "EulerDiscreteScheduler", zero_snr=True))
