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
    """One sampler's precomputed run: one loop position per network evaluation.

    ``steps`` are the run's N step timesteps (descending original timesteps, fractional for Karras sigmas);
    ``timesteps`` ``[E]`` the timestep of each network evaluation (E = N, or 2N - 1 for Heun, which evaluates
    twice per step but once on the last). ``diffusion`` is the diffusion respaced to ``steps`` (its index
    ``N-1-k`` is loop position ``k``) for the samplers that read it by index; ``tables`` hold per-position
    values ``[E]`` on the run's device (``index`` and ``t_model``, the model's timestep, always);
    ``noise_steps[k]`` says whether position k draws z ~ N(0, I); x_T is drawn as z ~ N(0, I) times ``x_T_scale``
    (diffusers' ``init_noise_sigma`` seen in the variance-preserving variables the loop keeps).
    """

    diffusion: "GaussianDiffusion"
    timesteps: np.ndarray
    tables: dict[str, Tensor] = field(default_factory=dict)
    noise_steps: tuple[bool, ...] = ()
    steps: np.ndarray | None = None
    x_T_scale: float = 1.0

    @property
    def evaluations(self) -> int:
        """Network evaluations of the run (loop positions)."""
        return len(self.timesteps)

    def at(self, name: str, k: Tensor, like: Tensor) -> Tensor:
        """``tables[name]`` at positions ``k`` (``[1]`` or ``[B]``), shaped ``[B, 1, ...]`` to broadcast on ``like``."""
        value = self.tables[name].index_select(0, k.reshape(-1))  # index_select: no host sync, unlike table[k]
        return value.expand(like.shape[0]).reshape(like.shape[0], *([1] * (like.ndim - 1)))

    def index(self, k: Tensor, batch: int) -> Tensor:
        """The respaced diffusion's timestep indices ``[B]`` at loop position ``k`` ``[1]``."""
        return self.tables["index"].index_select(0, k.reshape(-1)).expand(batch)


