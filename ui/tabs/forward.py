"""The forward process: an upload noised to any t, the noise, a strip of timesteps, the readouts and the true
posterior mean. Endpoints ``/forward`` (the views at one t) and ``/forward_scrub`` (what the page needs to draw x_t
at every t itself while t is dragged)."""

from __future__ import annotations

import base64
import functools
import math
from pathlib import Path

import gradio as gr

from ddpm_core.explore import forward_scrub as scrub_data
from ddpm_core.explore import forward_views
from ddpm_core.imaging import make_grid, noise_to_pil, tensor_to_pil, to_uint8
from ui.common import LATEX, T_MAX, T_MIN, image_tensor, int_arg, seed_arg, user_errors
from ui.components import StrictNumber, StrictSlider, image_with_examples
from ui.files import pngs
from ui.i18n import tr
from ui.schedule_choices import SCHEDULE_CHOICES, T_slider_minimum, diffusion, schedule_args

#: The narrowest a strip thumbnail is drawn, in pixels: room for its "t=999" caption (PIL's font at 10-18 px).
STRIP_MIN_WIDTH = 72

TEXT = {
    "en": {
        "tab": "Forward process",
        "image": "Image x₀",
        "examples": "Examples (made by this repo)",
        "t": "t (timestep)",
        "t_info": "dragging redraws x_t in your browser; releasing computes it at full size",
        "schedule": "Schedule",
        "T": "T",
        "T_info": "steps",
        "seed": "Seed",
        "x_t": "x_t",
        "noise": "ε (added noise, ±3σ)",
        "strip": "x_t at 8 timesteps (same ε)",
        "posterior_img": "Posterior mean μ̃_t(x_t, x₀)",
        "t0_exact": "  (t = 0: x₀ is returned exactly)",
        "forward": r"""### The forward process $q(x_t \mid x_0)$
Noise is added in $T$ small Gaussian steps, $q(x_t \mid x_{t-1}) = \mathcal N(\sqrt{1-\beta_t}\,x_{t-1}, \beta_t I)$.
Their product has a closed form, so any $x_t$ is one draw away from the image:
$$x_t = \sqrt{\bar\alpha_t}\,x_0 + \sqrt{1-\bar\alpha_t}\,\epsilon,\qquad \epsilon \sim \mathcal N(0, I),\quad \bar\alpha_t = \textstyle\prod_{s\le t}(1-\beta_s).$$
$\sqrt{\bar\alpha_t}$ is how much image survives, $\sqrt{1-\bar\alpha_t}$ how much noise is mixed in; the
signal-to-noise ratio is $\mathrm{SNR}(t) = \bar\alpha_t / (1-\bar\alpha_t)$. The same seed always draws the same $\epsilon$.""",
        "posterior": r"""### The "true" posterior $q(x_{t-1} \mid x_t, x_0)$
Given both $x_t$ and the clean image $x_0$, the previous step is exactly Gaussian:
$$q(x_{t-1}\mid x_t, x_0) = \mathcal N\big(\tilde\mu_t, \tilde\beta_t I\big),\quad
\tilde\mu_t = \tfrac{\sqrt{\bar\alpha_{t-1}}\,\beta_t}{1-\bar\alpha_t}x_0 + \tfrac{\sqrt{\alpha_t}(1-\bar\alpha_{t-1})}{1-\bar\alpha_t}x_t,\quad
\tilde\beta_t = \tfrac{1-\bar\alpha_{t-1}}{1-\bar\alpha_t}\beta_t.$$
It is called **true** because (1) it follows exactly from the forward process we defined, (2) it is the ideal
distribution to draw $x_{t-1}$ from, and (3) in practice we can only approximate it: at sampling time $x_0$ is
unknown, so the network's *predicted* $x_0$ takes its place. The image on the right is $\tilde\mu_t$ for your upload.""",
    },
    "zh": {
        "tab": "前向扩散",
        "image": "图像 x₀",
        "examples": "示例（本仓库生成）",
        "t": "t（时间步）",
        "t_info": "拖动时 x_t 在浏览器中即时重绘；松开后由服务器计算全尺寸结果",
        "schedule": "噪声调度",
        "T": "T",
        "T_info": "总步数",
        "seed": "随机种子",
        "x_t": "x_t",
        "noise": "ε（加入的噪声，±3σ）",
        "strip": "8 个时间步的 x_t（同一 ε）",
        "posterior_img": "后验均值 μ̃_t(x_t, x₀)",
        "t0_exact": "（t = 0：x₀ 原样返回）",
        "forward": r"""### 前向扩散 $q(x_t \mid x_0)$
噪声分 $T$ 小步加入：$q(x_t \mid x_{t-1}) = \mathcal N(\sqrt{1-\beta_t}\,x_{t-1}, \beta_t I)$。
这些高斯步骤的复合有闭式解，所以任意时刻的 $x_t$ 都可以一次采样得到：
$$x_t = \sqrt{\bar\alpha_t}\,x_0 + \sqrt{1-\bar\alpha_t}\,\epsilon,\qquad \epsilon \sim \mathcal N(0, I),\quad \bar\alpha_t = \textstyle\prod_{s\le t}(1-\beta_s).$$
$\sqrt{\bar\alpha_t}$ 是保留下来的图像比例，$\sqrt{1-\bar\alpha_t}$ 是混入的噪声比例；信噪比
$\mathrm{SNR}(t) = \bar\alpha_t / (1-\bar\alpha_t)$。相同的随机种子总会抽到相同的 $\epsilon$。""",
        "posterior": r"""### “真实”后验 $q(x_{t-1} \mid x_t, x_0)$
同时知道 $x_t$ 和原图 $x_0$ 时，上一步的分布恰好是高斯分布：
$$q(x_{t-1}\mid x_t, x_0) = \mathcal N\big(\tilde\mu_t, \tilde\beta_t I\big),\quad
\tilde\mu_t = \tfrac{\sqrt{\bar\alpha_{t-1}}\,\beta_t}{1-\bar\alpha_t}x_0 + \tfrac{\sqrt{\alpha_t}(1-\bar\alpha_{t-1})}{1-\bar\alpha_t}x_t,\quad
\tilde\beta_t = \tfrac{1-\bar\alpha_{t-1}}{1-\bar\alpha_t}\beta_t.$$
之所以叫“**真实**”后验：1. 它由我们定义的扩散过程精确可算；2. 它是生成 $x_{t-1}$ 的理论最优分布；
3. 但实际采样时 $x_0$ 未知，只能用网络**预测**的 $x_0$ 去近似它。右侧图像就是你上传图片的 $\tilde\mu_t$。""",
    },
}


