"""The sampler protocol: what one reverse-process sampler provides to the one loop (and to the fast path).

A sampler turns a model output at loop position k into the next sample. It precomputes everything per-position
once, as device tensors (:class:`Plan`), so that a step is tensor work only: no host synchronisation, so that the
fast path can capture it in a CUDA graph. Multistep samplers keep their history in ``state``, a dict of tensors
updated in place (static buffers, again for the graph). The loop draws the noise, with the caller's generator, for
the positions ``plan.noise_steps`` names, in the order diffusers draws it.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import numpy as np
import torch

if TYPE_CHECKING:  # the diffusion is only used through its public methods
    from ..diffusion import GaussianDiffusion

Tensor = torch.Tensor


@dataclass
class Plan:
    """One sampler's precomputed run over ``timesteps`` (descending original timesteps, ``[N]``).

    ``diffusion`` is the diffusion respaced to those timesteps (its index ``N-1-k`` is loop position ``k``);
    ``tables`` hold per-position values ``[N]`` on the run's device (``index`` and ``t_model`` always);
    ``noise_steps[k]`` says whether step k draws z ~ N(0, I).
    """

    diffusion: "GaussianDiffusion"
    timesteps: np.ndarray
    tables: dict[str, Tensor] = field(default_factory=dict)
    noise_steps: tuple[bool, ...] = ()

    def at(self, name: str, k: Tensor, like: Tensor) -> Tensor:
        """``tables[name]`` at positions ``k`` (``[1]`` or ``[B]``), shaped ``[B, 1, ...]`` to broadcast on ``like``."""
        value = self.tables[name].index_select(0, k.reshape(-1))  # index_select: no host sync, unlike table[k]
        return value.expand(like.shape[0]).reshape(like.shape[0], *([1] * (like.ndim - 1)))

    def index(self, k: Tensor, batch: int) -> Tensor:
        """The respaced diffusion's timestep indices ``[B]`` at loop position ``k`` ``[1]``."""
        return self.tables["index"].index_select(0, k.reshape(-1)).expand(batch)


class Sampler:
    """Base of every sampler. Subclasses set ``name``/``label`` and implement :meth:`tables`, :meth:`noise_steps`
    and :meth:`step` (and :meth:`init_state` when they keep a history)."""

    name = ""
    label = ""
    #: the inference steps a UI or CLI proposes (None: all T)
    default_steps: int | None = 50
    uses_eta = False

    def plan(self, diffusion: "GaussianDiffusion", timesteps, device, dtype=torch.float32, eta: float = 0.0) -> Plan:
        ts = np.asarray(timesteps, dtype=np.int64)
        if ts.ndim != 1 or ts.size < 1 or (np.diff(ts) >= 0).any() or ts[-1] < 0 or ts[0] >= diffusion.num_timesteps:
            raise ValueError(f"timesteps must be strictly descending within [0, {diffusion.num_timesteps - 1}]")
        if not 0 <= float(eta) <= 1:
            raise ValueError(f"eta must be in [0, 1], got {eta}")
        n = len(ts)
        tables = {
            name: torch.as_tensor(v, dtype=torch.float64).to(device, dtype)
            for name, v in self.tables(diffusion, ts, float(eta)).items()
        }
        tables["index"] = torch.arange(n - 1, -1, -1, dtype=torch.long, device=device)
        tables["t_model"] = torch.as_tensor(ts, dtype=torch.long, device=device)
        return Plan(diffusion.respace(ts), ts, tables, tuple(self.noise_steps(ts, float(eta))))

    # ------------------------------------------------------------ to implement
    def tables(self, diffusion: "GaussianDiffusion", timesteps: np.ndarray, eta: float) -> dict[str, Tensor]:
        """Per-position coefficients ``[N]`` in float64 (cast once to the run's dtype by :meth:`plan`)."""
        return {}

    def noise_steps(self, timesteps: np.ndarray, eta: float) -> list[bool]:
        return [False] * len(timesteps)

    def init_state(self, plan: Plan, x: Tensor) -> dict[str, Tensor]:
        """History buffers shaped like ``x`` ``[B x C x H x W]`` (none for one-step samplers)."""
        return {}

    def step(
        self, plan: Plan, k: Tensor, model_output: Tensor, x: Tensor, noise: Tensor | None, state: dict[str, Tensor]
    ) -> tuple[Tensor, Tensor]:
        """x_t at loop position ``k`` (``[1]`` long tensor) -> (x_prev, predicted x_0), tensors only."""
        raise NotImplementedError
