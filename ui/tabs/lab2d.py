"""The 2D lab: train a small denoiser on a point cloud in seconds, then watch every quantity the core computes.
Endpoints ``/lab_train``, ``/lab_forward``, ``/lab_sample`` and ``/lab_field``; the trained model lives in the
visitor's session (a ``gr.State``), so an API client trains and then samples with one ``Client``. The reverse
process plays in the browser (lab_player.js) from the paths ``/lab_sample`` returns once."""

from __future__ import annotations

import functools
import json
import time
from pathlib import Path

import gradio as gr
import numpy as np
import pandas as pd
import torch

from ddpm_core import lab2d as L
from ddpm_core.imaging import load_image
from ddpm_core.samplers import SAMPLERS
from ui import plots2d as P
from ui.common import LATEX, fair_job, float_arg, int_arg, seed_arg, user_errors
from ui.components import EXAMPLES_DIR, IntegerDropdown, SafeSketchpad, StrictNumber, StrictSlider
from ui.i18n import LANGS, tr
from ui.schedule_choices import SCHEDULE_CHOICES, schedule_name

N_TRAIN, N_SHOW = 4000, 2000
#: What the default training may take, in seconds of wall time: on a busy CPU the run is planned shorter to fit
#: (``ddpm_core.lab2d.train_steps``); on an idle 2-core CPU the full TRAIN_STEPS fit in about 14 s.
TRAIN_BUDGET_S = 15.0
N_PATHS = 5  # the whole paths drawn in the reverse panel
#: The data's reverse step and the true posterior "coincide" when their centres are this many of the step's standard
#: deviations apart or less: their two 2-sigma circles then overlap to within the width of the drawn line.
SAME_STEP = 0.05
PREDICTIONS = ["epsilon", "sample", "v_prediction"]
#: registry name -> the sampler's short name (the same in Chinese); one evaluation per step (the player's frames)
SAMPLER_NAMES = {name: s.short_label for name, s in SAMPLERS.items() if s.evaluations_per_step == 1}

DATASET_ZH = {
    "moons": "双月",
    "spiral": "螺旋",
    "ring": "八高斯环",
    "checkerboard": "棋盘",
    "clusters": "三团（带标签）",
    "drawn": "手绘",
}

