"""The 2D lab's figures, drawn with matplotlib (static PNGs through ``gr.Plot``).

matplotlib because the lab needs arrows (the score field), density contours and paths in one axes, which Gradio's
own Vega plots do not draw, and a figure rendered on the server costs the browser nothing however many points it
holds. Every figure uses the same square axes, so that the panels can be compared by eye. A figure's own text is
mathematics only (the same in every language, and in the fonts every server has); words go in the component's
label, which the language switch reaches.
"""

from __future__ import annotations

import math

import numpy as np
import torch
from matplotlib.figure import Figure  # not pyplot: no global registry of figures to leak from a server
from matplotlib.patches import Circle, Ellipse

LIM = 3.2  # every panel shows [-LIM, LIM]^2
DATA_COLOUR, MODEL_COLOUR, TRUE_COLOUR = "#9ca3af", "#4f46e5", "#db2777"
CLASS_COLOURS = ("#4f46e5", "#db2777", "#059669")
LEGEND = {
    "cov": "q(x_t): μ ± 2σ",
    "mix": "q(x_t | k) ± 2σ_t",
    "data": "x₀ ~ p_data",
    "samples": "x₀ ~ p_θ",
    "paths": "x_T → x₀",
    "true": "∇ log q_t(x)",
    "learned": "s_θ(x, t)",
    "x_t": r"$x_t$",
    "x0": r"$x_0$",
    "exact_x0": r"$E[x_0 \mid x_t]$",
    "p_x0": r"$\hat x_0 = f_\theta(x_t)$",
    "q": r"$q(x_s \mid x_t, x_0) \pm 2\sigma$",
    "exact": r"$q(x_s \mid x_t)$",
    "p": r"$p_\theta(x_s \mid x_t) \pm 2\sigma$",
}
#: The clickable panel: its size in pixels and its axes' place in it (fractions, left/bottom/width/height), fixed
#: so that a click's pixel maps to a point without asking matplotlib (:func:`pixel_to_point`).
CLICK_PIXELS, CLICK_AXES = 420, (0.1, 0.08, 0.86, 0.86)


def _axes(title: str, size: float = 4.2):
    fig = Figure(figsize=(size, size), dpi=100)
    ax = fig.subplots()
    ax.set(xlim=(-LIM, LIM), ylim=(-LIM, LIM), aspect="equal")
    ax.set_title(title, fontsize=10)
    ax.tick_params(labelsize=7)
    ax.grid(alpha=0.2)
    fig.tight_layout()
    return fig, ax


def _points(ax, x: torch.Tensor, colour, labels=None, size: float = 2.0, alpha: float = 0.5, label=None) -> None:
    x = x.detach().cpu().numpy()
    if labels is not None:
        colour = [CLASS_COLOURS[int(k) % len(CLASS_COLOURS)] for k in labels.tolist()]
    ax.scatter(x[:, 0], x[:, 1], s=_visible(size, len(x)), c=colour, alpha=alpha, linewidths=0, label=label)


def _visible(size: float, n: int) -> float:
    """A marker area (points²) at which ``n`` points show: a cloud of thousands needs dots, one point a disc."""
    return max(size, 40 / math.sqrt(max(n, 1)))


def data_figure(data: torch.Tensor, labels, title: str):
    """The training points ``[N x 2]`` (coloured by class where labelled)."""
    fig, ax = _axes(title)
    _points(ax, data, MODEL_COLOUR, labels)
    return fig


def forward_figure(x_t: torch.Tensor, mean: torch.Tensor, cov: torch.Tensor, components, title: str):
    """The cloud at t ``[N x 2]``, with the closed-form marginal drawn over it: its mean and 2-sigma ellipse
    (``mean`` [2], ``cov`` [2 x 2]) and, for a Gaussian mixture, each component's 2-sigma circle
    (``components``: (means [K x 2], std) or None)."""
    fig, ax = _axes(title)
    _points(ax, x_t, MODEL_COLOUR)
    vals, vecs = torch.linalg.eigh(cov.double())
    angle = math.degrees(math.atan2(float(vecs[1, 1]), float(vecs[0, 1])))
    w, h = (2 * 2 * vals.clamp(min=0).sqrt()).tolist()[::-1]
    ax.add_patch(Ellipse(mean.tolist(), w, h, angle=angle, fill=False, color=TRUE_COLOUR, lw=1.5, label=LEGEND["cov"]))
    if components is not None:
        means, std = components
        for k, m in enumerate(means.tolist()):
            ax.add_patch(
                Circle(
                    m, 2 * std, fill=False, color=TRUE_COLOUR, lw=0.8, ls="--", label=LEGEND["mix"] if k == 0 else None
                )
            )
    ax.legend(fontsize=7, loc="upper right")
    return fig


