"""The fast sampling path: a prepared UNet and a reverse loop on static buffers, replayed as one CUDA graph per step.

Where the time goes (bench/RESULTS.md): on a GPU at small batch the eager loop waits on
Python launching the step's hundreds of kernels one by one, so the whole step (UNet, eq. 15 -> eq. 7 posterior update, noise) is
captured once as a CUDA graph on static buffers and replayed per step; the UNet inside is channels_last, in half
precision, optionally compiled with ``torch.compile``. On a CPU the UNet is channels_last and, by default, a
frozen TorchScript trace (oneDNN with pre-packed weights): the same numbers, ~10% faster than eager channels_last
on the bundled model.

The step itself is the sampler's own ``step`` (:mod:`ddpm_core.samplers`), the very code of the plain loop: the fast
loop differs only in where tensors live. Every stage falls back to the one below when it cannot run (no CUDA, no
compiler, a trace that does not match, a capture that fails), and says why in ``FastLoop.path``.

A loop is built on its first use, and its set-up (trace, compilation, capture) is paid by that caller, unless the
caller asks ``fast_loop`` for an ``upgrade``: then it runs its quick mode and the upgraded loop is built by a
background thread (:data:`UPGRADES`) for the callers after it: how a GPU Space compiles without a visitor waiting.
"""

from __future__ import annotations

import json
import logging
import threading
import time
import warnings
from collections import OrderedDict
from typing import Callable, Iterator, Sequence

import torch

from .diffusion import GaussianDiffusion
from .samplers import get_sampler
from .samplers.loop import plain_timestep
from .tensors import StepOutput, call_model

log = logging.getLogger(__name__)

_lock = threading.RLock()


def _store(unet: torch.nn.Module) -> dict:
    """Per-model cache of prepared variants, kept on the module itself so that it dies with the model
    (an id()-keyed global would hand a new model the prepared copy of a collected one)."""
    store = unet.__dict__.get("_ddpm_fast")
    if store is None:
        store = unet.__dict__["_ddpm_fast"] = {"loops": OrderedDict()}
    return store


def channels_last(unet: torch.nn.Module) -> torch.nn.Module:
    """Switch ``unet`` to channels_last once, in place (faster oneDNN / tensor-core convolutions); returns it."""
    with _lock:
        store = _store(unet)
        if not store.get("channels_last"):
            unet.to(memory_format=torch.channels_last)
            store["channels_last"] = True
    return unet