TEXT = {
    "en": {
        "tab": "2D lab",
        "intro": r"""### Diffusion you can see whole
In two dimensions everything the core computes can be drawn. Pick a point cloud, train a small network on it
(a few seconds, with the same `p_losses` as the image models), then move $t$ to watch the forward process smear the
data into $\mathcal N(0, I)$, run any sampler back, and compare the score field the network learned with the true
one where it is known (the ring and the clusters are Gaussian mixtures). Choose how many training points it learns
from: on one or a few points the network learns to return them and its samples are copies; on enough points it
generalises and draws new points of the distribution, the transition Kadkhodaie, Guth, Simoncelli & Mallat
(ICLR 2024) measured for image models. The readout under the samples says which.""",
        "dataset": "Data",
        "schedule": "Schedule",
        "prediction": "The network predicts",
        "points": "Training points",
        "points_choices": [*((str(n), n) for n in L.TRAIN_SIZES), (f"all ({N_TRAIN:,})", N_TRAIN)],
        "train": "Train",
        "loss": "Training loss",
        "data_plot": "Training data",
        "forward_t": "Forward: t",
        "forward_plot": "Forward process",
        "sampler": "Sampler",
        "steps": "Steps",
        "label": "Class (clusters only)",
        "scale": "Guidance scale",
        "seed": "Seed",
        "sample": "Sample",
        "reverse_plot": "Reverse process",
        "field_t": "Score field: t",
        "quality": "Quality against steps (every sampler)",
        "quality_plot": "Energy distance to held-out data (lower is better) against steps, one network evaluation each; "
        "dashed: two draws of the data",
        "field_plot": "Score field",
        "dataset_choices": [(name, name) for name in (*L.DATASETS, "drawn")],
        "sketch": "Draw your own data (choose “drawn” above)",
        "prediction_choices": [
            ("ε (the noise)", "epsilon"),
            ("x₀ (the clean point)", "sample"),
            ("v", "v_prediction"),
        ],
        "loss_x": "step",
        "loss_y": "loss",
        "label_choices": [("none (unconditional)", -1), ("0", 0), ("1", 1), ("2", 2)],
        "trained": "Trained {steps} steps (training points: {n:,}) in {secs:.1f} s · final loss {loss:.3f}",
        "shortened": " · the CPU was busy: a run of {full:,} steps would not have fitted the lab's {budget:.0f} s, so "
        "this one was planned shorter",
        "sampled": "{n} points by {sampler} in {steps} steps · energy distance to held-out data **{ed:.4f}** "
        "(two draws of the data: {floor:.4f}) · {secs:.2f} s",
        "memo": "**Copies: {copies:.0%}** of the samples lie on a training point (nearer to one than 99% of "
        "held-out data comes: {radius:.3f}). Distance to the nearest training point, 5% / median / 95%: "
        "samples {samples}; held-out data {heldout}. {verdict}",
        "memo_copies": "Essentially every sample is a copy: the model memorised its training points.",
        "memo_new": "Essentially no sample is a copy: the model generalises, its samples are as new as fresh data.",
        "memo_mixed": "Some samples are copies: the model is between memorising and generalising.",
        "field_error": "mean |learned − true| / mean |true| at t = {t}: **{err:.2f}**",
        "field_unknown": "The true score of this dataset has no closed form; only the learned one is drawn.",
        "anim_plot": "**The reverse process, played**: the cloud from x_T to x₀ over the training points (grey); "
        "play, pause or drag through every step, in your browser",
        "player_play": "▶ Play",
        "player_pause": "❚❚ Pause",
        "player_step": "Reverse process: step",
        "player_t": "t = {t} · after {k} of {n} steps",
        "player_x0": "x₀, the samples · after {n} of {n} steps",
        "post_intro": r"""#### One reverse step, at one point
Click the panel below to place $x_t$ (or type it) and choose how far back the step goes: to $x_s$, $s = t - $ jump
(1 is one step of the chain; a sampler with fewer steps jumps further). The **true posterior** $q(x_s \mid x_t, x_0)$
(pink circle) is exact, but only for someone who knows which $x_0$ made $x_t$. The network never knows: trained to
predict the noise, its step $p_\theta(x_s \mid x_t)$ (blue) aims at the average over every training point that could
have made $x_t$, the data's own reverse step $q(x_s \mid x_t)$ (pink dots). At large $t$ many points could have, and
the network heads for their mean, not for your $x_0$: sampling generates, it does not restore. Trained on a single
point, only that point could have made any $x_t$: the data's reverse step and the true posterior are then one and
the same, and sampling returns the point.""",
        "post_t": "Reverse step at t",
        "post_jump": "Steps back at once, at most t (a sampler with fewer steps jumps like this)",
        "post_x": "x_t: first coordinate",
        "post_y": "x_t: second coordinate",
        "post_own": "Choose x₀ myself (otherwise: the training point likeliest to have made x_t)",
        "post_x0x": "x₀: first coordinate",
        "post_x0y": "x₀: second coordinate",
        "post_mode": "A click sets",
        "post_mode_choices": [("x_t", "x_t"), ("x₀ (nearest training point)", "x0")],
        "post_overview": "**Click** to place x_t (or x₀). The darker a training point, the likelier it made x_t.",
        "post_zoom": "Around x_t: where the step from t to s = t − jump lands",
        "post_info": "At t = {t}, about **{cand:.1f}** training points could have made x_t; the chosen x₀ had "
        "probability {w}. The network's step is centred **{err:.2f} σ** from the data's own reverse step and "
        "**{gap:.2f} σ** from the true posterior for this x₀ (σ = {std:.4f}, the step's standard deviation).",
        "post_one": "With **one training point** the data's own reverse step **is** the true posterior (centres "
        "{same:.3f} σ apart): every x_t came from this x₀, so the network, learning the data's step, returns x₀.",
        "post_same": "Here the data's own reverse step and the true posterior **coincide** (centres {same:.3f} σ "
        "apart): only this x₀ could plausibly have made x_t.",
    },
    "zh": {
        "tab": "二维实验室",
        "intro": r"""### 看得见全貌的扩散
在二维里，核心计算的每个量都能画出来。选一个点云，在它上面训练一个小网络（几秒钟，用与图像模型相同的
`p_losses`），然后拖动 $t$ 看前向过程把数据抹成 $\mathcal N(0, I)$，用任意采样器反向生成，并把网络学到的
分数场与已知的真实分数场对比（环和三团都是高斯混合）。还可以选择训练点的个数：只有一个或几个点时，网络学会把它们
复现出来，样本都是副本；点足够多时，网络才会泛化，画出分布中的新点。Kadkhodaie、Guth、Simoncelli 与 Mallat
（ICLR 2024）在图像模型上测量了这一转变。样本下方的读数会告诉你是哪一种。""",
        "dataset": "数据",
        "schedule": "噪声调度",
        "prediction": "网络预测",
        "points": "训练点数",
        "points_choices": [*((str(n), n) for n in L.TRAIN_SIZES), (f"全部（{N_TRAIN:,}）", N_TRAIN)],
        "train": "训练",
        "loss": "训练损失",
        "data_plot": "训练数据",
        "forward_t": "前向：t",
        "forward_plot": "前向过程",
        "sampler": "采样器",
        "steps": "步数",
        "label": "类别（仅三团）",
        "scale": "引导强度",
        "seed": "随机种子",
        "sample": "采样",
        "reverse_plot": "逆向过程",
        "field_t": "分数场：t",
        "quality": "质量随步数的变化（所有采样器）",
        "quality_plot": "与留出数据的能量距离（越低越好）随步数的变化，每步一次网络计算；虚线：两次独立抽取的数据之间",
        "field_plot": "分数场",
        "dataset_choices": [(zh, name) for name, zh in DATASET_ZH.items()],
        "sketch": "画出你自己的数据（在上面选“手绘”）",
        "prediction_choices": [("ε（噪声）", "epsilon"), ("x₀（干净的点）", "sample"), ("v", "v_prediction")],
        "loss_x": "步",
        "loss_y": "损失",
        "label_choices": [("无（无条件）", -1), ("0", 0), ("1", 1), ("2", 2)],
        "trained": "训练 {steps} 步（训练点数：{n:,}），用时 {secs:.1f} 秒 · 最终损失 {loss:.3f}",
        "shortened": " · CPU 正忙：{full:,} 步在本实验室的 {budget:.0f} 秒内跑不完，所以这次按更少的步数安排",
        "sampled": "{sampler} 用 {steps} 步生成 {n} 个点 · 与留出数据的能量距离 **{ed:.4f}**"
        "（两次独立抽取数据之间：{floor:.4f}）· {secs:.2f} 秒",
        "memo": "**副本：{copies:.0%}** 的样本落在某个训练点上（比 99% 的留出数据离训练点更近：{radius:.3f}）。"
        "到最近训练点的距离，5% / 中位数 / 95%：样本 {samples}；留出数据 {heldout}。{verdict}",
        "memo_copies": "几乎每个样本都是副本：模型记住了它的训练点。",
        "memo_new": "几乎没有样本是副本：模型在泛化，它的样本和新数据一样新。",
        "memo_mixed": "部分样本是副本：模型介于记忆与泛化之间。",
        "field_error": "t = {t} 时 平均 |学到的 − 真实的| / 平均 |真实的|：**{err:.2f}**",
        "field_unknown": "这个数据集的真实分数没有闭式解，只画出学到的分数场。",
        "anim_plot": "**逆向过程播放**：点云从 x_T 到 x₀，背后灰色为训练点；可播放、暂停或拖动查看每一步，全在浏览器中完成",
        "player_play": "▶ 播放",
        "player_pause": "❚❚ 暂停",
        "player_step": "逆向过程：步",
        "player_t": "t = {t} · 已走 {k} / {n} 步",
        "player_x0": "x₀，即样本 · 已走 {n} / {n} 步",
        "post_intro": r"""#### 在一个点上看一步逆向
点击下面的图放置 $x_t$（或直接输入坐标），并选择这一步后退多远：到 $x_s$，$s = t - $ 步数（1 就是链上的一步；
步数更少的采样器跳得更远）。**真实后验** $q(x_s \mid x_t, x_0)$（粉色圆）是精确的，但只对知道 $x_t$ 来自哪个
$x_0$ 的人成立。网络永远不知道：它被训练去预测噪声，它的一步 $p_\theta(x_s \mid x_t)$（蓝色）瞄准的是所有可能
产生 $x_t$ 的训练点的平均，也就是数据本身的逆向一步 $q(x_s \mid x_t)$（粉色点）。$t$ 越大，可能的点越多，网络
走向它们的均值，而不是你选的 $x_0$：采样是生成，不是复原。如果只用一个点训练，任何 $x_t$ 都只可能来自这个点：
数据本身的逆向一步与真实后验就是同一个分布，采样会回到这个点。""",
        "post_t": "逆向一步：t",
        "post_jump": "一次后退的步数，最多 t 步（步数更少的采样器就是这样跳的）",
        "post_x": "x_t：第一个坐标",
        "post_y": "x_t：第二个坐标",
        "post_own": "自己选 x₀（否则：最可能产生 x_t 的训练点）",
        "post_x0x": "x₀：第一个坐标",
        "post_x0y": "x₀：第二个坐标",
        "post_mode": "点击设置",
        "post_mode_choices": [("x_t", "x_t"), ("x₀（最近的训练点）", "x0")],
        "post_overview": "**点击**放置 x_t（或 x₀）。训练点越深，越可能是它产生了 x_t。",
        "post_zoom": "x_t 附近：从 t 到 s = t − 步数 的这一步落在哪里",
        "post_info": "在 t = {t} 时，大约有 **{cand:.1f}** 个训练点可能产生了 x_t；所选 x₀ 的概率是 {w}。"
        "网络这一步的中心离数据本身的逆向一步 **{err:.2f} σ**，离这个 x₀ 的真实后验 **{gap:.2f} σ**"
        "（σ = {std:.4f}，这一步的标准差）。",
        "post_one": "只有**一个训练点**时，数据本身的逆向一步**就是**真实后验（中心相距 {same:.3f} σ）："
        "每个 x_t 都来自这个 x₀，所以学习数据逆向一步的网络会回到 x₀。",
        "post_same": "在这里，数据本身的逆向一步与真实后验**重合**（中心相距 {same:.3f} σ）：只有这个 x₀ 可能产生了 x_t。",
    },
}


