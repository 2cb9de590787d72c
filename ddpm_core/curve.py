"""Sample quality against network evaluations, for every sampler: ``curve.json`` and ``curve.png`` of a model.

The Space reads the result with :mod:`ddpm_core.quality` and picks its default setting from it.
"""

from __future__ import annotations

import hashlib
import json
import time
from pathlib import Path

import numpy as np
import torch

from .card import write_curve
from .classifier import CLASSIFIER_SHA256, digits, heldout_accuracy, load_classifier
from .quality import DEFAULT_FD_RATIO, plot_curve, rate_margin
from .samplers import SAMPLERS, get_sampler
from .scoring import FD_SET, check_sizes, classification_entries, classifier_entries, draw_runs, fd_entries

#: Network-evaluation budgets at which every sampler of the curve is drawn.
CURVE_EVALUATIONS = (5, 10, 20, 50, 100)
#: Costlier budgets, drawn for a sampler only while its curve improves (:func:`improving`): a converged sampler's
#: curve is not paid for again. Together they cost most of a curve (each a network evaluation per step per sample).
EXTENDED_EVALUATIONS = (250, 1000)
#: Every sampler of the registry, in its order.
CURVE_SAMPLERS = tuple(SAMPLERS)


def steps_for(diffusion, sampler: str, evaluations: int) -> int | None:
    """The most steps of ``sampler`` whose run costs at most ``evaluations`` network evaluations (Heun: two a step
    but the first), or None where no run of at most T steps fits. Step counts the sampler's timestep rule cannot
    make are skipped (DPM-Solver's 'leading' spacing repeats t = 0 at T steps, as diffusers' does)."""
    s = get_sampler(sampler)
    for n in range(min(int(evaluations), diffusion.num_timesteps), 0, -1):
        try:
            cost = s.evaluations(diffusion, n)
        except ValueError:
            continue
        if cost <= evaluations:
            return n if cost > evaluations // 2 else None
    return None


def curve_points(diffusion, samplers=CURVE_SAMPLERS, budgets=CURVE_EVALUATIONS) -> list[tuple[str, int]]:
    """The (sampler, steps) pairs drawn at each evaluation budget of ``budgets``, for a model's ``diffusion``."""
    pairs = [(s, steps_for(diffusion, s, e)) for s in samplers for e in budgets]
    return list(dict.fromkeys((s, n) for s, n in pairs if n is not None))


def timesteps_digest(diffusion, sampler: str, steps: int) -> str:
    """A short hash of the timesteps a run visits: a point is reused only while its sampler visits the same ones."""
    ts = np.asarray(get_sampler(sampler).timesteps(diffusion, steps), np.float64)
    return hashlib.sha256(ts.tobytes()).hexdigest()[:16]


def _differences(rows: list[dict], margin: float) -> tuple[int, int]:
    """How a sampler's costliest point ``rows`` compares with the one before it, per measure: +1 better (a confident
    rate more than ``margin`` higher; an FD below the other's by more than :data:`DEFAULT_FD_RATIO`), -1 worse, 0
    within what the curve resolves. Returns (rate, FD)."""
    a, b = sorted(rows, key=lambda r: r["evaluations"])[-2:]
    rate = 0 if abs(b["confident"] - a["confident"]) <= margin else (1 if b["confident"] > a["confident"] else -1)
    fd = 0 if max(a["fd"], b["fd"]) <= DEFAULT_FD_RATIO * min(a["fd"], b["fd"]) else (1 if b["fd"] < a["fd"] else -1)
    return rate, fd


def improving(rows: list[dict], margin: float) -> bool:
    """Whether a sampler's costliest point ``rows`` improves on the one before beyond what the curve resolves: better
    in one measure and not worse in the other. A trade (one better, one worse) is not a trend; a worse point is not
    one to pay more for. Decides the :data:`EXTENDED_EVALUATIONS`, which only raise the bar the Space's default is
    held to (:func:`ddpm_core.quality.cheapest_within`), never are the default themselves."""
    if len(rows) < 2:
        return True
    rate, fd = _differences(rows, margin)
    return max(rate, fd) > 0 and min(rate, fd) >= 0


def converged(sampler: str, rows: list[dict], margin: float) -> bool:
    """Whether a deterministic sampler's curve has levelled off: its two costliest points ``rows`` agree within
    what the curve resolves. Its costlier base budgets are then not drawn: an ODE solver's samples converge to the
    ODE's as steps grow. A stochastic sampler is never taken as converged on the base budgets (DDPM's FD still fell
    from 50 to 100 evaluations on the shipped model while its rate did not move)."""
    return SAMPLERS[sampler].deterministic and len(rows) >= 2 and _differences(rows, margin) == (0, 0)


