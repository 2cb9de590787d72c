"""The Space's ``/sample`` (real server, gradio_client) for every registered sampler against the diffusers scheduler
it equals, run as a diffusers user runs it on the same bundled model from the same seed.

The diffusers side: ``<Scheduler>.from_config(the bundled scheduler config, **the sampler's diffusers kwargs)``,
``set_timesteps(N)``, x_T = ``randn_tensor`` from a CPU generator seeded as the Space seeds its own, times
``init_noise_sigma``; each step ``scale_model_input``, the bundled UNet2DModel loaded by diffusers, ``step`` with
the same generator (the stochastic samplers' noise draws come from it in diffusers' order, as the Space's do).
The bundled model clips x̂₀ to [-1, 1]; DDPMScheduler, DDIMScheduler and HeunDiscreteScheduler do so themselves,
the others cannot, so their model output is replaced by the one whose x̂₀ is the clipped one
(scheduler_reference.clipping_emulated, at the sigma the scheduler converts with). Images: DDPMPipeline's
``(x / 2 + 0.5).clamp(0, 1)`` to 8 bits, upscaled as the Space shows them.

Tolerance: 1/255 per pixel, one 8-bit quantisation step: the two sides compute the same float32 arithmetic in
different orders (the Space's fast path: a frozen channels_last UNet, fused float64 coefficient tables), whose
differences are orders of magnitude below a quantisation step but may straddle a rounding boundary.
"""

import numpy as np
import pytest
import torch
from PIL import Image
from scheduler_reference import bundled_config, diffusers_step, emulated

from ddpm_core.checkpoints import BUNDLED_DEFAULT, CHECKPOINT_DIR
from ddpm_core.diffusion import GaussianDiffusion
from ddpm_core.samplers import SAMPLERS
from ui.common import display

pytestmark = pytest.mark.timeout(600)
SEED, BATCH, STEPS = 5, 2, 8


@pytest.fixture(scope="module")
def client(served, tmp_path_factory):
    from gradio_client import Client

    return Client(served[1], verbose=False, analytics_enabled=False, download_files=str(tmp_path_factory.mktemp("dl")))


@pytest.fixture(scope="module")
def diffusers_unet():
    from diffusers import UNet2DModel

    return UNet2DModel.from_pretrained(CHECKPOINT_DIR / BUNDLED_DEFAULT / "unet").eval()


def diffusers_images(sampler, unet, seed: int, batch: int, steps: int) -> list[np.ndarray]:
    from diffusers.utils.torch_utils import randn_tensor

    cfg = bundled_config()
    sched = sampler.diffusers_scheduler(cfg)
    sched.set_timesteps(steps)
    diffusion = GaussianDiffusion.from_config(cfg)
    g = torch.Generator("cpu").manual_seed(seed)
    size = unet.config.sample_size
    x = randn_tensor((batch, unet.config.in_channels, size, size), generator=g) * sched.init_noise_sigma
    with torch.no_grad():
        for i, t in enumerate(sched.timesteps):
            inp = sched.scale_model_input(x, t)
            out = emulated(sched, diffusion, unet(inp, t).sample, inp, i)
            x = diffusers_step(sched, out, t, x, generator=g)
    pixels = ((x / 2 + 0.5).clamp(0, 1).permute(0, 2, 3, 1).numpy() * 255).round().astype(np.uint8)
    return [np.asarray(display(Image.fromarray(p[..., 0])), dtype=np.int16) for p in pixels]


@pytest.mark.parametrize("name", [n for n in SAMPLERS])
def test_sample_pngs_equal_the_diffusers_schedulers(name, client, diffusers_unet):
    sampler = SAMPLERS[name]
    out = client.predict("ddpm-mnist-28", sampler.label, STEPS, 0.0, "model default", BATCH, SEED, api_name="/sample")
    ours = []
    for item in out[0]:
        with Image.open(item["image"]) as im:
            ours.append(np.asarray(im.convert("L"), dtype=np.int16))
    want = diffusers_images(sampler, diffusers_unet, SEED, BATCH, STEPS)
    assert len(ours) == len(want) == BATCH
    worst = max(int(np.abs(a - b).max()) for a, b in zip(ours, want))
    assert worst <= 1, f"{sampler.label}: the Space's PNGs differ from diffusers' by up to {worst}/255"
    assert f"{STEPS} {sampler.short_label} steps" in out[4], out[4]


def test_steps_compared_offers_every_sampler_and_measures_against_the_highest_order_run():
    """Every registered sampler is offered (its ``offered_steps``), and the distance column's reference is the
    chosen deterministic pair of the highest order, then the most network evaluations; none without one."""
    from ddpm_core.samplers import SAMPLERS
    from ui.tabs.compare import PAIRS, _reference

    assert {name for name, _ in PAIRS.values()} == set(SAMPLERS)
    assert _reference(["DDIM · 1000", "DPM-Solver++ · 10", "Heun Karras · 5"]) == "DPM-Solver++ · 10"
    assert _reference(["DDIM · 200", "UniPC · 10", "DPM-Solver++ 3M · 20", "Heun Karras · 10"]) == (
        "DPM-Solver++ 3M · 20"
    )
    assert _reference(["DPM-Solver++ · 10", "Heun Karras · 10"]) == "Heun Karras · 10"  # 19 evaluations to 10
    assert _reference(["DDIM · 10", "Euler Karras · 20"]) == "Euler Karras · 20"
    assert _reference(["DDPM · 100", "DPM-Solver++ 2M SDE · 20"]) is None  # both stochastic
