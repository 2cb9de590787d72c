"""Steps compared: several (sampler, steps) pairs from the same initial noise, side by side, each with its time,
its network evaluations and its distance to the most precise deterministic run. Endpoint ``/compare``."""

from __future__ import annotations

import functools

import gradio as gr
import torch

from ddpm_core import quality
from ddpm_core.checkpoints import BUNDLED_DEFAULT, CHECKPOINT_DIR
from ddpm_core.imaging import tensor_to_pil
from ddpm_core.samplers import SAMPLERS
from ddpm_core.sampling import compare_steps, evaluation_count
from ui.common import (
    DEFAULT_SAMPLER,
    DEFAULT_STEPS,
    LATEX,
    SAMPLER_WORKERS,
    check_model,
    check_request_cost,
    display,
    fair_job,
    fast_path,
    gpu,
    model,
    model_dropdown,
    seed_arg,
    user_errors,
)
from ui.components import StrictCheckboxGroup, StrictNumber
from ui.files import png
from ui.i18n import tr

#: (sampler, steps) pairs offered, as ``short_label · steps`` (the API's value), each sampler's ``offered_steps``
PAIRS = {
    f"{s.short_label} · {steps}": (name, steps)
    for name, s in SAMPLERS.items()
    for steps in s.offered_steps or (s.default_steps or 1000,)
}
DEFAULT_PAIRS = ["DDPM · 100", "DDIM · 200", "DDIM · 50", "DDIM · 10", "DPM-Solver++ · 20", "DPM-Solver++ · 10"]
DETERMINISTIC = {name for name, s in SAMPLERS.items() if s.deterministic}  # DDIM here runs with eta = 0
#: The measured curve's figure text: mathematics and acronyms only (the same in both languages; the fonts a server
#: has draw no Chinese), the words are in the caption above it.
CURVE_TEXT = {"confident": r"$\Pr[\max_k\ p(k \mid x) \geq 0.9]$  ↑", "fd": "FD  ↓", "real": "MNIST", "x": "NFE"}

