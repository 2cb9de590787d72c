"""DDPM Explorer: the Gradio Space. UI only: every computation is ddpm_core's; handlers validate and format.

Run: ``python app.py`` (serves on 0.0.0.0:7860, or GRADIO_SERVER_NAME / GRADIO_SERVER_PORT).
"""

from __future__ import annotations

import os

try:  # ZeroGPU: `spaces` must be imported before torch initialises CUDA; off Spaces spaces.GPU is a no-op.
    import spaces
except ImportError:  # pragma: no cover - spaces is in requirements.txt
    spaces = None

import contextlib
import functools
import inspect
import io
import math
import random
import threading
import time
import zipfile
from pathlib import Path

import gradio as gr
import pandas as pd
import torch
from PIL import Image

from ddpm_core import SCHEDULES, GaussianDiffusion, NoiseSchedule
from ddpm_core.checkpoints import BUNDLED_DEFAULT, HUB_MODELS, bundled_models, load_checkpoint
from ddpm_core.explore import CURVES, curves, forward_views
from ddpm_core.fast import on_zero_gpu
from ddpm_core.imaging import (
    MAX_SIDE_DEFAULT, center_crop_resize, fit_longest_side, load_image, make_grid, noise_to_pil, pil_to_tensor,
    save_animation, tensor_to_pil,
)
from ddpm_core.sampling import SampleResult, SamplingCancelled, generate_steps, pick_device, reverse_timesteps, warm_up
from ui.components import StrictCheckboxGroup, StrictNumber, StrictSlider, UploadImage, clear_request_errors, short_repr
from ui.files import out_path as _out_path
from ui.files import png as _png
from ui.files import pngs
from ui.guard import QueueGuard
from ui_text import LANGS, TEXT

HERE = Path(__file__).resolve().parent
UploadImage.allowed_folders = (str(HERE / "examples"),)
EXAMPLES = sorted(str(p) for p in (HERE / "examples").glob("*.png"))
DEFAULT_IMAGE = str(HERE / "examples" / "sunset.png") if (HERE / "examples" / "sunset.png").is_file() else None

# Limits a public Space needs (also documented in the README's security section).
T_MIN, T_MAX = 10, 1000
LINEAR_IMPROVED_T_MIN = 21
MAX_BATCH = 16
DEFAULT_BATCH = 8
MAX_SEEDS = 8
SCHEDULE_CHOICES = list(SCHEDULES)
VARIANCE_CHOICES = ["model default", "fixed_small", "fixed_large", "learned_range"]
SAMPLER_CHOICES = ["DDPM (all T steps)", "DDPM (fewer steps)", "DDIM"]
DEVICE, DTYPE = pick_device()
ON_CPU = DEVICE.type == "cpu"
DEFAULT_STEPS = 100 if ON_CPU else 1000
#: Queue limits (README, security section): the jobs one visitor may hold per group (at most half of the group's
#: workers, so that a visitor who never listens can hold up the others for at most the listener grace of 3 s), and
#: the length of each group's queue.
GUARD = QueueGuard(per_client={"sampler": 2, "forward": 2, "schedules": 2},
                   per_group={"sampler": 16, "forward": 32, "schedules": 32}, grace_s=3.0)
LATEX = [{"left": "$$", "right": "$$", "display": True}, {"left": "$", "right": "$", "display": False}]


def gpu(duration: int):
    """``spaces.GPU`` on ZeroGPU (a no-op elsewhere); identity when spaces is unavailable."""
    return spaces.GPU(duration=duration) if spaces is not None else (lambda fn: fn)


def _user_message(err: BaseException) -> gr.Error | None:
    if isinstance(err, ValueError):
        return gr.Error(str(err))
    if isinstance(err, SamplingCancelled):
        return gr.Error("Sampling was cancelled.")
    if isinstance(err, (torch.cuda.OutOfMemoryError, MemoryError)) or (isinstance(err, RuntimeError) and "out of memory" in str(err).lower()):
        return gr.Error("Out of memory: try a smaller batch, fewer seeds or a smaller model.")
    return None