def _dataset(name) -> str:
    if name not in (*L.DATASETS, "drawn"):
        raise ValueError(f"unknown dataset {name!r}; choose one of {', '.join(L.DATASETS)}, drawn")
    return name


#: The drawing is read at most this many pixels on its long side: points are drawn from its pixels, and a canvas of
#: any size (an API client's 8,900 x 8,900 PNG included) is reduced while decoding.
SKETCH_SIDE = 256
#: A white SKETCH_SIDE-square image, served from the repo (examples/make_examples.py made it).
BLANK_CANVAS = str(EXAMPLES_DIR / "canvas" / "blank.png")


def _sketch_mask(sketch) -> np.ndarray:
    """The drawn pixels ``[H x W]`` of a drawing: the path of its composite image (``SafeSketchpad``), or a
    Sketchpad value with a ``composite`` (a path, PIL image or array), decoded by ``ddpm_core.imaging.load_image``
    (accepted formats only, the pixel limit, transparency on white). Every pixel that is not (nearly) white is
    drawn, whatever the brush's colour."""
    image = sketch.get("composite") if isinstance(sketch, dict) else sketch
    if image is None:
        raise ValueError("Draw a shape on the canvas first: it is (nearly) empty.")
    return np.asarray(load_image(image, mode="L", max_side=SKETCH_SIDE)) < 250