class _Returning(torch.nn.Module):
    """``unet(x, t)`` -> tensor (tracing needs a tensor output, not diffusers' dataclass)."""

    def __init__(self, unet: torch.nn.Module):
        super().__init__()
        self.unet = unet

    def forward(self, x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        return self.unet(x, t, return_dict=False)[0]


def frozen_unet(unet: torch.nn.Module, sample_shape: Sequence[int]) -> Callable:
    """The CPU fast UNet: channels_last, traced and frozen by TorchScript; falls back to the eager module.

    The trace is checked once against the eager module on a batch of 2 at ``sample_shape`` (C, H, W) and is
    used for any batch size (the traced sizes are symbolic; tests check other batches). Cached per model.
    """
    with _lock:
        store = _store(unet)
        if "frozen" not in store:
            store["frozen"], store["frozen_reason"] = _freeze(channels_last(unet), tuple(sample_shape))
        return store["frozen"]


def _freeze(unet: torch.nn.Module, sample_shape: tuple[int, ...]) -> tuple[Callable, str]:
    p = next(unet.parameters())
    if p.device.type != "cpu" or not hasattr(unet, "config"):
        return unet, "eager (frozen TorchScript is the CPU path)"
    g = torch.Generator().manual_seed(0)
    x = torch.randn((2, *sample_shape), generator=g).to(p.dtype).contiguous(memory_format=torch.channels_last)
    t = torch.tensor([999, 1])
    try:
        with torch.no_grad(), warnings.catch_warnings():
            warnings.simplefilter("ignore")  # TracerWarnings about shape-dependent Python branches (checked below)
            traced = torch.jit.freeze(torch.jit.trace(_Returning(unet).eval(), (x, t), check_trace=False))
            want, got = call_model(unet, x, t), traced(x, t)
            got3 = traced(torch.cat([x, x[:1]]), torch.cat([t, t[:1]]))
    except Exception as e:  # an exotic block that does not trace: eager is always right
        return unet, f"eager (TorchScript trace failed: {type(e).__name__})"
    scale = float(want.abs().max()) + 1.0
    if (
        got.shape != want.shape
        or got3.shape[0] != 3
        or not (
            torch.allclose(got, want, rtol=0, atol=1e-4 * scale)
            and torch.allclose(got3[:2], want, rtol=0, atol=1e-4 * scale)
        )
    ):
        return unet, "eager (the TorchScript trace did not match the module)"
    return traced, "frozen TorchScript"


def compiled(unet: torch.nn.Module) -> Callable:
    """``torch.compile`` of the channels_last UNet (inductor), cached per model; eager where compiling is unavailable."""
    with _lock:
        store = _store(unet)
        if "compiled" not in store:
            try:
                store["compiled"] = torch.compile(channels_last(unet))
            except Exception as e:  # no compiler toolchain or unsupported platform
                log.warning("torch.compile unavailable (%s); using the eager UNet", e)
                store["compiled"] = channels_last(unet)
        return store["compiled"]


def default_mode(device: torch.device, compile: bool = False) -> str:
    """``graph`` on CUDA (one CUDA graph per step, eager UNet inside), ``frozen`` (TorchScript) on the CPU; with
    ``compile``, the torch.compile modes: ``compile+graph`` on CUDA, ``compile`` on the CPU.

    A deployment where a graph cannot outlive a request (ZeroGPU attaches a GPU per request) passes ``eager``."""
    if compile:
        return "compile+graph" if torch.device(device).type == "cuda" else "compile"
    return "graph" if torch.device(device).type == "cuda" else "frozen"


MODES = ("eager", "frozen", "compile", "graph", "compile+graph")


class FastLoop:
    """The reverse process for one (model, batch shape, timesteps, sampler) on static buffers.

    Buffers ``[B x C x H x W]``: ``x`` (x_t), ``x_prev`` (x_{t-1}), ``x0`` (clipped x0_hat), ``noise`` (z), all in
    float32 (the UNet alone runs in the model's dtype, e.g. float16: the posterior update of eq. 7 subtracts nearly
    equal terms near t = T, where half precision would lose the digits that matter). ``k`` ``[1]`` is the loop
    position on the device. One step reads x_prev -> x, calls the UNet at the model timestep of step k, applies
    eq. 15 + eq. 7 (DDPM) or eq. 12 (DDIM) and advances k, with no host synchronisation, so that on CUDA the
    whole step is captured once and replayed.

    Noise is drawn into ``noise`` before each step from the caller's generator, exactly as the plain loop draws it
    (same generator, same order, none for the last DDPM step or for DDIM with eta = 0): with the same generator the
    two loops agree to rounding.

    ``mode``: ``eager`` (channels_last), ``frozen`` (CPU: TorchScript), ``compile`` (torch.compile of the UNet),
    ``graph`` / ``compile+graph`` (CUDA graph of the whole step). ``path`` says what actually runs.
    """

    def __init__(
        self,
        diffusion: GaussianDiffusion,
        unet: torch.nn.Module,
        shape: Sequence[int],
        timesteps: Sequence[int],
        sampler: str = "ddpm",
        eta: float = 0.0,
        mode: str | None = None,
    ):
        t0 = time.perf_counter()
        if mode is None:
            mode = default_mode(next(unet.parameters()).device)
        if mode not in MODES:
            raise ValueError(f"unknown fast mode {mode!r}; choose one of {MODES}")
        if len(shape) != 4 or any(int(s) < 1 for s in shape):
            raise ValueError(f"shape must be [B, C, H, W] with positive sizes, got {tuple(shape)}")
        p = next(unet.parameters())
        self.device, self.model_dtype = p.device, p.dtype
        self.shape = tuple(int(s) for s in shape)
        dev, f32 = self.device, torch.float32
        self.sampler = get_sampler(sampler) if isinstance(sampler, str) else sampler
        # per-position tables (the respaced index, the model's timestep, the sampler's coefficients) on the device
        self.plan = self.sampler.plan(diffusion, timesteps, dev, f32, eta)
        self.timesteps, self.noise_steps = self.plan.timesteps, self.plan.noise_steps
        self.x = torch.zeros(self.shape, device=dev, dtype=f32).contiguous(memory_format=torch.channels_last)
        self.x_prev = torch.zeros_like(self.x)
        self.x0 = torch.zeros_like(self.x)
        # contiguous on purpose: normal_ fills memory in order, so only an NCHW buffer draws the values randn draws
        self.noise = torch.zeros(self.shape, device=dev, dtype=f32)
        self.k = torch.zeros(1, dtype=torch.long, device=dev)
        self.state = self.sampler.init_state(self.plan, self.x)  # a multistep sampler's history: static buffers too
        self.graph = None
        self.busy = False  # a run (or a fast_loop() caller about to run) holds the buffers
        self.reserved = False
        self.runs = 0
        self.built_ahead = False  # built in the background (UPGRADES): no request waited on its set-up
        self.fallback: str | None = None  # why a stage of ``mode`` did not run (None: all did)
        self.mode = mode
        self.path = self._prepare(unet, mode)
        self.setup_seconds = time.perf_counter() - t0  # trace / compile / capture: what the first run waited for

    # ------------------------------------------------------------------ preparation
    def _prepare(self, unet: torch.nn.Module, mode: str) -> str:
        """Prepare ``mode``'s stages, each falling back to the one below when it cannot run; returns the path that
        runs (``self.fallback`` says why a stage did not, None when all did)."""
        if mode == "frozen":
            self.unet = frozen_unet(unet, self.shape[1:])
            path = _store(unet)["frozen_reason"]
            self.fallback = None if path == "frozen TorchScript" else path
            return path
        if mode.startswith("compile"):
            self.unet = self._compiled(unet, graph=mode.endswith("graph"))
        else:
            self.unet = channels_last(unet)
        path = self.fallback or ("torch.compile" if mode.startswith("compile") else "eager channels_last")
        if not mode.endswith("graph"):
            return path
        if self.device.type != "cuda":
            self.fallback = self.fallback or "no CUDA graph: not a CUDA device"
            return f"{path} (no CUDA graph: not a CUDA device)"
        try:
            self._capture(_store(unet))
            return f"{path}, one CUDA graph per step"
        except Exception as e:  # capture is not possible for this model/runtime: run the same step eagerly
            log.warning("CUDA graph capture failed (%s: %s); running the step eagerly", type(e).__name__, e)
            self.graph = None
            torch.cuda.synchronize(self.device)
            self.fallback = f"CUDA graph capture failed: {type(e).__name__}"
            return f"{path} ({self.fallback})"

    def _compiled(self, unet: torch.nn.Module, graph: bool) -> Callable:
        """The compiled UNet after one trial step, so that compilation is set-up and a compiler error (no C
        compiler, an unsupported op) falls back here instead of failing a request's first step; the trial runs in
        the grad mode of the later calls (the capture's, or run()'s) so as not to compile twice."""
        self.unet = compiled(unet)
        try:
            with torch.no_grad() if graph else torch.inference_mode():
                self._body()
            self.k.zero_()
            return self.unet
        except Exception as e:  # the eager UNet computes the same step
            log.warning("torch.compile failed (%s: %s); running the eager UNet", type(e).__name__, e)
            self.fallback = f"eager channels_last (torch.compile failed: {type(e).__name__})"
            return channels_last(unet)

    def _capture(self, store: dict) -> None:
        pool = store.get("graph_pool")
        if pool is None:
            pool = store["graph_pool"] = torch.cuda.graph_pool_handle()  # graphs of one model run one at a time
        stream = torch.cuda.Stream(self.device)
        stream.wait_stream(torch.cuda.current_stream(self.device))
        with torch.cuda.stream(stream), torch.no_grad():
            for _ in range(3):  # warm-up off the default stream (compilation, cuDNN/cuBLAS autotuning, workspaces)
                self.k.zero_()
                self._body()
        torch.cuda.current_stream(self.device).wait_stream(stream)
        graph = torch.cuda.CUDAGraph()
        self.k.zero_()
        # thread_local: on a Space two requests run at once, and the other one's host copies and allocations
        # during this capture are legal (the default, global, fails them or this capture); inductor does the same
        with torch.no_grad(), torch.cuda.graph(graph, pool=pool, capture_error_mode="thread_local"):
            self._body()
        self.graph = graph

    # ------------------------------------------------------------------ the step
    def _body(self) -> None:
        """x <- x_prev; (x_prev, x0) <- step k; k <- k + 1. Device work only: capturable as a CUDA graph."""
        self.x.copy_(self.x_prev)
        t = self.plan.tables["t_model"].index_select(0, self.k).expand(self.shape[0])  # index_select: no .item() sync
        out = call_model(self.unet, self.x.to(self.model_dtype), t).float()
        noise = self.noise if any(self.noise_steps) else None  # one body for every step: samplers mask their own
        x_prev, x0 = self.sampler.step(self.plan, self.k, out, self.x, noise, self.state)
        self.x_prev.copy_(x_prev)
        self.x0.copy_(x0)
        self.k.add_(1)

    def release(self) -> None:
        """Give back a loop that :func:`fast_loop` reserved but that will not be run."""
        with _lock:
            if self.reserved:
                self.busy = self.reserved = False

    def run(self, x_T: torch.Tensor, generator: torch.Generator | None = None) -> Iterator[StepOutput]:
        """Yield a :class:`StepOutput` per step from ``x_T`` ``[B x C x H x W]``.

        The yielded tensors are views of the static buffers, valid until the next step: copy what you keep. The
        last ``prev_sample`` stays valid until this loop runs again.
        """
        if tuple(x_T.shape) != self.shape:
            self.release()
            raise ValueError(f"x_T shape {tuple(x_T.shape)} does not match this loop's {self.shape}")
        with _lock:
            if self.busy and not self.reserved:
                raise RuntimeError("this FastLoop is already running; use fast_loop() to get a free one")
            self.busy, self.reserved = True, False
            self.runs += 1
        try:
            with torch.inference_mode():
                self.x_prev.copy_(x_T)
                self.k.zero_()
                for buffer in self.state.values():
                    buffer.zero_()
            for step, t_orig in enumerate(self.timesteps.tolist()):
                with torch.inference_mode():
                    if self.noise_steps[step]:
                        self.noise.normal_(generator=generator)
                    if self.graph is not None:
                        self.graph.replay()
                    else:
                        self._body()
                yield StepOutput(self.x_prev, self.x0, step, plain_timestep(t_orig), self.x)
        finally:  # also on cancel (GeneratorExit): the buffers are free again
            self.busy = False


def _loop_key(diffusion: GaussianDiffusion, shape, timesteps, sampler, eta, mode) -> tuple:
    return (
        json.dumps(diffusion.to_config(), sort_keys=True, default=str),
        tuple(int(s) for s in shape),
        tuple(float(t) for t in timesteps),
        sampler,
        float(eta),
        mode,
    )


def _take_cached(model_unet: torch.nn.Module, key: tuple) -> FastLoop | None:
    """The cached loop under ``key`` reserved for the caller, or None when there is none or it is running."""
    with _lock:
        loops: OrderedDict = _store(model_unet)["loops"]
        loop = loops.get(key)
        if loop is None or loop.busy:
            return None
        loops.move_to_end(key)
        loop.busy = True  # reserved for this caller; run() keeps it so and frees it at the end
        loop.reserved = True
        return loop


def _cache(model_unet: torch.nn.Module, key: tuple, loop: FastLoop, keep: int, reserve: bool) -> None:
    with _lock:
        loops: OrderedDict = _store(model_unet)["loops"]
        if key not in loops or loops[key].busy is False and loops[key] is not loop:
            loops[key] = loop  # the newest build is cached; a busy twin serves its own caller to the end
            while len(loops) > keep:
                loops.popitem(last=False)
        if reserve:
            loop.busy, loop.reserved = True, True


def fast_loop(
    model_unet: torch.nn.Module,
    diffusion: GaussianDiffusion,
    shape: Sequence[int],
    timesteps: Sequence[int],
    sampler: str = "ddpm",
    eta: float = 0.0,
    mode: str | None = None,
    keep: int = 4,
    upgrade: str | None = None,
) -> FastLoop:
    """A :class:`FastLoop` from the model's cache (built, and on CUDA captured, on first use); ``keep`` per model.

    The loop comes reserved for the caller, who runs it (:meth:`FastLoop.run` frees it at the end) or calls
    :meth:`FastLoop.release`; a concurrent caller with the same settings gets a loop of its own.

    ``upgrade``: a slower-to-build, faster-to-run mode (``compile+graph`` on a GPU). Its loop is built by
    :data:`UPGRADES` in the background, never on the caller's time: callers get it once it is built and free, and
    the ``mode`` loop until then.
    """
    if upgrade is not None and upgrade != mode:
        if upgrade not in MODES:
            raise ValueError(f"unknown fast mode {upgrade!r}; choose one of {MODES}")
        up_key = _loop_key(diffusion, shape, timesteps, sampler, eta, upgrade)
        loop = _take_cached(model_unet, up_key)
        if loop is not None:
            return loop
        with _lock:
            built = up_key in _store(model_unet)["loops"]  # built but running: no twin; this caller goes quick
        if not built:
            UPGRADES.submit(model_unet, up_key, (diffusion, model_unet, shape, timesteps, sampler, eta, upgrade), keep)
    key = _loop_key(diffusion, shape, timesteps, sampler, eta, mode)
    loop = _take_cached(model_unet, key)
    if loop is not None:
        return loop
    # built outside the lock: a capture or compilation takes seconds and must not hold up other models' users
    loop = FastLoop(diffusion, model_unet, shape, timesteps, sampler, eta, mode)
    _cache(model_unet, key, loop, keep, reserve=True)
    return loop


class Upgrades:
    """One background thread that builds upgraded loops (see :func:`fast_loop`), one at a time, in the order asked.

    A key is queued once while pending; a loop later evicted from the cache is built again when asked again. A build
    that fails is logged and not tried again for that model and key; requests keep their quick loop."""

    def __init__(self):
        self._jobs: list = []
        self._cond = threading.Condition(_lock)
        self._busy = False
        self._thread: threading.Thread | None = None

    def submit(self, model_unet: torch.nn.Module, key: tuple, args: tuple, keep: int) -> None:
        with self._cond:
            store = _store(model_unet)
            pending, failed = store.setdefault("upgrades_pending", set()), store.setdefault("upgrades_failed", set())
            if key in pending or key in failed:
                return
            pending.add(key)
            self._jobs.append((model_unet, key, args, keep))
            if self._thread is None or not self._thread.is_alive():
                self._thread = threading.Thread(target=self._work, name="ddpm-fast-upgrades", daemon=True)
                self._thread.start()
            self._cond.notify_all()

    def _work(self) -> None:
        while True:
            with self._cond:
                while not self._jobs:
                    self._busy = False
                    self._cond.notify_all()
                    self._cond.wait()
                job = self._jobs.pop(0)
                self._busy = True
            self._build(*job)
            del job  # the model's weights are not held here until the next job

    def _build(self, model_unet: torch.nn.Module, key: tuple, args: tuple, keep: int) -> None:
        store = _store(model_unet)
        try:
            loop = FastLoop(*args)
            if loop.fallback:  # no better than the quick loop, or worse
                raise RuntimeError(f"{args[-1]} fell back: {loop.path}")
            loop.built_ahead = True
            _cache(model_unet, key, loop, keep, reserve=False)
            log.info("fast path upgraded in the background: %s (%.1f s)", loop.path, loop.setup_seconds)
        except Exception as e:  # noqa: BLE001 - the quick loop keeps serving; say why once
            store["upgrades_failed"].add(key)
            log.warning("background fast-path upgrade failed (%s: %s)", type(e).__name__, e)
        finally:
            with self._cond:
                store["upgrades_pending"].discard(key)

    def wait(self, timeout: float | None = None) -> bool:
        """Block until no build is queued or running (warm-up, tests); False if ``timeout`` passed first."""
        with self._cond:
            return self._cond.wait_for(lambda: not self._jobs and not self._busy, timeout)


#: The process's background builder of upgraded loops.
UPGRADES = Upgrades()
