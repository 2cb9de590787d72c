"""Edge cases of the core: every inference step count, zero terminal SNR in the loss, tiny betas, ``python -O``."""

import ast
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from diffusers import DDPMScheduler

from ddpm_core import GaussianDiffusion, NoiseSchedule, inference_timesteps
from ddpm_core.timesteps import SPACINGS

ROOT = Path(__file__).resolve().parents[1]


# ---------------------------------------------------------------- inference timesteps
@pytest.mark.parametrize("T", [1, 2, 7, 999, 1000, 4000])
def test_every_step_count_gives_n_valid_timesteps_equal_to_diffusers(T):
    """All N in [1, T], every spacing: exactly N strictly decreasing timesteps in [0, T-1], equal to diffusers'
    ``set_timesteps`` wherever diffusers returns N valid ones. Where its float ``arange`` overshoots (trailing
    only), diffusers returns N + 1 with a last -1: ours are its first N."""
    overshoots = []
    for spacing in SPACINGS:
        ref = DDPMScheduler(num_train_timesteps=T, timestep_spacing=spacing)
        for N in range(1, T + 1):
            ts = inference_timesteps(T, N, spacing)
            assert ts.dtype == np.int64 and ts.shape == (N,), (spacing, N)
            assert ts[-1] >= 0 and ts[0] <= T - 1 and (np.diff(ts) < 0).all(), (spacing, N)
            ref.set_timesteps(N)
            want = ref.timesteps.numpy()
            if want.size != N:
                assert spacing == "trailing" and want.size == N + 1 and want[-1] == -1, (spacing, N, want[-3:])
                overshoots.append(N)
                want = want[:N]
            assert np.array_equal(ts, want), (spacing, N)
    if T == 1000:  # the count the docstring of inference_timesteps quotes
        assert len(overshoots) == 62 and overshoots[:5] == [61, 103, 121, 122, 201]
    assert inference_timesteps(T, None, "trailing").tolist() == list(range(T - 1, -1, -1))


def test_trailing_61_of_1000():
    ts = inference_timesteps(1000, 61, "trailing")
    assert ts.size == 61 and ts[0] == 999 and ts[-1] == round(1000 / 61) - 1


def test_leading_offset_past_the_schedule_is_a_value_error():
    assert inference_timesteps(1000, 999, "leading", steps_offset=1)[0] == 999
    with pytest.raises(ValueError, match="outside"):
        inference_timesteps(1000, 1000, "leading", steps_offset=1)


# ---------------------------------------------------------------- Min-SNR weights at zero terminal SNR
def _ones_model(x, t):
    return torch.ones_like(x)


@pytest.mark.parametrize("pred", ["epsilon", "sample", "v_prediction"])
def test_min_snr_weight_is_finite_at_zero_terminal_snr(pred):
    d = GaussianDiffusion.from_config({"rescale_betas_zero_snr": True, "prediction_type": pred})
    assert d.schedule.snr[-1] == 0
    x0 = torch.rand(2, 3, 4, 4, generator=torch.Generator().manual_seed(0)) * 2 - 1
    loss = d.p_losses(lambda x, t: torch.zeros_like(x), x0, t=torch.tensor([999, 10]), snr_gamma=5.0)
    assert torch.isfinite(loss) and loss > 0

    # x_0 = eps = 0 makes every target 0, so a model returning ones has per-sample MSE exactly 1 and a batch of
    # one returns its weight exactly.
    zeros = torch.zeros(1, 3, 4, 4)

    def weight(t):
        return d.p_losses(_ones_model, zeros, t=torch.tensor([t]), noise=zeros, snr_gamma=5.0).item()

    # the limits as SNR -> 0: min(1, g / SNR) -> 1 (eps), min(SNR, g) / (SNR + 1) -> 0 (v), min(SNR, g) -> 0 (x_0)
    assert weight(999) == {"epsilon": 1.0, "sample": 0.0, "v_prediction": 0.0}[pred]
    # where SNR > 0 the weights are the formula's, bit for bit (float32 table, as p_losses uses it)
    snr = d.schedule.snr.float()
    g = torch.full_like(snr, 5.0)
    old = torch.minimum(snr, g) / {"epsilon": snr, "sample": torch.ones_like(snr), "v_prediction": snr + 1}[pred]
    for t in range(0, 999, 3 if pred == "epsilon" else 37):
        assert snr[t] > 0 and weight(t) == old[t].item(), t


def test_snr_gamma_must_be_finite_and_positive():
    d = GaussianDiffusion(NoiseSchedule.make("linear", 10))
    x = torch.zeros(1, 1, 2, 2)
    for bad in (0.0, -1.0, float("inf"), float("nan")):
        with pytest.raises(ValueError, match="snr_gamma"):
            d.p_losses(_ones_model, x, t=3, snr_gamma=bad)


# ---------------------------------------------------------------- schedule validation
def test_tiny_betas_are_a_value_error_naming_the_fix():
    with pytest.raises(ValueError, match=r"betas\[0\]=1e-17 is too small: 1 - alphas_cumprod\[0\] rounds to 0"):
        NoiseSchedule([1e-17, 0.5])
    with pytest.raises(ValueError, match=r"betas\[1\]=1e-17 is too small.*use betas >= ~1e-15"):
        NoiseSchedule([1e-17, 1e-17, 0.5])
    s = NoiseSchedule([1e-15, 0.5])  # the advice holds: finite tables
    for key in ("posterior_variance", "posterior_mean_coef1", "posterior_mean_coef2", "snr"):
        assert torch.isfinite(getattr(s, key)).all(), key
    with pytest.raises(ValueError, match="non-increasing"):
        NoiseSchedule([0.1, 0.2], alphas_cumprod=torch.tensor([0.5, 0.6], dtype=torch.float64))
    with pytest.raises(ValueError, match="shape"):
        NoiseSchedule([0.1, 0.2], alphas_cumprod=torch.tensor([0.5], dtype=torch.float64))


@pytest.mark.parametrize("name", ["schedule.py", "timesteps.py", "diffusion.py"])
def test_core_validates_with_value_errors_not_asserts(name):
    """``python -O`` strips asserts: validation written as one would let NaN tables through."""
    tree = ast.parse((ROOT / "ddpm_core" / name).read_text())
    lines = [node.lineno for node in ast.walk(tree) if isinstance(node, ast.Assert)]
    assert lines == [], f"ddpm_core/{name} uses assert at lines {lines}"


def test_bad_input_still_raises_under_python_O():
    code = """
import torch
from ddpm_core import GaussianDiffusion, NoiseSchedule, inference_timesteps
assert False, "asserts must be stripped under -O"
try:
    NoiseSchedule([1e-17, 0.5])
except ValueError as err:
    print("schedule:", err)
print("trailing:", len(inference_timesteps(1000, 61, "trailing")))
d = GaussianDiffusion.from_config({"rescale_betas_zero_snr": True})
loss = d.p_losses(lambda x, t: torch.zeros_like(x), torch.ones(2, 1, 2, 2), t=torch.tensor([999, 10]), snr_gamma=5.0)
print("loss finite:", bool(torch.isfinite(loss)))
"""
    out = subprocess.run([sys.executable, "-O", "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert "schedule: betas[0]=1e-17 is too small" in out.stdout
    assert "trailing: 61" in out.stdout and "loss finite: True" in out.stdout
