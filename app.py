"""DDPM Explorer: the Gradio Space. It assembles the tabs of ``ui.tabs`` (one module each) and launches.

Run: ``python app.py`` (serves on 0.0.0.0:7860, or GRADIO_SERVER_NAME / GRADIO_SERVER_PORT).
Every computation is ``ddpm_core``'s; ``ui`` validates, formats and guards the queue.
"""

from __future__ import annotations

import os

try:  # ZeroGPU: `spaces` must be imported before torch initialises CUDA; off Spaces spaces.GPU is a no-op.
    import spaces  # noqa: F401
except ImportError:  # pragma: no cover - spaces is in requirements.txt
    pass


import gradio as gr
import torch

from ddpm_core.checkpoints import BUNDLED_DEFAULT
from ddpm_core.sampling import warm_up
from ui.common import (  # noqa: F401 - STATS: read by tests
    DEFAULT_BATCH,
    DEFAULT_SAMPLER,
    DEFAULT_STEPS,
    GUARD,
    LATEX,
    ON_CPU,
    STATS,
    cpu_threads,
    fast_path,
    model,
    on_zero_gpu,
)
from ui.components import EXAMPLES_DIR, clear_request_errors
from ui.files import JANITOR
from ui.i18n import LANGS
from ui.tabs import Context, tabs
from ui.tabs.forward import forward  # noqa: F401 - the forward handler, timed by bench/forward_latency.py

TEXT = {
    "en": {
        "intro": """# 🌫️ DDPM Explorer
See, understand and run **denoising diffusion** (Ho et al. 2020). Watch a photo dissolve into noise, plot the noise
schedules, and generate images with the repo's own sampler, from a bundled model that works offline or from
Hub checkpoints such as `google/ddpm-cifar10-32`.""",
        "lang_label": "Language / 语言",
    },
    "zh": {
        "intro": """# 🌫️ DDPM 探索器
观察、理解并运行**去噪扩散概率模型**（Ho 等，2020）。看一张照片如何一步步溶解为噪声，绘制噪声调度曲线，
并用本仓库自己的采样器生成图像：既可用离线可用的内置模型，也可用 Hub 上的检查点（如 `google/ddpm-cifar10-32`）。""",
        "lang_label": "Language / 语言",
    },
}

# width 100%: centred by margin alone, the container would size itself to its widest formula and scroll sideways
# on a phone; long formulas scroll inside their own box instead.
CSS = """
.gradio-container {max-width: 1280px !important; width: 100% !important; margin: auto}
.katex-display {overflow-x: auto; overflow-y: hidden; padding: 2px 0}
#intro {min-width: min(320px, 100%) !important}  /* on a phone the language box goes below it */
/* an image's or plot's label above the figure, not over its title, legend or top row (gradio floats it on top) */
label.float[data-testid="block-label"] {position: static !important; margin: var(--block-label-margin) 0 0 var(--block-label-margin)}
.block:not(#lab-sketch):has(label.float[data-testid="block-label"]) {height: auto !important}  /* a fixed-height figure, plus its label; the editor lays its canvas out in its fixed height */
/* a phone: two samples a row, all in sight (4 or 5 columns of at least 100 px overflow a 326 px gallery sideways) */
@media (max-width: 640px) {
  .grid-wrap .grid-container {--grid-cols: 2 !important}
  .grid-wrap, .block:has(.grid-wrap) {height: auto !important; max-height: none !important}
  /* the reverse trajectory (ten columns) at a readable scale, scrolled sideways in its own box like a film strip */
  #trajectory .image-container > button {overflow-x: auto; display: block; width: 100%}
  #trajectory .image-frame {width: max-content}
  #trajectory img {max-width: none !important; width: auto !important; height: 180px !important}
  /* the measured curve's two panels at a readable 800 px, scrolled sideways in their own box */
  #compare-curve .matplotlib {overflow-x: auto; display: block}
  #compare-curve img {max-width: none !important; width: 800px !important}
}
/* a gallery of height "auto" is as tall as its rows (gradio still gives its box a 450 px minimum) */
#denoise-gallery .grid-wrap, #compare-gallery .grid-wrap {min-height: 0 !important; height: auto !important; max-height: none !important}
#intro h1 {margin-bottom: 0.2em}
#readout table {font-variant-numeric: tabular-nums; display: block; overflow-x: auto}
#readout th, #readout td {white-space: nowrap}  /* a number never breaks in two */
/* a download's whole name: gradio cuts it to "ddpm-sch….csv" beside its size; the size goes below instead */
.file-preview tr.file {flex-wrap: wrap}
.file-preview td.filename {min-width: min(max-content, 100%)}
.file-preview td.download {min-width: 0 !important; width: auto !important; margin-left: auto}
footer {display: none !important}
"""

