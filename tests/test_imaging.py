"""Safe decoding of every kind of upload, and a fuzz of the decoder."""

import io
import os
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from PIL import Image

import ddpm_core.imaging as imaging
from ddpm_core.imaging import (
    center_crop_resize,
    fit_longest_side,
    load_image,
    make_grid,
    pil_to_tensor,
    save_animation,
    tensor_to_pil,
    to_uint8,
)
from helpers import upload_corpus


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    return upload_corpus(tmp_path_factory.mktemp("uploads"))


def test_every_upload_kind_decodes_or_says_why(corpus):
    for name, (path, ok) in corpus.items():
        if ok:
            img = load_image(path)
            assert img.mode == "RGB" and min(img.size) >= 1, name
            assert load_image(path, mode="L").mode == "L"
        else:
            with pytest.raises(ValueError) as err:
                load_image(path)
            assert len(str(err.value)) > 15, name  # a sentence, not a bare code


def test_specific_conversions(corpus):
    assert load_image(corpus["exif_rotated.jpg"][0]).size == (20, 40)  # EXIF orientation applied
    assert load_image(corpus["rgba.png"][0]).size == (64, 48)
    sixteen = np.asarray(load_image(corpus["sixteen_bit.png"][0], mode="L"))
    raw = np.asarray(Image.open(corpus["sixteen_bit.png"][0]), dtype=np.float64)
    assert np.abs(sixteen - np.round(raw / 257)).max() <= 1  # 16 -> 8 bit by scaling, not clipping
    huge = load_image(corpus["huge_6000x4000.jpg"][0])
    assert huge.size == (6000, 4000) and fit_longest_side(huge, 512).size == (512, 341)
    transparent = Image.new("RGBA", (4, 4), (0, 0, 0, 0))
    assert load_image(transparent).getpixel((0, 0)) == (255, 255, 255)  # composited on white


@pytest.mark.parametrize(
    "name,fragment",
    [
        ("bomb.png", "MP"),
        ("empty.png", "empty"),
        ("svg_renamed.png", "SVG"),
        ("truncated.png", "corrupt or truncated"),
        ("strip_1x100000.png", "aspect"),
        ("float_nan.tif", "NaN"),
    ],
)
def test_error_messages_name_the_problem(corpus, name, fragment):
    with pytest.raises(ValueError, match=fragment):
        load_image(corpus[name][0])


def test_tensor_round_trip_is_exact_on_8bit():
    a = np.random.default_rng(0).integers(0, 256, (5, 7, 3), dtype=np.uint8)
    x = pil_to_tensor(Image.fromarray(a))
    assert x.shape == (1, 3, 5, 7) and x.min() >= -1 and x.max() <= 1
    assert np.array_equal(to_uint8(x)[0], a)
    assert np.array_equal(np.asarray(tensor_to_pil(x)[0]), a)


def test_grid_and_animation(tmp_path):
    ims = tensor_to_pil(torch.rand(5, 1, 6, 6) * 2 - 1)
    g = make_grid(ims, ncols=3, labels=list("abcde"), scale=2)
    assert g.size[0] == 3 * 12 + 4 * 2
    gif = save_animation(ims, tmp_path / "a.gif")
    with Image.open(gif) as im:
        assert im.n_frames == 5
    assert center_crop_resize(ims[0], 4).size == (4, 4)


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.binary(min_size=0, max_size=3000))
def test_fuzz_random_bytes_never_crash_the_decoder(data):
    try:
        img = load_image(data)
    except ValueError:
        return
    assert img.mode == "RGB"


@settings(max_examples=60, deadline=None)
@given(
    st.integers(0, 60),
    st.sampled_from(["png", "jpeg", "gif", "bmp", "tiff", "webp"]),
    st.integers(1, 40),
    st.integers(1, 40),
)
def test_fuzz_corrupted_real_images(cut, fmt, w, h):
    """Real encodings of random sizes, with bytes flipped or cut: decoded or refused with ValueError."""
    buf = io.BytesIO()
    Image.fromarray(np.random.default_rng(w * h).integers(0, 256, (h, w, 3), dtype=np.uint8)).save(buf, format=fmt)
    data = bytearray(buf.getvalue())
    if cut and len(data) > 8:
        pos = 8 + (cut * 7919) % (len(data) - 8)
        data[pos] ^= 0xFF
        data = data[: len(data) - cut]
    try:
        img = load_image(bytes(data))
    except ValueError:
        return
    assert img.size[0] >= 1