TEXT = {
    "en": {
        "tab": "Steps compared",
        "model": "Model",
        "pairs": "Sampler · steps",
        "seed": "Seed (the same x_T for every pair)",
        "go": "Compare",
        "gallery": "The same x_T, each pair's image",
        "table": "| sampler · steps | network evaluations | seconds | distance to {ref} |\n|---|---|---|---|\n",
        "no_ref": "no deterministic pair chosen",
        "unit": "pairs",
        "compare": r"""### How many steps does it take?
Every pair starts from **the same initial noise** $x_T$. DDIM (with $\eta = 0$), DPM-Solver++ 2M and 3M, UniPC,
Euler and Heun are *deterministic*: all follow the same probability-flow ODE from $x_T$, so as their steps grow their images converge
to one image, and the distance column (root-mean-square pixel difference in $[0, 1]$ to the most precise
deterministic pair chosen: the highest-order solver's, with the most evaluations) shrinks. Higher-order solvers get
there in far fewer steps: DDIM and Euler are first order, DPM-Solver++ 2M and Heun second, DPM-Solver++ 3M and UniPC
third.

One catch: a model that clips $\hat x_0$ to $[-1, 1]$ (the bundled one and `google/ddpm-cifar10-32` do) bends
DDIM off that path. DDIM, as diffusers runs it, builds $x_{t-1}$ from the clipped $\hat x_0$ and the network's
unclipped $\hat\epsilon$, which no longer agree; the more steps, the further it drifts (on digits: grey, speckled
backgrounds). DPM-Solver++ uses the clipped $\hat x_0$ alone and still converges.

DDPM is *stochastic*: it adds fresh noise at every step, so it ends at another sample of the same distribution,
not at a worse copy of the same image (so is DPM-Solver++ 2M SDE). Each step calls the network once, Heun's twice
(but on its last step): the evaluations column is the cost.""",
        "curve": """### Quality against steps, measured
The bundled model, {num} samples per point, each sampler at 5 to 100 network evaluations (and at 250 and 1000
while it still changes). Left: the share of samples the
evaluation classifier reads as a digit with confidence at least 0.9 (higher is better). Right: the Fréchet distance
(FD) of their classifier features to those of held-out real digits (lower is better). Dashed: real held-out digits
("MNIST"). Across: network function evaluations (NFE), the cost. Computed once by
`{command}` (too slow to measure live on a CPU) and shipped with the checkpoint, whose card lists every point.
The Sample tab's default, **{default}**, is the cheapest point whose confident rate is within {margin} points of the
best (closer than that, {num} samples cannot tell two settings apart) and whose FD is within {ratio}× the lowest.""",
    },
    "zh": {
        "tab": "步数对比",
        "model": "模型",
        "pairs": "采样器 · 步数",
        "seed": "随机种子（所有组合共用同一个 x_T）",
        "go": "对比",
        "gallery": "同一个 x_T，各组合生成的图像",
        "table": "| 采样器 · 步数 | 网络调用次数 | 秒 | 与 {ref} 的距离 |\n|---|---|---|---|\n",
        "no_ref": "未选确定性组合",
        "unit": "组",
        "compare": r"""### 需要多少步？
所有组合都从**同一个初始噪声** $x_T$ 出发。DDIM（$\eta = 0$）、DPM-Solver++ 2M 与 3M、UniPC、Euler 与 Heun 是*确定性*的：它们沿同一条概率流常微分方程
从 $x_T$ 出发，步数越多，图像越收敛到同一张图，距离一列（与所选组合中最精确的确定性组合，即阶数最高、网络调用次数最多者，
在 $[0, 1]$ 像素上的均方根差）随之变小。阶数越高，所需步数越少：DDIM 与 Euler 是一阶，DPM-Solver++ 2M 与 Heun 是二阶，
DPM-Solver++ 3M 与 UniPC 是三阶。

但有一个例外：若模型把 $\hat x_0$ 截断到 $[-1, 1]$（内置模型和 `google/ddpm-cifar10-32` 都如此），DDIM 会偏离这条路径。
DDIM（按 diffusers 的做法）用截断后的 $\hat x_0$ 和网络未截断的 $\hat\epsilon$ 构造 $x_{t-1}$，二者不再一致；步数越多，偏得越远
（在数字上表现为灰色、带斑点的背景）。DPM-Solver++ 只用截断后的 $\hat x_0$，仍会收敛。

DDPM 是*随机*的：每一步都加入新的噪声，因此它得到的是同一分布中的另一个样本，
而不是同一张图的较差版本（DPM-Solver++ 2M SDE 也是如此）。每一步调用一次网络，Heun 每步两次（最后一步一次）：
网络调用次数一列就是代价。""",
        "curve": """### 质量随步数的变化（实测）
内置模型，每个点 {num} 个样本，每个采样器从 5 到 100 次网络调用（仍在变化的采样器再测 250 与 1000 次）。左：评估分类器以至少 0.9 的置信度认作数字的样本比例（越高越好）。
右：样本在分类器特征空间中与留出真实数字的 Fréchet 距离（FD，越低越好）。虚线（"MNIST"）：留出的真实数字。横轴：网络调用次数
（NFE），即代价。由 `{command}` 一次算出（在 CPU 上实时计算太慢），随检查点一起发布，模型卡列出了每个点。
“采样”页的默认设置 **{default}**，是置信比例与最好的点相差不超过 {margin} 个百分点（差得更少时，{num} 个样本分不出两个设置的高下）、FD 不超过最低值 {ratio} 倍的点中最便宜的一个。""",
    },
}


def _pairs(chosen) -> list[str]:
    if isinstance(chosen, str):
        chosen = [chosen]
    if not isinstance(chosen, (list, tuple)) or not chosen:
        raise ValueError("Tick at least one sampler · steps pair.")
    unknown = [c for c in chosen if c not in PAIRS]
    if unknown:
        raise ValueError(f"unknown pair {unknown[0]!r}; choose from {', '.join(PAIRS)}")
    return [c for c in PAIRS if c in chosen]  # each once, in the offered order


def _reference(chosen: list[str]) -> str | None:
    """The most precise deterministic pair: the highest-order sampler's, with the most network evaluations (DDIM,
    first order and bent off the ODE's path by clipping, is the reference only where nothing better is chosen)."""
    det = [c for c in chosen if PAIRS[c][0] in DETERMINISTIC]
    s = {c: SAMPLERS[PAIRS[c][0]] for c in det}
    return max(det, key=lambda c: (s[c].order, PAIRS[c][1] * s[c].evaluations_per_step)) if det else None