@contextlib.contextmanager
def _as_user_errors():
    GUARD.require_listener()  # a job nobody will receive is dropped before it costs anything
    try:
        yield
    except gr.Error:
        raise
    except Exception as err:
        msg = _user_message(err)
        if msg is None:
            raise
        raise msg from err


def user_errors(fn):
    """Turn the library's ValueErrors and resource failures into messages the user sees; the app stays up.
    Works for plain handlers and for generator handlers (which stream previews and stop when cancelled)."""
    if inspect.isgeneratorfunction(fn):

        @functools.wraps(fn)
        def gen_wrapper(*args, **kwargs):
            with _as_user_errors():
                yield from fn(*args, **kwargs)

        return gen_wrapper

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        with _as_user_errors():
            return fn(*args, **kwargs)

    return wrapper


def _int(value, name: str, lo: int, hi: int) -> int:
    if value is None or isinstance(value, bool) or not isinstance(value, (int, float)):
        raise ValueError(f"{name} must be a number, got {short_repr(value)}")
    if isinstance(value, float) and not math.isfinite(value):
        raise ValueError(f"{name} must be a finite number, got {value!r}")
    if isinstance(value, int) and not lo <= value <= hi:  # compared as integers: 10**400 has no float
        raise ValueError(f"{name} must be between {lo} and {hi}, got a number of {len(str(abs(value)))} digits"
                         if abs(value) > 2**53 else f"{name} must be between {lo} and {hi}, got {value}")
    if value != int(value):
        raise ValueError(f"{name} must be a whole number, got {value}")
    if not lo <= int(value) <= hi:
        raise ValueError(f"{name} must be between {lo} and {hi}, got {int(value)}")
    return int(value)


def _seed(value) -> int:
    return _int(value, "seed", 0, 2**32 - 1)


# ---------------------------------------------------------------- shared helpers
@functools.lru_cache(maxsize=64)
def _diffusion(schedule: str, T: int) -> GaussianDiffusion:
    return GaussianDiffusion(NoiseSchedule.make(schedule, T))


def _schedule_name(schedule) -> str:
    if not isinstance(schedule, str) or schedule not in SCHEDULE_CHOICES:
        raise ValueError(f"unknown schedule {short_repr(schedule)}; choose one of {', '.join(SCHEDULE_CHOICES)}")
    return schedule


def t_min(schedules) -> int:
    """The smallest T every schedule in ``schedules`` allows: linear_improved scales beta_end = 0.02 by 1000/T,
    which must stay below 1."""
    return LINEAR_IMPROVED_T_MIN if "linear_improved" in schedules else T_MIN


def _schedule_args(schedule, T) -> tuple[str, int]:
    schedule = _schedule_name(schedule)
    lo = t_min([schedule])
    T = _int(T, "T", T_MIN, T_MAX)
    if T < lo:
        raise ValueError(f"{schedule} needs T ≥ {lo}: it scales β_end = 0.02 by 1000/T, which must stay below 1")
    return schedule, T


@functools.lru_cache(maxsize=8)
def _decoded(path: str, mtime: float, size: int, mode: str, max_side: int | None, crop: int | None) -> torch.Tensor:
    img = load_image(path, mode=mode)
    img = center_crop_resize(img, crop) if crop else fit_longest_side(img, max_side)
    return pil_to_tensor(img)


def _image_tensor(path, mode: str = "RGB", max_side: int | None = MAX_SIDE_DEFAULT, crop: int | None = None) -> torch.Tensor:
    """Decode an upload once (cached by path and modification time): ``[1 x C x H x W]`` in [-1, 1]."""
    if not path:
        raise ValueError("Upload an image (or pick an example) first.")
    try:
        st = os.stat(path)
    except (OSError, TypeError) as err:
        raise ValueError("The uploaded file is no longer available; please upload it again.") from err
    return _decoded(str(path), st.st_mtime, st.st_size, mode, max_side, crop)


