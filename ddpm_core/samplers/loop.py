"""The one reverse loop: any sampler of the registry, from x_T (or a given x_t) down to x_0, step by step.

It draws noise as diffusers does (x_T first when not given, then one draw per step that needs one, from the
caller's generator) and yields a :class:`~ddpm_core.tensors.StepOutput` per step, so that callers can show the
trajectory, report progress or stop early. The fast path (:mod:`ddpm_core.fast`) runs the same ``sampler.step``
on static buffers.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Callable, Iterable, Iterator, Sequence

import torch

from ..tensors import StepOutput, call_model, randn
from .base import Sampler

if TYPE_CHECKING:
    from ..diffusion import GaussianDiffusion


def model_device_dtype(model) -> tuple[torch.device | None, torch.dtype | None]:
    if isinstance(model, torch.nn.Module):
        for p in model.parameters():
            return p.device, p.dtype
    return None, None


def initial_noise(model, shape, noise, generator, device, dtype) -> torch.Tensor:
    """x_T ``[B x C x H x W]``: ``noise`` as given, or drawn on the model's (or the given) device and dtype."""
    m_device, m_dtype = model_device_dtype(model)
    if noise is not None:
        if shape is not None and tuple(shape) != tuple(noise.shape):
            raise ValueError(f"noise shape {tuple(noise.shape)} does not match shape {tuple(shape)}")
        return noise
    device = torch.device(device) if device is not None else (m_device or torch.device("cpu"))
    if shape is None or len(shape) < 2 or any(int(s) < 1 for s in shape):
        raise ValueError(f"shape must be [B, C, ...] with positive sizes, got {shape}")
    return randn(shape, generator, device, dtype or m_dtype or torch.float32)


def plain_timestep(t: float):
    """A timestep as a Python int where it is whole (every sampler but Karras-sigma ones), else a float."""
    return int(t) if float(t).is_integer() else float(t)


def sample_loop_progressive(
    diffusion: "GaussianDiffusion",
    sampler: Sampler,
    model: Callable,
    shape: Sequence[int] | None = None,
    timesteps: Sequence[int] | None = None,
    generator: torch.Generator | None = None,
    noise: torch.Tensor | None = None,
    device: torch.device | str | None = None,
    dtype: torch.dtype | None = None,
    eta: float = 0.0,
) -> Iterator[StepOutput]:
    """Yield a StepOutput after each network evaluation of ``sampler`` over its step ``timesteps`` (descending
    original timesteps, e.g. ``sampler.timesteps(diffusion, N)``): one per step, two for Heun's steps but the
    last. ``StepOutput.index`` counts evaluations, ``StepOutput.timestep`` is the one the model saw."""
    x = initial_noise(model, shape, noise, generator, device, dtype)
    plan = sampler.plan(diffusion, timesteps, x.device, x.dtype, eta)
    if noise is None and plan.x_T_scale != 1.0:
        x = x * plan.x_T_scale  # diffusers' init_noise_sigma (Euler, Heun), in the loop's variables
    state = sampler.init_state(plan, x)
    B = x.shape[0]
    for k, t_orig in enumerate(plan.timesteps.tolist()):
        with torch.inference_mode():  # entered per step: a generator must not leave grad mode off between yields
            pos = torch.full((1,), k, dtype=torch.long, device=x.device)
            out = call_model(model, x, plan.tables["t_model"].index_select(0, pos).expand(B))
            z = randn(x.shape, generator, x.device, x.dtype) if plan.noise_steps[k] else None
            x_prev, x0 = sampler.step(plan, pos, out, x, z, state)
        yield StepOutput(x_prev, x0, k, plain_timestep(t_orig), x)
        x = x_prev


def final_sample(steps: Iterable[StepOutput], callback: Callable[[StepOutput], None] | None = None) -> torch.Tensor:
    """Run a loop of :func:`sample_loop_progressive` to its end; x_0 ``[B x C x H x W]``. ``callback`` sees every
    :class:`StepOutput`."""
    x = None
    for out in steps:
        if callback is not None:
            callback(out)
        x = out.prev_sample
    return x
