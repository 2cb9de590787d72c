"""The CPU shared by cost, not by job count: a request's cost known before it runs, a cap on it, and turns.

gradio runs a concurrency group's jobs in arrival order, each to its end. On a 2-core Space one visitor's two
1000-step requests then hold every other visitor for minutes. Here instead:

- **a cost before running**: a request's cost is the network's floating-point work, ``evaluations x batch x
  flops of one evaluation`` (:func:`evaluation_gflop`, counted once per model on the meta device, without
  computing anything). On a CPU one request may cost at most ``MAX_REQUEST_GFLOP``; a costlier one is refused at
  once with a message saying what fits.
- **turns by cost**: every job that computes (sampling, the 2D lab's training and sampling) runs its network
  evaluations in turns of the one CPU (:class:`FairShare`). A free CPU goes to the waiting job whose visitor has
  used the least CPU time, so visitors share it equally whatever number of jobs each sends, and a new visitor's
  first step waits for at most one step of each visitor already running (a fraction of a second for the bundled
  model), not for whole requests.
- **no work for visitors who left**: a job whose visitor closed the page stops at its next turn.
"""

from __future__ import annotations

import functools
import itertools
import threading
import time
from collections.abc import Callable

import torch

#: The most a request may cost on a CPU, in GFLOP of network work: about 10x the Sample tab's default (DDPM, 100
#: steps, 8 digits of the bundled model: 302 GFLOP, about 10 s on a 2-core CPU). With the bundled model it admits 8
#: images at all 1000 steps or 16 at 500, not 16 at 1000; with google/ddpm-cifar10-32 (12 GFLOP an evaluation) about
#: 250 evaluations of one image.
MAX_REQUEST_GFLOP = 3200.0


@functools.lru_cache(maxsize=16)
def _gflop_of_config(config_items: tuple) -> float:
    from diffusers import UNet2DModel
    from torch.utils.flop_counter import FlopCounterMode

    config = dict(config_items)
    with torch.device("meta"):  # shapes only: no memory, no arithmetic
        unet = UNet2DModel.from_config(config).eval()
        side = config["sample_size"]
        side = side if isinstance(side, int) else side[0]
        x = torch.empty(1, config["in_channels"], side, side)
        with FlopCounterMode(display=False) as counter, torch.no_grad():
            unet(x, torch.tensor([1]))
    return counter.get_total_flops() / 1e9


def evaluation_gflop(unet) -> float:
    """GFLOP of one network evaluation of ``unet`` (a diffusers ``UNet2DModel``) on one image, counted on the meta
    device (the operators' flop formulas over the shapes of one forward pass)."""
    config = {k: tuple(v) if isinstance(v, list) else v for k, v in dict(unet.config).items() if not k.startswith("_")}
    return _gflop_of_config(tuple(sorted(config.items())))


def request_gflop(unet, evaluations: int, batch: int = 1) -> float:
    """What a request costs: ``evaluations`` network evaluations of ``batch`` images."""
    return evaluations * batch * evaluation_gflop(unet)


def check_cost(unet, evaluations: int, batch: int = 1, on_cpu: bool = True) -> float:
    """The request's cost in GFLOP; on a CPU, a ``ValueError`` if it is over ``MAX_REQUEST_GFLOP``."""
    cost = request_gflop(unet, evaluations, batch)
    if on_cpu and cost > MAX_REQUEST_GFLOP:
        per_image = MAX_REQUEST_GFLOP / (evaluations * evaluation_gflop(unet))
        fits = f"at most {int(per_image)} image(s) at this step count" if per_image >= 1 else "fewer steps"
        raise ValueError(
            f"This request would cost {cost:,.0f} GFLOP ({evaluations} network evaluations x {batch} image(s)); "
            f"on this CPU one request may cost at most {MAX_REQUEST_GFLOP:,.0f}: choose {fits}"
        )
    return cost


class Cancelled(Exception):
    """The visitor who asked for a job is no longer there: it stops at its next turn."""