# ---------------------------------------------------------------- handlers
def _fmt(x: float) -> str:
    return f"{x:.4g}" if math.isfinite(x) else ("∞" if x > 0 else "−∞")


def _readout_cells(r: dict) -> list[str]:
    """The readout row's cells: t, ᾱ_t, √ᾱ_t, √(1−ᾱ_t), SNR, SNR (dB), β_t."""
    keys = ("alpha_bar", "sqrt_alpha_bar", "sqrt_one_minus_alpha_bar", "snr", "snr_db", "beta")
    return [str(int(r["t"])), *(_fmt(float(r[k])) for k in keys)]


@user_errors
def forward(image, t, schedule, T, seed, lang="en"):
    """x_t, the noise, a strip of x_t at 8 timesteps, the readouts and the true posterior mean at t."""
    schedule, T = schedule_args(schedule, T)
    t = int_arg(t, "t", 0, T - 1)
    v = forward_views(image_tensor(image), diffusion(schedule, T), t, seed_arg(seed))
    r = v.readout
    # two rows of four: on a phone a row of eight is too small to see the noise grow
    thumbs = [tensor_to_pil(x)[0] for _, x in v.strip]
    # a tiny upload's thumbnails are enlarged (nearest) so that each "t=..." caption fits under its own image
    scale = max(1, math.ceil(STRIP_MIN_WIDTH / thumbs[0].width))
    strip = make_grid(thumbs, ncols=4, labels=[f"t={s}" for s, _ in v.strip], pad=4, scale=scale)
    readout = (
        "| t | ᾱ_t | √ᾱ_t | √(1−ᾱ_t) | SNR | SNR (dB) | β_t |\n|---|---|---|---|---|---|---|\n| "
        + " | ".join(_readout_cells(r))
        + " |"
    )
    posterior = f"σ̃_t = √β̃_t = **{_fmt(r['posterior_std'])}**" + (tr(TEXT, "t0_exact", lang) if t == 0 else "")
    x_t, noise, strip, mean = pngs(
        [
            (tensor_to_pil(v.x_t)[0], f"x_t-t{t}.png"),  # the page's script knows the server's x_t by this name
            (noise_to_pil(v.noise), "noise.png"),
            (strip, "strip.png"),
            (tensor_to_pil(v.posterior_mean)[0], f"posterior-mean-t{t}.png"),
        ]
    )
    return x_t, noise, strip, readout, mean, posterior


