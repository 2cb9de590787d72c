"""Sampling = generation: a batch from the bundled model or a Hub checkpoint, with a live preview, the reverse
trajectory, an animation and downloads. Endpoint ``/sample``."""

from __future__ import annotations

import functools
import io
import math
import random
import zipfile

import gradio as gr
import torch

from ddpm_core.imaging import make_grid, save_animation, tensor_to_pil
from ddpm_core.samplers import SAMPLERS
from ddpm_core.sampling import generate_steps
from ui.common import (
    DEFAULT_BATCH,
    DEFAULT_SAMPLER,
    DEFAULT_STEPS,
    DEVICE,
    LATEX,
    MAX_BATCH,
    ON_CPU,
    RUN_TEXT,
    SAMPLER_WORKERS,
    T_MAX,
    check_model,
    check_request_cost,
    display,
    drive,
    fast_path,
    gpu,
    int_arg,
    model,
    model_dropdown,
    previews,
    seed_arg,
    user_errors,
)
from ui.components import StrictNumber, StrictSlider, short_repr
from ui.errors import say
from ui.files import out_path, png
from ui.i18n import tr

VARIANCE_CHOICES = ["model default", "fixed_small", "fixed_large", "learned_range"]
VARIANCE_ZH = {"model default": "模型默认"}  # what the dropdown shows in Chinese; the values stay
ALL_STEPS = "DDPM (all T steps)"  # the paper's chain; every registered sampler with a step count follows
BY_LABEL = {s.label: s for s in SAMPLERS.values()}
SAMPLER_CHOICES = [ALL_STEPS, *BY_LABEL]
# what the Sampler radio shows in Chinese; its values (the API's) are the English labels in every language
SAMPLER_ZH = {
    ALL_STEPS: "DDPM（全部 T 步）",
    "DDPM (fewer steps)": "DDPM（较少步数）",
    "Euler (Karras sigmas)": "Euler（Karras 噪声水平）",
    "Heun (Karras sigmas)": "Heun（Karras 噪声水平）",
}