def _display(img, min_side: int = 160):
    """Upscale small images with nearest neighbour so pixels stay crisp in the browser."""
    factor = max(1, math.ceil(min_side / max(1, min(img.size))))
    return img.resize((img.width * factor, img.height * factor), 0) if factor > 1 else img


# ---------------------------------------------------------------- forward process
def _fmt(x: float) -> str:
    return f"{x:.4g}" if math.isfinite(x) else ("∞" if x > 0 else "−∞")


@user_errors
def forward(image, t, schedule, T, seed):
    """x_t, the noise, a strip of x_t at 8 timesteps, the readouts and the true posterior mean at t."""
    schedule, T = _schedule_args(schedule, T)
    t = _int(t, "t", 0, T - 1)
    x0 = _image_tensor(image)
    v = forward_views(x0, _diffusion(schedule, T), t, _seed(seed))
    r = v.readout
    strip = make_grid([tensor_to_pil(x)[0] for _, x in v.strip], labels=[f"t={s}" for s, _ in v.strip], pad=4)
    readout = (f"| t | ᾱ_t | √ᾱ_t | √(1−ᾱ_t) | SNR | SNR (dB) | β_t |\n|---|---|---|---|---|---|---|\n"
               f"| {t} | {_fmt(r['alpha_bar'])} | {_fmt(r['sqrt_alpha_bar'])} | {_fmt(r['sqrt_one_minus_alpha_bar'])} | "
               f"{_fmt(r['snr'])} | {_fmt(r['snr_db'])} | {_fmt(r['beta'])} |")
    posterior = f"σ̃_t = √β̃_t = **{_fmt(r['posterior_std'])}**" + ("  (t = 0: x₀ is returned exactly)" if t == 0 else "")
    x_t, noise, strip, mean = pngs([
        (tensor_to_pil(v.x_t)[0], f"x_t-t{t}.png"), (noise_to_pil(v.noise), "noise.png"), (strip, "strip.png"),
        (tensor_to_pil(v.posterior_mean)[0], f"posterior-mean-t{t}.png")])
    return x_t, noise, strip, readout, mean, posterior


def t_slider_range(T, t):
    T = _int(T, "T", T_MIN, T_MAX) if isinstance(T, (int, float)) else T_MAX
    return gr.update(maximum=T - 1, value=min(int(t or 0), T - 1))


def T_slider_minimum(schedules, T):
    """Keep T within what the chosen schedule(s) allow, before the user can click into an error."""
    schedules = [schedules] if isinstance(schedules, str) else list(schedules or [])
    lo = t_min(schedules)
    value = T if isinstance(T, (int, float)) and not isinstance(T, bool) else T_MAX
    return gr.update(minimum=lo, value=max(lo, min(T_MAX, value)))


# ---------------------------------------------------------------- schedules
@user_errors
def schedule_plots(selected, T):
    """One long DataFrame per curve (t, value, schedule) for the LinePlots, and the whole table as CSV."""
    if isinstance(selected, str):
        selected = [selected]
    if not isinstance(selected, (list, tuple)):
        raise ValueError(f"selected must be a list of schedule names, got {short_repr(selected)}")
    if not selected:
        raise ValueError("Tick at least one schedule.")
    selected = list(dict.fromkeys(_schedule_name(name) for name in selected))  # each schedule once, in order
    T = _int(T, "T", T_MIN, T_MAX)
    frames = []
    for name in selected:
        schedule, _ = _schedule_args(name, T)
        frame = pd.DataFrame(curves(_diffusion(schedule, T).schedule))
        frame.insert(0, "schedule", schedule)
        frames.append(frame)
    table = pd.concat(frames, ignore_index=True)
    csv = _out_path(f"ddpm-schedules-T{T}.csv")
    table.to_csv(csv, index=False, float_format="%.10g")
    plots = [table[["t", key, "schedule"]].rename(columns={key: "value"}) for key, _ in CURVES[:-1]]
    variance = pd.concat([
        table[["t", "log10_posterior_variance", "schedule"]].rename(columns={"log10_posterior_variance": "value"})
        .assign(schedule=table["schedule"] + " β̃_t").dropna(),
        table[["t", "log10_beta", "schedule"]].rename(columns={"log10_beta": "value"}).assign(schedule=table["schedule"] + " β_t"),
    ])
    return (*plots, variance, str(csv))


