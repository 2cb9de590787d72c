"""Noise schedules side by side: beta_t, abar_t, sqrt(abar_t), sqrt(1 - abar_t), log-SNR and beta~_t vs beta_t, with
the data as CSV. Endpoint ``/schedules``."""

from __future__ import annotations

import functools
import itertools

import gradio as gr
import numpy as np
import pandas as pd

from ddpm_core.explore import curves
from ddpm_core.timesteps import evenly_spaced
from ui.common import LATEX, T_MAX, T_MIN, int_arg, user_errors
from ui.components import StrictCheckboxGroup, StrictSlider, short_repr
from ui.files import out_path
from ui.i18n import tr
from ui.schedule_choices import SCHEDULE_CHOICES, T_slider_minimum, diffusion, schedule_args, schedule_name

TEXT = {
    "en": {
        "tab": "Noise schedules",
        "chosen": "Schedules",
        "T": "T",
        "csv": "Data (CSV)",
        "legend": "schedule",
        "schedules": r"""### Noise schedules
$\beta_t$ sets how fast information is destroyed. **linear** (Ho et al.): $\beta_t$ from $10^{-4}$ to $0.02$;
**linear_improved** (the teaching notes / improved-diffusion): the same, with both ends scaled by $1000/T$ so any $T$
destroys as much; **scaled_linear**: $\sqrt{\beta}$ linear; **cosine** (Nichol & Dhariwal; diffusers calls it `squaredcos_cap_v2`): $\bar\alpha_t$ follows
$\cos^2$, gentler at both ends; **sigmoid**: $\beta$ along a sigmoid. The last plot is the variance choice of the
reverse step: $\tilde\beta_t$ (**fixed_small**, the true posterior's variance); **fixed_large** is Ho et al.'s other
choice $\sigma_t^2=\beta_t$, the first plot; compare the two: they differ only near $t=0$. The first and last plots use a log
scale ($\log_{10}$): cosine's $\beta_t$ reaches its 0.999 cap at the end and would flatten the others.""",
    },
    "zh": {
        "tab": "噪声调度",
        "chosen": "噪声调度",
        "T": "T",
        "csv": "数据（CSV）",
        "legend": "调度",
        "schedules": r"""### 噪声调度
$\beta_t$ 决定信息被破坏的速度。**linear**（Ho 等）：$\beta_t$ 从 $10^{-4}$ 线性增至 $0.02$；
**linear_improved**（教学笔记 / improved-diffusion）：两端再乘以 $1000/T$，任意 $T$ 下总噪声量相同；
**scaled_linear**：$\sqrt{\beta}$ 线性；**cosine**（Nichol & Dhariwal；diffusers 中名为 `squaredcos_cap_v2`）：$\bar\alpha_t$ 按 $\cos^2$ 变化，两端更平缓；
**sigmoid**：$\beta$ 沿 sigmoid 曲线。最后一张图是逆向一步的方差选择：$\tilde\beta_t$（**fixed_small**，真实后验的方差）；
**fixed_large** 是 Ho 等的另一选择 $\sigma_t^2=\beta_t$，即第一张图；两者只在 $t$ 接近 0 时不同。第一张和最后一张图使用对数坐标
（$\log_{10}$）：cosine 调度的 $\beta_t$ 在末尾达到 0.999 的上限，否则会把其他曲线压平。""",
    },
}


#: The five curves plotted one per panel (ddpm_core.explore.curves' keys) and their titles; the sixth panel plots
#: log10 of beta_t and of the posterior variance together.
PLOTTED = {
    "log10_beta": "log₁₀ β_t",
    "alpha_bar": "ᾱ_t",
    "sqrt_alpha_bar": "√ᾱ_t",
    "sqrt_one_minus_alpha_bar": "√(1−ᾱ_t)",
    "log_snr": "log SNR",
}
#: What each of the six plots draws, in order.
PLOT_KEYS = [*PLOTTED, "log10_posterior_variance"]


DEFAULT_SCHEDULES = ["linear", "cosine"]
#: One colour per schedule, the same whichever are ticked (Tableau 10's first five).
SCHEDULE_COLOURS = dict(zip(SCHEDULE_CHOICES, ["#4e79a7", "#f28e2b", "#e15759", "#76b7b2", "#59a14f"], strict=True))


def colour_map(selected: list[str]) -> dict[str, str]:
    return {name: SCHEDULE_COLOURS[name] for name in selected}


#: Numbers each draw of the plots (see :func:`plot_colours`).
_DRAWS = itertools.count()


@user_errors
def plot_colours(selected, lang="en"):
    """The plots' colours for the ticked schedules, sent after their data. gradio's plot fixes its legend and colour
    scale when it draws and afterwards only swaps the data: a third ticked schedule was drawn with no legend entry.
    A changed colour map makes it draw anew from the data it holds by then. The map gets a key no series has, new
    each time, so that it always changes: two quick ticks could otherwise send the same map twice, the first drawing
    the data between them."""
    colours = {**colour_map(chosen_schedules(selected)), "_draw": str(next(_DRAWS))}
    return [gr.update(color_map=colours)] * len(PLOT_KEYS)


