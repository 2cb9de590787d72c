"""Every message the page can show says itself in Chinese too.

The messages are not typed in here: each one is made by the code that makes it for a visitor (a bad number, a bad
upload, a bad model folder, an uncached Hub id offline), and each must be matched by one of ``ui.errors.ZH``'s
patterns. Conversely every pattern must be matched by a message made here, except those that only a reachable Hub
can produce, so that no pattern translates a sentence the code no longer says.
"""

from __future__ import annotations

import json
import os
import re
import struct
import zlib

import numpy as np
import pytest
import torch
from PIL import Image

import ddpm_core.checkpoints as ck
from conftest import tiny_unet
from ddpm_core.imaging import MAX_ASPECT, MAX_FILE_BYTES, load_image
from helpers import prefill_hub_cache, save_flat_folder, save_pipeline_folder
from ui import common, schedule_choices
from ui.errors import FALLBACK_ZH, ZH, say, zh_pattern
from ui.fair import Cancelled, check_cost
from ui.tabs import compare, lab2d, sample, schedules

#: Patterns only a reachable Hub produces (a network error, a missing or gated repo, a repo with no UNet anywhere).
ONLINE_ONLY = {
    p
    for p, _ in ZH
    if p.startswith(
        (
            r"the Hugging Face Hub could not be reached",
            r"no model (?P<id>",
            r"(?P<id>\S+) is gated",
            r"(?P<id>\S+) is not a UNet2DModel checkpoint",
        )
    )
}

#: Latin words a Chinese message may keep: formats, names of files, classes and keys, and the Hub's own name.
TECHNICAL = set(
    "PNG JPEG WebP GIF BMP TIFF PPM PGM PBM SVG PDF PostScript HTML Hub Hugging Face UNet UNet2DModel DDPM config "
    "json safetensors bin owner name Space learned_range out_channels diffusion_pytorch_model eta end id MB GB MP "
    "DDPM's _end GFLOP CPU".split()
)


