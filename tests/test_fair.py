"""The CPU shared by cost: a request's cost before it runs, and turns of the CPU by visitor (ui.fair)."""

from __future__ import annotations

import threading
import time

import pytest
import torch

from conftest import tiny_unet
from ui.fair import MAX_REQUEST_GFLOP, Cancelled, FairShare, check_cost, evaluation_gflop, request_gflop


def test_the_cost_counted_on_the_meta_device_is_the_real_forward_pass():
    from torch.utils.flop_counter import FlopCounterMode

    unet = tiny_unet(3)
    with FlopCounterMode(display=False) as counter, torch.no_grad():
        unet(torch.randn(1, 3, 8, 8), torch.tensor([1]))
    # the same convolutions and matrix products; on the meta device attention runs as one fused operator whose score
    # products are counted too, which the CPU's path splits into operators the counter leaves out (2% here)
    assert evaluation_gflop(unet) == pytest.approx(counter.get_total_flops() / 1e9, rel=0.05)
    assert request_gflop(unet, 10, 4) == pytest.approx(40 * evaluation_gflop(unet), rel=1e-12)


def test_the_cap_admits_up_to_its_cost_and_no_more():
    unet = tiny_unet(3)
    fits = int(MAX_REQUEST_GFLOP // evaluation_gflop(unet))
    assert check_cost(unet, fits, 1) <= MAX_REQUEST_GFLOP
    with pytest.raises(ValueError, match="at most 1 image"):
        check_cost(unet, fits // 2 + 1, 2)
    with pytest.raises(ValueError, match="fewer steps"):
        check_cost(unet, fits + 1, 1)
    assert check_cost(unet, 10 * fits, 16, on_cpu=False) > MAX_REQUEST_GFLOP  # a GPU is not capped


def _worker(share, visitor, turns, log, seconds=0.01, stop=None, started=None):
    with share.job(visitor, stop) as job:
        for _ in range(turns):
            job.turn()
            log.append((visitor, time.perf_counter()))
            time.sleep(seconds)  # a step's work (sleep releases the GIL, as torch's kernels do)
        job.pause()


def test_a_new_visitor_waits_one_turn_not_for_whole_jobs():
    """Visitor A holds two long jobs; B's job gets its first turn after at most one of A's, and from then on the
    two visitors alternate (equal CPU time, whatever number of jobs A sends)."""
    share, log = FairShare(), []
    a = [threading.Thread(target=_worker, args=(share, "A", 60, log)) for _ in range(2)]
    for th in a:
        th.start()
    time.sleep(0.1)
    asked = time.perf_counter()
    b = threading.Thread(target=_worker, args=(share, "B", 10, log))
    b.start()
    b.join(timeout=10)
    first_b = next(t for v, t in log if v == "B")
    assert first_b - asked < 0.1, first_b - asked  # one turn of A (10 ms) and thread hand-offs
    last_b = max(t for v, t in log if v == "B")
    a_meanwhile = sum(1 for v, t in log if v == "A" and first_b <= t <= last_b)
    assert 5 <= a_meanwhile <= 15, a_meanwhile  # about one turn of A for each of B's ten, not two (A's two jobs)
    for th in a:
        th.join(timeout=10)
    assert [v for v, _ in log].count("A") == 120


def test_a_visitor_who_leaves_is_cancelled_at_its_next_turn_even_while_waiting():
    share, log = FairShare(), []
    gone = threading.Event()
    hog = threading.Thread(target=_worker, args=(share, "A", 40, log, 0.02))
    hog.start()
    time.sleep(0.05)
    errors = []

    def leaver():
        try:
            _worker(share, "B", 1000, log, 0.02, stop=gone.is_set)
        except Cancelled as err:
            errors.append(err)

    th = threading.Thread(target=leaver)
    th.start()
    time.sleep(0.2)
    gone.set()
    th.join(timeout=2)
    assert not th.is_alive() and errors and share.stats["cancelled"] == 1
    hog.join(timeout=10)
    assert [v for v, _ in log].count("B") < 20


def test_idle_time_is_not_saved_up_as_credit():
    """A visitor who comes back after others have run for a while starts level with them, not ahead by all the time
    it was away: it alternates with them at once instead of holding the CPU until it has caught up."""
    share, log = FairShare(), []
    _worker(share, "B", 1, log)  # B ran once, long ago, and left
    a = threading.Thread(target=_worker, args=(share, "A", 40, log))
    a.start()
    time.sleep(0.2)
    b = threading.Thread(target=_worker, args=(share, "B", 10, log))
    b.start()
    b.join(timeout=10)
    a.join(timeout=10)
    after = "".join(v for v, _ in log[1:])
    assert "BBBB" not in after, after  # with its old, small virtual time it would have run all ten turns at once
