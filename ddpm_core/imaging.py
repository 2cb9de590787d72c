"""Safe image decoding and conversions between PIL images and model tensors in [-1, 1].

Uploads are hostile by default: only an allow-list of raster formats is decoded, recognised by their magic bytes
before any Pillow plugin parses them; every failure to decode becomes a ``ValueError`` with a message a user can
act on; nothing is decoded past the limits below (decompression bombs are refused before pixels are allocated).
A decode holds at most the full-size image and its converted copy (conversions run in bands of rows), and at most
``DECODE_CONCURRENCY`` decodes run at once.
"""

from __future__ import annotations

import io
import operator
import os
import threading
import zlib
from pathlib import Path
from typing import Callable, Iterable, Sequence

import numpy as np
import torch
from PIL import Image, ImageDraw, ImageFont, ImageOps, PngImagePlugin

#: Limits on what is decoded. 6000x4000 (24 MP) photos pass; a 1x100000 strip or a 100k x 100k bomb does not.
MAX_FILE_BYTES = int(os.environ.get("DDPM_MAX_UPLOAD_BYTES", 30 * 1024 * 1024))
MAX_PIXELS = 40_000_000
MAX_ASPECT = 32
MAX_SIDE_DEFAULT = 512

Image.MAX_IMAGE_PIXELS = MAX_PIXELS  # PIL's own bomb guard, as a second line behind the check in load_image


def _env_int(name: str, default: int) -> int:
    try:
        return max(1, int(os.environ.get(name, default)))
    except ValueError:  # a typo in the environment must not stop the app from starting
        return default


#: How many decodes run at once, process-wide (``DDPM_DECODE_CONCURRENCY``, default 2). Each one can hold a
#: full-size image (120 MB for 40 MP RGB), so concurrent uploads wait for a slot instead of multiplying that.
DECODE_CONCURRENCY = _env_int("DDPM_DECODE_CONCURRENCY", 2)
_DECODE_SLOTS = threading.BoundedSemaphore(DECODE_CONCURRENCY)

#: The formats decoded. All are pure raster formats, decoded in-process by Pillow's own plugins or the codec
#: libraries it bundles (libpng/zlib, libjpeg, libwebp, libtiff), and they are what people upload. JPEG includes
#: the multi-picture variant (MPO) phone cameras write, opened by the same JPEG parser. Binary PPM/PGM/PBM (P4-P6)
#: is a text header followed by raw samples, the simplest raster there is; the ASCII variants (P1-P3) are not
#: accepted because Pillow parses their samples in Python, slowly. Not accepted: EPS/PostScript/PDF (Pillow hands
#: them to Ghostscript, an interpreter of a programming language, in a subprocess), ICO/ICNS (containers whose
#: directory picks among nested images), TGA (no magic bytes to recognise it by), JPEG 2000, PSD and the other
#: rarely used formats Pillow can open: each one more parser exposed for no benefit here.
ACCEPTED_FORMATS = ("PNG", "JPEG", "WebP", "GIF", "BMP", "TIFF", "PPM/PGM/PBM")
ACCEPTED_TEXT = "PNG, JPEG, WebP, GIF, BMP, TIFF or binary PPM/PGM/PBM"

_PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
_MAGIC = (  # leading bytes -> the only Pillow plugin allowed to parse the file
    (_PNG_MAGIC, "PNG"),
    (b"\xff\xd8\xff", "JPEG"),
    (b"GIF87a", "GIF"),
    (b"GIF89a", "GIF"),
    (b"BM", "BMP"),
    (b"II*\x00", "TIFF"),
    (b"MM\x00*", "TIFF"),
    (b"II+\x00", "TIFF"),
    (b"MM\x00+", "TIFF"),  # classic and BigTIFF
)
_REFUSED_MAGIC = (  # recognised only to say what the file is
    (b"%!PS", "a PostScript/EPS document"),
    (b"\xc5\xd0\xd3\xc6", "a PostScript/EPS document"),  # EPS with a binary preview header
    (b"%PDF", "a PDF document"),
    (b"\x00\x00\x01\x00", "an ICO icon"),
    (b"icns", "an ICNS icon"),
    (b"8BPS", "a Photoshop document"),
    (b"\x00\x00\x00\x0cjP  ", "a JPEG 2000 image"),
    (b"\xff\x4f\xff\x51", "a JPEG 2000 image"),
)

