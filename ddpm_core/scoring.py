"""Samples scored on the fixed ruler: how they are drawn, and the entries of ``eval.json`` and ``curve.json``.

Each figure is kept with its spread over sampling seeds, so that a difference between two models can be told from
sampling noise. See :mod:`ddpm_core.evaluate` for what the entries mean.
"""

from __future__ import annotations

import math
import time
from pathlib import Path

import numpy as np
import torch

from .classifier import CLASSIFIER_IN_REPO, DigitNet, digits, features, probs
from .metrics import frechet_distance, nearest_distances

#: FDs compare sets of this many feature vectors (the held-out split's size): FD's small-sample bias depends on N.
FD_SET = 500
#: Disjoint sets of ``FD_SET`` digits of the 3,000-digit diffusion split for the real-vs-real reference.
REAL_SETS = 6


def _mean_std(values) -> tuple[float, float]:
    v = np.asarray(values, np.float64)
    return float(v.mean()), float(v.std(ddof=1)) if len(v) > 1 else 0.0


def _r4(v) -> float:
    return round(float(v), 4)


def _r3(v) -> float:
    return round(float(v), 3)


def check_sizes(num: int, seeds: int, batch: int) -> None:
    """Refuse sizes that give no spread, or batch indices past the ``1000 * s + b`` generator-seed scheme."""
    if num < 2 or seeds < 1 or batch < 1:
        raise ValueError(f"need --num >= 2, --seeds >= 1 and --batch >= 1, got {num}, {seeds}, {batch}")
    if (num + batch - 1) // batch > 1000:
        raise ValueError("at most 1000 batches per seed (batch b of seed s uses generator seed 1000 s + b)")


def draw_runs(
    model, seed_list: list[int], num: int, batch: int, sampler: str, steps: int | None
) -> list[torch.Tensor]:
    """``num`` samples ``[num x C x H x W]`` in [-1, 1] per seed of ``seed_list``; batch b of seed s is drawn with
    generator seed ``1000 * s + b``."""
    from .sampling import generate

    runs = []
    for s in seed_list:
        chunks = [
            generate(
                model,
                batch_size=min(batch, num - k),
                seed=1000 * s + k // batch,
                sampler=sampler,
                num_inference_steps=steps,
                n_snapshots=1,
                n_frames=1,
            ).samples
            for k in range(0, num, batch)
        ]
        runs.append(torch.cat(chunks).clamp(-1, 1))
    return runs


def classifier_entries(acc: float, cls_info: dict, classifier: Path | None) -> dict:
    """``eval.json``'s entries on the ruler: its held-out accuracy, file and hash."""
    return {
        "classifier_heldout_accuracy": _r4(acc),
        "classifier_file": (CLASSIFIER_IN_REPO if classifier is None else str(classifier)),
        "classifier_sha256": cls_info["sha256"],
    }


def sampling_entries(model, num: int, seed_list: list[int], sampler: str, steps: int | None) -> dict:
    """``eval.json``'s entries on how the samples were drawn."""
    d = model.diffusion
    return {
        "num_samples": int(num),
        "num_seeds": len(seed_list),
        "sampling_seeds": seed_list,
        "sampler": f"{sampler.upper()} ({d.variance_type}), {steps or d.num_timesteps} steps "
        f"({d.timestep_spacing} spacing), seeds {seed_list[0]}..{seed_list[-1]} x {num} samples "
        f"(batch b of seed s: generator seed 1000 s + b)",
    }


