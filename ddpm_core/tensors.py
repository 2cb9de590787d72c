"""What every layer of the core shares: noise drawn as diffusers draws it, one model call, one reverse step's output.

Shapes: samples are ``[B x C x H x W]``; timesteps ``[B]``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Sequence

import torch

Tensor = torch.Tensor


@dataclass
class StepOutput:
    """One reverse step: ``x_t`` -> ``prev_sample`` (x_{t-1}), with the model's predicted x_0.

    ``index`` counts the loop's steps from 0; ``timestep`` is the original training timestep t the model saw.
    Tensors are ``[B x C x H x W]``.
    """

    prev_sample: Tensor
    pred_original_sample: Tensor
    index: int = -1
    timestep: int = -1
    x_t: Tensor | None = None


def randn(shape: Sequence[int], generator: torch.Generator | None, device: torch.device, dtype: torch.dtype) -> Tensor:
    """Standard normal noise drawn as diffusers' ``randn_tensor`` draws it (on the generator's device, then moved)."""
    rand_device = generator.device if generator is not None else device
    return torch.randn(tuple(shape), generator=generator, device=rand_device, dtype=dtype).to(device)


def call_model(model: Callable, x: Tensor, timesteps: Tensor) -> Tensor:
    """``model(x [B x C x H x W], timesteps [B])`` -> Tensor; unwraps diffusers' ``.sample`` and tuples."""
    out = model(x, timesteps)
    if hasattr(out, "sample"):
        out = out.sample
    elif isinstance(out, (tuple, list)):
        out = out[0]
    if not isinstance(out, torch.Tensor):
        raise ValueError(f"the model returned {type(out).__name__}, expected a tensor or an object with .sample")
    return out