# Reduce (box filter) or draft a JPEG down to no less than this many times the requested size, then resample with
# Lanczos: the reduction saves work and memory, the final Lanczos keeps the result within a few levels of
# resampling the full image (Pillow's resize(reducing_gap=3) is documented as indistinguishable in most cases).
_REDUCING_GAP = 3.0
_BAND_PIXELS = 1 << 18  # pixels converted per band: the scratch (a few MB) a conversion needs, whatever the image size

_TRANSPOSE = {  # EXIF orientation -> what undoes it
    2: Image.Transpose.FLIP_LEFT_RIGHT,
    3: Image.Transpose.ROTATE_180,
    4: Image.Transpose.FLIP_TOP_BOTTOM,
    5: Image.Transpose.TRANSPOSE,
    6: Image.Transpose.ROTATE_270,
    7: Image.Transpose.TRANSVERSE,
    8: Image.Transpose.ROTATE_90,
}


def _describe(source) -> str:
    return Path(source).name if isinstance(source, (str, os.PathLike)) else "the file"


def load_image(source, mode: str = "RGB", max_pixels: int = MAX_PIXELS, max_side: int | None = None) -> Image.Image:
    """Decode ``source`` (a path, bytes, a PIL image or an ``[H x W (x C)]`` array) into an 8-bit ``mode`` image.

    Files must be one of ``ACCEPTED_FORMATS``. Handles EXIF rotation, transparency (composited on white),
    palettes, 16-bit and float images, CMYK and the first frame of animations. Raises ``ValueError`` for empty,
    corrupt, truncated, non-image, non-finite, oversized (> ``max_pixels``) or extremely elongated (aspect > 32:1)
    inputs, and for files in any other format.

    With ``max_side``, the result's longest side is at most ``max_side`` (the same as ``fit_longest_side`` on
    the full result, up to rounding), reduced while decoding so that no full-size copy is made.
    """
    if mode not in ("RGB", "L"):
        raise ValueError(f"mode must be 'RGB' or 'L', got {mode!r}")
    if max_side is not None:
        try:
            side = -1 if isinstance(max_side, bool) else operator.index(max_side)
        except TypeError:
            side = -1
        if side < 1:
            raise ValueError(f"max_side must be a positive whole number or None, got {max_side!r}")
        max_side = side
    with _DECODE_SLOTS:
        return _load(source, mode, max_pixels, max_side)


def _load(source, mode: str, max_pixels: int, max_side: int | None) -> Image.Image:
    opened = None
    if isinstance(source, np.ndarray):
        img = _from_array(source)
    elif isinstance(source, Image.Image):
        img = source
    else:
        opened = _open(source, max_pixels, max_side)
        img = opened.img
    try:
        _check_size(img.size, max_pixels)
        full_size = opened.full_size if opened else img.size  # before a JPEG draft shrank it
        extent = opened.extent if opened else img.size  # the decoded area that covers the whole picture
        target = None if max_side is None else _fit_size(full_size, max_side)
        if target == full_size:
            target = None  # never upscale
        factor = (
            1 if target is None else max(1, int(min(extent[0] / target[0], extent[1] / target[1]) / _REDUCING_GAP))
        )
        orientation = _orientation(img)
        out = _to_8bit(img, mode, factor)
    finally:
        if opened is not None:
            opened.close()  # the full-size pixels and the file's bytes go now, not when the caller drops the result
    if target is not None:
        out = out.resize(target, Image.Resampling.LANCZOS, box=(0, 0, extent[0] / factor, extent[1] / factor))
    if orientation is not None:
        out = out.transpose(orientation)
    return out


class _Opened:
    """A decoded file: the loaded image, its declared size and the part of the decoded pixels covering it."""

    def __init__(self, img: Image.Image, full_size: tuple[int, int], extent: tuple[float, float]):
        self.img, self.full_size, self.extent = img, full_size, extent

    def close(self) -> None:
        self.img.close()


