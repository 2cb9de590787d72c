"""Where the loss lives: the variational bound (DDPM eq. 5) of one held-out digit, term by term against t, with
L_simple's terms drawn over it. Endpoint ``/bound``."""

from __future__ import annotations

import functools
import time

import gradio as gr
import numpy as np
import pandas as pd
import torch
from PIL import Image

from ddpm_core.data import mnist_split
from ddpm_core.imaging import center_crop_resize, pil_to_tensor
from ddpm_core.likelihood import BoundTerms, calc_bpd_loop
from ui.common import (
    LATEX,
    ON_CPU,
    SAMPLER_WORKERS,
    check_request_cost,
    display,
    fair_job,
    gpu,
    int_arg,
    model,
    model_dropdown,
    seed_arg,
    user_errors,
)
from ui.components import StrictNumber, StrictSlider
from ui.i18n import tr

TEXT = {
    "en": {
        "tab": "Where the loss lives",
        "model": "Model",
        "digit": "Held-out digit (index)",
        "seed": "Seed (the draws of x_t)",
        "run": "Compute the bound",
        "digit_img": "x₀",
        "plot": "The bound's terms against t (L_simple's scaled to the same sum)",
        "y": "log₁₀ bits/dim",
        "series": "term",
        "summary": "**{total:.3f} bits/dim** for this digit, an upper bound on −log₂ p(x₀) per pixel: L_T {prior:.1e} + "
        "decoder L₀ {decoder:.3f} + the other {n} terms {terms:.3f}. Half of those {n} terms lies at t ≤ {half_bound}; "
        "L_simple's terms put their half at t ≤ {half_simple}. {evals} network evaluations in {seconds:.1f} s.",
        "explain": r"""### Where the loss lives
DDPM is trained on one derivation, the variational bound (Ho et al. 2020, eq. 5):
$$-\log p_\theta(x_0) \le \underbrace{D_{KL}(q(x_T\mid x_0)\,\|\,p(x_T))}_{L_T} + \sum_{t>1}\underbrace{D_{KL}(q(x_{t-1}\mid x_t,x_0)\,\|\,p_\theta(x_{t-1}\mid x_t))}_{L_{t-1}} \underbrace{-\log p_\theta(x_0\mid x_1)}_{L_0}.$$
Each $L_{t-1}$ compares the true posterior (the Forward tab's $\tilde\mu_t$, $\tilde\beta_t$) with the model's step; $L_0$ is a
Gaussian integrated over the digit's 8-bit pixel bins (sec. 3.3). One $x_t$ is drawn per $t$, all $T$ terms are
computed (no subsampling), in bits per pixel. With the noise parameterisation
$L_{t-1} = \frac{\beta_t^2}{2\sigma_t^2\alpha_t(1-\bar\alpha_t)}\,\|\epsilon-\epsilon_\theta\|^2$ (eq. 12); **L_simple** drops that
weight (eq. 14). The plot shows where the bound's mass lies (the first few steps, where the weight is large) and
where L_simple puts its effort instead (spread over all $t$): L_simple gives up likelihood for better samples
(sec. 3.4).""",
    },
    "zh": {
        "tab": "损失在哪里",
        "model": "模型",
        "digit": "留出的数字（序号）",
        "seed": "随机种子（x_t 的抽样）",
        "run": "计算变分界",
        "digit_img": "x₀",
        "plot": "变分界各项随 t 的分布（L_simple 的项缩放到相同总和）",
        "y": "log₁₀ 比特/维",
        "series": "项",
        "summary": "这个数字的变分界为 **{total:.3f} 比特/维**（每个像素 −log₂ p(x₀) 的上界）：L_T {prior:.1e} + "
        "解码项 L₀ {decoder:.3f} + 其余 {n} 项 {terms:.3f}。这 {n} 项的一半落在 t ≤ {half_bound}；"
        "L_simple 的项则一半落在 t ≤ {half_simple}。共 {evals} 次网络计算，用时 {seconds:.1f} 秒。",
        "explain": r"""### 损失在哪里
DDPM 的训练建立在一个推导之上——变分界（Ho 等 2020，式 5）：
$$-\log p_\theta(x_0) \le \underbrace{D_{KL}(q(x_T\mid x_0)\,\|\,p(x_T))}_{L_T} + \sum_{t>1}\underbrace{D_{KL}(q(x_{t-1}\mid x_t,x_0)\,\|\,p_\theta(x_{t-1}\mid x_t))}_{L_{t-1}} \underbrace{-\log p_\theta(x_0\mid x_1)}_{L_0}.$$
每个 $L_{t-1}$ 比较真实后验（前向扩散页中的 $\tilde\mu_t$、$\tilde\beta_t$）与模型的一步；$L_0$ 是高斯分布在数字 8 位像素区间上的积分（3.3 节）。
每个 $t$ 抽一个 $x_t$，计算全部 $T$ 项（不抽样），单位为每像素比特。用噪声参数化时
$L_{t-1} = \frac{\beta_t^2}{2\sigma_t^2\alpha_t(1-\bar\alpha_t)}\,\|\epsilon-\epsilon_\theta\|^2$（式 12）；**L_simple** 去掉了这个权重（式 14）。
图中可见变分界的质量集中在最初几步（权重大），而 L_simple 把力气分散到所有 $t$：L_simple 以似然换取更好的样本（3.4 节）。""",
    },
}