def _points(dataset: str, sketch) -> tuple:
    """The training points and labels, and the held-out draws the energy distance uses: (points, labels, other)."""
    if dataset == "drawn":
        mask = _sketch_mask(sketch)
        draw = functools.partial(L.points_from_mask, mask, extent=P.LIM)
        return (draw(N_TRAIN, seed=0), None), (draw(N_SHOW, seed=10), None, draw(N_SHOW, seed=11))
    held, held_labels = L.make_points(dataset, N_SHOW, seed=10)
    return L.make_points(dataset, N_TRAIN, seed=0), (held, held_labels, L.make_points(dataset, N_SHOW, seed=11)[0])


#: The lab's sampling jobs (seconds each): their own workers, their network evaluations in turns of the CPU.
RUN_GROUP = dict(concurrency_id="lab_run", concurrency_limit=4)


def _run(state) -> L.LabRun:
    if not isinstance(state, L.LabRun):
        raise ValueError("Train a model first (the Train button above).")
    return state


# ---------------------------------------------------------------- handlers
@user_errors
def lab_train(dataset, schedule, prediction, sketch=None, num_points=N_TRAIN, lang="en", progress=gr.Progress()):
    """Train on the first ``num_points`` points of ``dataset`` (or of the sketch, for "drawn"); streams the loss
    curve; ends with the trained run in the session and the data plot. The held-out data is always a full draw."""
    dataset, schedule = _dataset(dataset), schedule_name(schedule)
    if prediction not in PREDICTIONS:
        raise ValueError(f"unknown prediction type {prediction!r}; choose one of {', '.join(PREDICTIONS)}")
    num_points = int_arg(num_points, "training points", 1, N_TRAIN)
    (data, labels), heldout = _points(dataset, sketch)
    data, labels = L.first_points(data, labels, num_points)
    diffusion = L.make_diffusion(schedule, 1000, prediction)
    run = None
    with fair_job() as job:  # each optimiser step in a turn of the CPU
        for run in job.steps(L.train_steps(diffusion, data, labels, time_budget=TRAIN_BUDGET_S)):
            k = len(run.losses)
            if k % 50 == 0:  # a progress message per step would cost more than the step
                progress((k, run.planned), desc=tr(TEXT, "train", lang))
            if k % 250 == 0:
                yield pd.DataFrame(P.loss_rows(run.losses)), gr.skip(), gr.skip(), gr.skip()
    run.dataset, run.heldout = dataset, heldout
    loss = sum(run.losses[-100:]) / 100
    info = tr(TEXT, "trained", lang, steps=len(run.losses), n=len(data), secs=run.seconds, loss=loss)
    if len(run.losses) < L.TRAIN_STEPS:
        info += tr(TEXT, "shortened", lang, full=L.TRAIN_STEPS, budget=TRAIN_BUDGET_S)
    figure = P.data_figure(data[:N_SHOW], None if labels is None else labels[:N_SHOW], "x₀ ~ p_data")
    yield pd.DataFrame(P.loss_rows(run.losses)), figure, info, run


@user_errors
def lab_forward(state, t, lang="en"):
    """The training cloud under q_sample at t, with the closed-form marginal's mean and 2-sigma ellipse."""
    run = _run(state)
    t = int_arg(t, "t", 0, run.diffusion.num_timesteps - 1)
    x0 = run.data[:N_SHOW].double()
    x_t = run.diffusion.q_sample(x0, t, generator=torch.Generator().manual_seed(0))
    abar = float(run.diffusion.schedule.alphas_cumprod[t])
    # the data's own covariance (correction=0): what q(x_t) of these points has, and defined for one point
    cov = abar * torch.cov(x0.T, correction=0) + (1 - abar) * torch.eye(2, dtype=torch.float64)
    mean = abar**0.5 * x0.mean(0)
    mix = L.mixture(run.dataset)
    components = L.mixture_noised(run.diffusion, *mix, t) if mix else None
    title = f"x_t ~ q(x_t | x₀): t = {t}, ᾱ_t = {abar:.3f}"
    return P.forward_figure(x_t, mean, cov, components, title)