def reverse_figure(samples: torch.Tensor, paths, data: torch.Tensor, title: str):
    """Generated points ``[N x 2]`` over the data (grey), their density as contours, and a few whole paths
    ``[S + 1 x K x 2]`` from x_T (open circle) to x_0 (dot)."""
    fig, ax = _axes(title)
    _points(ax, data, DATA_COLOUR, size=1.5, alpha=0.4, label=LEGEND["data"])
    _points(ax, samples, MODEL_COLOUR, size=2.0, alpha=0.5, label=LEGEND["samples"])
    _contour(ax, samples)
    if paths is not None:
        p = paths.detach().numpy()
        for k in range(p.shape[1]):
            ax.plot(
                p[:, k, 0], p[:, k, 1], color=TRUE_COLOUR, lw=0.8, alpha=0.8, label=LEGEND["paths"] if k == 0 else None
            )
            ax.plot(*p[0, k], "o", mfc="none", color=TRUE_COLOUR, ms=4)
            ax.plot(*p[-1, k], "o", color=TRUE_COLOUR, ms=3)
    ax.legend(fontsize=7, loc="upper right", markerscale=3)
    return fig


def _contour(ax, x: torch.Tensor, levels: int = 5) -> None:
    """Density contours of the points ``[N x 2]``: a 60 x 60 histogram smoothed by a small Gaussian kernel."""
    h, xe, ye = np.histogram2d(*x.detach().numpy().T, bins=60, range=[[-LIM, LIM], [-LIM, LIM]], density=True)
    kernel = np.outer(*(2 * [np.exp(-0.5 * (np.arange(-3, 4) / 1.2) ** 2)]))
    smooth = _convolve(h, kernel / kernel.sum())
    centres = (xe[:-1] + xe[1:]) / 2, (ye[:-1] + ye[1:]) / 2
    if smooth.max() > 0:
        ax.contour(*centres, smooth.T, levels=levels, colors=MODEL_COLOUR, linewidths=0.7, alpha=0.8)


