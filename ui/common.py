"""What every tab shares: device and limits, error translation, argument checks, decoded uploads, the model cache,
and the driver that streams a sampling loop to gradio with progress and prompt cancellation."""

from __future__ import annotations

import contextlib
import functools
import inspect
import logging
import math
import os
import time

import gradio as gr
import torch

from ddpm_core.checkpoints import BUNDLED_DEFAULT, CHECKPOINT_DIR, HUB_MODELS, bundled_models, load_checkpoint
from ddpm_core.imaging import MAX_SIDE_DEFAULT, center_crop_resize, load_image, pil_to_tensor, tensor_to_pil
from ddpm_core.quality import cheapest_within, load_curve
from ddpm_core.sampling import SampleResult, pick_device
from ui.components import short_repr
from ui.errors import say
from ui.fair import CPU, Cancelled, Job, check_cost
from ui.files import png
from ui.guard import QueueGuard
from ui.i18n import tr

try:  # ZeroGPU: `spaces` must be imported before torch initialises CUDA (app.py imports it first of all)
    import spaces
except ImportError:  # pragma: no cover - spaces is in requirements.txt
    spaces = None

log = logging.getLogger("ddpm_explorer")

# Limits a public Space needs (also documented in the README's security section).
T_MIN, T_MAX = 10, 1000
MAX_BATCH = 16
DEFAULT_BATCH = 8
MAX_SEEDS = 8
DEVICE, DTYPE = pick_device()
ON_CPU = DEVICE.type == "cpu"


def cpu_threads() -> int:
    """torch's threads for the Space on a CPU: ``DDPM_CPU_THREADS``, else 1. The app's jobs compute one at a time
    (``ui.fair``), and a Space's CPU is shared. On an idle 2-core CPU two threads are 1.7x as fast (the default grid
    in 2.6 s against 4.4 s); with another process on one core they are 1.8x as slow (8.5 s against 4.6 s; the 2D
    lab's training 31 s against 14 s), a thread spinning while it waits for the other, which waits for a core
    (``bench/cpu_contention.py``); with two such processes, 5-10x. One thread never waits on a core it lacks."""
    value = os.environ.get("DDPM_CPU_THREADS", "1")
    if not value.isdigit() or int(value) < 1:
        raise ValueError(f"DDPM_CPU_THREADS must be a whole number of threads of at least 1, got {value!r}")
    return int(value)


def default_setting() -> tuple[str, int]:
    """The default (sampler, steps) of the Sample tab: the cheapest setting within a stated margin of the best on
    the bundled model's measured quality-against-steps curve (its ``curve.json``; the margin is
    ``ddpm_core.quality.cheapest_within``'s). Without a curve: DDPM, 100 steps on a CPU, all T on a GPU."""
    curve = load_curve(CHECKPOINT_DIR / BUNDLED_DEFAULT)
    if curve is None:
        return "ddpm", (100 if ON_CPU else 1000)
    best = cheapest_within(curve)
    return best["sampler"], int(best["steps"])


DEFAULT_SAMPLER, DEFAULT_STEPS = default_setting()
LATEX = [{"left": "$$", "right": "$$", "display": True}, {"left": "$", "right": "$", "display": False}]

#: Queue limits (README, security section): the jobs one visitor may hold per group (at most half of the group's
#: workers, so that one visitor never holds every worker), and the length of each group's queue.
GUARD = QueueGuard(
    per_client={"sampler": 2, "forward": 2, "scrub": 2, "schedules": 2, "lab": 2, "lab_run": 2, "lab_train": 1},
    per_group={"sampler": 16, "forward": 32, "scrub": 32, "schedules": 32, "lab": 32, "lab_run": 16, "lab_train": 16},
    grace_s=3.0,
)
#: Workers of the sampling group. Its jobs compute in turns of the CPU (ui.fair), so on a CPU several run at once
#: and a new visitor's request starts at once, sharing the CPU, instead of waiting for whole requests: with one
#: visitor holding its share (2), six more start at once. On a GPU one at a time (its captured graphs and compiled
#: steps are built for one request at a time).
SAMPLER_WORKERS = 8 if ON_CPU else 1


def fair_job() -> Job:
    """This request's turns of the CPU (``ui.fair.CPU``), as its visitor's; cancelled once the visitor hangs up."""
    return CPU.job(GUARD.visitor(), stop=lambda: not GUARD.still_listening())


def check_request_cost(m, evaluations: int, batch: int = 1) -> None:
    """A ``ValueError`` if ``evaluations`` network evaluations of ``batch`` images of model ``m`` cost more than one
    request may on this device (``ui.fair.check_cost``: on a CPU only)."""
    check_cost(m.unet, evaluations, batch, on_cpu=ON_CPU)


def on_zero_gpu() -> bool:
    """True on a ZeroGPU Space (``SPACES_ZERO_GPU``, read as the ``spaces`` package reads it)."""
    return os.environ.get("SPACES_ZERO_GPU", "").lower() in ("1", "t", "true")


