"""DDPM Explorer's diffusion core: noise schedules, the Gaussian diffusion process, loading, sampling, training.

>>> from ddpm_core import NoiseSchedule, GaussianDiffusion
>>> diffusion = GaussianDiffusion(NoiseSchedule.make("linear", 1000), variance_type="fixed_small")
"""

from .config import PREDICTION_TYPES, VARIANCE_TYPES
from .diffusion import GaussianDiffusion
from .schedule import SCHEDULES, NoiseSchedule
from .tensors import StepOutput, call_model
from .timesteps import SPACINGS, inference_timesteps

__all__ = [
    "GaussianDiffusion",
    "NoiseSchedule",
    "StepOutput",
    "call_model",
    "inference_timesteps",
    "PREDICTION_TYPES",
    "SCHEDULES",
    "SPACINGS",
    "VARIANCE_TYPES",
]
