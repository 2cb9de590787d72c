"""DDIM as diffusers users meet it: DDIMScheduler.from_config(model config), its previous timestep t - T // N also
where that is not the next timestep run (``linspace``, ``trailing``), every step teacher-forced and whole runs from
the same x_T, and the fast path (checks and tolerances: sampler_checks, scheduler_reference; the rounding-level
comparisons are in test_core_vs_diffusers)."""

import pytest
from sampler_checks import checks

pytestmark = pytest.mark.usefixtures("one_intra_op_thread")
globals().update(checks("ddim", 1, True, "DDIMScheduler"))