def fast_path(m) -> dict:
    """The fast path's settings for model ``m`` in this deployment, as ``generate_steps`` keywords.

    ``mode``: ``eager`` on ZeroGPU, which attaches a GPU for the length of one request only (a CUDA graph captured
    in one request would be replayed in another, on memory that may have moved); elsewhere None, the fast path's own
    default for the device (ddpm_core.fast.default_mode). ``upgrade``: on a dedicated GPU, the compiled step, about
    twice as fast on the cifar10-32 architecture (bench/RESULTS.md), is built in the background after a request
    and serves the later ones with the same settings: no visitor waits on a compilation."""
    if on_zero_gpu():
        return {"mode": "eager", "upgrade": None}
    return {"mode": None, "upgrade": "compile+graph" if m.device.type == "cuda" else None}


def gpu(duration: int):
    """``spaces.GPU`` on ZeroGPU (a no-op elsewhere); identity when spaces is unavailable."""
    return spaces.GPU(duration=duration) if spaces is not None else (lambda fn: fn)


# ---------------------------------------------------------------- errors a user can act on
def _user_message(err: BaseException, lang: str = "en") -> gr.Error | None:
    """The message for an expected failure (bad input, a cancel, no memory) in ``lang``, or None for a real fault.
    Expected failures are logged in one line, in English, not with a traceback: the log is for the operator."""
    if isinstance(err, ValueError):
        message = str(err)
    elif isinstance(err, Cancelled):
        message = "Sampling was cancelled."
    elif isinstance(err, (torch.cuda.OutOfMemoryError, MemoryError)) or (
        isinstance(err, RuntimeError) and "out of memory" in str(err).lower()
    ):
        message = "Out of memory: try a smaller batch, fewer seeds or a smaller model."
    else:
        return None
    log.info("user error: %s", message.splitlines()[0][:200] if message else type(err).__name__)
    return gr.Error(say(message, lang), title=say("Error", lang), print_exception=False)


@contextlib.contextmanager
def _as_user_errors(lang: str):
    GUARD.require_listener()  # a job nobody will receive is dropped before it costs anything
    try:
        yield
    except gr.Error:
        raise
    except Exception as err:
        msg = _user_message(err, lang)
        if msg is None:
            raise
        raise msg from err


def user_errors(fn):
    """Turn the library's ValueErrors and resource failures into messages the user sees; the app stays up.
    Works for plain handlers and for generator handlers (which stream previews and stop when cancelled). A handler
    with a ``lang`` parameter (the visitor's language State) gets its messages in that language."""
    signature = inspect.signature(fn)

    def lang_of(args, kwargs) -> str:
        try:
            return signature.bind_partial(*args, **kwargs).arguments.get("lang") or "en"
        except TypeError:  # the call itself is wrong: Python's own error says so
            return "en"

    if inspect.isgeneratorfunction(fn):

        @functools.wraps(fn)
        def gen_wrapper(*args, **kwargs):
            with _as_user_errors(lang_of(args, kwargs)):
                yield from fn(*args, **kwargs)

        return gen_wrapper

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        with _as_user_errors(lang_of(args, kwargs)):
            return fn(*args, **kwargs)

    return wrapper


# ---------------------------------------------------------------- arguments
def int_arg(value, name: str, lo: int, hi: int) -> int:
    """``value`` as an int in [lo, hi], or a ``ValueError`` naming ``name``."""
    if value is None or isinstance(value, bool) or not isinstance(value, (int, float)):
        raise ValueError(f"{name} must be a number, got {short_repr(value)}")
    if isinstance(value, float) and not math.isfinite(value):
        raise ValueError(f"{name} must be a finite number, got {value!r}")
    if isinstance(value, int) and not lo <= value <= hi:  # compared as integers: 10**400 has no float
        raise ValueError(
            f"{name} must be between {lo} and {hi}, got a number of {len(str(abs(value)))} digits"
            if abs(value) > 2**53
            else f"{name} must be between {lo} and {hi}, got {value}"
        )
    if value != int(value):
        raise ValueError(f"{name} must be a whole number, got {value}")
    if not lo <= int(value) <= hi:
        raise ValueError(f"{name} must be between {lo} and {hi}, got {int(value)}")
    return int(value)


def float_arg(value, name: str, lo: float, hi: float) -> float:
    """``value`` as a float in [lo, hi], or a ``ValueError`` naming ``name`` (the messages of :func:`int_arg`)."""
    if isinstance(value, int) and not isinstance(value, bool) and abs(value) > 2**53:
        int_arg(value, name, math.floor(lo), math.ceil(hi))  # says how many digits, without a float overflow
    if value is None or isinstance(value, bool) or not isinstance(value, (int, float)):
        raise ValueError(f"{name} must be a number, got {short_repr(value)}")
    if not math.isfinite(value):
        raise ValueError(f"{name} must be a finite number, got {value!r}")
    if not lo <= value <= hi:
        raise ValueError(f"{name} must be between {lo:g} and {hi:g}, got {value:g}")
    return float(value)