# --- Only raster formats from an allow-list are parsed ------------------------------------------------------------

ACCEPTED = "PNG, JPEG, WebP, GIF, BMP, TIFF"

EPS = b"""%!PS-Adobe-3.0 EPSF-3.0
%%BoundingBox: 0 0 16 16
%%EndComments
newpath 0 0 moveto 16 0 lineto 16 16 lineto closepath fill
showpage
%%EOF
"""


def _encoded(img, fmt, **kw) -> bytes:
    buf = io.BytesIO()
    img.save(buf, format=fmt, **kw)
    return buf.getvalue()


def _blocks(w=24, h=16):
    """Four flat colours: exact through every lossless format, GIF's palette included."""
    a = np.zeros((h, w, 3), np.uint8)
    a[: h // 2, : w // 2], a[: h // 2, w // 2 :] = (250, 10, 10), (10, 250, 10)
    a[h // 2 :, : w // 2], a[h // 2 :, w // 2 :] = (10, 10, 250), (240, 240, 240)
    return a


def test_postscript_is_refused_before_any_parser_and_starts_no_process(tmp_path, monkeypatch):
    """Pillow renders EPS by running Ghostscript on the upload: the file must be refused by its magic bytes."""
    from PIL import EpsImagePlugin

    marker = tmp_path / "gs-ran"
    fake_gs = tmp_path / "gs"
    fake_gs.write_text(f"#!/bin/sh\ntouch {marker}\nexit 1\n")
    fake_gs.chmod(0o755)
    monkeypatch.setenv("PATH", f"{tmp_path}{os.pathsep}{os.environ.get('PATH', '')}")
    monkeypatch.setattr(EpsImagePlugin, "gs_binary", str(fake_gs))  # as if Ghostscript were installed
    spawned = []

    def no_process(*args, **kwargs):
        spawned.append(args)
        raise AssertionError(f"a process was started: {args}")

    monkeypatch.setattr(subprocess, "Popen", no_process)
    path = tmp_path / "upload.eps"
    path.write_bytes(EPS)
    for source in (path, EPS, b"\xc5\xd0\xd3\xc6" + bytes(26) + EPS):
        with pytest.raises(ValueError, match="PostScript") as err:
            load_image(source)
        assert ACCEPTED in str(err.value)
    assert spawned == [] and not marker.exists()


def _refused_uploads():
    rgb = Image.fromarray(_blocks())
    files = {
        "pdf": _encoded(rgb, "PDF"),
        "ico": _encoded(rgb, "ICO"),
        "tga": _encoded(rgb, "TGA"),
        "pcx": _encoded(rgb, "PCX"),
        "xbm": _encoded(rgb.convert("1"), "XBM"),
        "ascii_ppm": b"P3\n2 1\n255\n255 0 0 0 255 0\n",
        "heic": b"\x00\x00\x00\x18ftypheic\x00\x00\x00\x00mif1heic" + bytes(64),
        "svg": b'<?xml version="1.0"?>\n<svg xmlns="http://www.w3.org/2000/svg" width="4" height="4"/>',
        "html": b"<!DOCTYPE html><html><body>hi</body></html>",
    }
    from PIL import features

    if features.check("jpg_2000"):
        files["jp2"] = _encoded(rgb, "JPEG2000")
    return files


@pytest.mark.parametrize("kind", list(_refused_uploads()))
def test_formats_outside_the_allow_list_are_refused_naming_the_accepted_ones(kind):
    data = _refused_uploads()[kind]
    with pytest.raises(ValueError, match="accepted format") as err:
        load_image(data)
    assert ACCEPTED in str(err.value)
    assert {"pdf": "PDF", "ico": "ICO", "svg": "SVG", "html": "HTML", "heic": "HEIC", "ascii_ppm": "ASCII"}.get(
        kind, ""
    ) in str(err.value)


def _accepted_uploads():
    a = _blocks()
    rgb = Image.fromarray(a)
    files = {  # name -> (bytes, expected RGB pixels; None: what Pillow's own decoder gives for a lossy format)
        "png": (_encoded(rgb, "PNG"), a),
        "jpeg": (_encoded(rgb, "JPEG", quality=95), None),
        "mpo": (_encoded(rgb, "MPO", save_all=True, append_images=[rgb.rotate(180)]), None),
        "webp": (_encoded(rgb, "WEBP", lossless=True), a),
        "webp_lossy": (_encoded(rgb, "WEBP", quality=95), None),
        "gif": (_encoded(rgb, "GIF"), a),
        "bmp": (_encoded(rgb, "BMP"), a),
        "tiff": (_encoded(rgb, "TIFF"), a),
        "tiff_lzw": (_encoded(rgb, "TIFF", compression="tiff_lzw"), a),
        "tiff_deflate": (_encoded(rgb, "TIFF", compression="tiff_adobe_deflate"), a),
        "tiff_packbits": (_encoded(rgb, "TIFF", compression="packbits"), a),
        "bigtiff": (_encoded(rgb, "TIFF", big_tiff=True), a),
        "ppm": (_encoded(rgb, "PPM"), a),
        "pgm": (_encoded(rgb.convert("L"), "PPM"), np.asarray(rgb.convert("L").convert("RGB"))),
        "pbm": (_encoded(rgb.convert("1"), "PPM"), np.asarray(rgb.convert("1").convert("RGB"))),
    }
    assert files["ppm"][0][:2] == b"P6" and files["pgm"][0][:2] == b"P5" and files["pbm"][0][:2] == b"P4"
    assert files["bigtiff"][0][:4] == b"II+\x00"
    return files


@pytest.mark.parametrize("kind", list(_accepted_uploads()))
def test_every_accepted_format_still_decodes(kind, tmp_path):
    data, expected = _accepted_uploads()[kind]
    if expected is None:
        with Image.open(io.BytesIO(data)) as im:
            expected = np.asarray(im.convert("RGB"))
        assert np.abs(expected.astype(int) - _blocks()).mean() < 15  # the same picture, give or take compression
    path = tmp_path / "upload.png"  # the name does not matter, the bytes do
    path.write_bytes(data)
    for source in (data, path):
        assert np.array_equal(np.asarray(load_image(source)), expected), kind
    assert load_image(data, mode="L").size == (24, 16)


# --- PNG metadata never stops the pixels from decoding -------------------------------------------------------------


def _png_with(info=None, **kw):
    a = np.random.default_rng(1).integers(0, 256, (12, 20, 3), dtype=np.uint8)
    return a, _encoded(Image.fromarray(a), "PNG", pnginfo=info, **kw)


def _oversized_metadata():
    from PIL import PngImagePlugin

    big = PngImagePlugin.MAX_TEXT_CHUNK * 2  # 2 MB inflated; a few KB in the file
    ztxt, itxt, text, many = (PngImagePlugin.PngInfo() for _ in range(4))
    ztxt.add_text("Comment", "z" * big, zip=True)
    itxt.add_itxt("Description", "i" * big, zip=True)
    text.add_text("Comment", "t" * big)
    for k in range(80):  # each under the per-chunk limit, together over Pillow's 64 MB for all text
        many.add_text(f"note{k}", "m" * (PngImagePlugin.MAX_TEXT_CHUNK - 10), zip=True)
    return {
        "zTXt": {"info": ztxt},
        "iTXt": {"info": itxt},
        "tEXt": {"info": text},
        "many_zTXt": {"info": many},
        "iCCP": {"icc_profile": bytes(3 * PngImagePlugin.MAX_TEXT_CHUNK)},
    }


@pytest.mark.parametrize("kind", list(_oversized_metadata()))
def test_png_with_oversized_metadata_decodes_to_its_pixels(kind):
    kw = _oversized_metadata()[kind]
    a, data = _png_with(**kw)
    got = load_image(data)
    assert np.array_equal(np.asarray(got), a)
    assert np.array_equal(np.asarray(load_image(data, mode="L")), np.asarray(Image.fromarray(a).convert("L")))


def test_png_metadata_within_limits_is_kept():
    from PIL import PngImagePlugin

    _, plain = _png_with()
    assert imaging._png_without_oversized_metadata(plain) is plain  # nothing dropped, nothing copied
    info = PngImagePlugin.PngInfo()
    info.add_itxt(
        "XML:com.adobe.xmp",
        '<x:xmpmeta xmlns:x="adobe:ns:meta/"><rdf:RDF xmlns:rdf="http://www.w3.org/1999/'
        '02/22-rdf-syntax-ns#"><rdf:Description xmlns:tiff="http://ns.adobe.com/tiff/1.0/" '
        'tiff:Orientation="6"/></rdf:RDF></x:xmpmeta>',
    )
    info.add_text("Comment", "z" * 2 * PngImagePlugin.MAX_TEXT_CHUNK, zip=True)
    a, data = _png_with(info)
    stripped = imaging._png_without_oversized_metadata(data)
    assert len(stripped) < len(data)
    with Image.open(io.BytesIO(stripped)) as im:
        im.verify()  # the chunks left are intact, CRCs included
    with Image.open(io.BytesIO(stripped)) as im:
        assert "XML:com.adobe.xmp" in im.info and "Comment" not in im.info
    got = load_image(data)  # the XMP orientation survived: rotated a quarter turn
    assert got.size == (12, 20) and np.array_equal(np.asarray(got), np.rot90(a, -1))


# --- Bounded memory and concurrency; reduced while decoding -------------------------------------------------------


def _smooth(w, h, channels=3, seed=0):
    y, x = np.mgrid[0:h, 0:w] / max(w, h)
    base = [np.sin(6 * x + 2 * y), np.cos(4 * y - 3 * x), np.sin(5 * (x + y))]
    a = np.stack(base[:channels], -1) * 100 + 128
    return np.clip(a, 0, 255).astype(np.uint8)


def _close_to(a, b, mean=0.6, worst=6):
    a, b = np.asarray(a).astype(int), np.asarray(b).astype(int)
    assert a.shape == b.shape
    assert np.abs(a - b).mean() < mean and np.abs(a - b).max() <= worst, (np.abs(a - b).mean(), np.abs(a - b).max())


@pytest.mark.parametrize("mode", ["RGB", "L"])
def test_max_side_matches_fit_longest_side(mode):
    exif = Image.Exif()
    exif[274] = 6
    smooth = Image.fromarray(_smooth(1600, 1200))
    rgba = Image.fromarray(np.dstack([_smooth(900, 700), _smooth(900, 700, 1)]))
    sixteen = Image.fromarray(_smooth(800, 600, 1)[..., 0].astype(np.uint16) * 257)
    cases = {  # name -> (upload, max_side)
        "jpeg_drafted": (_encoded(smooth, "JPEG", quality=95), 100),
        "jpeg_rotated": (_encoded(smooth.crop((0, 0, 800, 400)), "JPEG", quality=95, exif=exif), 100),
        "png_reduced": (_encoded(smooth, "PNG"), 100),
        "rgba_reduced": (_encoded(rgba, "PNG"), 64),
        "sixteen_bit": (_encoded(sixteen, "PNG"), 50),
        "tiff_lzw": (_encoded(smooth, "TIFF", compression="tiff_lzw"), 128),
    }
    for name, (data, side) in cases.items():
        reference = fit_longest_side(load_image(data, mode=mode), side)
        got = load_image(data, mode=mode, max_side=side)
        assert got.mode == mode and got.size == reference.size and max(got.size) == side, name
        _close_to(got, reference)
    assert load_image(cases["jpeg_rotated"][0], max_side=100).size == (50, 100)  # EXIF rotation still applied


def test_max_side_is_exact_without_reduction_and_never_upscales():
    a = _smooth(300, 200)
    data = _encoded(Image.fromarray(a), "PNG")
    for source in (data, Image.fromarray(a), a):  # under 3x the target: one Lanczos pass, as fit_longest_side does
        assert np.array_equal(
            np.asarray(load_image(source, max_side=128)), np.asarray(fit_longest_side(load_image(source), 128))
        )
    assert np.array_equal(np.asarray(load_image(data, max_side=1000)), a)
    assert load_image(data, max_side=300).size == (300, 200)
    for bad in (0, -5, 2.5, "512", True):
        with pytest.raises(ValueError, match="max_side"):
            load_image(data, max_side=bad)


def test_a_callers_image_is_not_closed():
    img = Image.fromarray(_smooth(40, 30))
    load_image(img, max_side=10)
    assert img.getpixel((0, 0)) == tuple(_smooth(40, 30)[0, 0])


@pytest.mark.parametrize("factor", [1, 3])
def test_converting_in_bands_equals_converting_whole_images(monkeypatch, factor):
    monkeypatch.setattr(imaging, "_BAND_PIXELS", 37)  # bands of one or two rows
    rng = np.random.default_rng(3)
    a = rng.integers(0, 256, (23, 31, 4), dtype=np.uint8)
    palette = Image.fromarray(a[..., :3]).convert("P")
    palette.info["transparency"] = 5
    floats = rng.random((23, 31)).astype(np.float32) * 1000 - 200
    white = Image.new("RGBA", (31, 23), (255, 255, 255, 255))
    sources = {  # image -> what converting it whole gives (the module's previous behaviour)
        "rgba": (Image.fromarray(a), lambda m: Image.alpha_composite(white, Image.fromarray(a)).convert(m)),
        "la": (
            Image.fromarray(a).convert("LA"),
            lambda m: Image.alpha_composite(white, Image.fromarray(a).convert("LA").convert("RGBA")).convert(m),
        ),
        "palette": (palette, lambda m: Image.alpha_composite(white, palette.convert("RGBA")).convert(m)),
        "sixteen": (
            Image.fromarray(a[..., 0].astype(np.uint16) * 250),
            lambda m: Image.fromarray(np.round(a[..., 0].astype(np.float64) * 250 / 257).astype(np.uint8)).convert(m),
        ),
        "float": (
            Image.fromarray(floats),
            lambda m: Image.fromarray(imaging._scale_to_uint8(floats.astype(np.float64))).convert(m),
        ),
        "cmyk": (
            Image.fromarray(a).convert("RGB").convert("CMYK"),
            lambda m: Image.fromarray(a).convert("RGB").convert("CMYK").convert(m),
        ),
    }
    for name, (img, whole) in sources.items():
        for mode in ("RGB", "L"):
            expected = whole(mode)
            expected = expected.reduce(factor) if factor > 1 else expected
            assert np.array_equal(np.asarray(imaging._to_8bit(img, mode, factor)), np.asarray(expected)), (name, mode)


def test_concurrent_decodes_are_bounded(tmp_path, monkeypatch):
    """8 uploads at once: never more than DECODE_CONCURRENCY full decodes in flight (counted, not timed)."""
    from PIL import ImageFile

    path = tmp_path / "big.jpg"
    Image.fromarray(np.broadcast_to(np.linspace(0, 255, 6000, dtype=np.uint8)[None, :, None], (4000, 6000, 3))).save(
        path, quality=70
    )
    real_load, lock, state = ImageFile.ImageFile.load, threading.Lock(), {"now": 0, "max": 0}

    def counting_load(self):
        if not getattr(self, "tile", None):  # already decoded: nothing in flight
            return real_load(self)
        with lock:
            state["now"] += 1
            state["max"] = max(state["max"], state["now"])
        try:
            time.sleep(0.05)  # holds the decode open so that unbounded callers would overlap
            return real_load(self)
        finally:
            with lock:
                state["now"] -= 1

    monkeypatch.setattr(ImageFile.ImageFile, "load", counting_load)
    start, sizes, errors = threading.Barrier(8), [None] * 8, []

    def upload(k):
        try:
            start.wait()
            sizes[k] = load_image(path, max_side=512 if k % 2 else None).size
        except Exception as err:  # pragma: no cover - reported below
            errors.append(err)

    threads = [threading.Thread(target=upload, args=(k,)) for k in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(120)
    assert not errors and sizes == [(6000, 4000), (512, 341)] * 4
    assert imaging.DECODE_CONCURRENCY == 2  # the default (DDPM_DECODE_CONCURRENCY unset in the tests)
    # 8 uploads at once: exactly 2 decodes overlap, never more (the bound), and not fewer (no needless serialising)
    assert state["max"] == imaging.DECODE_CONCURRENCY, state


def test_decode_concurrency_is_configurable(monkeypatch):
    for value, expected in (("3", 3), ("0", 1), ("many", 2)):
        monkeypatch.setenv("DDPM_DECODE_CONCURRENCY", value)
        assert imaging._env_int("DDPM_DECODE_CONCURRENCY", 2) == expected
    monkeypatch.delenv("DDPM_DECODE_CONCURRENCY")
    assert imaging._env_int("DDPM_DECODE_CONCURRENCY", 2) == 2


PEAK_RSS = """
import re, sys
from PIL import Image
from ddpm_core.imaging import load_image
load_image(Image.new("RGBA", (64, 64)), max_side=8)  # warm up: plugins, allocator
kib = lambda field: int(re.search(field + r":\\s+(\\d+)", open("/proc/self/status").read())[1])
open("/proc/self/clear_refs", "w").write("5")  # restart the peak (VmHWM) from the current resident size
before = kib("VmRSS")
load_image(sys.argv[1], max_side=None if sys.argv[2] == "full" else int(sys.argv[2]))
print((kib("VmHWM") - before) * 1024)
"""


@pytest.mark.skipif(
    not Path("/proc/self/clear_refs").exists(), reason="measures the peak resident size through Linux's /proc"
)
def test_peak_memory_of_one_decode(tmp_path):
    """A 12 MP RGBA PNG (48 MB decoded) costs the decoded image plus its 8-bit copy (about 2.2x), or plus a
    reduced copy with max_side (about 1.45x); converting the whole image at once used to cost 5x."""
    path = tmp_path / "rgba.png"
    Image.fromarray(np.dstack([_smooth(4000, 3000), _smooth(4000, 3000, 1)])).save(path, compress_level=1)
    decoded = 4000 * 3000 * 4
    root = Path(__file__).resolve().parents[1]

    def peak(max_side):
        out = subprocess.run(
            [sys.executable, "-c", PEAK_RSS, str(path), max_side],
            cwd=root,
            check=True,
            capture_output=True,
            text=True,
            timeout=300,
        )
        return int(out.stdout.split()[-1])

    assert peak("512") < 1.6 * decoded
    assert peak("full") < 2.6 * decoded


# --- Shapes survive 1-pixel-wide or -high images ------------------------------------------------------------------


@pytest.mark.parametrize("size", [(1, 1), (32, 1), (1, 32)])
@pytest.mark.parametrize("mode", ["RGB", "L"])
def test_one_pixel_wide_or_high_images_keep_their_shape(size, mode):
    w, h = size
    channels = 3 if mode == "RGB" else 1
    a = np.random.default_rng(w * 100 + h).integers(0, 256, (h, w, 3), dtype=np.uint8)
    expected = np.asarray(Image.fromarray(a).convert(mode))
    img = load_image(_encoded(Image.fromarray(a), "PNG"), mode=mode)
    assert img.size == size and img.mode == mode and np.array_equal(np.asarray(img), expected)
    assert load_image(_encoded(Image.fromarray(a), "PNG"), mode=mode, max_side=8).size == (min(w, 8), min(h, 8))
    x = pil_to_tensor(img)
    assert x.shape == (1, channels, h, w)
    u = to_uint8(x)
    assert u.shape == (1, h, w, channels) and to_uint8(x[0]).shape == (h, w, channels)
    assert np.array_equal(u[0].reshape(expected.shape), expected)
    for back in (tensor_to_pil(x)[0], tensor_to_pil(x[0])[0]):
        assert back.size == size and back.mode == mode and np.array_equal(np.asarray(back), expected)