def chosen_schedules(selected) -> list[str]:
    """The ticked schedule names, each once and in order, or a ``ValueError`` saying what is wrong."""
    if isinstance(selected, str):
        selected = [selected]
    if not isinstance(selected, (list, tuple)):
        raise ValueError(f"selected must be a list of schedule names, got {short_repr(selected)}")
    if not selected:
        raise ValueError("Tick at least one schedule.")
    return list(dict.fromkeys(schedule_name(name) for name in selected))


@user_errors
def check_schedules(selected, lang="en") -> None:
    """Chained before the plots with no outputs of its own: a mistake is one message, and the plots stay."""
    chosen_schedules(selected)


@user_errors
def schedule_plots(selected, T, lang="en"):
    """One long DataFrame per curve (t, value, schedule) for the LinePlots, and the whole table as CSV."""
    selected = chosen_schedules(selected)
    T = int_arg(T, "T", T_MIN, T_MAX)
    frames = []
    for name in selected:
        schedule, _ = schedule_args(name, T)
        frame = pd.DataFrame(curves(diffusion(schedule, T).schedule))
        frame.insert(0, "schedule", schedule)
        frames.append(frame)
    table = pd.concat(frames, ignore_index=True)
    csv = out_path(f"ddpm-schedules-T{T}.csv")
    table.to_csv(csv, index=False, float_format="%.10g")
    shown = table[table["t"].isin(plotted_timesteps(T))]  # the CSV keeps every t; the plots need fewer
    plots = [shown[["t", key, "schedule"]].rename(columns={key: "value"}).dropna() for key in PLOT_KEYS]
    return (*plots, str(csv))


def plotted_timesteps(T: int, most: int = 250) -> np.ndarray:
    """At most ``most`` timesteps evenly spread over [0, T-1] (a 300-pixel-wide plot cannot show more), plus the
    last ten, where cosine's beta climbs to its cap in a few steps."""
    even = evenly_spaced(T - 1, most)
    return np.unique(np.concatenate([even, np.arange(max(0, T - 10), T)]))


def build(ctx) -> None:
    t_ = functools.partial(tr, TEXT)
    add = functools.partial(ctx.i18n.add, text=TEXT)
    with add(gr.Tab(t_("tab"), id="schedules"), key="tab"):
        with gr.Row():
            chosen = add(
                StrictCheckboxGroup(
                    SCHEDULE_CHOICES,
                    value=DEFAULT_SCHEDULES,
                    label=t_("chosen"),
                    scale=3,
                    elem_id="schedules-chosen",
                ),
                key="chosen",
            )
            T_plot = add(StrictSlider(T_MIN, T_MAX, value=1000, step=1, label=t_("T"), scale=2), key="T")
            csv = add(gr.File(label=t_("csv"), scale=1, min_width=300), key="csv")  # room for the file name
        plots = []
        # titles short enough for a phone's plot (about 300 px): Vega neither wraps nor cuts a title, it narrows
        # the plot to the title's width instead (fixed_large, β_t, is the first plot: the text below says so)
        titles = [*PLOTTED.values(), "log₁₀ β̃_t (fixed_small)"]
        for row in range(3):
            with gr.Row():
                for col in range(2):
                    k = 2 * row + col
                    plot = gr.LinePlot(
                        x="t",
                        y="value",
                        color="schedule",
                        color_title=t_("legend"),
                        color_map=colour_map(DEFAULT_SCHEDULES),
                        title=titles[k],
                        height=260,
                        y_title=[*PLOTTED.values(), "log₁₀ β̃_t"][k],  # the last title is long for an axis
                        x_title="t",
                        elem_id=f"schedules-plot-{k}",
                    )
                    add(plot, key="legend", attr="color_title")  # the titles: formulas, in every language
                    plots.append(plot)
        add(gr.Markdown(t_("schedules"), latex_delimiters=LATEX), key="schedules", attr="value")
    sched_io = dict(
        fn=schedule_plots,
        inputs=[chosen, T_plot, ctx.lang],
        outputs=[*plots, csv],
        concurrency_limit=4,
        concurrency_id="schedules",
    )
    T_plot.release(api_name="schedules", **sched_io)
    chosen.change(T_slider_minimum, [chosen, T_plot], T_plot, api_visibility="private").then(
        check_schedules, [chosen, ctx.lang], None, api_visibility="private"
    ).success(api_visibility="private", **sched_io).success(
        plot_colours, [chosen, ctx.lang], plots, api_visibility="private"
    )
    ctx.demo.load(api_visibility="private", **sched_io)