def follow_plan(diffusion, points, measure, samples: int, extend: bool = True, known=frozenset()) -> list[tuple]:
    """Measure the curve's points as the plan says, cheapest first: ``points`` (sampler, steps), minus a
    deterministic sampler's costlier ones once it has levelled off (:func:`converged`), then with ``extend`` each
    sampler at :data:`EXTENDED_EVALUATIONS` while it improves (:func:`improving`). ``measure(sampler, steps)``
    returns a point's row ({"evaluations", "confident", "fd", ...}); ``samples`` per point set the curve's resolution
    (:func:`ddpm_core.quality.rate_margin`); points in ``known`` (already measured) are always kept. Returns the
    (sampler, steps) measured, in the curve's order: ``points``' order, then the extended ones."""
    rows: dict[tuple, dict] = {}

    def margin() -> float:  # read only once a sampler has two points, so never of no points
        return (
            rate_margin({"num_samples": samples, "sampling_seeds": [0], "points": list(rows.values())})
            if rows
            else 0.0
        )

    def mine(sampler: str) -> list[dict]:
        return [r for (s, _), r in rows.items() if s == sampler]

    for sampler, steps in sorted(points, key=lambda p: p[1]):
        if extend and (sampler, steps) not in known and converged(sampler, mine(sampler), margin()):
            continue  # levelled off: not paid for
        rows[(sampler, steps)] = measure(sampler, steps)
    order = [p for p in points if p in rows]
    if extend:
        for budget in EXTENDED_EVALUATIONS:
            for sampler in dict.fromkeys(s for s, _ in points):
                steps = steps_for(diffusion, sampler, budget)
                if steps is not None and ((sampler, steps) in known or improving(mine(sampler), margin())):
                    rows[(sampler, steps)] = measure(sampler, steps)
                    order.append((sampler, steps))
    return order


def _curve_row(net, model, runs, real, Xd, m: int, seed: int, sampler: str, steps: int, seconds: float) -> dict:
    """One point of the curve: the confident fraction and the FD of ``runs`` (one ``[N x 1 x 28 x 28]`` per seed),
    with their spreads over the seeds, the network evaluations and the seconds per image it cost."""
    from .sampling import evaluation_count

    seed_list = list(range(seed, seed + len(runs)))
    classified, _ = classification_entries(net, runs, real)
    fd = fd_entries(net, runs, seed_list, real, Xd, m, seed)
    return {
        "sampler": sampler,
        "steps": int(steps),
        "evaluations": evaluation_count(model.diffusion, steps, sampler=sampler),  # Heun: two a step
        "timesteps": timesteps_digest(model.diffusion, sampler, steps),
        "confident": classified["confident_fraction_0.9"],
        "confident_std": classified["confident_fraction_0.9_std"],
        "fd": fd["fd_samples_vs_heldout"],
        "fd_std": fd["fd_samples_vs_heldout_std"],
        "seconds_per_image": round(seconds / sum(len(r) for r in runs), 5),
        "reference": {
            "confident_real_heldout": classified["confident_fraction_0.9_real_heldout"],
            "fd_real_vs_heldout": fd["fd_real_vs_heldout"],
            "fd_real_vs_heldout_std": fd["fd_real_vs_heldout_std"],
        },
    }


def weights_sha256(folder: Path) -> str:
    """SHA-256 of the UNet's weights file of a pipeline folder: a curve belongs to these weights only."""
    files = sorted((folder / "unet").glob("diffusion_pytorch_model*.safetensors")) or sorted(
        (folder / "unet").glob("*.bin")
    )
    h = hashlib.sha256()
    for f in files:
        h.update(f.read_bytes())
    return h.hexdigest()


def _reusable_rows(path: Path, settings: dict, diffusion) -> dict:
    """The points of an earlier ``curve.json`` made with the same ``settings`` (weights, classifier, sizes, seeds),
    by (sampler, steps), whose sampler still visits the same timesteps: a long curve can be computed over several
    runs, and an interrupted one resumes."""
    try:
        old = json.loads(path.read_text())
    except (OSError, ValueError):
        return {}
    if any(old.get(k) != v for k, v in settings.items()):
        return {}
    return {
        (p["sampler"], p["steps"]): {**p, "reference": old["reference"]}
        for p in old.get("points", [])
        if p["sampler"] in SAMPLERS and p.get("timesteps") == timesteps_digest(diffusion, p["sampler"], p["steps"])
    }


