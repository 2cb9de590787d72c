"""The data the page draws x_t from while t is dragged (``ddpm_core.explore.forward_scrub``): x_t formed from it
with eq. 4 is ``q_sample`` on the same eps, and its eps is the forward views' own noise."""

import numpy as np
import pytest
import torch

from ddpm_core import GaussianDiffusion, NoiseSchedule
from ddpm_core.explore import fit_size, forward_noise, forward_scrub, forward_views, readout, readout_table
from ddpm_core.imaging import to_uint8

pytestmark = pytest.mark.usefixtures("one_intra_op_thread")


def _image(h: int, w: int, seed: int = 0) -> torch.Tensor:
    """An 8-bit image in model units, as decoded uploads are."""
    g = torch.Generator().manual_seed(seed)
    return torch.randint(0, 256, (1, 3, h, w), generator=g).float() / 127.5 - 1.0


def _eq4(d, t: int) -> np.ndarray:
    """What the page computes: eq. 4 from the table in float64, then 8-bit as the canvas rounds it."""
    a, b = d.table["sqrt_alpha_bar"][t], d.table["sqrt_one_minus_alpha_bar"][t]
    x_t = a * d.x0.double().numpy() + b * d.eps.double().numpy()
    return np.clip(np.round((x_t + 1) * 127.5), 0, 255)


@pytest.mark.parametrize("schedule", ["linear", "cosine"])
def test_x_t_from_the_scrub_data_is_q_sample_on_the_same_eps(schedule):
    diffusion = GaussianDiffusion(NoiseSchedule.make(schedule, 1000))
    d = forward_scrub(_image(200, 300), diffusion, seed=3, max_side=256)
    assert d.x0.shape == d.eps.shape == (1, 3, 171, 256)
    for t in (0, 1, 250, 500, 999):
        a, b = d.table["sqrt_alpha_bar"][t], d.table["sqrt_one_minus_alpha_bar"][t]
        core = diffusion.q_sample(d.x0, t, d.eps)
        # eq. 4 itself, to float32 rounding (|x0| <= 1, |eps| < 6: a few units of 2^-24 on values below 7)
        torch.testing.assert_close(core, (a * d.x0 + b * d.eps).float(), rtol=0, atol=7 * 4 * 2**-24)
        # the page's pixels: within one 8-bit level (a value on a rounding boundary may fall either way)
        diff = np.abs(_eq4(d, t) - to_uint8(core).transpose(0, 3, 1, 2))
        assert diff.max() <= 1 and (diff > 0).mean() < 1e-3, t


def test_at_full_size_it_is_the_forward_views_image_and_noise():
    diffusion = GaussianDiffusion(NoiseSchedule.make("linear", 1000))
    x0 = _image(120, 90)
    d = forward_scrub(x0, diffusion, seed=7, max_side=256)
    v = forward_views(x0, diffusion, 400, seed=7)
    assert torch.equal(d.x0, x0) and torch.equal(d.eps, v.noise)
    assert torch.equal(diffusion.q_sample(d.x0, 400, d.eps), v.x_t)


def test_scaled_down_eps_is_the_same_draw_at_the_display_grid():
    """Downscaled, eps is the full-size noise at the display grid's pixels (nearest), so still N(0, 1) per pixel
    and the same seed's; x0 is the image area-averaged, in 8-bit values."""
    diffusion = GaussianDiffusion(NoiseSchedule.make("linear", 1000))
    x0 = _image(384, 512)
    d = forward_scrub(x0, diffusion, seed=0, max_side=256)
    assert fit_size(384, 512, 256) == (192, 256) and d.eps.shape == (1, 3, 192, 256)
    full = forward_noise(x0, 0)
    assert torch.equal(d.eps, full[..., 1::2, 1::2])  # an exact factor of 2: every other pixel
    assert torch.equal(d.eps, forward_scrub(x0, diffusion, seed=0).eps)
    assert not torch.equal(d.eps, forward_scrub(x0, diffusion, seed=1).eps)
    assert abs(d.eps.mean()) < 0.02 and abs(d.eps.std() - 1) < 0.02
    levels = (d.x0 + 1) * 127.5
    torch.testing.assert_close(levels, levels.round(), rtol=0, atol=1e-4)
    area = torch.nn.functional.avg_pool2d(x0, 2)
    assert (d.x0 - area).abs().max() <= 0.5 / 127.5 + 1e-6
    # a factor that is not whole: still pixels of the one draw
    d3 = forward_scrub(_image(384, 384), diffusion, seed=0, max_side=256)
    assert d3.eps.shape == (1, 3, 256, 256)
    assert torch.isin(d3.eps, forward_noise(_image(384, 384), 0)).all()


@pytest.mark.parametrize("schedule,T", [("linear", 1000), ("cosine", 500), ("sigmoid", 50)])
def test_the_table_is_the_readout_at_every_t(schedule, T):
    s = NoiseSchedule.make(schedule, T)
    table = readout_table(s)
    assert set(table) == {
        "t",
        "beta",
        "alpha_bar",
        "sqrt_alpha_bar",
        "sqrt_one_minus_alpha_bar",
        "snr",
        "snr_db",
        "posterior_std",
    }
    for t in range(T):
        assert readout(s, t) == {key: v[t] for key, v in table.items()}
    abar = s.alphas_cumprod.numpy()
    np.testing.assert_allclose(table["sqrt_alpha_bar"] ** 2 + table["sqrt_one_minus_alpha_bar"] ** 2, 1, rtol=1e-12)
    np.testing.assert_allclose(table["snr"], abar / (1 - abar), rtol=1e-12)
    finite = table["snr"] > 0
    np.testing.assert_allclose(10 ** (table["snr_db"][finite] / 10), table["snr"][finite], rtol=1e-12)
