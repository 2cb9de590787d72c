"""Sample quality against network evaluations, for every sampler: ``curve.json`` and ``curve.png`` of a model.

The Space reads the result with :mod:`ddpm_core.quality` and picks its default setting from it.
"""

from __future__ import annotations

import hashlib
import json
import time
from pathlib import Path

import torch

from .card import write_curve
from .classifier import CLASSIFIER_SHA256, digits, heldout_accuracy, load_classifier
from .quality import plot_curve
from .scoring import FD_SET, check_sizes, classification_entries, classifier_entries, draw_runs, fd_entries

#: Step counts of the quality curve; each sampler is drawn at those its schedule allows (at most T).
CURVE_STEPS = (5, 10, 20, 50, 100, 250, 1000)
CURVE_SAMPLERS = ("ddpm", "ddim", "dpmsolver++")


def curve_points(num_timesteps: int, samplers=CURVE_SAMPLERS, steps=CURVE_STEPS) -> list[tuple[str, int]]:
    """The (sampler, steps) pairs of the quality curve for a model of ``num_timesteps`` steps."""
    return [(sampler, n) for sampler in samplers for n in steps if n <= num_timesteps]


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


def _reusable_rows(path: Path, settings: dict) -> dict:
    """The points of an earlier ``curve.json`` made with the same ``settings`` (weights, classifier, sizes, seeds),
    by (sampler, steps): a long curve can be computed over several runs, and an interrupted one resumes."""
    try:
        old = json.loads(path.read_text())
    except (OSError, ValueError):
        return {}
    if any(old.get(k) != v for k, v in settings.items()):
        return {}
    return {(p["sampler"], p["steps"]): {**p, "reference": old["reference"]} for p in old.get("points", [])}


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
    :func:`curve_points`), ``num`` samples per seed drawn as :func:`evaluate` draws them, their confident-digit rate
    and their FD to the held-out digits, with the real digits' figures as the reference lines. Writes ``curve.json``
    (after every point, cheapest first) and ``curve.png`` in ``folder``; returns what ``curve.json`` holds. Points
    already in ``curve.json`` for the same weights, classifier, sizes and seeds are kept, not drawn again."""
    from .checkpoints import ModelCache
    from .data import to_model_range

    check_sizes(num, seeds, batch)
    folder = Path(folder).resolve()
    net, cls_info = load_classifier(classifier, sha256=None if classifier is not None else CLASSIFIER_SHA256)
    acc = heldout_accuracy(net)
    model = ModelCache(size=1, root=folder.parent).get(folder.name)
    points = points or curve_points(model.diffusion.num_timesteps)
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
    done = _reusable_rows(folder / "curve.json", settings)
    for sampler, steps in sorted(points, key=lambda p: p[1]):
        if (sampler, steps) not in done:
            t0 = time.time()
            runs = draw_runs(model, seed_list, num, batch, sampler, steps)
            r = _curve_row(net, model, runs, real, Xd, m, seed, sampler, steps, time.time() - t0)
            done[(sampler, steps)] = r
            log(
                f"{sampler:>12} {steps:>5} steps: {r['confident']:.1%} confident, FD {r['fd']:.1f} ({r['evaluations']} evals)"
            )
        rows = [done[p] for p in points if p in done]
        result = _curve_result(settings, acc, cls_info, classifier, str(model.device), rows, command)
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