class Sampler:
    """Base of every sampler. Subclasses set the facts below and implement :meth:`tables`, :meth:`noise_steps`
    and :meth:`step` (and :meth:`init_state` when they keep a history, :meth:`timesteps` when their diffusers
    scheduler chooses its timesteps its own way)."""

    #: the registry key (the CLIs' and the API's value)
    name = ""
    #: what a UI lists
    label = ""
    #: the label without its parenthesis, for tight places (a plot legend, a preset)
    short_label = ""
    #: the same x_T gives the same images (eta = 0 where the sampler has an eta)
    deterministic = True
    #: network evaluations per step (Heun: 2, except on its last step)
    evaluations_per_step = 1
    #: the diffusers scheduler this sampler equals, and the arguments given to its ``from_config``
    diffusers_class = ""
    diffusers_kwargs: dict = {}
    #: the inference steps a UI or CLI proposes (None: all T)
    default_steps: int | None = 50
    #: steps the Steps compared tab offers, most first (empty: ``default_steps`` alone)
    offered_steps: tuple[int, ...] = ()
    #: order of accuracy as an ODE solver (error per unit time ~ h^order): of two deterministic runs, the
    #: higher order's is the nearer to the exact probability-flow ODE solution at equal steps
    order = 1
    uses_eta = False
    #: timesteps are fractional (the model is called with float32 timesteps, as diffusers does)
    fractional_timesteps = False
    #: abar_{T-1} = 0 (zero terminal SNR) replaced by this, as the diffusers scheduler does (None: kept)
    terminal_abar_floor: float | None = None

    def alphas_cumprod(self, diffusion: "GaussianDiffusion") -> Tensor:
        """The schedule's abar ``[T]`` float64 as this sampler's diffusers scheduler holds it."""
        abar = diffusion.schedule.alphas_cumprod
        return abar if self.terminal_abar_floor is None else abar.clamp(min=self.terminal_abar_floor)

    def __init_subclass__(cls, **kwargs):
        super().__init_subclass__(**kwargs)
        if cls.label and not cls.__dict__.get("short_label"):
            cls.short_label = cls.label.split(" (")[0]

    def is_deterministic(self, eta: float = 0.0) -> bool:
        """Whether a run with this ``eta`` draws no noise after x_T."""
        return self.deterministic and not (self.uses_eta and eta > 0)

    def timesteps(self, diffusion: "GaussianDiffusion", num_inference_steps: int | None = None) -> np.ndarray:
        """The run's N step timesteps, descending, as its diffusers scheduler's ``set_timesteps(N)`` chooses them
        from the model's config (``timestep_spacing``, ``steps_offset``); ``None``: every step T-1..0.
        Here DDPMScheduler's / DDIMScheduler's rule (:func:`ddpm_core.timesteps.inference_timesteps`)."""
        return diffusion.inference_timesteps(num_inference_steps)

    def evaluation_timesteps(self, steps: np.ndarray) -> np.ndarray:
        """The timestep of each network evaluation ``[E]`` of a run over ``steps`` ``[N]`` (one per step here)."""
        return np.asarray(steps)

    def evaluations(self, diffusion: "GaussianDiffusion", num_inference_steps: int | None = None) -> int:
        """Network evaluations of an ``num_inference_steps`` run (what the loop, the tabs and the curve count)."""
        return len(self.evaluation_timesteps(self.timesteps(diffusion, num_inference_steps)))

    def diffusers_scheduler(self, config, **overrides):
        """The matching diffusers scheduler built from a model's scheduler ``config`` (a dict), as a diffusers user
        builds it: ``<diffusers_class>.from_config(config, **diffusers_kwargs)``."""
        import diffusers

        return getattr(diffusers, self.diffusers_class).from_config(dict(config), **self.diffusers_kwargs, **overrides)

    def plan(self, diffusion: "GaussianDiffusion", timesteps, device, dtype=torch.float32, eta: float = 0.0) -> Plan:
        """The precomputed run over the step ``timesteps`` ``[N]`` (strictly descending, within [0, T-1])."""
        ts = np.asarray(timesteps, dtype=np.float64 if self.fractional_timesteps else np.int64)
        if (
            ts.ndim != 1
            or ts.size < 1
            or (np.diff(ts) >= 0).any()
            or ts[-1] < 0
            or ts[0] > diffusion.num_timesteps - 1
        ):
            raise ValueError(f"timesteps must be strictly descending within [0, {diffusion.num_timesteps - 1}]")
        if not 0 <= float(eta) <= 1:
            raise ValueError(f"eta must be in [0, 1], got {eta}")
        evals = np.asarray(self.evaluation_timesteps(ts))
        tables = {
            name: torch.as_tensor(v, dtype=torch.float64).to(device, dtype)
            for name, v in self.tables(diffusion, ts, float(eta)).items()
        }
        if self.fractional_timesteps:
            respaced = diffusion  # read through alpha/sigma tables, never by index
            tables["index"] = torch.zeros(len(evals), dtype=torch.long, device=device)
            tables["t_model"] = torch.as_tensor(evals, dtype=torch.float32, device=device)  # as diffusers calls it
        else:
            respaced = diffusion.respace(ts)
            tables["index"] = torch.arange(len(ts) - 1, -1, -1, dtype=torch.long, device=device)
            tables["t_model"] = torch.as_tensor(evals, dtype=torch.long, device=device)
        noise = tuple(self.noise_steps(ts, float(eta)))
        return Plan(respaced, evals, tables, noise, ts, float(self.x_T_scale(diffusion, ts)))

    def x_T_scale(self, diffusion: "GaussianDiffusion", steps: np.ndarray) -> float:
        """x_T = scale z: diffusers' ``init_noise_sigma`` times the first step's alpha (1 for VP samplers)."""
        return 1.0

    # ------------------------------------------------------------ to implement
    def tables(self, diffusion: "GaussianDiffusion", timesteps: np.ndarray, eta: float) -> dict[str, Tensor]:
        """Per-position coefficients ``[E]`` in float64 (cast once to the run's dtype by :meth:`plan`) for the
        step ``timesteps`` ``[N]``."""
        return {}

    def noise_steps(self, timesteps: np.ndarray, eta: float) -> list[bool]:
        """Per position ``[E]``: does it draw z ~ N(0, I) (in the loop, before the step, as diffusers draws)."""
        return [False] * len(self.evaluation_timesteps(timesteps))

    def init_state(self, plan: Plan, x: Tensor) -> dict[str, Tensor]:
        """History buffers shaped like ``x`` ``[B x C x H x W]`` (none for one-step samplers)."""
        return {}

    def step(
        self, plan: Plan, k: Tensor, model_output: Tensor, x: Tensor, noise: Tensor | None, state: dict[str, Tensor]
    ) -> tuple[Tensor, Tensor]:
        """x_t at loop position ``k`` (``[1]`` long tensor) -> (x_prev, predicted x_0), tensors only."""
        raise NotImplementedError