# A number typed into a slider's box applies when the box is left (gradio's "release"); Enter does the same.
HEAD = """<script>
document.addEventListener("keydown", (e) => {
  const box = e.target;
  if (e.key === "Enter" && box instanceof HTMLInputElement && box.dataset.testid === "number-input") box.blur();
});
</script>"""


def build_demo() -> gr.Blocks:
    with gr.Blocks(title="DDPM Explorer", analytics_enabled=False, delete_cache=(3600, 3600)) as demo:
        ctx = Context(demo)
        with gr.Row(equal_height=True):
            intro = gr.Markdown(TEXT["en"]["intro"], elem_id="intro", latex_delimiters=LATEX)
            ctx.i18n.add(intro, TEXT, "intro", attr="value")
            lang = gr.Radio(
                list(LANGS), value="English", label=TEXT["en"]["lang_label"], scale=0, min_width=220, elem_id="lang"
            )
        ctx.lang = gr.State("en")
        with gr.Tabs(overflow_behavior="wrap"):  # on a phone every tab stays in sight, none behind a menu
            for tab in tabs():
                tab.build(ctx)
        # progress on the switch, not on the tabs relabelled: the page re-reads every block inside an event's progress
        # targets at each status change of any later event (the 2D lab's canvas re-uploads its drawing when read)
        lang.change(
            ctx.i18n.updates,
            lang,
            ctx.i18n.components,
            show_progress_on=lang,
            show_progress="hidden",
            api_visibility="private",
        )
        lang.change(lambda name: LANGS.get(name, "en"), lang, ctx.lang, api_visibility="private")
    # No global queue size: each concurrency group has its own, and each visitor a share of it (GUARD).
    demo.queue(default_concurrency_limit=2, max_size=None)
    demo.i18n = ctx.i18n
    return GUARD.install(clear_request_errors(demo))


#: Sessions whose state gradio keeps (about 1 MB each for this page, even for a call that stores nothing); one
#: visitor keeps at most ``GUARD.sessions_per_client`` of them (ui.guard).
SESSION_CAPACITY = 500

WARM = {"status": "not started"}


def warm_up_default() -> None:
    """Prepare the fast path for the default request (bundled model, default batch and steps): the TorchScript
    trace on a CPU, the CUDA graph capture on a GPU, so that the first visitor does not wait on them. Not on
    ZeroGPU, where no GPU is attached outside a request."""
    if on_zero_gpu():
        WARM["status"] = "skipped (ZeroGPU: prepared on first use)"
        return
    WARM["status"] = "running"
    try:
        m = model(BUNDLED_DEFAULT)
        seconds = warm_up(
            m,
            batch_size=DEFAULT_BATCH,
            num_inference_steps=DEFAULT_STEPS,
            sampler=DEFAULT_SAMPLER,
            upgrade=fast_path(m)["upgrade"],  # on a GPU: the compiled step too, before the Space serves
        )
        WARM["status"] = f"ready ({seconds:.1f} s of set-up paid at start-up)"
    except Exception as e:  # not fatal: each request prepares what it needs
        WARM["status"] = f"failed ({type(e).__name__}: {e}); requests prepare the fast path themselves"
    print(f"DDPM Explorer: fast-path warm-up {WARM['status']}", flush=True)


def launch(demo: gr.Blocks | None = None, warm: bool = True, **kwargs):
    demo = demo or build_demo()
    if warm:
        # before serving, not beside it: a first request that arrives during a background warm-up shares the CPU
        # with it (bench/startup.py --server measures the cost); a Space wakes on that request
        warm_up_default()
    JANITOR.run_once()  # the cache folder is measured before serving: a first upload is admitted from the count
    kwargs.setdefault("server_name", os.environ.get("GRADIO_SERVER_NAME", "0.0.0.0"))
    kwargs.setdefault("server_port", int(os.environ.get("GRADIO_SERVER_PORT", 7860)))
    app_kwargs = kwargs.pop("app_kwargs", None) or {}
    app_kwargs["middleware"] = [*app_kwargs.get("middleware", []), GUARD.middleware()]
    return demo.launch(
        theme=gr.themes.Soft(primary_hue="indigo", secondary_hue="pink"),
        css=CSS,
        head=HEAD,
        allowed_paths=[str(EXAMPLES_DIR)],  # the bundled example images, wherever the app is started from
        max_file_size="30mb",
        state_session_capacity=SESSION_CAPACITY,
        app_kwargs=app_kwargs,
        **kwargs,
    )


if __name__ == "__main__":
    if ON_CPU:
        torch.set_num_threads(cpu_threads())
    launch()