def seed_arg(value) -> int:
    return int_arg(value, "seed", 0, 2**32 - 1)


# ---------------------------------------------------------------- images in and out
@functools.lru_cache(maxsize=8)
def _decoded(path: str, mtime: float, size: int, mode: str, max_side: int | None, crop: int | None) -> torch.Tensor:
    if crop:  # the crop needs the short side at full resolution
        return pil_to_tensor(center_crop_resize(load_image(path, mode=mode), crop))
    # shrunk while decoding (JPEG draft, strip-wise reduce): no full-size copy outlives the decode
    return pil_to_tensor(load_image(path, mode=mode, max_side=max_side))


def image_tensor(
    path, mode: str = "RGB", max_side: int | None = MAX_SIDE_DEFAULT, crop: int | None = None
) -> torch.Tensor:
    """Decode an upload once (cached by path and modification time): ``[1 x C x H x W]`` in [-1, 1]."""
    if not path:
        raise ValueError("Upload an image (or pick an example) first.")
    try:
        st = os.stat(path)
    except (OSError, TypeError) as err:
        raise ValueError("The uploaded file is no longer available; please upload it again.") from err
    return _decoded(str(path), st.st_mtime, st.st_size, mode, max_side, crop)


def display(img, min_side: int = 160):
    """Upscale small images with nearest neighbour so pixels stay crisp in the browser."""
    factor = max(1, math.ceil(min_side / max(1, min(img.size))))
    return img.resize((img.width * factor, img.height * factor), 0) if factor > 1 else img


# ---------------------------------------------------------------- models
def model(name):
    return load_checkpoint(name, DEVICE, DTYPE)  # validates the name (type, length, form) with a clear ValueError


@user_errors
def check_model(name, lang: str = "en") -> None:
    """Load the chosen model (or find it cached) before a run. Chained before a run with no outputs of its own, a
    bad id or an offline Hub is reported as one message, not as an error badge on every output panel."""
    model(name)


def model_dropdown(ctx, label: str, elem_id: str | None = None) -> gr.Dropdown:
    """The model chooser of the sampling tabs: the bundled models and known Hub ids, or any typed Hub id; its
    choices follow the language switch (the values, the API's, stay the model names)."""
    chooser = gr.Dropdown(
        model_choices(), value=default_model(), allow_custom_value=True, label=label, elem_id=elem_id
    )
    choices = {lang: {"choices": model_choices(lang)} for lang in ("en", "zh")}
    return ctx.i18n.add(chooser, choices, "choices", attr="choices")


BUNDLED_NOTE = {"en": "bundled, offline", "zh": "内置，离线"}


def model_choices(lang: str = "en") -> list[tuple[str, str]]:
    bundled = [(f"{name} ({BUNDLED_NOTE[lang]})", name) for name in bundled_models()]
    return bundled + [(repo, repo) for repo in HUB_MODELS]


def default_model() -> str:
    bundled = bundled_models()
    return BUNDLED_DEFAULT if BUNDLED_DEFAULT in bundled else (bundled[0] if bundled else HUB_MODELS[0])


# ---------------------------------------------------------------- streaming a sampling loop
#: Reverse steps run by the sampling handlers (a cancelled request stops adding to it).
STATS = {"steps": 0}
PREVIEWS = 10  # intermediate gallery updates per run
YIELD_EVERY_S = 0.25  # hand control back to gradio at least this often, so a cancel stops the loop promptly


#: What the sampling handlers write while a model loads and a loop runs, per language.
RUN_TEXT = {
    "en": {"loading": "Loading {name} and preparing the sampler", "steps": "steps"},
    "zh": {"loading": "正在加载 {name} 并准备采样器", "steps": "步"},
}


def drive(steps, total: int, progress, label: str, lang: str = "en"):
    """Run ddpm_core's sampler generator for a handler, each step in a turn of the CPU (``fair_job``): yields
    ("preview", StepOutput) about PREVIEWS times, ("beat", None) at least every YIELD_EVERY_S (a no-op update that
    lets gradio stop a cancelled run), and finally ("done", SampleResult)."""
    last = time.monotonic()
    with fair_job() as job:
        for item in job.steps(steps):
            if isinstance(item, SampleResult):
                yield "done", item
                return
            STATS["steps"] += 1
            progress((item.index + 1, total), desc=label, unit=tr(RUN_TEXT, "steps", lang))
            if (item.index + 1) % max(1, total // PREVIEWS) == 0 and item.index + 1 < total:
                last = time.monotonic()
                yield "preview", item
            elif time.monotonic() - last >= YIELD_EVERY_S:
                last = time.monotonic()
                yield "beat", None


def previews(step, label: str) -> list:
    """The predicted x_0 of a running batch as gallery items."""
    return [(png(display(img)), label) for img in tensor_to_pil(step.pred_original_sample.float().clamp(-1, 1))]
