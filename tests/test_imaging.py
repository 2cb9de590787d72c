"""Safe decoding of every kind of upload, and a fuzz of the decoder."""

import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from PIL import Image

from ddpm_core.imaging import (
    center_crop_resize, fit_longest_side, load_image, make_grid, pil_to_tensor, save_animation, tensor_to_pil, to_uint8,
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


@pytest.mark.parametrize("name,fragment", [("bomb.png", "MP"), ("empty.png", "empty"), ("svg_renamed.png", "SVG"),
                                           ("truncated.png", "corrupt or truncated"), ("strip_1x100000.png", "aspect"),
                                           ("float_nan.tif", "NaN")])
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
@given(st.integers(0, 60), st.sampled_from(["png", "jpeg", "gif", "bmp", "tiff", "webp"]), st.integers(1, 40), st.integers(1, 40))
def test_fuzz_corrupted_real_images(cut, fmt, w, h):
    """Real encodings of random sizes, with bytes flipped or cut: decoded or refused with ValueError."""
    import io

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