class FairShare:
    """Turns of one compute resource among visitors, the least-served visitor first.

    Each visitor has a virtual time, the seconds of turns its jobs have held. When the resource is free, the
    waiting job whose visitor has the smallest virtual time gets it (the earlier arrival between jobs of one
    visitor). A visitor who starts after a pause begins at the smallest virtual time of those running, so that
    idle time is not saved up as credit.
    """

    def __init__(self):
        self._cv = threading.Condition()
        self._owner: Job | None = None
        self._waiting: list[Job] = []
        self._vtime: dict[str, float] = {}
        self._jobs: dict[str, int] = {}  # visitor -> open jobs
        self._seq = itertools.count()
        self.stats = {"turns": 0, "cancelled": 0}

    def job(self, visitor: str, stop: Callable[[], bool] | None = None) -> Job:
        """A job of ``visitor``; ``stop()`` returning True (the visitor left) cancels it at its next turn."""
        with self._cv:
            if visitor not in self._vtime:
                running = [self._vtime[v] for v in self._jobs if self._jobs[v] > 0]
                self._vtime[visitor] = min(running, default=0.0)
            self._jobs[visitor] = self._jobs.get(visitor, 0) + 1
        return Job(self, visitor, stop)

    def _acquire(self, job: Job) -> None:
        with self._cv:
            job.seq = next(self._seq)
            self._waiting.append(job)
            try:
                while self._owner is not None or self._next() is not job:
                    self._cv.wait(timeout=0.25)
                    if job.stop is not None and job.stop():
                        self.stats["cancelled"] += 1
                        raise Cancelled("the visitor left")
            finally:
                self._waiting.remove(job)
            self._owner, job.since = job, time.perf_counter()
            self.stats["turns"] += 1

    def _next(self) -> Job | None:
        return min(self._waiting, key=lambda j: (self._vtime[j.visitor], j.seq), default=None)

    def _release(self, job: Job) -> None:
        with self._cv:
            if self._owner is job:
                self._vtime[job.visitor] += time.perf_counter() - job.since
                self._owner = None
                self._cv.notify_all()

    def _close(self, job: Job) -> None:
        self._release(job)
        with self._cv:
            self._jobs[job.visitor] -= 1
            if self._jobs[job.visitor] <= 0:  # no credit or debt is kept for visitors with nothing running
                del self._jobs[job.visitor], self._vtime[job.visitor]


class Job:
    """One request's claim on the shared resource: ``turn()`` before each unit of work (it keeps the resource
    until the next ``turn()`` or ``pause()``), ``pause()`` while waiting on anything else; a context manager that
    gives the resource back at its end."""

    def __init__(self, share: FairShare, visitor: str, stop: Callable[[], bool] | None):
        self.share, self.visitor, self.stop = share, visitor, stop
        self.seq, self.since = 0, 0.0

    def turn(self) -> None:
        """Give the resource up (other visitors' jobs may go first), then wait for it; ``Cancelled`` if the
        visitor left."""
        self.share._release(self)
        if self.stop is not None and self.stop():
            self.share.stats["cancelled"] += 1
            raise Cancelled("the visitor left")
        self.share._acquire(self)

    def pause(self) -> None:
        self.share._release(self)

    def steps(self, iterable):
        """``iterable``'s items, each computed in a turn of its own (``next()`` is the unit of work)."""
        iterator = iter(iterable)
        while True:
            self.turn()
            try:
                item = next(iterator)
            except StopIteration:
                self.pause()
                return
            self.pause()
            yield item

    def gate(self, fn: Callable) -> Callable:
        """``fn`` with a turn taken before each call (for a network called once per sampling step)."""

        @functools.wraps(fn)
        def gated(*args, **kwargs):
            self.turn()
            return fn(*args, **kwargs)

        return gated

    def __enter__(self) -> Job:
        return self

    def __exit__(self, *exc) -> None:
        self.share._close(self)


CPU = FairShare()