@user_errors
def lab_sample(state, sampler, steps, label, scale, seed, lang="en"):
    """Points from the trained model by the chosen sampler, their density, a few paths and the energy distance;
    third, what the page's player draws the reverse process from (``ddpm_core.lab2d.reverse_paths``): ``frames``
    and ``points``, ``step`` and ``t`` per frame (t null for the final samples), ``xy`` the cloud at every kept step
    (every step up to 100, else 101 evenly spaced), base64 of little-endian int16 [frames x points x 2] in steps of
    lim / ``levels`` (-32768 in both coordinates: beyond the axes), ``data`` the training points drawn behind it (the
    same encoding, ``data_points`` of them) and ``lim`` (the axes: [-lim, lim] on both)."""
    run = _run(state)
    if sampler not in SAMPLERS:
        raise ValueError(f"unknown sampler {sampler!r}; choose one of {', '.join(SAMPLERS)}")
    steps = int_arg(steps, "steps", 1, run.diffusion.num_timesteps)
    seed = seed_arg(seed)
    cls = None if label in (None, "", -1) else int_arg(label, "label", 0, 2)
    if cls is not None and run.model.num_classes == 0:
        raise ValueError("This data set has no classes: choose “none (unconditional)” as the class.")
    net = L.guided(run.model, cls, float(scale)) if cls is not None else L.guided(run.model)
    t0 = time.perf_counter()
    with fair_job() as job:  # each network evaluation in a turn of the CPU
        x, every = L.sample(run.diffusion, job.gate(net), N_SHOW, sampler, steps, seed=seed, keep=N_SHOW)
    secs = time.perf_counter() - t0
    held, held_labels, other = run.heldout
    if cls is not None and held_labels is not None:
        held, other = held[held_labels == cls], other[: int((held_labels == cls).sum())]
    ed, floor = L.energy_distance(x, held), L.energy_distance(other, held)
    name = SAMPLER_NAMES[sampler]
    info = tr(TEXT, "sampled", lang, n=N_SHOW, sampler=name, steps=steps, ed=ed, floor=floor, secs=secs)
    info += "\n\n" + _memorisation_text(L.memorisation(x, run.data, held), lang)
    title = f"{name} · {steps}"  # as the Steps compared tab names a pair
    figure = P.reverse_figure(x, every[:, :N_PATHS], run.data[:N_SHOW], title)
    return figure, info, L.reverse_paths(run.diffusion, sampler, steps, every, run.data[:N_SHOW], P.LIM)


def _memorisation_text(m: L.Memorisation, lang) -> str:
    """The copies readout: the share of copies, both distance distributions and what they say."""
    fmt = lambda qs: " / ".join(f"{v:.3f}" for v in qs)  # noqa: E731
    return tr(
        TEXT,
        "memo",
        lang,
        copies=m.copies,
        n=m.num_training,
        radius=m.radius,
        samples=fmt(m.quantiles("samples")),
        heldout=fmt(m.quantiles("heldout")),
        verdict=tr(TEXT, f"memo_{m.verdict}", lang),
    )


@user_errors
def lab_quality(state, lang="en"):
    """Energy distance to held-out data against steps for every sampler, from one seed (seconds in 2D)."""
    run = _run(state)
    held, _, other = run.heldout
    with fair_job() as job:  # each network evaluation in a turn of the CPU
        rows = L.quality_by_steps(run.diffusion, job.gate(L.guided(run.model)), held)
    return P.quality_figure(rows, L.energy_distance(other, held), SAMPLER_NAMES, "ED(p_θ, p_data)")


@user_errors
def lab_field(state, t, lang="en"):
    """The network's score at t on a grid, beside the true score where the data is a Gaussian mixture."""
    run = _run(state)
    t = int_arg(t, "t", 0, run.diffusion.num_timesteps - 1)
    ax = torch.linspace(-P.LIM * 0.9, P.LIM * 0.9, 17)
    grid = torch.cartesian_prod(ax, ax)
    learned = L.score_of(run.diffusion, L.guided(run.model), grid, t).float()
    mix = L.mixture(run.dataset)
    true = None
    if mix:
        m, s = L.mixture_noised(run.diffusion, *mix, t)
        true = L.mixture_score(grid.double(), m, s).float()
        err = float((learned - true).norm(dim=1).mean() / true.norm(dim=1).mean())
        info = tr(TEXT, "field_error", lang, t=t, err=err)
    else:
        info = tr(TEXT, "field_unknown", lang)
    title = f"t = {t}"
    return P.field_figure(grid, learned, true, title), info