def _open(source, max_pixels: int, max_side: int | None) -> _Opened:
    """Parse and decode a file (path or bytes) in an accepted format; a JPEG is decoded at a reduced scale when
    ``max_side`` allows."""
    data = _read_bytes(source)
    fmt = _sniff(data)
    if fmt is None:
        raise ValueError(_refusal(source, data))
    if fmt == "PNG":
        data = _png_without_oversized_metadata(data)
    name = _describe(source)
    try:
        img = Image.open(io.BytesIO(data), formats=[fmt])  # no other plugin may claim the bytes
    except Image.DecompressionBombError as err:
        raise ValueError(
            f"image refused: it declares more pixels than the {max_pixels / 1e6:.0f} MP limit (a decompression bomb?)"
        ) from err
    except Exception as err:  # whatever a hostile header makes a parser raise, the user gets a sentence
        raise ValueError(f"{name} is corrupt or truncated and cannot be decoded as {fmt} ({err})") from err
    full_size = extent = img.size
    try:
        # Between one and two times Image.MAX_IMAGE_PIXELS Pillow only warns; this refuses it. (No
        # warnings.catch_warnings to make that warning an error: it swaps process-wide state, not thread-safe.)
        _check_size(full_size, max_pixels)  # before any pixel is allocated
    except ValueError:
        img.close()
        raise
    try:
        img.seek(0)
        if max_side is not None and img.format in ("JPEG", "MPO"):
            target = _fit_size(full_size, max_side)
            if target != full_size:  # libjpeg decodes at 1/2, 1/4 or 1/8 scale, for a fraction of the memory
                drafted = img.draft(None, (int(target[0] * _REDUCING_GAP), int(target[1] * _REDUCING_GAP)))
                if drafted is not None:
                    extent = drafted[1][2:]
        img.load()
    except Exception as err:
        img.close()
        raise ValueError(f"{name} is corrupt or truncated and cannot be decoded ({err})") from err
    return _Opened(img, full_size, extent)


def _read_bytes(source) -> bytes:
    if isinstance(source, (bytes, bytearray, memoryview)):
        data = bytes(source)
    elif isinstance(source, (str, os.PathLike)):
        path = Path(source)
        try:
            size = path.stat().st_size
            if size > MAX_FILE_BYTES:
                raise ValueError(f"{path.name} is {size / 2**20:.1f} MB; the limit is {MAX_FILE_BYTES / 2**20:.0f} MB")
            data = path.read_bytes()
        except OSError as err:  # gone, a folder, not readable
            raise ValueError(f"cannot read {path.name}: {err.strerror or err}") from err
    else:
        raise ValueError(f"cannot read an image from {type(source).__name__}")
    if not data:
        raise ValueError("the file is empty (0 bytes)")
    if len(data) > MAX_FILE_BYTES:
        raise ValueError(f"the file is {len(data) / 2**20:.1f} MB; the limit is {MAX_FILE_BYTES / 2**20:.0f} MB")
    return data


def _sniff(data: bytes) -> str | None:
    """The Pillow plugin for ``data`` if it is in an accepted format, else None."""
    for magic, fmt in _MAGIC:
        if data.startswith(magic):
            return fmt
    if data[:4] == b"RIFF" and data[8:12] == b"WEBP":
        return "WEBP"
    if data[:1] == b"P" and data[1:2] in (b"4", b"5", b"6") and data[2:3].isspace():
        return "PPM"
    return None


def _refusal(source, data: bytes) -> str:
    kind = next((k for magic, k in _REFUSED_MAGIC if data.startswith(magic)), None)
    if kind is None and data[4:8] == b"ftyp":
        kind = "a HEIC/AVIF photo (export it as JPEG or PNG first)"
    if kind is None:
        text = data[:2048].lstrip(b"\xef\xbb\xbf \t\r\n").lower()
        if b"<svg" in text:
            kind = "an SVG drawing"
        elif text.startswith((b"<!doctype html", b"<html")):
            kind = "an HTML page"
        elif text.startswith(b"<"):
            kind = "an XML document"
        elif data[:1] == b"P" and data[1:2] in (b"1", b"2", b"3"):
            kind = "an ASCII PPM/PGM/PBM image"
    what = f"is {kind}, not an image in an accepted format" if kind else "is not an image in an accepted format"
    return f"{_describe(source)} {what}: upload {ACCEPTED_TEXT} (SVG, PDF, PostScript and HTML are not images)"