#: Long side of the x_t the page draws while t is dragged: about the size the x_t image is shown at (300 px high).
SCRUB_SIDE = 256


def _b64(array) -> str:
    return base64.b64encode(array.tobytes()).decode("ascii")


@user_errors
def forward_scrub(image, schedule, T, seed, lang="en"):
    """What the page needs to draw x_t at every t without asking again (``ddpm_core.explore.forward_scrub``):

    ``width``, ``height``, ``channels`` of the display size (at most SCRUB_SIDE px on the long side); ``x0``: the
    image there, base64 of uint8 [height x width x channels]; ``eps``: /forward's noise for this seed at those pixels,
    base64 of little-endian float32 [height x width x channels]; ``table``: for every t (lists of length T)
    ``sqrt_alpha_bar``, ``sqrt_one_minus_alpha_bar``, ``alpha_bar``, ``snr``, ``snr_db``, ``beta``,
    ``posterior_std`` (null where not finite); ``readout``: per t, the readout row's cells as /forward writes them.
    x_t = sqrt_alpha_bar[t] * (x0 / 127.5 - 1) + sqrt_one_minus_alpha_bar[t] * eps (eq. 4)."""
    schedule, T = schedule_args(schedule, T)
    seed = seed_arg(seed)
    d = scrub_data(image_tensor(image), diffusion(schedule, T), seed, max_side=SCRUB_SIDE)
    _, C, h, w = d.x0.shape
    table = {k: [float(x) if math.isfinite(x) else None for x in v.tolist()] for k, v in d.table.items() if k != "t"}
    rows = zip(*(d.table[k] for k in d.table))
    return {
        "schedule": schedule,
        "T": T,
        "seed": seed,
        "width": w,
        "height": h,
        "channels": C,
        "x0": _b64(to_uint8(d.x0)[0]),
        "eps": _b64(d.eps[0].permute(1, 2, 0).contiguous().float().numpy().astype("<f4")),
        "table": table,
        "readout": [_readout_cells(dict(zip(d.table, row))) for row in rows],
    }


#: Installed once when the page loads; /forward_scrub's result is handed to it with LOAD_JS.
SCRUB_JS = (Path(__file__).with_name("forward_scrub.js")).read_text()
LOAD_JS = "(d) => { window.ddpmScrub && window.ddpmScrub.load(d); }"
CLEAR_JS = "() => { window.ddpmScrub && window.ddpmScrub.clear(); }"


def t_slider_range(T, t):
    T = int_arg(T, "T", T_MIN, T_MAX) if isinstance(T, (int, float)) else T_MAX
    return gr.update(maximum=T - 1, value=min(int(t or 0), T - 1))