@user_errors
def lab_posterior(state, t, jump, x, y, own_x0=False, x0x=0.0, x0y=0.0, lang="en"):
    """One reverse step, t to t - jump, at x_t = (x, y): the true posterior for one training point x_0 (with
    ``own_x0`` the one nearest to (x0x, x0y), else the likeliest), the data's own reverse step and the network's,
    with what separates them."""
    run = _run(state)
    t = int_arg(t, "t", 1, run.diffusion.num_timesteps - 1)
    jump = min(int_arg(jump, "jump", 1, run.diffusion.num_timesteps - 1), t)  # at most back to s = 0
    x_t = [float_arg(x, "x_t", -P.LIM, P.LIM), float_arg(y, "x_t", -P.LIM, P.LIM)]
    x0 = None
    if own_x0:
        x0 = [float_arg(x0x, "x₀", -P.LIM, P.LIM), float_arg(x0y, "x₀", -P.LIM, P.LIM)]
    step = L.reverse_step(run.diffusion, L.guided(run.model), run.data, x_t, t, x0, jump)
    err = float((step.p_mean - step.exact_mean).norm()) / step.q_std
    gap = float((step.p_mean - step.q_mean).norm()) / step.q_std
    w = float(step.weights[step.x0_index])
    share = f"{w:.1%}" if w >= 0.001 else "< 0.1%"
    info = tr(TEXT, "post_info", lang, t=t, cand=step.candidates, w=share, err=err, gap=gap, std=step.q_std)
    if len(run.data) == 1 or step.posterior_gap < SAME_STEP:
        info += ("" if lang == "zh" else " ") + tr(
            TEXT, "post_one" if len(run.data) == 1 else "post_same", lang, same=step.posterior_gap
        )
    title = f"t = {t}, x_t = ({x_t[0]:.2f}, {x_t[1]:.2f})"
    return P.posterior_overview(step, run.data, title), P.posterior_zoom(step, f"t = {t} → s = {t - jump}"), info


def _clicked(mode, x, y, own_x0, x0x, x0y, evt: gr.SelectData):
    """A click on the overview: its point becomes x_t or (choosing it) x_0, as the mode says; the rest is kept."""
    px, py = P.pixel_to_point(*evt.index)
    px, py = (round(min(max(v, -P.LIM), P.LIM), 2) for v in (px, py))
    return (x, y, True, px, py) if mode == "x0" else (px, py, own_x0, x0x, x0y)


#: The player's own texts, both languages: it picks them by the language switch, with no request.
PLAYER_KEYS = ("player_play", "player_pause", "player_step", "player_t", "player_x0")
#: Installed once when the page loads; /lab_sample's paths are handed to it with PLAYER_LOAD_JS.
PLAYER_JS = (
    Path(__file__)
    .with_name("lab_player.js")
    .read_text(encoding="utf-8")
    .replace("__TEXT__", json.dumps({lang: {k: TEXT[lang][k] for k in PLAYER_KEYS} for lang in TEXT}))
    .replace("__LANGS__", json.dumps(LANGS))  # the language switch's choices -> "en" / "zh"
)
PLAYER_LOAD_JS = "(d) => { window.ddpmPlayer && window.ddpmPlayer.load(d); }"


def _sketch_visibility(dataset):
    return gr.update(visible=dataset == "drawn")


# ---------------------------------------------------------------- layout
def build(ctx) -> None:
    t_ = functools.partial(tr, TEXT)
    add = functools.partial(ctx.i18n.add, text=TEXT)
    with add(gr.Tab(t_("tab"), id="lab2d"), key="tab"):
        add(gr.Markdown(t_("intro"), latex_delimiters=LATEX), key="intro", attr="value")
        run = gr.State(None)
        train_io = _train_panel(t_, add)
        with gr.Row():
            with gr.Column(min_width=300):
                fwd_t = add(StrictSlider(0, 999, value=200, step=1, label=t_("forward_t")), key="forward_t")
                fwd_plot = add(gr.Plot(label=t_("forward_plot"), elem_id="lab-forward"), key="forward_plot")
            with gr.Column(min_width=300):
                with gr.Row():
                    sampler = add(
                        gr.Dropdown(
                            [(shown, name) for name, shown in SAMPLER_NAMES.items()],
                            value="ddpm",
                            label=t_("sampler"),
                            min_width=150,  # a narrow row wraps instead of squeezing a label a character a line
                        ),
                        key="sampler",
                    )
                    steps = add(
                        StrictSlider(1, 1000, value=100, step=1, label=t_("steps"), min_width=150), key="steps"
                    )
                with gr.Row():
                    label = add(
                        IntegerDropdown(t_("label_choices"), value=-1, label=t_("label"), min_width=210), key="label"
                    )  # room for "none (unconditional)"
                    add(label, key="label_choices", attr="choices")
                    scale = add(StrictSlider(0, 5, value=1, step=0.5, label=t_("scale"), min_width=150), key="scale")
                    seed = add(
                        StrictNumber(
                            value=0, precision=0, label=t_("seed"), minimum=0, maximum=2**32 - 1, min_width=120
                        ),
                        key="seed",
                    )
                sample_btn = add(gr.Button(t_("sample"), elem_id="lab-sample"), key="sample", attr="value")
                rev_plot = add(gr.Plot(label=t_("reverse_plot"), elem_id="lab-reverse"), key="reverse_plot")
                sampled = gr.Markdown(elem_id="lab-sampled")
                quality_btn = add(gr.Button(t_("quality"), elem_id="lab-quality-btn"), key="quality", attr="value")
                quality_plot = add(gr.Plot(label=t_("quality_plot"), elem_id="lab-quality"), key="quality_plot")
            with gr.Column(min_width=300):
                field_t = add(StrictSlider(0, 999, value=100, step=1, label=t_("field_t")), key="field_t")
                field_plot = add(gr.Plot(label=t_("field_plot"), elem_id="lab-field"), key="field_plot")
                field_info = gr.Markdown(elem_id="lab-field-info")
        with gr.Row():
            with gr.Column(min_width=300):
                # captions above, not gradio's label: an image's label sits over the figure's title
                add(gr.Markdown(t_("anim_plot")), key="anim_plot", attr="value")
                gr.HTML(elem_id="lab-player")  # lab_player.js builds the canvas and its controls here
                paths = gr.JSON(visible=False, elem_id="lab-paths-data")  # /lab_sample's paths, for the player
            posterior = _posterior_panel(t_, add)
    reverse = (sampler, steps, label, scale, seed, sample_btn, [rev_plot, sampled, paths])
    quality_btn.click(lab_quality, [run, ctx.lang], quality_plot, api_name="lab_quality", **RUN_GROUP)
    _wire(ctx, run, train_io, (fwd_t, fwd_plot), reverse, (field_t, field_plot, field_info), posterior)