_PNG_METADATA = (b"tEXt", b"zTXt", b"iTXt", b"iCCP")


def _png_without_oversized_metadata(data: bytes) -> bytes:
    """Drop the text and ICC-profile chunks Pillow would refuse to read (over ``PngImagePlugin.MAX_TEXT_CHUNK``
    once inflated, too many in total, or malformed): they describe the image, they are not the image, and load_image
    does not use an ICC profile. The rest of the stream is kept byte for byte, CRCs included; chunks within limits
    stay (XMP and "Raw profile type exif" text can carry the orientation)."""
    limit = PngImagePlugin.MAX_TEXT_CHUNK
    budget = PngImagePlugin.MAX_TEXT_MEMORY // 4  # bytes inflated here in all, well under Pillow's own total
    view = memoryview(data)
    kept: list[memoryview] = []
    start, pos = 0, len(_PNG_MAGIC)
    while pos + 12 <= len(data):
        length = int.from_bytes(data[pos : pos + 4], "big")
        end = pos + 12 + length
        if end > len(data):
            break  # truncated: Pillow says so
        kind = data[pos + 4 : pos + 8]
        if kind in _PNG_METADATA:
            size = _metadata_size(kind, view[pos + 8 : pos + 8 + length], min(limit, budget))
            if size is None:
                kept.append(view[start:pos])
                start = end
            else:
                budget -= size
        if kind == b"IEND":
            break
        pos = end
    if not kept:
        return data
    kept.append(view[start:])
    return b"".join(kept)


def _metadata_size(kind: bytes, body: memoryview, limit: int) -> int | None:
    """The size of a PNG text or ICC chunk's content once inflated, or None if it is over ``limit`` or malformed.
    Inflates at most ``limit`` bytes, whatever the chunk claims."""
    if limit <= 0:
        return None
    body = bytes(body)
    if kind == b"tEXt":
        return len(body) if len(body) <= limit else None
    keyword, sep, rest = body.partition(b"\0")
    if not sep or not keyword:
        return None
    if kind == b"iTXt":
        if len(rest) < 2:
            return None
        compressed, method, rest = rest[0], rest[1], rest[2:]
        parts = rest.split(b"\0", 2)
        if len(parts) != 3:
            return None
        if not compressed:
            return len(parts[2]) if len(parts[2]) <= limit else None
        if method != 0:
            return None
        stream = parts[2]
    else:  # zTXt and iCCP: a compression method byte (0 is zlib, the only one defined) then the stream
        if rest[:1] != b"\0":
            return None
        stream = rest[1:]
    inflate = zlib.decompressobj()
    try:
        out = inflate.decompress(stream, limit)
    except zlib.error:
        return None
    return None if inflate.unconsumed_tail else len(out)


def _check_size(size: tuple[int, int], max_pixels: int) -> None:
    w, h = size
    if w < 1 or h < 1:
        raise ValueError(f"image has no pixels ({w}x{h})")
    if w * h > max_pixels:
        raise ValueError(f"image is {w}x{h} = {w * h / 1e6:.0f} MP; the limit is {max_pixels / 1e6:.0f} MP")
    if max(w, h) / min(w, h) > MAX_ASPECT:
        raise ValueError(f"image is {w}x{h}: an aspect ratio over {MAX_ASPECT}:1 is not supported")


def _fit_size(size: tuple[int, int], max_side: int) -> tuple[int, int]:
    """The size ``fit_longest_side`` gives ``size``."""
    w, h = size
    scale = max_side / max(w, h)
    if scale >= 1:
        return size
    return max(1, round(w * scale)), max(1, round(h * scale))


def _orientation(img: Image.Image):
    """The transpose that undoes the image's EXIF (or XMP) orientation, or None."""
    try:
        return _TRANSPOSE.get(img.getexif().get(0x0112))
    except Exception:  # a broken EXIF block must not lose the image itself
        return None