# ---------------------------------------------------------------- layout
def build(ctx) -> None:
    t_ = functools.partial(tr, TEXT)
    add = functools.partial(ctx.i18n.add, text=TEXT)
    with add(gr.Tab(t_("tab"), id="forward"), key="tab"):
        with gr.Row():
            with gr.Column(scale=1, min_width=300):
                image, examples = image_with_examples(t_("image"), 280, "input-image", t_("examples"))
                add(image, key="image"), add(examples, key="examples")
                t = StrictSlider(0, T_MAX - 1, value=250, step=1, label=t_("t"), info=t_("t_info"), elem_id="t-slider")
                add(t, key="t"), add(t, key="t_info", attr="info")
                with gr.Row():
                    schedule = add(
                        gr.Dropdown(
                            SCHEDULE_CHOICES, value="linear", label=t_("schedule"), elem_id="forward-schedule"
                        ),
                        key="schedule",
                    )
                    T = StrictSlider(
                        T_MIN, T_MAX, value=1000, step=1, label=t_("T"), info=t_("T_info"), elem_id="T-slider"
                    )
                    add(T, key="T"), add(T, key="T_info", attr="info")
                seed = add(
                    StrictNumber(
                        value=0, precision=0, label=t_("seed"), minimum=0, maximum=2**32 - 1, elem_id="forward-seed"
                    ),
                    key="seed",
                )
            with gr.Column(scale=2):
                with gr.Row():
                    x_t = add(
                        gr.Image(label=t_("x_t"), format="png", interactive=False, height=300, elem_id="xt-image"),
                        key="x_t",
                    )
                    noise = add(gr.Image(label=t_("noise"), format="png", interactive=False, height=300), key="noise")
                readout = gr.Markdown(elem_id="readout")
                strip = add(gr.Image(label=t_("strip"), format="png", interactive=False, elem_id="strip"), key="strip")
        add(gr.Markdown(t_("forward"), latex_delimiters=LATEX), key="forward", attr="value")
        with gr.Row():
            with gr.Column(scale=2):
                add(gr.Markdown(t_("posterior"), latex_delimiters=LATEX), key="posterior", attr="value")
            with gr.Column(scale=1):
                posterior_img = add(
                    gr.Image(label=t_("posterior_img"), format="png", interactive=False, height=260),
                    key="posterior_img",
                )
                posterior_md = gr.Markdown()
        scrub = gr.JSON(visible=False, elem_id="scrub-data")  # /forward_scrub's result, for the page's script
    fwd = dict(
        fn=forward,
        inputs=[image, t, schedule, T, seed, ctx.lang],
        outputs=[x_t, noise, strip, readout, posterior_img, posterior_md],
        concurrency_limit=4,
        concurrency_id="forward",
        show_progress="minimal",
    )
    gr.on([image.change, t.release, seed.submit], api_name="forward", trigger_mode="always_last", **fwd)
    # Dragging t costs no request: the page draws x_t from /forward_scrub's data (forward_scrub.js); the release
    # above computes the full-size views. The data follows the image, schedule, T and seed.
    sc = dict(
        fn=forward_scrub,
        inputs=[image, schedule, T, seed, ctx.lang],
        outputs=scrub,
        concurrency_limit=4,
        concurrency_id="scrub",  # its own group: an upload's two calls and a release after them fit one's share
        show_progress="hidden",
        trigger_mode="always_last",
    )
    load = dict(fn=None, inputs=scrub, outputs=None, js=LOAD_JS)
    ctx.demo.load(None, None, None, js=SCRUB_JS)
    image.change(None, None, None, js=CLEAR_JS)  # no stale image is drawn while the new one's data is on its way
    gr.on([image.change, seed.submit, seed.blur], api_name="forward_scrub", **sc).then(**load)
    for changed in (
        schedule.change(T_slider_minimum, [schedule, T], T, api_visibility="private").then(
            t_slider_range, [T, t], t, api_visibility="private"
        ),
        T.release(t_slider_range, [T, t], t, api_visibility="private"),
    ):
        changed.then(api_visibility="private", **fwd)
        changed.then(api_visibility="private", **sc).then(**load)
    ctx.demo.load(api_visibility="private", **fwd)
    ctx.demo.load(api_visibility="private", **sc).then(**load)