def classification_entries(net: DigitNet, runs: list[torch.Tensor], real: torch.Tensor) -> tuple[dict, np.ndarray]:
    """The confident fraction and the class shares of each run of samples ``[N x 1 x 28 x 28]``, beside the
    confident fraction of the real digits ``real`` ``[M x 1 x 28 x 28]``; also the unrounded mean class shares
    ``[10]``, which the targets are checked on."""
    conf_runs, hist_runs = [], []
    for samples in runs:
        conf, pred = probs(net, samples).max(1)
        conf_runs.append(float((conf >= 0.9).float().mean()))
        hist_runs.append(np.bincount(pred.numpy(), minlength=10) / len(pred))
    real_conf = probs(net, real).max(1).values
    conf_mean, conf_std = _mean_std(conf_runs)
    hist = np.mean(hist_runs, 0)
    hist_std = np.std(hist_runs, 0, ddof=1) if len(hist_runs) > 1 else np.zeros(10)
    entries = {
        "confident_fraction_0.9": _r4(conf_mean),
        "confident_fraction_0.9_std": _r4(conf_std),
        "confident_fraction_0.9_per_seed": [_r4(v) for v in conf_runs],
        "confident_fraction_0.9_real_heldout": _r4((real_conf >= 0.9).float().mean()),
        "class_histogram": [_r4(h) for h in hist],
        "class_histogram_std": [_r4(h) for h in hist_std],
        "class_histogram_per_seed": [[_r4(h) for h in run] for run in hist_runs],
    }
    return entries, hist


def _fd_spread(name: str, values: list[float]) -> dict:
    """FD ``values`` as ``name`` (their mean), ``name_std`` and ``name_runs``."""
    mean, std = _mean_std(values)
    return {name: _r3(mean), f"{name}_std": _r3(std), f"{name}_runs": [_r3(v) for v in values]}