def _train_panel(t_, add) -> tuple:
    """The data and training controls, the loss curve and the data plot (one row); returns (inputs, button,
    outputs) of the training event and the drawing canvas (whose value the inputs' hidden copy takes on Train)."""
    with gr.Row():
        with gr.Column(scale=1, min_width=280):
            dataset = add(
                gr.Radio(t_("dataset_choices"), value="moons", label=t_("dataset"), elem_id="lab-dataset"),
                key="dataset",
            )
            add(dataset, key="dataset_choices", attr="choices")
            with gr.Column(visible=False) as drawing:  # shown for the "drawn" data set only
                # a caption above, not gradio's label: the editor's canvas covers its own label
                add(gr.Markdown(t_("sketch"), elem_id="lab-sketch-caption"), key="sketch", attr="value")
                sketch = add(
                    # the canvas at the size it is read at; on a white background, not empty, because an empty
                    # canvas opens with the image tool and draws nothing until the brush is picked
                    SafeSketchpad(
                        value={"background": BLANK_CANVAS, "layers": [], "composite": None},
                        label=t_("sketch"),
                        show_label=False,
                        canvas_size=(SKETCH_SIDE, SKETCH_SIDE),
                        elem_id="lab-sketch",
                    ),
                    key="sketch",
                )
                # what /lab_train reads: the page copies the canvas's value here once per Train (SKETCH_COPY_JS), as
                # the editor uploads its drawing again each time the page reads it, and the page reads an event's
                # inputs more than once (a first message, each streamed loss); hidden, never drawn, this one is read
                # from its value, with no upload
                sent = SafeSketchpad(
                    value={"background": BLANK_CANVAS, "layers": [], "composite": None},
                    label=t_("sketch"),
                    canvas_size=(SKETCH_SIDE, SKETCH_SIDE),
                    visible=False,
                    elem_id="lab-sketch-sent",
                )
            # its progress shown on the radio, not on the column: the page re-reads every block inside an event's
            # progress targets at each status change of any event, and re-reading the canvas uploads the drawing
            dataset.change(
                _sketch_visibility,
                dataset,
                drawing,
                show_progress_on=dataset,
                show_progress="hidden",
                api_visibility="private",
            )
            schedule = add(gr.Dropdown(SCHEDULE_CHOICES, value="linear", label=t_("schedule")), key="schedule")
            prediction = add(
                gr.Radio(t_("prediction_choices"), value="epsilon", label=t_("prediction")), key="prediction"
            )
            add(prediction, key="prediction_choices", attr="choices")
            points = add(
                gr.Radio(t_("points_choices"), value=N_TRAIN, label=t_("points"), elem_id="lab-points"), key="points"
            )
            add(points, key="points_choices", attr="choices")
            go = add(gr.Button(t_("train"), variant="primary", elem_id="lab-train"), key="train", attr="value")
            trained = gr.Markdown(elem_id="lab-trained")
        with gr.Column(scale=1, min_width=280):
            loss = gr.LinePlot(
                x="step", y="loss", title=t_("loss"), x_title=t_("loss_x"), y_title=t_("loss_y"), height=240
            )
            add(loss, key="loss", attr="title"), add(loss, key="loss_x", attr="x_title")
            add(loss, key="loss_y", attr="y_title")
        with gr.Column(scale=1, min_width=280):
            data_plot = add(gr.Plot(label=t_("data_plot"), elem_id="lab-data"), key="data_plot")
    return [dataset, schedule, prediction, sent, points], go, [loss, data_plot, trained], sketch