def _pixels(fig) -> np.ndarray:
    """The figure rendered, as ``[H x W x 3]`` uint8."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg

    canvas = FigureCanvasAgg(fig)
    canvas.draw()
    return np.asarray(canvas.buffer_rgba())[..., :3].copy()


def pixel_to_point(px: float, py: float) -> tuple[float, float]:
    """The point under pixel (px, py) of the clickable panel (pixels from its top left, as a click reports them)."""
    left, bottom, width, height = CLICK_AXES
    u, v = px / CLICK_PIXELS, 1 - py / CLICK_PIXELS
    return -LIM + 2 * LIM * (u - left) / width, -LIM + 2 * LIM * (v - bottom) / height


def posterior_overview(step, data: torch.Tensor, title: str) -> np.ndarray:
    """The clickable panel ``[H x W x 3]``: the training points (those that could have made x_t darker, by their
    weight q(x_0 | x_t)), x_t, the chosen x_0, E[x_0 | x_t] and the network's guess of x_0 (``step``: a
    :class:`ddpm_core.lab2d.ReverseStep`)."""
    fig = Figure(figsize=(CLICK_PIXELS / 100, CLICK_PIXELS / 100), dpi=100)
    ax = fig.add_axes(CLICK_AXES)
    ax.set(xlim=(-LIM, LIM), ylim=(-LIM, LIM))
    ax.set_title(title, fontsize=10)
    ax.tick_params(labelsize=7)
    ax.grid(alpha=0.2)
    w = (step.weights / step.weights.max()).float().numpy()
    pts = data.float().numpy()
    ax.scatter(pts[:, 0], pts[:, 1], s=_visible(3, len(pts)), c=w, cmap="Greys", vmin=-0.15, vmax=1, linewidths=0)
    xt = step.x_t.numpy()
    for target, colour, marker, key in (
        (step.x0, TRUE_COLOUR, "D", "x0"),
        (step.exact_x0, TRUE_COLOUR, "X", "exact_x0"),
        (step.p_x0, MODEL_COLOUR, "X", "p_x0"),
    ):
        x0 = target.numpy()
        ax.plot([xt[0], x0[0]], [xt[1], x0[1]], color=colour, lw=0.8, alpha=0.6)
        ax.plot(*x0, marker, color=colour, ms=7, mfc="none" if key == "x0" else colour, label=LEGEND[key])
    ax.plot(*xt, "*", color="black", ms=12, label=LEGEND["x_t"])
    ax.legend(fontsize=7, loc="upper right")
    return _pixels(fig)


def posterior_zoom(step, title: str):
    """Around x_t: draws of the data's reverse step q(x_{t-1} | x_t) (pink dots) and of the network's
    p_theta(x_{t-1} | x_t) (blue dots), the 2-sigma circles of the latter and of q(x_{t-1} | x_t, x_0)."""
    fig, ax = _axes(title)
    xt = step.x_t.numpy()
    spread = [float((m - step.x_t).norm()) for m in (step.q_mean, step.p_mean, step.exact_mean)]
    half = 1.3 * max(*spread, 2.5 * step.q_std, 2.5 * step.p_std, 1e-3)
    ax.set(xlim=(xt[0] - half, xt[0] + half), ylim=(xt[1] - half, xt[1] + half))
    _points(ax, step.exact_draws.float(), TRUE_COLOUR, size=3, alpha=0.35, label=LEGEND["exact"])
    _points(ax, step.model_draws.float(), MODEL_COLOUR, size=3, alpha=0.35)
    for mean, std, colour, ls, key in (
        (step.q_mean, step.q_std, TRUE_COLOUR, "--", "q"),
        (step.p_mean, step.p_std, MODEL_COLOUR, "-", "p"),
    ):
        ax.add_patch(Circle(mean.tolist(), 2 * std, fill=False, color=colour, lw=1.4, ls=ls, label=LEGEND[key]))
        ax.plot(*mean.numpy(), "+", color=colour, ms=9)
    ax.plot(*step.exact_mean.numpy(), "x", color=TRUE_COLOUR, ms=8)
    ax.plot(*xt, "*", color="black", ms=12, label=LEGEND["x_t"])
    ax.legend(fontsize=7, loc="upper right", markerscale=2)
    return fig


def _convolve(a: np.ndarray, k: np.ndarray) -> np.ndarray:
    """2D 'same' convolution of ``a`` with a small odd kernel ``k`` (numpy only)."""
    r = k.shape[0] // 2
    padded = np.pad(a, r)
    out = np.zeros_like(a)
    for i in range(k.shape[0]):
        for j in range(k.shape[1]):
            out += k[i, j] * padded[i : i + a.shape[0], j : j + a.shape[1]]
    return out


def field_figure(grid: torch.Tensor, learned: torch.Tensor, true, title: str):
    """The score field at t on ``grid`` ``[G x 2]``: the network's (``learned`` [G x 2]) and, where known, the
    true one (``true`` [G x 2] or None), as arrows scaled alike."""
    fig, ax = _axes(title)
    g = grid.numpy()
    scale = float(max(learned.norm(dim=1).max(), true.norm(dim=1).max() if true is not None else 0)) or 1.0
    kw = dict(angles="xy", scale_units="xy", scale=scale / 0.35, width=0.004)
    if true is not None:
        ax.quiver(g[:, 0], g[:, 1], *true.numpy().T, color=TRUE_COLOUR, alpha=0.6, label=LEGEND["true"], **kw)
    ax.quiver(g[:, 0], g[:, 1], *learned.numpy().T, color=MODEL_COLOUR, label=LEGEND["learned"], **kw)
    ax.legend(fontsize=7, loc="upper right")
    return fig


def quality_figure(rows: list[dict], floor: float, names: dict, title: str):
    """Energy distance to held-out data against steps (log scale), one line per sampler (``names``: registry name ->
    shown name), the data-vs-data floor dashed."""
    fig, ax = _axes(title)
    ax.set(xlim=(3, 1500), xscale="log", aspect="auto")
    for name in dict.fromkeys(r["sampler"] for r in rows):
        pts = [r for r in rows if r["sampler"] == name]
        ax.plot(
            [r["steps"] for r in pts], [r["energy_distance"] for r in pts], "o-", ms=4, label=names.get(name, name)
        )
    ax.axhline(floor, color=DATA_COLOUR, ls="--", label="ED(p_data, p_data)")  # as the title names ED(p_θ, p_data)
    ax.set_ylim(0, max(r["energy_distance"] for r in rows) * 1.05)
    ax.legend(fontsize=7)
    return fig


def loss_rows(losses: list[float], every: int = 25) -> list[dict]:
    """The loss curve as rows for a LinePlot: the mean of each ``every`` steps."""
    return [
        {"step": k + every, "loss": float(np.mean(losses[k : k + every]))}
        for k in range(0, len(losses) - every + 1, every)
    ]
