"""Heun on Karras sigmas against diffusers' HeunDiscreteScheduler(use_karras_sigmas=True): two network evaluations
per step but the last, every evaluation (teacher-forced), whole runs from the same x_T, the random stream and the
fast path (checks and tolerances: sampler_checks, scheduler_reference)."""

import pytest
from sampler_checks import checks

pytestmark = pytest.mark.usefixtures("one_intra_op_thread")
globals().update(checks("heun-karras", 2, True, "HeunDiscreteScheduler"))