def _posterior_panel(t_, add) -> dict:
    """The controls and panels of one reverse step at a clicked point (two columns); returns them by name."""
    with gr.Column(min_width=300):
        add(gr.Markdown(t_("post_intro"), latex_delimiters=LATEX), key="post_intro", attr="value")
        with gr.Row():
            c = {"t": add(StrictSlider(1, 999, value=300, step=1, label=t_("post_t")), key="post_t")}
            c["jump"] = add(StrictSlider(1, 999, value=100, step=1, label=t_("post_jump")), key="post_jump")
        with gr.Row():
            c["x"] = add(StrictNumber(value=0.5, label=t_("post_x"), elem_id="lab-post-x"), key="post_x")
            c["y"] = add(StrictNumber(value=0.25, label=t_("post_y"), elem_id="lab-post-y"), key="post_y")
        c["own"] = add(gr.Checkbox(False, label=t_("post_own"), elem_id="lab-post-own"), key="post_own")
        with gr.Row():
            c["x0x"] = add(StrictNumber(value=0.0, label=t_("post_x0x")), key="post_x0x")
            c["x0y"] = add(StrictNumber(value=0.0, label=t_("post_x0y")), key="post_x0y")
        c["mode"] = add(
            gr.Radio(t_("post_mode_choices"), value="x_t", label=t_("post_mode"), elem_id="lab-post-mode"),
            key="post_mode",
        )
        add(c["mode"], key="post_mode_choices", attr="choices")
        add(gr.Markdown(t_("post_overview")), key="post_overview", attr="value")
        c["overview"] = add(
            gr.Image(
                label=t_("post_overview"), show_label=False, interactive=False, format="png", elem_id="lab-post-click"
            ),
            key="post_overview",
        )
    with gr.Column(min_width=300):
        c["zoom"] = add(gr.Plot(label=t_("post_zoom"), elem_id="lab-post-zoom"), key="post_zoom")
        c["info"] = gr.Markdown(elem_id="lab-post-info")
    return c


def _wire(ctx, run, train_io, forward, reverse, field, post: dict) -> None:
    """The lab's events: training (one at a time: seconds of CPU each), then the four panels it refreshes, each
    also on its own control."""
    (settings, go, train_out, sketch), (fwd_t, fwd_plot), (field_t, field_plot, field_info) = train_io, forward, field
    sampler, steps, label, scale, seed, sample_btn, rev_out = reverse
    lab = dict(concurrency_id="lab", concurrency_limit=4)  # the quick plots (a tenth of a second each)
    # in the page alone: the canvas is read (its drawing uploaded) once, into the hidden input of /lab_train
    copied = go.click(None, sketch, settings[3], js="(drawing) => drawing", api_visibility="private")
    trained_ev = copied.then(
        lab_train,
        [*settings, ctx.lang],
        [*train_out, run],
        api_name="lab_train",
        concurrency_id="lab_train",  # never ahead of the quick plots; its steps take turns of the CPU
        concurrency_limit=2,
    )
    fwd = dict(fn=lab_forward, inputs=[run, fwd_t, ctx.lang], outputs=fwd_plot, **lab)
    rev = dict(fn=lab_sample, inputs=[run, sampler, steps, label, scale, seed, ctx.lang], outputs=rev_out, **RUN_GROUP)
    # the player draws every kept step from the paths sampling returned (lab_player.js): no request while it plays
    play = dict(fn=None, inputs=rev_out[-1], outputs=None, js=PLAYER_LOAD_JS)
    ctx.demo.load(None, None, None, js=PLAYER_JS)
    where = [post[k] for k in ("x", "y", "own", "x0x", "x0y")]
    pst = dict(
        fn=lab_posterior,
        inputs=[run, post["t"], post["jump"], *where, ctx.lang],
        outputs=[post["overview"], post["zoom"], post["info"]],
        **lab,
    )
    fld = dict(fn=lab_field, inputs=[run, field_t, ctx.lang], outputs=[field_plot, field_info], **lab)
    fwd_t.release(api_name="lab_forward", **fwd)
    sample_btn.click(api_name="lab_sample", **rev).then(**play)
    field_t.release(api_name="lab_field", **fld)
    triggers = [post["t"].release, post["jump"].release, post["own"].input]
    gr.on(triggers + [post[k].submit for k in ("x", "y", "x0x", "x0y")], api_name="lab_posterior", **pst)
    post["overview"].select(_clicked, [post["mode"], *where], where, api_visibility="private").then(
        api_visibility="private", **pst
    )
    trained_ev.success(api_visibility="private", **fwd).then(api_visibility="private", **rev).then(**play).then(
        api_visibility="private", **fld
    ).then(api_visibility="private", **pst)