def _png(width: int, height: int, body: bytes = b"") -> bytes:
    """A PNG whose header declares ``width`` x ``height`` (8-bit grey) followed by ``body`` and no image data."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    head = chunk(b"IHDR", struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0))
    return b"\x89PNG\r\n\x1a\n" + head + (body or chunk(b"IDAT", zlib.compress(b"")) + chunk(b"IEND", b""))


def _message(call) -> str:
    try:
        out = call()
        if hasattr(out, "__next__"):  # a streaming handler fails on its first step
            next(out)
    except ValueError as err:  # gr.Error is one too, and carries the text it shows in .message
        return getattr(err, "message", None) or str(err)
    raise AssertionError(f"{call} did not fail")


@pytest.fixture
def ckdir(tmp_path, monkeypatch):
    d = tmp_path / "checkpoints"
    d.mkdir()
    monkeypatch.setattr(ck, "CHECKPOINT_DIR", d)
    save_pipeline_folder(tiny_unet(3), d / ck.BUNDLED_DEFAULT)
    return d


def _raise(err: Exception):
    raise err


def _argument_messages() -> list:
    a = common.int_arg
    return [
        lambda: a("abc", "T", 10, 1000),
        lambda: a(float("nan"), "batch size", 1, 64),
        lambda: a(10**400, "seed", 0, 2**32 - 1),
        lambda: a(2.5, "steps", 1, 1000),
        lambda: a(5000, "number of seeds", 1, 8),
        lambda: a(5000, "jump", 1, 999),
        lambda: common.float_arg(9.5, "x_t", -3.2, 3.2),
        lambda: common.float_arg(float("inf"), "x₀", -3.2, 3.2),
        lambda: common.float_arg(None, "x₀", -3.2, 3.2),
        lambda: common.float_arg(-(10**400), "x_t", -3.2, 3.2),
        lambda: sample._sampler_and_steps("bogus", 5),
        lambda: sample._eta(2.0),
        lambda: sample.sample("ddpm-mnist-28", sample.SAMPLER_CHOICES[1], 5, 0.0, "bogus", 1, 0),
        lambda: sample.sample("ddpm-mnist-28", "DPM-Solver++ (2M)", 1000, 0.0, "model default", 1, 0),
        lambda: compare._pairs([]),
        lambda: compare._pairs(["nonsense"]),
        lambda: schedule_choices.schedule_name("bogus"),
        lambda: schedule_choices.schedule_args("linear_improved", 10),
        lambda: schedules.schedule_plots(5, 1000),
        lambda: schedules.schedule_plots([], 1000),
        lambda: lab2d.lab_forward(None, 10),
        lambda: lab2d.lab_posterior(None, 10, 1, 0.0, 0.0, False, 0.0, 0.0),
        lambda: next(lab2d.lab_train("blobs", "linear", "epsilon")),
        lambda: next(lab2d.lab_train("moons", "linear", "x0")),
        lambda: next(lab2d.lab_train("drawn", "linear", "epsilon", {"composite": np.zeros((64, 64, 4), np.uint8)})),
        lambda: _raise(common._user_message(MemoryError(), "en")),
        lambda: _raise(common._user_message(Cancelled(), "en")),
        lambda: check_cost(tiny_unet(3), 10**5, 16),  # a few images would fit
        lambda: check_cost(tiny_unet(3), 10**9, 1),  # not even one image
        lambda: lab2d.lab_sample(_unlabelled_run(), "ddpm", 5, 1, 1.0, 0),
    ]


def _unlabelled_run():
    from ddpm_core import lab2d as L

    run = L.train(L.make_diffusion("linear", 100), L.make_points("moons", 64)[0], steps=1)
    run.dataset, run.heldout = "moons", (run.data, None, run.data)
    return run


def _upload_messages(tmp_path) -> list:
    big = tmp_path / "big.png"
    with open(big, "wb") as f:
        f.truncate(MAX_FILE_BYTES + 1)  # sparse: no 30 MB written
    truncated = tmp_path / "truncated.png"
    Image.fromarray(np.random.default_rng(0).integers(0, 255, (64, 64), np.uint8)).save(truncated)
    truncated.write_bytes(truncated.read_bytes()[:120])
    return [
        lambda: common.image_tensor(None),
        lambda: common.image_tensor(str(tmp_path / "gone.png")),
        lambda: load_image(b"%PDF-1.4 not an image"),
        lambda: load_image(b"just some text"),
        lambda: load_image(b""),
        lambda: load_image(b"\0" * (MAX_FILE_BYTES + 1)),
        lambda: load_image(big),
        lambda: load_image(tmp_path),  # a folder: the OS refuses to read it
        lambda: load_image(_png(100_000, 100_000)),  # Pillow's own bomb check
        lambda: load_image(_png(8_000, 8_000)),  # ours: over MAX_PIXELS
        lambda: load_image(_png(64, 64, b"\0\0\0\x05IDATjunk")),  # a broken header, refused while opening
        lambda: load_image(truncated),  # a good header, data cut off: refused while decoding
        lambda: load_image(np.zeros((0, 5), np.uint8)),
        lambda: load_image(np.zeros((1, MAX_ASPECT + 8), np.uint8)),
    ]


def _model_messages(ckdir, tmp_path) -> list:
    def folder(name, edit=None, unet=None, **kw):
        path = save_flat_folder(unet or tiny_unet(3), ckdir / name, **kw)
        if edit:
            edit(path)
        return name

    def config(path, **change):
        cfg = json.loads((path / "config.json").read_text())
        cfg.update(change)
        for k in [k for k, v in change.items() if v is None]:
            del cfg[k]
        (path / "config.json").write_text(json.dumps(cfg))

    def huge(path):
        with open(path / "diffusion_pytorch_model.safetensors", "wb") as f:
            f.truncate(ck.MAX_WEIGHTS_BYTES + 1)

    def evil(path):
        class Evil:
            def __reduce__(self):
                return (print, ("pwned",))

        torch.save({"x": Evil()}, path / "diffusion_pytorch_model.bin")

    outside = save_flat_folder(tiny_unet(3), tmp_path / "outside")
    os.symlink(outside, ckdir / "link")
    cache = tmp_path / "hub"
    no_weights = save_flat_folder(tiny_unet(3), tmp_path / "no-weights")
    (no_weights / "diffusion_pytorch_model.safetensors").unlink()
    prefill_hub_cache(cache, "someone/no-weights", no_weights)
    names = [
        None,
        "a" * 300,
        " ",
        "../x",
        "nope",
        "a/b/c",
        "someone/uncached",
        "someone/no-weights",
        folder("vae", lambda p: config(p, _class_name="AutoencoderKL")),
        folder("classless", lambda p: config(p, _class_name=None)),
        folder("broken", lambda p: (p / "config.json").write_text("{")),
        folder("sizeless", lambda p: config(p, sample_size=None)),
        folder("weightless", lambda p: (p / "diffusion_pytorch_model.safetensors").unlink()),
        folder("huge", huge),
        folder("misfit", lambda p: config(p, block_out_channels=[8, 16], norm_num_groups=8)),
        folder("evil", evil, bin_only=True),
        folder("bad-scheduler", lambda p: (p / "scheduler_config.json").write_text("{")),
        folder("odd-channels", unet=tiny_unet(4)),
        "link",
    ]
    return [lambda n=n: ck.ModelCache().get(n, cache_dir=str(cache)) for n in names]


def _note_messages(ckdir) -> list[str]:
    save_pipeline_folder(tiny_unet(6), ckdir / "learned")
    save_flat_folder(tiny_unet(3), ckdir / "no-scheduler")
    (ckdir / "no-scheduler" / "scheduler_config.json").unlink()
    models = ck.ModelCache()
    return models.get("learned").notes + models.get("no-scheduler").notes


@pytest.fixture
def messages(ckdir, tmp_path) -> list[str]:
    calls = _argument_messages() + _upload_messages(tmp_path) + _model_messages(ckdir, tmp_path)
    title = common._user_message(MemoryError(), "en").title  # the heading of every message box
    return [_message(call) for call in calls] + _note_messages(ckdir) + [title]


def test_every_message_the_page_can_show_has_a_chinese_form(messages):
    unmatched = [m for m in messages if zh_pattern(m) is None]
    assert not unmatched, unmatched
    for m in messages:
        zh = say(m, "zh")
        assert re.search(r"[\u4e00-\u9fff]", zh) and not zh.startswith(FALLBACK_ZH.split("{")[0]), (m, zh)


def test_every_pattern_translates_a_message_the_code_still_says(messages):
    used = {zh_pattern(m) for m in messages}
    unused = [p for p, _ in ZH if p not in used and p not in ONLINE_ONLY]
    assert not unused, unused


def test_chinese_templates_keep_no_english_words():
    for pattern, template in ZH:
        words = re.findall(r"[A-Za-z_][A-Za-z0-9_']*[A-Za-z0-9]", re.sub(r"\{\w+\}", "", template))
        assert set(words) <= TECHNICAL, (pattern, words)


def test_english_is_left_as_the_library_says_it_and_unknown_text_is_kept():
    assert say("T must be between 10 and 1000, got 5", "en") == "T must be between 10 and 1000, got 5"
    assert say("T must be between 10 and 1000, got 5", "zh") == "T 必须在 10 到 1000 之间，收到的是 5"
    assert say("the file is empty (0 bytes)", "zh") == "文件是空的（0 字节）"
    assert say("batch size must be a whole number, got 2.5", "zh") == "批量大小必须是整数，收到的是 2.5"
    assert say("something new", "zh") == FALLBACK_ZH.format(message="something new")


def test_a_handler_speaks_the_language_it_is_given():
    import gradio as gr

    with pytest.raises(gr.Error) as err:
        schedules.schedule_plots([], 1000, "zh")
    assert err.value.message == "请至少勾选一个调度。" and err.value.title == "出错了"
    with pytest.raises(gr.Error) as err:
        next(sample.sample("ddpm-mnist-28", "bogus", 5, 0.0, "model default", 1, 0, "zh"))
    assert err.value.message.startswith("未知的采样器 'bogus'")
    with pytest.raises(gr.Error) as err:
        common.check_model("nope", "zh")
    assert err.value.message.startswith("没有名为 'nope' 的内置模型")


def _figure_words(fig) -> set[str]:
    """The Latin words of every text a matplotlib figure draws (titles, axis labels, legends), maths stripped."""
    texts = [t.get_text() for ax in fig.axes for t in (ax.title, ax.xaxis.label, ax.yaxis.label)]
    texts += [t.get_text() for ax in fig.axes if ax.get_legend() for t in ax.get_legend().get_texts()]
    plain = [re.sub(r"\$[^$]*\$", "", t) for t in texts]
    return set(re.findall(r"[A-Za-z][A-Za-z']+", " ".join(plain)))


#: Names, acronyms and notation a figure may keep in Chinese mode (its words are in the caption above it).
FIGURE_NAMES = {"DDPM", "DDIM", "DPM", "Solver", "SDE", "UniPC", "Euler", "Heun", "Karras", "MNIST", "FD", "NFE"}
FIGURE_NAMES |= {"ED", "data"}  # the 2D lab's ED(p_θ, p_data)


def test_the_figures_a_chinese_page_shows_keep_only_names_and_notation():
    """Figures are drawn once for both languages (a server's fonts may have no Chinese), so they carry no English
    words: the shipped quality curve as the Steps compared tab draws it, and the 2D lab's quality plot."""
    import json

    from ddpm_core import quality
    from ui import plots2d
    from ui.tabs.compare import CURVE_TEXT

    curve = json.loads((common.CHECKPOINT_DIR / common.BUNDLED_DEFAULT / "curve.json").read_text())
    words = _figure_words(quality.curve_figure(curve, CURVE_TEXT))
    assert words <= FIGURE_NAMES and {"DDPM", "MNIST"} <= words, words
    rows = [{"sampler": s, "steps": n, "energy_distance": 1.0 / n} for s in lab2d.SAMPLER_NAMES for n in (5, 50)]
    fig = plots2d.quality_figure(rows, 0.01, lab2d.SAMPLER_NAMES, "ED(p_θ, p_data)")
    words = _figure_words(fig)
    assert words <= FIGURE_NAMES and "ED" in words, words
