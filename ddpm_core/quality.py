"""What the Space needs from a model's quality curve: reading ``curve.json``, the default-setting rule and the
figure. The curve itself is measured by :mod:`ddpm_core.curve`."""

from __future__ import annotations

import json
import math
from pathlib import Path

from .samplers import SAMPLERS

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
                label=SAMPLERS[sampler].short_label if sampler in SAMPLERS else sampler,  # names: any language
            )
        ax.axhline(real, color="grey", linestyle="--", label=text["real"])
        ax.set(xscale="log", xlabel=text["x"], title=text[key])
        ax.title.set_fontsize(9)
        ax.grid(alpha=0.2)
    axes[0].yaxis.set_major_formatter(matplotlib.ticker.PercentFormatter(1.0))
    # FD spans from several hundred (5 evaluations) to near the real digits' figure: on a log axis the points that
    # matter, near the dashed line, are not squeezed together
    axes[1].set_yscale("log")
    axes[1].yaxis.set_major_formatter(matplotlib.ticker.ScalarFormatter())
    axes[1].yaxis.set_minor_formatter(matplotlib.ticker.ScalarFormatter())
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
