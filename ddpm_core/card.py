"""The model card's measured sections: the evaluation, the bound in bits/dim and the quality curve."""

from __future__ import annotations

from pathlib import Path

from .quality import DEFAULT_FD_RATIO, cheapest_within, rate_margin
from .samplers import SAMPLERS


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


def write_likelihood(folder: Path, entry: dict) -> None:
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


def write_curve(folder: Path, curve: dict) -> None:
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


def write_evaluation(folder: Path, r: dict, num: int, steps, sampler: str, seeds: int, seed: int, classifier) -> None:
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