TEXT = {
    "en": {
        "tab": "Sample",
        "model": "Model (bundled, or type a Hub id: owner/name)",
        "sampler": "Sampler",
        "sampler_choices": [(c, c) for c in SAMPLER_CHOICES],
        "variance_choices": [(c, c) for c in VARIANCE_CHOICES],
        "steps": "Steps",
        "eta": "DDIM η",
        "variance": "Reverse-step variance",
        "batch": "Batch size",
        "seed": "Seed",
        "go": "Generate",
        "gallery": "Samples",
        "trajectory": "Reverse trajectory: x_t (top), predicted x̂₀ (bottom)",
        "animation": "The whole reverse process",
        "downloads": "Download (PNGs, GIF)",
        "cpu_note": "Running on the CPU: defaults use the small bundled model and fewer steps. All steps are allowed.",
        "gpu_note": "Running on the GPU ({device}, {dtype}).",
        "sample": r"""### Sampling = generation
Start from pure noise $x_T \sim \mathcal N(0, I)$ and apply the learned reverse step $T$ times:
$$x_{t-1} = \tilde\mu_t\big(x_t, \hat x_0(x_t, t)\big) + \sigma_t z,\qquad \hat x_0 = \tfrac{1}{\sqrt{\bar\alpha_t}}\big(x_t - \sqrt{1-\bar\alpha_t}\,\epsilon_\theta(x_t, t)\big).$$
**DDPM (fewer steps)** keeps a subset of timesteps with $\beta'_t = 1-\bar\alpha_t/\bar\alpha_{t'}$; **DDIM** takes
$\eta\in[0,1]$: $\eta=0$ is deterministic, $\eta=1$ is DDPM-like. The trajectory shows $x_t$ (top) and the model's
predicted $\hat x_0$ (bottom) as the noise is removed. **DPM-Solver++** (2M, 3M: multistep ODE solvers; 2M SDE:
stochastic), **UniPC** (predictor-corrector) and **Euler** / **Heun** on Karras et al.'s noise levels (Heun evaluates
the network twice per step) reach good samples in 10 to 20 evaluations. Each sampler is this repo's own, proven
equal by its tests to the diffusers scheduler built from the model's config.""",
    },
    "zh": {
        "tab": "采样",
        "model": "模型（内置，或输入 Hub id：owner/name）",
        "sampler": "采样器",
        "sampler_choices": [(SAMPLER_ZH.get(c, c), c) for c in SAMPLER_CHOICES],
        "variance_choices": [(VARIANCE_ZH.get(c, c), c) for c in VARIANCE_CHOICES],
        "steps": "步数",
        "eta": "DDIM η",
        "variance": "逆向一步的方差",
        "batch": "批大小",
        "seed": "随机种子",
        "go": "生成",
        "gallery": "样本",
        "trajectory": "逆向轨迹：x_t（上）与预测的 x̂₀（下）",
        "animation": "完整的逆向过程",
        "downloads": "下载（PNG、GIF）",
        "cpu_note": "当前在 CPU 上运行：默认使用内置小模型和较少步数，也可选择全部步数。",
        "gpu_note": "当前在 GPU 上运行（{device}，{dtype}）。",
        "sample": r"""### 采样就是生成
从纯噪声 $x_T \sim \mathcal N(0, I)$ 出发，反复应用学到的逆向一步：
$$x_{t-1} = \tilde\mu_t\big(x_t, \hat x_0(x_t, t)\big) + \sigma_t z,\qquad \hat x_0 = \tfrac{1}{\sqrt{\bar\alpha_t}}\big(x_t - \sqrt{1-\bar\alpha_t}\,\epsilon_\theta(x_t, t)\big).$$
**DDPM（较少步数）** 只保留部分时间步，并取 $\beta'_t = 1-\bar\alpha_t/\bar\alpha_{t'}$；**DDIM** 有参数 $\eta\in[0,1]$：
$\eta=0$ 为确定性采样，$\eta=1$ 接近 DDPM。轨迹图上排是 $x_t$，下排是模型预测的 $\hat x_0$。**DPM-Solver++**（2M、3M：
多步 ODE 求解器；2M SDE：随机）、**UniPC**（预测-校正）以及在 Karras 等人噪声水平上的 **Euler** / **Heun**（Heun 每步调用
两次网络）用 10 到 20 次网络调用即可得到好的样本。每个采样器都是本仓库自己的实现，测试证明它与按模型配置构建的 diffusers
调度器数值一致。""",
    },
}


# ---------------------------------------------------------------- handlers
def _sampler_and_steps(choice: str, steps):
    """(registered sampler, inference steps or None for all T) for a choice of the Sampler radio."""
    if not isinstance(choice, str) or choice not in SAMPLER_CHOICES:
        raise ValueError(f"unknown sampler {short_repr(choice)}; choose one of {', '.join(SAMPLER_CHOICES)}")
    if choice == ALL_STEPS:
        return SAMPLERS["ddpm"], None
    return BY_LABEL[choice], int_arg(steps, "steps", 1, T_MAX)


def _eta(eta) -> float:
    eta = float(eta) if isinstance(eta, (int, float)) and not isinstance(eta, bool) and math.isfinite(eta) else None
    if eta is None or not 0 <= eta <= 1:
        raise ValueError("eta must be between 0 and 1")
    return eta