def _from_array(a: np.ndarray) -> Image.Image:
    if a.ndim not in (2, 3) or (a.ndim == 3 and a.shape[2] not in (1, 3, 4)):
        raise ValueError(f"an image array must be HxW, HxWx1, HxWx3 or HxWx4, got shape {a.shape}")
    if a.ndim == 3 and a.shape[2] == 1:
        a = a[..., 0]
    if a.dtype != np.uint8:
        a = _scale_to_uint8(a.astype(np.float64))
    return Image.fromarray(a)


def _scale_to_uint8(a: np.ndarray, lo: float | None = None, hi: float | None = None) -> np.ndarray:
    """Float samples -> uint8: [0, 1] is stretched to [0, 255], a range over 255 is rescaled from [lo, hi] (the
    whole image's, given when ``a`` is one band of it), anything else is clipped."""
    if lo is None or hi is None:
        lo, hi = _finite_range(a)
    if 0.0 <= lo and hi <= 1.0 and hi > 0:
        a = a * 255.0  # float images in [0, 1]
    elif hi > 255:
        a = (a - lo) * (255.0 / max(hi - lo, 1e-12))
    return np.clip(np.round(a), 0, 255).astype(np.uint8)


def _finite_range(a: np.ndarray) -> tuple[float, float]:
    if not np.isfinite(a).all():
        raise ValueError("image contains NaN or infinite values")
    return float(a.min()), float(a.max())


def _bands(img: Image.Image, rows: int) -> Iterable[tuple[int, Image.Image]]:
    w, h = img.size
    for y in range(0, h, rows):
        yield y, img.crop((0, y, w, min(h, y + rows)))


