"""Noise, then denoise: an upload noised to step t, then the reverse process from there with several seeds: DDPM
generates an image of what it learned, it does not restore an image it never saw. Endpoint ``/denoise_from_t``."""

from __future__ import annotations

import functools

import gradio as gr
import torch

from ddpm_core.imaging import tensor_to_pil
from ddpm_core.sampling import generate_steps
from ui.common import (
    DEFAULT_STEPS,
    LATEX,
    MAX_SEEDS,
    RUN_TEXT,
    SAMPLER_WORKERS,
    T_MAX,
    check_model,
    check_request_cost,
    display,
    drive,
    fast_path,
    gpu,
    image_tensor,
    int_arg,
    model,
    model_dropdown,
    previews,
    seed_arg,
    user_errors,
)
from ui.components import StrictNumber, StrictSlider, image_with_examples
from ui.files import png
from ui.i18n import tr

TEXT = {
    "en": {
        "tab": "Noise, then denoise",
        "image": "Image",
        "examples": "Examples",
        "model": "Model",
        "t": "Noise to t",
        "seeds": "Seeds",
        "steps": "Reverse steps",
        "seed": "Seed",
        "go": "Noise, then denoise",
        "gallery": "Original, x_t, and what the model makes of it",
        "denoise": r"""### Noise, then denoise: generation, not restoration
Noise your image to step $t$, then run the reverse process from there with several seeds. For small $t$ the
results stay close to the original; for large $t$ they keep only its coarse layout and become **new** images of
what the model learned. The model never saw your image: it learned a *distribution* from its training images, and
from $x_t$ it draws an image of that distribution, not yours. Its *training* images are another matter, and how
many there were decides it. For a data set of one image $x_0$, every $x_t$ can only have come from $x_0$: the
data's own reverse step $q(x_{t-1} \mid x_t)$ is then the true posterior $q(x_{t-1} \mid x_t, x_0)$, it ends on
$x_0$, and a well-trained network reproduces $x_0$. Measured here: the bundled model's architecture, trained on one
digit, drew that digit in 64 of 64 samples; on ten digits, 63 of 64 samples were copies of them; the bundled model,
trained on 3,000, copied none. A model trained on a few images copies them; it generates new ones only once its
data is large enough (Kadkhodaie, Guth, Simoncelli & Mallat, ICLR 2024). Try it in the 2D lab: train on one
point, then on all of them. (Images are centre-cropped and resized to the model's resolution.)""",
        "denoising": "Denoising",
        "original": "original x₀",
        "sample": "sample {k}",
        "info": "Reverse process from t = {t} with {n} steps on **{name}** · {secs:.1f} s · mean squared distance "
        "to the original per sample: {mse}",
    },
    "zh": {
        "tab": "先加噪再去噪",
        "image": "图像",
        "examples": "示例",
        "model": "模型",
        "t": "加噪到 t",
        "seeds": "种子数",
        "steps": "逆向步数",
        "seed": "随机种子",
        "go": "先加噪，再去噪",
        "gallery": "原图、x_t，以及模型由此生成的图像",
        "denoise": r"""### 先加噪，再去噪：是生成，不是复原
把你的图像加噪到第 $t$ 步，再用多个随机种子从这里运行逆向过程。$t$ 较小时结果接近原图；$t$ 较大时只保留大致布局，
变成模型所学分布中的**新**图像。模型从没见过你的图像：它从训练图像中学到的是一个**分布**，从 $x_t$ 出发，它画出的是
这个分布中的一张图，而不是你的那张。训练图像则另当别论，取决于训练图像有多少。如果数据集只有一张图 $x_0$，
任何 $x_t$ 都只可能来自 $x_0$：数据本身的逆向一步 $q(x_{t-1} \mid x_t)$ 就是真实后验 $q(x_{t-1} \mid x_t, x_0)$，
它终止于 $x_0$，训练充分的网络会把 $x_0$ 复现出来。这里的测量：与内置模型同样的结构只用一个数字训练，
64 个样本全是这个数字；用十个数字训练，64 个样本中 63 个是它们的副本；用 3,000 个数字训练的内置模型一个也没有复制。
用少数几张图训练的模型会复制它们；只有数据足够多时，模型才会生成新图像（Kadkhodaie、Guth、Simoncelli 与 Mallat，
ICLR 2024）。可以在二维实验室里亲自试：先只用一个点训练，再用全部的点。（图像会被居中裁剪并缩放到模型分辨率。）""",
        "denoising": "去噪",
        "original": "原图 x₀",
        "sample": "样本 {k}",
        "info": "在 **{name}** 上从 t = {t} 开始逆向 {n} 步 · {secs:.1f} 秒 · 每个样本与原图的均方距离：{mse}",
    },
}