#: The plot's two series, named by their formulas in every language (a legend that changed with the language would
#: no longer match the lines already drawn).
SERIES = {"bound": "L_{t-1}", "simple": "L_simple"}
#: Model evaluations per network call: 4 calls for the bundled model's 1000 terms on a GPU; on a CPU 20, each a turn
#: of the shared CPU of about half a second (ui.fair), so that another visitor's step never waits long behind one.
MAX_BATCH = 50 if ON_CPU else 250


@functools.lru_cache(maxsize=1)
def heldout_digits() -> np.ndarray:
    """The 500 held-out MNIST digits ``[500 x 28 x 28]`` uint8 (neither the model nor the ruler saw them)."""
    return mnist_split("heldout")[0]


def digit_tensor(index: int, channels: int, size: int) -> tuple[torch.Tensor, Image.Image]:
    """Held-out digit ``index`` as the model's input ``[1 x C x size x size]`` on the 8-bit grid, and as an image."""
    img = Image.fromarray(heldout_digits()[index]).convert("L" if channels == 1 else "RGB")
    img = center_crop_resize(img, size) if img.size != (size, size) else img
    return pil_to_tensor(img), img


def half_point(values: np.ndarray) -> int:
    """The smallest k with ``values[:k].sum() >= values.sum() / 2`` (values ``[n]``, non-negative)."""
    return int(np.searchsorted(np.cumsum(values), values.sum() / 2) + 1)


def terms_frame(res: BoundTerms) -> pd.DataFrame:
    """The plot's long table: t, log10 of each term in bits/dim, and which series, for t = 1 .. T-1."""
    bound = res.vb_bpd[0, 1:].cpu().numpy()
    mse = res.mse[0, 1:].cpu().numpy()
    simple = mse * (bound.sum() / max(mse.sum(), 1e-300))
    t = np.arange(1, len(bound) + 1)
    rows = [
        pd.DataFrame({"t": t, "value": np.log10(np.maximum(v, 1e-12)), "series": SERIES[key]})
        for key, v in (("bound", bound), ("simple", simple))
    ]
    return pd.concat(rows, ignore_index=True)


def summary(res: BoundTerms, seconds: float, lang: str = "en") -> str:
    bound = res.vb_bpd[0, 1:].cpu().numpy()
    mse = res.mse[0, 1:].cpu().numpy()
    T = res.vb_bpd.shape[1]
    return tr(TEXT, "summary", lang).format(
        total=float(res.total_bpd[0]),
        prior=float(res.prior_bpd[0]),
        decoder=float(res.decoder_bpd[0]),
        terms=float(bound.sum()),
        n=T - 1,
        half_bound=half_point(bound),
        half_simple=half_point(mse * (bound.sum() / max(mse.sum(), 1e-300))),
        evals=T,
        seconds=seconds,
    )


@gpu(duration=120)
@user_errors
def bound_view(name, digit, seed, lang="en"):
    """The bound of held-out digit ``digit`` under model ``name``: the plot's table, the summary and the digit."""
    digit = int_arg(digit, "digit", 0, len(heldout_digits()) - 1)
    seed = seed_arg(seed)
    m = model(name)
    cfg = m.unet.config
    size = cfg.sample_size if isinstance(cfg.sample_size, int) else cfg.sample_size[0]
    x0, img = digit_tensor(digit, cfg.in_channels, size)
    check_request_cost(m, m.diffusion.num_timesteps)  # T network evaluations of one image
    t0 = time.perf_counter()
    with fair_job() as job:  # each batch of timesteps in a turn of the CPU (a turn is taken again after each)
        job.turn()
        res = calc_bpd_loop(
            m.diffusion,
            m.unet,
            x0.to(m.device),
            generator=torch.Generator().manual_seed(seed),
            max_batch=MAX_BATCH,
            progress=lambda done, total: job.turn(),
        )
    seconds = time.perf_counter() - t0
    return terms_frame(res), summary(res, seconds, lang), display(img)


def build(ctx) -> None:
    t_ = functools.partial(tr, TEXT)
    add = functools.partial(ctx.i18n.add, text=TEXT)
    with add(gr.Tab(t_("tab"), id="bound"), key="tab"):
        with gr.Row():
            chooser = add(model_dropdown(ctx, t_("model"), "bound-model"), key="model")
            digit = add(StrictSlider(0, 499, value=0, step=1, label=t_("digit"), elem_id="bound-digit"), key="digit")
            seed = add(StrictNumber(value=0, precision=0, label=t_("seed")), key="seed")
            run = add(gr.Button(t_("run"), variant="primary", elem_id="bound-run"), key="run", attr="value")
        with gr.Row():
            image = add(gr.Image(label=t_("digit_img"), height=200, scale=1), key="digit_img")
            plot = gr.LinePlot(
                x="t",
                y="value",
                color="series",
                color_title=t_("series"),
                title=t_("plot"),
                y_title=t_("y"),
                x_title="t",
                height=320,
                scale=3,
            )
            add(plot, key="plot", attr="title")
            add(plot, key="y", attr="y_title")
            add(plot, key="series", attr="color_title")
        text = gr.Markdown(elem_id="bound-summary")
        add(gr.Markdown(t_("explain"), latex_delimiters=LATEX), key="explain", attr="value")
    run.click(
        bound_view,
        [chooser, digit, seed, ctx.lang],
        [plot, text, image],
        api_name="bound",
        concurrency_limit=SAMPLER_WORKERS,
        concurrency_id="sampler",  # the sampling tabs' workers and share: the same kind of work
    )