def _to_8bit(img: Image.Image, mode: str, factor: int = 1) -> Image.Image:
    """``img`` as a new 8-bit ``mode`` image, box-reduced by ``factor``. Converted band by band, so the scratch
    (float64 samples, an RGBA copy, the white background) is bounded whatever the image size; every step is
    per pixel, or per ``factor`` x ``factor`` block with bands a multiple of ``factor`` high, so the result is the
    same as converting the whole image at once."""
    img.load()
    convert = _band_converter(img, mode)
    w, h = img.size
    rows = max(1, _BAND_PIXELS // w)
    rows = max(factor, rows - rows % factor)
    out = Image.new(mode, (-(-w // factor), -(-h // factor)))
    for y, band in _bands(img, rows):
        band = convert(band)
        out.paste(band.reduce(factor) if factor > 1 else band, (0, y // factor))
    return out


def _band_converter(img: Image.Image, mode: str) -> Callable[[Image.Image], Image.Image]:
    if img.mode in ("I;16", "I;16B", "I;16L", "I;16N"):
        return lambda band: Image.fromarray(
            (np.asarray(band, dtype=np.float64) / 257.0).round().astype(np.uint8)
        ).convert(mode)
    if img.mode in ("I", "F"):
        # scaled by the whole image's range: a first pass finds it (and refuses NaN/inf) a band at a time
        rows = max(1, _BAND_PIXELS // img.size[0])
        ranges = [_finite_range(np.asarray(band, dtype=np.float64)) for _, band in _bands(img, rows)]
        lo, hi = min(r[0] for r in ranges), max(r[1] for r in ranges)
        return lambda band: Image.fromarray(_scale_to_uint8(np.asarray(band, dtype=np.float64), lo, hi)).convert(mode)
    if img.mode in ("P", "RGBA", "LA", "PA", "RGBa", "La"):  # a palette may carry transparency

        def on_white(band: Image.Image) -> Image.Image:
            rgba = band.convert("RGBA")
            background = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
            return Image.alpha_composite(background, rgba).convert(mode)

        return on_white
    return lambda band: band.convert(mode)


def fit_longest_side(img: Image.Image, max_side: int = MAX_SIDE_DEFAULT) -> Image.Image:
    """Downscale (never upscale) so that the longest side is at most ``max_side``, keeping the aspect ratio."""
    size = _fit_size(img.size, max_side)
    return img if size == img.size else img.resize(size, Image.Resampling.LANCZOS)


def center_crop_resize(img: Image.Image, size: int) -> Image.Image:
    """Centre-crop to a square and resize to ``size`` x ``size`` (the model's input)."""
    return ImageOps.fit(img, (size, size), Image.Resampling.LANCZOS)


def pil_to_tensor(img: Image.Image) -> torch.Tensor:
    """8-bit PIL image -> float32 ``[1 x C x H x W]`` in [-1, 1] (C = 1 for mode L, 3 for RGB)."""
    return to_model_range(np.array(img, dtype=np.uint8)[None])  # a copy: PIL's buffer is read-only


def to_model_range(images_uint8: np.ndarray) -> torch.Tensor:
    """``[N x H x W]`` or ``[N x H x W x C]`` uint8 -> float32 ``[N x C x H x W]`` in [-1, 1]: x / 127.5 - 1
    (the inverse of :func:`to_uint8`)."""
    x = torch.from_numpy(np.ascontiguousarray(images_uint8)).float() / 127.5 - 1.0
    return x.unsqueeze(1) if x.ndim == 3 else x.permute(0, 3, 1, 2).contiguous()


def to_uint8(x: torch.Tensor) -> np.ndarray:
    """``[B x C x H x W]`` or ``[C x H x W]`` in [-1, 1] -> uint8 ``[B x H x W x C]`` / ``[H x W x C]`` (clamped)."""
    x = ((x.detach().float().cpu() + 1) * 127.5).round().clamp(0, 255).to(torch.uint8)
    return (x.permute(0, 2, 3, 1) if x.ndim == 4 else x.permute(1, 2, 0)).numpy()


def tensor_to_pil(x: torch.Tensor) -> list[Image.Image]:
    """``[B x C x H x W]`` in [-1, 1] -> B PIL images (mode L for one channel)."""
    arr = to_uint8(x if x.ndim == 4 else x.unsqueeze(0))
    return [Image.fromarray(a[..., 0] if a.shape[-1] == 1 else a) for a in arr]


def noise_to_pil(noise: torch.Tensor) -> Image.Image:
    """Show N(0, I) noise ``[1 x C x H x W]``: +-3 sigma mapped onto the 8-bit range."""
    return tensor_to_pil((noise / 3).clamp(-1, 1))[0]


def make_grid(
    images: Sequence[Image.Image],
    ncols: int | None = None,
    labels: Sequence[str] | None = None,
    pad: int = 2,
    scale: int = 1,
) -> Image.Image:
    """Tile images (all the same size) into a grid, optionally upscaled (nearest) and labelled underneath."""
    if not images:
        raise ValueError("make_grid needs at least one image")
    w, h = images[0].size
    w, h = w * scale, h * scale
    n = len(images)
    ncols = ncols or n
    nrows = (n + ncols - 1) // ncols
    font_size = max(10, min(18, w // 5))
    label_h = font_size + 6 if labels else 0
    grid = Image.new("RGB", (ncols * (w + pad) + pad, nrows * (h + pad + label_h) + pad), (255, 255, 255))
    draw = ImageDraw.Draw(grid)
    font = ImageFont.load_default(size=font_size)
    for k, im in enumerate(images):
        r, c = divmod(k, ncols)
        x0, y0 = pad + c * (w + pad), pad + r * (h + pad + label_h)
        grid.paste(im.convert("RGB").resize((w, h), Image.Resampling.NEAREST), (x0, y0))
        if labels:
            draw.text((x0 + 2, y0 + h + 2), labels[k], fill=(40, 40, 40), font=font)
    return grid


def save_animation(
    frames: Iterable[Image.Image], path: str | Path, duration_ms: int = 60, last_hold_ms: int = 1200
) -> Path:
    """Write frames as a looping GIF (or WebP by suffix); the final frame is held so the result can be seen."""
    frames = [f.convert("RGB") for f in frames]
    if not frames:
        raise ValueError("no frames to animate")
    durations = [duration_ms] * (len(frames) - 1) + [last_hold_ms]
    path = Path(path)
    frames[0].save(path, save_all=True, append_images=frames[1:], duration=durations, loop=0, optimize=False)
    return path