def _trajectory_image(snapshots):
    """Two rows for the first sample: x_t (top) and the predicted x_0 (bottom), labelled with t."""
    tops = [tensor_to_pil(x[:1].clamp(-1, 1))[0] for _, x, _ in snapshots]
    bottoms = [tensor_to_pil(x0[:1].clamp(-1, 1))[0] for _, _, x0 in snapshots]
    scale = max(1, 96 // tops[0].height)
    # the bottom row is named by the image's label, in the page's language; PIL's font draws no x̂₀ nor Chinese
    labels = [f"t={t:g}" for t, _, _ in snapshots] + [""] * len(bottoms)
    return make_grid(tops + bottoms, ncols=len(tops), labels=labels, scale=scale, pad=3)


def _animation(frames, seed: int) -> str:
    """The reverse process as a GIF: each frame (x_t ``[B x C x H x W]``) as a grid, small models upscaled."""
    batch, height = frames[0].shape[0], frames[0].shape[2]
    ncols = min(batch, max(1, math.ceil(math.sqrt(batch))))
    grids = [make_grid(tensor_to_pil(f.clamp(-1, 1)), ncols=ncols, scale=max(1, 128 // height)) for f in frames]
    return str(save_animation(grids, out_path(f"reverse-process-seed{seed}.gif")))


def _archive(images, seed: int) -> str:
    archive = out_path(f"samples-seed{seed}.zip")
    with zipfile.ZipFile(archive, "w") as z:
        for k, img in enumerate(images):
            buf = io.BytesIO()
            img.save(buf, format="PNG")
            z.writestr(f"sample_{seed}_{k:02d}.png", buf.getvalue())
    return str(archive)


#: What the handler writes, per language: the run's summary and the progress lines.
SAID = {
    "en": {
        "summary": "**{name}** ({source}, {params:.1f}M parameters, {shape}) · {n} {label} steps{evals} · {how} · "
        "seed {seed} · "
        "{device} {dtype} · {secs:.1f} s ({path}{setup})",
        "setup": "; {s:.1f} s of one-off set-up",
        "eta": "η = {eta:g}",
        "variance": "variance {v}",
        "deterministic": "deterministic",
        "stochastic": "stochastic",
        "evals": " ({e} network evaluations)",
        "unit_steps": "steps",
        "unit_evals": "network evaluations",
        "source_bundled": "bundled",
        "source_hub": "Hub",
        "starting": "Sampling… {total} {unit}",
        "preview": "Sampling… {k} of {total} {unit} (preview: the predicted x̂₀)",
        "sampling": "Sampling",
        "x0_at": "x̂₀ at t={t:g}",
    },
    "zh": {
        "summary": "**{name}**（{source}，{params:.1f}M 参数，{shape}）· {n} 步 {label}{evals} · {how} · 种子 {seed} · "
        "{device} {dtype} · {secs:.1f} 秒（{path}{setup}）",
        "setup": "；其中一次性准备 {s:.1f} 秒",
        "eta": "η = {eta:g}",
        "variance": "方差 {v}",
        "deterministic": "确定性",
        "stochastic": "随机",
        "evals": "（{e} 次网络调用）",
        "unit_steps": "步",
        "unit_evals": "次网络调用",
        "source_bundled": "内置",
        "source_hub": "Hub",
        "starting": "采样中… 共 {total} {unit}",
        "preview": "采样中… 第 {k} / {total} {unit}（预览：预测的 x̂₀）",
        "sampling": "采样",
        "x0_at": "t={t:g} 时的 x̂₀",
    },
}


#: The fast path's words (``ddpm_core.fast``'s ``FastLoop.path``) in Chinese, longest first: product names stay.
PATH_ZH = (
    ("frozen TorchScript is the CPU path", "冻结的 TorchScript 只用于 CPU"),
    ("the TorchScript trace did not match the module", "TorchScript 追踪的结果与模块不一致"),
    ("TorchScript trace failed", "TorchScript 追踪失败"),
    ("torch.compile failed", "torch.compile 失败"),
    ("CUDA graph capture failed", "CUDA 图捕获失败"),
    ("no CUDA graph: not a CUDA device", "没有 CUDA 图：不是 CUDA 设备"),
    ("one CUDA graph per step", "每步一个 CUDA 图"),
    ("frozen TorchScript", "冻结的 TorchScript"),
    ("eager channels_last", "逐算子执行，channels_last"),
    ("eager", "逐算子执行"),
    (" (", "（"),
    (")", "）"),
    (": ", "："),
    (", ", "，"),
)


def path_text(path: str, lang: str = "en") -> str:
    """What runs (``FastLoop.path``) as the summary says it in ``lang``."""
    if lang == "zh":
        for en, zh in PATH_ZH:
            path = path.replace(en, zh)
    return path


def _summary(m, result, sampler, eta: float, variance: str, seed: int, lang: str = "en", steps: int = 0) -> str:
    # the variance only matters to samplers that draw noise with it (DDPM); DDIM's is set by eta
    if sampler.uses_eta:
        how = tr(SAID, "eta", lang, eta=eta)
    elif sampler.name == "ddpm":
        how = tr(SAID, "variance", lang, v=variance if variance != "model default" else m.diffusion.variance_type)
    else:
        how = tr(SAID, "deterministic" if sampler.is_deterministic(eta) else "stochastic", lang)
    evals = len(result.timesteps)
    steps = steps or evals
    setup = tr(SAID, "setup", lang, s=result.setup_seconds) if result.setup_seconds >= 0.5 else ""
    shape = "×".join(map(str, m.sample_shape))
    return tr(
        SAID,
        "summary",
        lang,
        name=m.name,
        source=tr(SAID, "source_" + m.source, lang) if m.source in ("bundled", "hub") else m.source,
        params=m.num_parameters / 1e6,
        shape=shape,
        n=steps,
        label=sampler.short_label,
        evals="" if evals == steps else tr(SAID, "evals", lang, e=evals),
        how=how,
        seed=seed,
        device=result.device,
        dtype=result.dtype,
        secs=result.seconds,
        path=path_text(result.path, lang),
        setup=setup,
    ) + "".join(f"\n\n_{say(n, lang)}_" for n in m.notes)


@gpu(duration=120)
@user_errors
def sample(model_name, sampler, steps, eta, variance, batch_size, seed, lang="en", progress=gr.Progress()):
    """Generate a batch with ddpm_core's sampler: gallery, trajectory, animation, downloads and a summary.
    Streams a preview (the predicted x_0) about ten times while sampling."""
    chosen, n_steps = _sampler_and_steps(sampler, steps)
    batch_size = int_arg(batch_size, "batch size", 1, MAX_BATCH)
    seed, eta = seed_arg(seed), _eta(eta)
    if variance not in VARIANCE_CHOICES:
        raise ValueError(f"unknown variance {short_repr(variance)}; choose one of {', '.join(VARIANCE_CHOICES)}")
    progress(0, desc=tr(RUN_TEXT, "loading", lang, name=model_name))
    m = model(model_name)
    steps = generate_steps(
        m,
        batch_size=batch_size,
        seed=seed,
        sampler=chosen.name,
        num_inference_steps=n_steps,
        eta=eta,
        variance_type=None if variance == "model default" else variance,
        **fast_path(m),
    )
    total = steps.evaluations  # the loop's positions: network evaluations
    check_request_cost(m, total, batch_size)
    unit = tr(SAID, "unit_steps" if total == len(steps.timesteps) else "unit_evals", lang)
    yield gr.skip(), gr.skip(), gr.skip(), gr.skip(), tr(SAID, "starting", lang, total=total, unit=unit)
    for kind, item in drive(steps, total, progress, tr(SAID, "sampling", lang), lang):
        if kind == "done":
            result = item
        elif kind == "preview":
            yield (
                previews(item, tr(SAID, "x0_at", lang, t=item.timestep)),
                gr.skip(),
                gr.skip(),
                gr.skip(),
                tr(SAID, "preview", lang, k=item.index + 1, total=total, unit=unit),
            )
        else:
            yield gr.skip(), gr.skip(), gr.skip(), gr.skip(), gr.skip()
    images = tensor_to_pil(result.samples.clamp(-1, 1))
    gif = _animation(result.frames, seed)
    gallery = [(png(display(img), f"sample-{k}.png"), f"#{k}") for k, img in enumerate(images)]
    yield (
        gallery,
        png(_trajectory_image(result.snapshots), "trajectory.png"),
        gif,
        [_archive(images, seed), gif],
        _summary(m, result, chosen, eta, variance, seed, lang, len(steps.timesteps)),
    )


def randomize_seed():
    return random.randint(0, 2**31 - 1)


def steps_visibility(choice):
    """Steps for every choice but all-T DDPM (with the sampler's usual count), eta for samplers that take it."""
    chosen = BY_LABEL.get(choice)
    if chosen is None:
        return gr.update(visible=False), gr.update(visible=False)
    steps = (
        gr.update(visible=True)
        if chosen.default_steps is None
        else gr.update(visible=True, value=chosen.default_steps)
    )
    return steps, gr.update(visible=chosen.uses_eta)


def default_choice() -> str:
    """The Sampler radio's default: the measured default setting (``ui.common.default_setting``) as a choice."""
    if DEFAULT_SAMPLER == "ddpm" and DEFAULT_STEPS >= T_MAX:
        return ALL_STEPS
    return SAMPLERS[DEFAULT_SAMPLER].label


def device_note_args() -> dict:
    return {} if ON_CPU else {"device": torch.cuda.get_device_name(DEVICE), "dtype": "float16"}


# ---------------------------------------------------------------- layout
def _controls(ctx, t_, add) -> tuple:
    """The left column: model, sampler, steps, eta, variance, batch, seed (with its dice) and the button."""
    model_in = add(model_dropdown(ctx, t_("model"), "model"), key="model")
    sampler = add(gr.Radio(t_("sampler_choices"), value=default_choice(), label=t_("sampler")), key="sampler")
    add(sampler, key="sampler_choices", attr="choices")
    steps = add(StrictSlider(1, T_MAX, value=DEFAULT_STEPS, step=1, label=t_("steps")), key="steps")
    eta = add(
        StrictSlider(0, 1, value=0.0, step=0.05, label=t_("eta"), visible=SAMPLERS[DEFAULT_SAMPLER].uses_eta),
        key="eta",
    )
    variance = add(gr.Dropdown(t_("variance_choices"), value="model default", label=t_("variance")), key="variance")
    add(variance, key="variance_choices", attr="choices")
    batch = add(StrictSlider(1, MAX_BATCH, value=DEFAULT_BATCH, step=1, label=t_("batch")), key="batch")
    with gr.Row():
        seed = add(
            StrictNumber(
                value=0, precision=0, label=t_("seed"), minimum=0, maximum=2**32 - 1, scale=3, elem_id="seed"
            ),
            key="seed",
        )
        dice = gr.Button("🎲", scale=1, min_width=60)
    go = add(gr.Button(t_("go"), variant="primary", elem_id="run-btn"), key="go", attr="value")
    note_key = "cpu_note" if ON_CPU else "gpu_note"
    add(gr.Markdown(t_(note_key).format(**device_note_args())), key=note_key, attr="value", **device_note_args())
    return model_in, sampler, steps, eta, variance, batch, seed, dice, go


def _outputs(t_, add) -> tuple:
    """The right column: the gallery, the run's summary, the trajectory, the animation and the downloads."""
    gallery = add(
        gr.Gallery(label=t_("gallery"), columns=4, height=420, format="png", elem_id="gallery", object_fit="contain"),
        key="gallery",
    )
    info = gr.Markdown(elem_id="sample-info")
    with gr.Row():
        trajectory = add(
            gr.Image(label=t_("trajectory"), format="png", interactive=False, elem_id="trajectory"), key="trajectory"
        )
    with gr.Row():
        animation = add(
            gr.Image(label=t_("animation"), type="filepath", interactive=False, height=260, elem_id="animation"),
            key="animation",
        )
        downloads = add(gr.File(label=t_("downloads"), file_count="multiple"), key="downloads")
    return gallery, trajectory, animation, downloads, info


def build(ctx) -> None:
    t_ = functools.partial(tr, TEXT)
    add = functools.partial(ctx.i18n.add, text=TEXT)
    with add(gr.Tab(t_("tab"), id="sample"), key="tab"):
        with gr.Row():
            with gr.Column(scale=1, min_width=300):
                model_in, sampler, steps, eta, variance, batch, seed, dice, go = _controls(ctx, t_, add)
            with gr.Column(scale=2):
                gallery, trajectory, animation, downloads, info = _outputs(t_, add)
        add(gr.Markdown(t_("sample"), latex_delimiters=LATEX), key="sample", attr="value")
    sampler.change(steps_visibility, sampler, [steps, eta], api_visibility="private")
    dice.click(randomize_seed, None, seed, api_visibility="private")
    go.click(check_model, [model_in, ctx.lang], None, api_visibility="private", concurrency_id="sampler").success(
        sample,
        [model_in, sampler, steps, eta, variance, batch, seed, ctx.lang],
        [gallery, trajectory, animation, downloads, info],
        api_name="sample",
        concurrency_limit=SAMPLER_WORKERS,
        concurrency_id="sampler",
        time_limit=600,
    )