def _curve_result(settings: dict, acc, cls_info, classifier, device: str, rows: list[dict], command: str) -> dict:
    return {
        **classifier_entries(acc, cls_info, classifier),
        **settings,
        "device": device,
        "torch": torch.__version__,
        "reference": rows[0]["reference"],
        "points": [{k: v for k, v in r.items() if k != "reference"} for r in rows],
        "command": command,
    }


def quality_curve(
    folder: Path,
    points: list[tuple[str, int]] | None = None,
    num: int = 500,
    batch: int = 250,
    seed: int = 0,
    seeds: int = 1,
    classifier: Path | None = None,
    log=print,
) -> dict:
    """Sample quality against network evaluations: for each (sampler, steps) of ``points`` (default
    :func:`curve_points`: every sampler at :data:`CURVE_EVALUATIONS`), ``num`` samples per seed drawn as the
    evaluation draws them, their confident-digit rate and their FD to the held-out digits, with the real digits'
    figures as the reference lines. With the default points, a deterministic sampler's costlier budgets are skipped once
    it has levelled off (:func:`converged`), then each sampler is drawn at :data:`EXTENDED_EVALUATIONS` while it
    improves (:func:`improving`). Writes ``curve.json`` (after every point, cheapest first) and
    ``curve.png`` in ``folder``; returns what ``curve.json`` holds. Points already in ``curve.json`` for the same
    weights, classifier, sizes, seeds and timesteps are kept, not drawn again."""
    from .checkpoints import ModelCache
    from .data import to_model_range

    check_sizes(num, seeds, batch)
    folder = Path(folder).resolve()
    net, cls_info = load_classifier(classifier, sha256=None if classifier is not None else CLASSIFIER_SHA256)
    acc = heldout_accuracy(net)
    model = ModelCache(size=1, root=folder.parent).get(folder.name)
    extend = not points
    points = points or curve_points(model.diffusion)
    Xh, _ = digits("heldout")
    Xd, _ = digits("diffusion")
    real = to_model_range(Xh)
    m = min(FD_SET, len(real), num)
    seed_list = list(range(seed, seed + seeds))
    settings = {
        "weights_sha256": weights_sha256(folder),
        "classifier_sha256": cls_info["sha256"],
        "num_samples": int(num),
        "batch": int(batch),
        "sampling_seeds": seed_list,
        "fd_set_size": int(m),
    }
    command = (
        f"python -m ddpm_core.evaluate {_shown(folder)} --curve --num {num} --batch {batch} "
        f"--seeds {seeds} --seed {seed}" + (f" --classifier {classifier}" if classifier is not None else "")
    )
    done = _reusable_rows(folder / "curve.json", settings, model.diffusion)
    order = list(points)  # the rows' order in curve.json; drawn cheapest first

    def drawn(final: bool = True) -> list[dict]:
        # until the run ends, the file also keeps the reusable points not reached yet: a cut run loses none
        rest = [] if final else [r for p, r in done.items() if p not in order]
        return [done[p] for p in order if p in done] + rest

    def draw(sampler: str, steps: int) -> None:
        if (sampler, steps) not in done:
            t0 = time.time()
            runs = draw_runs(model, seed_list, num, batch, sampler, steps)
            r = _curve_row(net, model, runs, real, Xd, m, seed, sampler, steps, time.time() - t0)
            done[(sampler, steps)] = r
            log(
                f"{sampler:>14} {steps:>5} steps: {r['confident']:.1%} confident, FD {r['fd']:.1f} ({r['evaluations']} evals)"
            )
        partial = _curve_result(settings, acc, cls_info, classifier, str(model.device), drawn(False), command)
        (folder / "curve.json").write_text(json.dumps(partial, indent=2) + "\n")

    def measured(sampler: str, steps: int) -> dict:
        draw(sampler, steps)
        return done[(sampler, steps)]

    order[:] = follow_plan(model.diffusion, points, measured, num * seeds, extend, known=set(done))
    result = _curve_result(settings, acc, cls_info, classifier, str(model.device), drawn(), command)
    (folder / "curve.json").write_text(json.dumps(result, indent=2) + "\n")
    plot_curve(result, folder / "curve.png")
    write_curve(folder, result)
    return result


def _shown(folder: Path) -> str:
    """``folder`` as a command line names it: relative to the working directory where it lies below it."""
    try:
        return folder.relative_to(Path.cwd()).as_posix()
    except ValueError:
        return folder.as_posix()