def fd_entries(
    net: DigitNet,
    runs: list[torch.Tensor],
    seed_list: list[int],
    real: torch.Tensor,
    Xd: np.ndarray,
    m: int,
    seed: int,
) -> dict:
    """FDs of sets of ``m`` feature vectors against the first ``m`` real held-out digits ``real``
    ``[M x 1 x 28 x 28]``: the sample runs' sets, disjoint sets of the diffusion split ``Xd`` ``[K x 28 x 28]``
    (uint8, shuffled with ``seed``) and one N(0, I) noise set per sampling seed."""
    from .data import to_model_range

    f_real = features(net, real)[:m]
    perm = np.random.default_rng(seed).permutation(len(Xd))
    fd_real = [
        frechet_distance(features(net, to_model_range(Xd[perm[k * m : (k + 1) * m]])), f_real)
        for k in range(min(REAL_SETS, len(Xd) // m))
    ]
    fd_runs, fd_noise = [], []
    for s, samples in zip(seed_list, runs):
        f_s = features(net, samples)
        fd_runs += [frechet_distance(f_s[k : k + m], f_real) for k in range(0, len(f_s) - m + 1, m)]
        noise = torch.randn(m, 1, 28, 28, generator=torch.Generator().manual_seed(s)).clamp(-1, 1)
        fd_noise.append(frechet_distance(features(net, noise), f_real))
    return {
        "fd_set_size": int(m),
        **_fd_spread("fd_samples_vs_heldout", fd_runs),
        **_fd_spread("fd_real_vs_heldout", fd_real),
        **_fd_spread("fd_noise_vs_heldout", fd_noise),
    }


def memorisation_entry(runs: list[torch.Tensor], Xh: np.ndarray, Xd: np.ndarray) -> dict:
    """Pixel distances from the samples (runs ``[N x 1 x 28 x 28]`` in [-1, 1]) and from the held-out digits ``Xh``
    ``[M x 28 x 28]`` (uint8) to their nearest digits of the diffusion split ``Xd`` ``[K x 28 x 28]`` (uint8)."""
    train01 = Xd.astype(np.float64) / 255.0
    nn_runs = [nearest_distances((samples.numpy()[:, 0].astype(np.float64) + 1) / 2, train01)[0] for samples in runs]
    nn_real = nearest_distances(Xh.astype(np.float64) / 255.0, train01)[0]
    q_real = np.quantile(nn_real, [0.01, 0.05, 0.5])
    nn_all = np.concatenate(nn_runs)
    near_runs = [float((d < q_real[0]).mean()) for d in nn_runs]
    near, near_std = _mean_std(near_runs)
    return {
        "metric": "L2 between 28x28 images, pixels in [0, 1], to the nearest of the diffusion split's digits",
        "num_training_digits": int(len(Xd)),
        "quantiles": [0.01, 0.05, 0.5],
        "samples": [_r4(v) for v in np.quantile(nn_all, [0.01, 0.05, 0.5])],
        "samples_min": _r4(nn_all.min()),
        "real_heldout": [_r4(v) for v in q_real],
        "real_heldout_min": _r4(nn_real.min()),
        "share_samples_below_heldout_q01": _r4(near),
        "share_samples_below_heldout_q01_std": _r4(near_std),
        "share_samples_below_heldout_q01_per_seed": [_r4(v) for v in near_runs],
    }


def targets_met(result: dict, hist: np.ndarray) -> bool:
    """The model card's targets, on the rounded figures of ``result`` and the unrounded class shares ``hist`` [10]."""
    return bool(
        result["confident_fraction_0.9"] >= 0.85
        and min(hist) >= 0.04
        and max(hist) <= 0.20
        and result["fd_samples_vs_heldout"] < 0.25 * result["fd_noise_vs_heldout"]
    )


#: The bundled model's goal: digits as convincing as real ones, on the fixed ruler. Confident rate at least this share
#: of real held-out digits'; FD at most this multiple of real-vs-real; every class share within this range; at most
#: this share of samples nearer a training digit than the held-out digits' 1% quantile (1% for a held-out digit).
AS_REAL = {
    "confident_ratio_min": 0.97,
    "fd_ratio_max": 1.15,
    "class_share_range": [0.07, 0.13],
    "near_share_max": 0.02,
}


def as_real(result: dict, hist: np.ndarray) -> dict:
    """Each figure of :data:`AS_REAL` measured on ``result`` (class shares ``hist`` [10], unrounded), and whether all
    are met."""
    lo, hi = AS_REAL["class_share_range"]
    conf = result["confident_fraction_0.9"] / result["confident_fraction_0.9_real_heldout"]
    fd = result["fd_samples_vs_heldout"] / result["fd_real_vs_heldout"]
    near = result["nearest_training_digit"]["share_samples_below_heldout_q01"]
    checks = {
        "confident": conf >= AS_REAL["confident_ratio_min"],
        "classes": lo <= min(hist) and max(hist) <= hi,
        "fd": fd <= AS_REAL["fd_ratio_max"],
        "not_memorised": near <= AS_REAL["near_share_max"],
    }
    return {
        **AS_REAL,
        "confident_ratio": _r4(conf),
        "fd_ratio": _r4(fd),
        "checks": {k: bool(v) for k, v in checks.items()},
        "met": all(checks.values()),
    }


#: Held-out digits the bound is computed on by default: T network evaluations each (1000 for the bundled model).
BPD_IMAGES = 32


def likelihood_entry(model, images: int = BPD_IMAGES, seed: int = 0, max_batch: int = 250) -> dict:
    """``eval.json``'s ``bits_per_dim``: the bound (DDPM eq. 5) on the first ``images`` held-out digits, in
    bits/dim, as mean ± standard error over the digits, with the mean of each term (L_T, L_0, the sum of the
    L_{t-1}) and what it cost. One x_t per digit and t, drawn from a generator seeded ``seed``."""
    from .data import to_model_range
    from .likelihood import calc_bpd_loop

    Xh, _ = digits("heldout")
    if not 1 <= images <= len(Xh):
        raise ValueError(f"the bound takes 1 .. {len(Xh)} held-out digits, got {images}")
    x0 = to_model_range(Xh[:images]).to(model.device)
    t0 = time.time()
    g = torch.Generator(model.device).manual_seed(seed)
    res = calc_bpd_loop(model.diffusion, model.unet, x0, generator=g, max_batch=max_batch)
    total = res.total_bpd.cpu()
    return {
        "images": images,
        "bits_per_dim": _r4(total.mean()),
        "standard_error": _r4(total.std() / math.sqrt(images)) if images > 1 else None,
        "prior_bpd": float(f"{res.prior_bpd.mean().item():.3g}"),
        "decoder_bpd": _r4(res.decoder_bpd.mean()),
        "terms_bpd": _r4(res.vb_bpd[:, 1:].sum(1).mean()),
        "network_evaluations": images * model.diffusion.num_timesteps,
        "seed": seed,
        "seconds": round(time.time() - t0, 1),
        "device": str(model.device)
        + (f" ({torch.get_num_threads()} thread(s))" if model.device.type == "cpu" else ""),
    }