# ---------------------------------------------------------------- sampling
def _steps_for(sampler: str, steps) -> int | None:
    if sampler not in SAMPLER_CHOICES:
        raise ValueError(f"unknown sampler {sampler!r}; choose one of {', '.join(SAMPLER_CHOICES)}")
    return None if sampler == SAMPLER_CHOICES[0] else _int(steps, "steps", 1, T_MAX)


def _model(name):
    return load_checkpoint(name, DEVICE, DTYPE)  # validates the name (type, length, form) with a clear ValueError


def _trajectory_image(snapshots) -> object:
    """Two rows for the first sample: x_t (top) and the predicted x_0 (bottom), labelled with t."""
    tops = [tensor_to_pil(x[:1].clamp(-1, 1))[0] for _, x, _ in snapshots]
    bottoms = [tensor_to_pil(x0[:1].clamp(-1, 1))[0] for _, _, x0 in snapshots]
    scale = max(1, 96 // tops[0].height)
    labels = [f"t={t}" for t, _, _ in snapshots] + ["pred x0"] * len(bottoms)
    return make_grid(tops + bottoms, ncols=len(tops), labels=labels, scale=scale, pad=3)


#: Reverse steps run by the sampling handlers (a cancelled request stops adding to it).
STATS = {"steps": 0}
PREVIEWS = 10  # intermediate gallery updates per run
YIELD_EVERY_S = 0.25  # hand control back to gradio at least this often, so a cancel stops the loop promptly


def _drive(steps, total: int, progress, label: str):
    """Run ddpm_core's sampler generator for a handler: yields ("preview", StepOutput) about PREVIEWS times,
    ("beat", None) at least every YIELD_EVERY_S (a no-op update that lets gradio stop a cancelled run), and
    finally ("done", SampleResult)."""
    last = time.monotonic()
    for item in steps:
        if isinstance(item, SampleResult):
            yield "done", item
            return
        STATS["steps"] += 1
        progress((item.index + 1, total), desc=label, unit="steps")
        if (item.index + 1) % max(1, total // PREVIEWS) == 0 and item.index + 1 < total:
            last = time.monotonic()
            yield "preview", item
        elif time.monotonic() - last >= YIELD_EVERY_S:
            last = time.monotonic()
            yield "beat", None


def _previews(step, label: str) -> list:
    return [(_png(_display(img)), label) for img in tensor_to_pil(step.pred_original_sample.float().clamp(-1, 1))]


@gpu(duration=120)
@user_errors
def sample(model_name, sampler, steps, eta, variance, batch_size, seed, progress=gr.Progress()):
    """Generate a batch with ddpm_core's sampler: gallery, trajectory, animation, downloads and a summary.
    Streams a preview (the predicted x_0) about ten times while sampling."""
    n_steps = _steps_for(sampler, steps)
    batch_size = _int(batch_size, "batch size", 1, MAX_BATCH)
    seed = _seed(seed)
    eta = float(eta) if isinstance(eta, (int, float)) and math.isfinite(eta) else None
    if eta is None or not 0 <= eta <= 1:
        raise ValueError("eta must be between 0 and 1")
    if variance not in VARIANCE_CHOICES:
        raise ValueError(f"unknown variance {variance!r}; choose one of {', '.join(VARIANCE_CHOICES)}")
    progress(0, desc=f"Loading {model_name} and preparing the sampler")
    model = _model(model_name)
    ddim = sampler == "DDIM"
    n_steps = (n_steps or 50) if ddim else n_steps
    total = len(reverse_timesteps(model.diffusion, n_steps))
    steps = generate_steps(model, batch_size=batch_size, seed=seed, sampler="ddim" if ddim else "ddpm",
                           num_inference_steps=n_steps, eta=eta, variance_type=None if variance == "model default" else variance)
    for kind, item in _drive(steps, total, progress, "Sampling"):
        if kind == "done":
            result = item
        elif kind == "preview":
            yield (_previews(item, f"x̂₀ at t={item.timestep}"), gr.skip(), gr.skip(), gr.skip(),
                   f"Sampling… step {item.index + 1} of {total} (preview: the predicted x̂₀)")
        else:
            yield gr.skip(), gr.skip(), gr.skip(), gr.skip(), gr.skip()
    images = tensor_to_pil(result.samples.clamp(-1, 1))
    gif = save_animation(result.frames, _out_path(f"reverse-process-seed{seed}.gif"))
    archive = _out_path(f"samples-seed{seed}.zip")
    with zipfile.ZipFile(archive, "w") as z:
        for k, img in enumerate(images):
            png = io.BytesIO()
            img.save(png, format="PNG")
            z.writestr(f"sample_{seed}_{k:02d}.png", png.getvalue())
    info = (f"**{model.name}** ({model.source}, {model.num_parameters / 1e6:.1f}M parameters, "
            f"{'×'.join(map(str, model.sample_shape))}) · {len(result.timesteps)} {'DDIM' if ddim else 'DDPM'} steps · "
            f"variance {variance if variance != 'model default' else model.diffusion.variance_type} · seed {seed} · "
            f"{result.device} {result.dtype} · {result.seconds:.1f} s ({result.path}"
            + (f"; {result.setup_seconds:.1f} s of one-off set-up" if result.setup_seconds >= 0.5 else "") + ")"
            + "".join(f"\n\n_{n}_" for n in model.notes))
    gallery = [(_png(_display(img), f"sample-{k}.png"), f"#{k}") for k, img in enumerate(images)]
    yield gallery, _png(_trajectory_image(result.snapshots), "trajectory.png"), str(gif), [str(archive), str(gif)], info


@gpu(duration=120)
@user_errors
def denoise_from_t(image, model_name, t, n_seeds, steps, seed, progress=gr.Progress()):
    """Noise an upload to step t, then run the reverse process from x_t with several seeds (the notes' experiment)."""
    n_seeds = _int(n_seeds, "number of seeds", 1, MAX_SEEDS)
    seed = _seed(seed)
    progress(0, desc=f"Loading {model_name} and preparing the sampler")
    model = _model(model_name)
    T = model.diffusion.num_timesteps
    t = _int(t, "t", 0, T - 1)
    n_steps = _int(steps, "steps", 1, T_MAX)
    C, H, _ = model.sample_shape
    x0 = _image_tensor(image, mode="L" if C == 1 else "RGB", crop=H)
    x_t = model.diffusion.q_sample(x0, t, generator=torch.Generator().manual_seed(seed)).repeat(n_seeds, 1, 1, 1)
    original = tensor_to_pil(x0)[0]
    noisy = tensor_to_pil(x_t[:1].clamp(-1, 1))[0]
    head = [(_png(_display(original), "original.png"), "original x₀"), (_png(_display(noisy), f"x_t-t{t}.png"), f"x_t, t={t}")]
    total = len(reverse_timesteps(model.diffusion, n_steps, start_t=t))
    steps = generate_steps(model, seed=seed + 1, num_inference_steps=n_steps, start=(x_t, t), n_frames=2)
    for kind, item in _drive(steps, total, progress, "Denoising"):
        if kind == "done":
            result = item
        elif kind == "preview":
            yield head + _previews(item, f"x̂₀, t={item.timestep}"), gr.skip()
        else:
            yield gr.skip(), gr.skip()
    outs = tensor_to_pil(result.samples.clamp(-1, 1))
    gallery = head + [(_png(_display(img), f"denoised-{k + 1}.png"), f"sample {k + 1}") for k, img in enumerate(outs)]
    mse = ((result.samples - x0) ** 2).mean(dim=(1, 2, 3))
    info = (f"Reverse process from t = {t} with {len(result.timesteps)} steps on **{model.name}** · "
            f"{result.seconds:.1f} s · mean squared distance to the original per sample: "
            + ", ".join(f"{m:.3f}" for m in mse.tolist()))
    yield gallery, info


def randomize_seed():
    return random.randint(0, 2**31 - 1)


def steps_visibility(sampler):
    return gr.update(visible=sampler != SAMPLER_CHOICES[0]), gr.update(visible=sampler == "DDIM")


# ---------------------------------------------------------------- language
MARKDOWN_KEYS = ("intro", "forward", "posterior", "schedules", "sample", "denoise")
TAB_KEYS = ("tab_forward", "tab_schedules", "tab_sample", "tab_denoise")


def set_language(lang):
    text = TEXT[LANGS.get(lang, "en")]
    return [gr.update(value=text[k]) for k in MARKDOWN_KEYS] + [gr.update(label=text[k]) for k in TAB_KEYS] + [
        gr.update(value=_device_note(text))]


def _device_note(text) -> str:
    return text["cpu_note"] if ON_CPU else text["gpu_note"].format(device=torch.cuda.get_device_name(), dtype="float16")


CSS = """
.gradio-container {max-width: 1280px !important; margin: auto}
#intro h1 {margin-bottom: 0.2em}
#readout table {font-variant-numeric: tabular-nums}
footer {display: none !important}
"""


def model_choices() -> list[tuple[str, str]]:
    bundled = [(f"{name} (bundled, offline)", name) for name in bundled_models()]
    return bundled + [(repo, repo) for repo in HUB_MODELS]


def build_demo() -> gr.Blocks:
    text = TEXT["en"]
    bundled = bundled_models()
    default_model = BUNDLED_DEFAULT if BUNDLED_DEFAULT in bundled else (bundled[0] if bundled else HUB_MODELS[0])
    md = {}
    with gr.Blocks(title="DDPM Explorer", analytics_enabled=False, delete_cache=(3600, 3600)) as demo:
        with gr.Row(equal_height=True):
            md["intro"] = gr.Markdown(text["intro"], elem_id="intro", latex_delimiters=LATEX)
            lang = gr.Radio(list(LANGS), value="English", label=text["lang_label"], scale=0, min_width=220, elem_id="lang")
        tabs = {}
        with gr.Tabs():
            # ---------------- forward process
            with gr.Tab(text["tab_forward"], id="forward") as tabs["tab_forward"]:
                with gr.Row():
                    with gr.Column(scale=1, min_width=300):
                        image = UploadImage(value=DEFAULT_IMAGE, label="Image x₀", type="filepath", sources=["upload", "clipboard"],
                                            height=280, elem_id="input-image")
                        gr.Examples(EXAMPLES, inputs=image, label="Examples (made by this repo)")
                        t = StrictSlider(0, T_MAX - 1, value=250, step=1, label="t (timestep)", elem_id="t-slider")
                        with gr.Row():
                            schedule = gr.Dropdown(SCHEDULE_CHOICES, value="linear", label="Schedule")
                            T = StrictSlider(T_MIN, T_MAX, value=1000, step=1, label="T (steps)")
                        seed = StrictNumber(value=0, precision=0, label="Seed", minimum=0, maximum=2**32 - 1)
                    with gr.Column(scale=2):
                        with gr.Row():
                            x_t = gr.Image(label="x_t", format="png", interactive=False, height=300, elem_id="xt-image")
                            noise = gr.Image(label="ε (the noise that was added, ±3σ)", format="png", interactive=False, height=300)
                        readout = gr.Markdown(elem_id="readout")
                        strip = gr.Image(label="x_t at 8 timesteps (same ε)", format="png", interactive=False, elem_id="strip")
                md["forward"] = gr.Markdown(text["forward"], latex_delimiters=LATEX)
                with gr.Row():
                    with gr.Column(scale=2):
                        md["posterior"] = gr.Markdown(text["posterior"], latex_delimiters=LATEX)
                    with gr.Column(scale=1):
                        posterior_img = gr.Image(label="Posterior mean μ̃_t(x_t, x₀)", format="png", interactive=False, height=260)
                        posterior_md = gr.Markdown()
                fwd_inputs = [image, t, schedule, T, seed]
                fwd_outputs = [x_t, noise, strip, readout, posterior_img, posterior_md]
                fwd = dict(fn=forward, inputs=fwd_inputs, outputs=fwd_outputs, concurrency_limit=4,
                           concurrency_id="forward", show_progress="minimal")
                gr.on([image.change, t.release, seed.submit], api_name="forward", trigger_mode="always_last", **fwd)
                schedule.change(T_slider_minimum, [schedule, T], T, api_visibility="private").then(
                    t_slider_range, [T, t], t, api_visibility="private").then(api_visibility="private", **fwd)
                t.input(api_visibility="private", trigger_mode="always_last", **fwd)
                T.release(t_slider_range, [T, t], t, api_visibility="private").then(api_visibility="private", **fwd)

            # ---------------- schedules
            with gr.Tab(text["tab_schedules"], id="schedules") as tabs["tab_schedules"]:
                with gr.Row():
                    chosen = StrictCheckboxGroup(SCHEDULE_CHOICES, value=["linear", "squaredcos_cap_v2"], label="Schedules", scale=3)
                    T_plot = StrictSlider(T_MIN, T_MAX, value=1000, step=1, label="T", scale=2)
                    csv = gr.File(label="Data (CSV)", scale=1)
                plots = []
                labels = [label for _, label in CURVES[:-1]] + ["log₁₀ β̃_t (fixed_small) vs log₁₀ β_t (fixed_large)"]
                for row in range(3):
                    with gr.Row():
                        for col in range(2):
                            k = 2 * row + col
                            plots.append(gr.LinePlot(x="t", y="value", color="schedule", title=labels[k], height=260,
                                                     y_title=labels[k], x_title="t"))
                md["schedules"] = gr.Markdown(text["schedules"], latex_delimiters=LATEX)
                sched_io = dict(fn=schedule_plots, inputs=[chosen, T_plot], outputs=[*plots, csv], concurrency_limit=4,
                                concurrency_id="schedules")
                T_plot.release(api_name="schedules", **sched_io)
                chosen.change(T_slider_minimum, [chosen, T_plot], T_plot, api_visibility="private").then(
                    api_visibility="private", **sched_io)

            # ---------------- sampling
            with gr.Tab(text["tab_sample"], id="sample") as tabs["tab_sample"]:
                with gr.Row():
                    with gr.Column(scale=1, min_width=300):
                        model = gr.Dropdown(model_choices(), value=default_model, allow_custom_value=True,
                                            label="Model (bundled, or type a Hub id: owner/name)", elem_id="model")
                        sampler = gr.Radio(SAMPLER_CHOICES, value=SAMPLER_CHOICES[1], label="Sampler")
                        steps = StrictSlider(1, T_MAX, value=DEFAULT_STEPS, step=1, label="Steps")
                        eta = StrictSlider(0, 1, value=0.0, step=0.05, label="DDIM η", visible=False)
                        variance = gr.Dropdown(VARIANCE_CHOICES, value="model default", label="Reverse-step variance")
                        batch = StrictSlider(1, MAX_BATCH, value=DEFAULT_BATCH, step=1, label="Batch size")
                        with gr.Row():
                            sample_seed = StrictNumber(value=0, precision=0, label="Seed", minimum=0, maximum=2**32 - 1, scale=3)
                            dice = gr.Button("🎲", scale=1, min_width=60)
                        go = gr.Button("Generate", variant="primary", elem_id="run-btn")
                        device_md = gr.Markdown(_device_note(text))
                    with gr.Column(scale=2):
                        gallery = gr.Gallery(label="Samples", columns=4, height=420, format="png", elem_id="gallery", object_fit="contain")
                        info = gr.Markdown(elem_id="sample-info")
                        with gr.Row():
                            trajectory = gr.Image(label="Reverse trajectory: x_t (top), predicted x̂₀ (bottom)", format="png", interactive=False)
                        with gr.Row():
                            animation = gr.Image(label="The whole reverse process", type="filepath", interactive=False, height=260)
                            downloads = gr.File(label="Download (PNGs, GIF)", file_count="multiple")
                md["sample"] = gr.Markdown(text["sample"], latex_delimiters=LATEX)
                sampler.change(steps_visibility, sampler, [steps, eta], api_visibility="private")
                dice.click(randomize_seed, None, sample_seed, api_visibility="private")
                go.click(sample, [model, sampler, steps, eta, variance, batch, sample_seed],
                         [gallery, trajectory, animation, downloads, info], api_name="sample",
                         concurrency_limit=1, concurrency_id="sampler", time_limit=600)

            # ---------------- noise, then denoise
            with gr.Tab(text["tab_denoise"], id="denoise") as tabs["tab_denoise"]:
                with gr.Row():
                    with gr.Column(scale=1, min_width=300):
                        d_image = UploadImage(value=DEFAULT_IMAGE, label="Image", type="filepath", sources=["upload", "clipboard"], height=240, elem_id="denoise-image")
                        gr.Examples(EXAMPLES, inputs=d_image)
                        d_model = gr.Dropdown(model_choices(), value=default_model, allow_custom_value=True, label="Model")
                        d_t = StrictSlider(0, T_MAX - 1, value=400, step=1, label="Noise to t")
                        d_seeds = StrictSlider(1, MAX_SEEDS, value=4, step=1, label="Seeds")
                        d_steps = StrictSlider(1, T_MAX, value=DEFAULT_STEPS, step=1, label="Reverse steps")
                        d_seed = StrictNumber(value=0, precision=0, label="Seed", minimum=0, maximum=2**32 - 1)
                        d_go = gr.Button("Noise, then denoise", variant="primary", elem_id="denoise-btn")
                    with gr.Column(scale=2):
                        d_gallery = gr.Gallery(label="Original, x_t, and what the model makes of it", columns=5, height="auto", format="png")
                        d_info = gr.Markdown()
                md["denoise"] = gr.Markdown(text["denoise"], latex_delimiters=LATEX)
                d_go.click(denoise_from_t, [d_image, d_model, d_t, d_seeds, d_steps, d_seed], [d_gallery, d_info],
                           api_name="denoise_from_t", concurrency_limit=1, concurrency_id="sampler", time_limit=600)

        lang.change(set_language, lang, [*(md[k] for k in MARKDOWN_KEYS), *(tabs[k] for k in TAB_KEYS), device_md],
                    api_visibility="private")
        demo.load(schedule_plots, [chosen, T_plot], [*plots, csv], api_visibility="private")
        demo.load(api_visibility="private", **fwd)
    # No global queue size: each concurrency group has its own, and each visitor a share of it (GUARD).
    demo.queue(default_concurrency_limit=2, max_size=None)
    return GUARD.install(clear_request_errors(demo))


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
        seconds = warm_up(_model(BUNDLED_DEFAULT), batch_size=DEFAULT_BATCH, num_inference_steps=DEFAULT_STEPS)
        WARM["status"] = f"ready ({seconds:.1f} s of set-up paid at start-up)"
    except Exception as e:  # not fatal: each request prepares what it needs
        WARM["status"] = f"failed ({type(e).__name__}: {e}); requests prepare the fast path themselves"
    print(f"DDPM Explorer: fast-path warm-up {WARM['status']}", flush=True)


def launch(demo: gr.Blocks | None = None, warm: bool = True, **kwargs):
    demo = demo or build_demo()
    if warm:
        threading.Thread(target=warm_up_default, name="warm-up", daemon=True).start()
    kwargs.setdefault("server_name", os.environ.get("GRADIO_SERVER_NAME", "0.0.0.0"))
    kwargs.setdefault("server_port", int(os.environ.get("GRADIO_SERVER_PORT", 7860)))
    app_kwargs = kwargs.pop("app_kwargs", None) or {}
    app_kwargs["middleware"] = [*app_kwargs.get("middleware", []), GUARD.middleware()]
    return demo.launch(theme=gr.themes.Soft(primary_hue="indigo", secondary_hue="pink"), css=CSS,
                       max_file_size="30mb", app_kwargs=app_kwargs, **kwargs)


if __name__ == "__main__":
    launch()