@gpu(duration=120)
@user_errors
def compare(model_name, seed, chosen, lang="en", progress=gr.Progress()):
    """Run the chosen pairs from one x_T, the progress bar naming each pair as it ends; then the gallery and the
    table."""
    chosen, seed = _pairs(chosen), seed_arg(seed)
    m = model(model_name)
    ref = _reference(chosen)
    say = functools.partial(tr, TEXT, lang=lang if lang in TEXT else "en")
    check_request_cost(m, sum(evaluation_count(m.diffusion, PAIRS[c][1], sampler=PAIRS[c][0]) for c in chosen))
    runs, gallery = {}, []
    progress((0, len(chosen)), desc=chosen[0], unit=say("unit"))
    with fair_job() as job:  # each step in a turn of the CPU; Cancelled if the visitor left
        pairs = compare_steps(m, [PAIRS[c] for c in chosen], seed, before_step=job.turn, **fast_path(m))
        for k, (sampler, steps, result) in enumerate(pairs):
            job.pause()
            label = chosen[k]
            runs[label] = result
            img = tensor_to_pil(result.samples.clamp(-1, 1))[0]
            gallery.append((png(display(img)), f"{label} · {result.seconds:.1f} s"))
            # the pairs are shown together at the end: a gallery streamed one image at a time drops the progress
            # overlay after the first, which then fills the gallery enlarged, so the run looks finished or stuck
            if k + 1 < len(chosen):
                progress((k + 1, len(chosen)), desc=chosen[k + 1], unit=say("unit"))
    table = say("table").format(ref=ref or say("no_ref"))
    for label, result in runs.items():
        dist = "" if ref is None else f"{_rms(result.samples, runs[ref].samples):.4f}"
        table += f"| {label} | {len(result.timesteps)} | {result.seconds:.2f} | {dist} |\n"
    yield gallery, table


def _rms(a: torch.Tensor, b: torch.Tensor) -> float:
    """Root-mean-square difference of two images ``[1 x C x H x W]`` in [-1, 1], measured in [0, 1] pixels."""
    return float(((a.clamp(-1, 1) - b.clamp(-1, 1)) / 2).pow(2).mean().sqrt())


def _curve_section(t_, add) -> None:
    """The bundled model's measured quality against steps (its ``curve.json``), where it ships one."""
    curve = quality.load_curve(CHECKPOINT_DIR / BUNDLED_DEFAULT)
    if curve is None:
        return
    fmt = dict(
        num=curve["num_samples"] * len(curve["sampling_seeds"]),
        command=curve["command"],
        default=f"{SAMPLERS[DEFAULT_SAMPLER].short_label} · {DEFAULT_STEPS}",  # read from this curve
        margin=f"{100 * quality.rate_margin(curve):.1f}",
        ratio=f"{quality.DEFAULT_FD_RATIO:g}",
    )
    add(gr.Markdown(t_("curve").format(**fmt), elem_id="compare-curve-text"), key="curve", attr="value", **fmt)
    gr.Plot(quality.curve_figure(curve, CURVE_TEXT), show_label=False, elem_id="compare-curve")


def build(ctx) -> None:
    t_ = functools.partial(tr, TEXT)
    add = functools.partial(ctx.i18n.add, text=TEXT)
    with add(gr.Tab(t_("tab"), id="compare"), key="tab"):
        with gr.Row():
            with gr.Column(scale=1, min_width=300):
                model_in = add(model_dropdown(ctx, t_("model")), key="model")
                pairs = add(StrictCheckboxGroup(list(PAIRS), value=DEFAULT_PAIRS, label=t_("pairs")), key="pairs")
                seed = add(
                    StrictNumber(value=0, precision=0, label=t_("seed"), minimum=0, maximum=2**32 - 1), key="seed"
                )
                go = add(gr.Button(t_("go"), variant="primary", elem_id="compare-btn"), key="go", attr="value")
            with gr.Column(scale=2):
                gallery = add(
                    gr.Gallery(label=t_("gallery"), columns=3, height="auto", format="png", elem_id="compare-gallery"),
                    key="gallery",
                )
                table = gr.Markdown(elem_id="compare-table")
        add(gr.Markdown(t_("compare"), latex_delimiters=LATEX), key="compare", attr="value")
        _curve_section(t_, add)
    go.click(check_model, [model_in, ctx.lang], None, api_visibility="private", concurrency_id="sampler").success(
        compare,
        [model_in, seed, pairs, ctx.lang],
        [gallery, table],
        api_name="compare",
        concurrency_limit=SAMPLER_WORKERS,
        concurrency_id="sampler",
        time_limit=600,
    )
