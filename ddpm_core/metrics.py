"""Distances between sets of samples: the Fréchet distance between fitted Gaussians and nearest-neighbour L2."""

from __future__ import annotations

import numpy as np


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