@gpu(duration=120)
@user_errors
def denoise_from_t(image, model_name, t, n_seeds, steps, seed, lang="en", progress=gr.Progress()):
    """Noise an upload to step t, then run the reverse process from x_t with several seeds (the notes' experiment)."""
    n_seeds = int_arg(n_seeds, "number of seeds", 1, MAX_SEEDS)
    seed = seed_arg(seed)
    progress(0, desc=tr(RUN_TEXT, "loading", lang, name=model_name))
    m = model(model_name)
    T = m.diffusion.num_timesteps
    t = int_arg(t, "t", 0, T - 1)
    n_steps = int_arg(steps, "steps", 1, T_MAX)
    C, H, _ = m.sample_shape
    x0 = image_tensor(image, mode="L" if C == 1 else "RGB", crop=H)
    x_t = m.diffusion.q_sample(x0, t, generator=torch.Generator().manual_seed(seed)).repeat(n_seeds, 1, 1, 1)
    original = tensor_to_pil(x0)[0]
    noisy = tensor_to_pil(x_t[:1].clamp(-1, 1))[0]
    head = [
        (png(display(original), "original.png"), tr(TEXT, "original", lang)),
        (png(display(noisy), f"x_t-t{t}.png"), f"x_t, t={t}"),
    ]
    # no background upgrade: the slider's t makes nearly every request's schedule a new one
    mode = fast_path(m)["mode"]
    steps = generate_steps(m, seed=seed + 1, num_inference_steps=n_steps, start=(x_t, t), n_frames=2, mode=mode)
    total = steps.evaluations
    check_request_cost(m, total, n_seeds)
    for kind, item in drive(steps, total, progress, tr(TEXT, "denoising", lang), lang):
        if kind == "done":
            result = item
        elif kind == "preview":
            yield head + previews(item, f"x̂₀, t={item.timestep}"), gr.skip()
        else:
            yield gr.skip(), gr.skip()
    outs = tensor_to_pil(result.samples.clamp(-1, 1))
    gallery = head + [
        (png(display(img), f"denoised-{k + 1}.png"), tr(TEXT, "sample", lang, k=k + 1)) for k, img in enumerate(outs)
    ]
    mse = ((result.samples - x0) ** 2).mean(dim=(1, 2, 3))
    info = tr(
        TEXT,
        "info",
        lang,
        t=t,
        n=len(result.timesteps),
        name=m.name,
        secs=result.seconds,
        mse=", ".join(f"{d:.3f}" for d in mse.tolist()),
    )
    yield gallery, info


def build(ctx) -> None:
    t_ = functools.partial(tr, TEXT)
    add = functools.partial(ctx.i18n.add, text=TEXT)
    with add(gr.Tab(t_("tab"), id="denoise"), key="tab"):
        with gr.Row():
            with gr.Column(scale=1, min_width=300):
                image, examples = image_with_examples(t_("image"), 240, "denoise-image", t_("examples"))
                add(image, key="image"), add(examples, key="examples")
                model_in = add(model_dropdown(ctx, t_("model")), key="model")
                t = add(StrictSlider(0, T_MAX - 1, value=400, step=1, label=t_("t")), key="t")
                seeds = add(
                    StrictSlider(1, MAX_SEEDS, value=3, step=1, label=t_("seeds"), elem_id="denoise-seeds"),
                    key="seeds",
                )  # 2 + 3: one row
                steps = add(StrictSlider(1, T_MAX, value=DEFAULT_STEPS, step=1, label=t_("steps")), key="steps")
                seed = add(
                    StrictNumber(value=0, precision=0, label=t_("seed"), minimum=0, maximum=2**32 - 1), key="seed"
                )
                go = add(gr.Button(t_("go"), variant="primary", elem_id="denoise-btn"), key="go", attr="value")
            with gr.Column(scale=2):
                gallery = add(
                    gr.Gallery(label=t_("gallery"), columns=5, height="auto", format="png", elem_id="denoise-gallery"),
                    key="gallery",
                )
                info = gr.Markdown(elem_id="denoise-info")
        add(gr.Markdown(t_("denoise"), latex_delimiters=LATEX), key="denoise", attr="value")
    go.click(check_model, [model_in, ctx.lang], None, api_visibility="private", concurrency_id="sampler").success(
        denoise_from_t,
        [image, model_in, t, seeds, steps, seed, ctx.lang],
        [gallery, info],
        api_name="denoise_from_t",
        concurrency_limit=SAMPLER_WORKERS,
        concurrency_id="sampler",
        time_limit=600,
    )
