"""The high-level sampler: fast path equals the plain loop, fallbacks, the sampling CLI and its resume."""

import copy

import numpy as np
import pytest
import torch
from PIL import Image
from teacher_forcing import compare_with_plain_steps, record

import ddpm_core.checkpoints as ck
from conftest import tiny_unet
from ddpm_core.checkpoints import LoadedModel
from ddpm_core.diffusion import GaussianDiffusion
from ddpm_core.sampling import PLAIN, SampleRequest, generate, generate_steps
from helpers import run_in_own_process, save_pipeline_folder

pytestmark = pytest.mark.usefixtures("one_intra_op_thread")


def _model(out_channels=3, variance="fixed_small"):
    cfg = {"beta_schedule": "linear", "variance_type": variance}
    return LoadedModel("tiny", copy.deepcopy(tiny_unet(out_channels)), GaussianDiffusion.from_config(cfg), "test", cfg)


def _teacher_forced(model, ref_unet, sampler, **kwargs):
    """generate_steps' run checked step by step against the plain step from the same x_t (teacher_forcing's
    compare_with_plain_steps: the fast UNet's reordered sums stay within two float32 rounding errors of the
    network, carried through the step's first-order bound); x_T is the seed's first draw. Returns the result."""
    steps, result = record(generate_steps(model, batch_size=3, seed=5, sampler=sampler, **kwargs))
    g = torch.Generator().manual_seed(5)
    assert torch.equal(steps[0].x_t, torch.randn(steps[0].x_t.shape, generator=g))
    compare_with_plain_steps(model.diffusion, steps, ref_unet, sampler, kwargs.get("eta", 0.0), g)
    return result


@pytest.mark.parametrize("sampler,steps", [("ddpm", 20), ("ddpm", None), ("ddim", 10)])
def test_fast_path_equals_the_plain_loop(sampler, steps):
    """channels_last / the frozen trace change only the UNet's summation order: each step agrees with the plain
    step within the step's rounding bound (teacher-forced), the whole run draws the same random numbers."""
    fast = _teacher_forced(_model(), tiny_unet(3), sampler, num_inference_steps=steps)
    assert fast.path == "frozen TorchScript"
    if steps is not None:
        # the plain loop (mode="plain") through the same check: its steps are the reference step itself
        plain = _teacher_forced(_model(), tiny_unet(3), sampler, num_inference_steps=steps, mode=PLAIN)
        assert plain.path == "plain loop" and plain.samples.shape == fast.samples.shape
    assert not torch.equal(
        fast.samples, generate(_model(), batch_size=3, seed=6, sampler=sampler, num_inference_steps=steps).samples
    )


def test_learned_variance_and_snapshots():
    m = _model(6, "learned_range")
    res = generate(m, batch_size=2, seed=0, num_inference_steps=12, n_snapshots=5, n_frames=6)
    assert res.samples.shape == (2, 3, 8, 8) and len(res.snapshots) == 5 and len(res.frames) == 7
    ts = [t for t, _, _ in res.snapshots]
    assert ts == sorted(ts, reverse=True) and ts[-1] == 0
    with pytest.raises(ValueError, match="does not fit"):
        generate(m, variance_type="fixed_small")


def test_start_from_x_t_and_cancellation():
    m = _model()
    x_t = torch.randn(2, 3, 8, 8)
    res = generate(m, seed=0, num_inference_steps=10, start=(x_t, 300))
    assert res.timesteps[0] == 300 and res.timesteps[-1] == 0 and len(res.timesteps) == 10
    calls = []

    def leave():
        calls.append(1)
        if len(calls) > 3:
            raise InterruptedError("the visitor left")

    with pytest.raises(InterruptedError):
        generate(m, before_step=leave, num_inference_steps=50)
    assert len(calls) == 4  # stopped before the fourth step, not at the end
    with pytest.raises(ValueError):
        generate(m, start=(x_t, 1000))


def test_sampling_cli_writes_and_resumes(tmp_path, monkeypatch):
    from ddpm_core.sample import main

    save_pipeline_folder(tiny_unet(3), tmp_path / "ck" / "tiny")
    monkeypatch.setattr(ck, "CHECKPOINT_DIR", tmp_path / "ck")
    ck.default_cache.clear()
    out = tmp_path / "out"
    args = ["--model", "tiny", "--num", "10", "--batch", "4", "--steps", "3", "--out", str(out), "--no-compile"]
    assert main(args) == 10
    first = (out / "000005.png").read_bytes()
    (out / "000009.png").unlink()
    assert main(args) == 2  # only the last batch (8, 9) is redone
    assert (out / "000005.png").read_bytes() == first and len(list(out.glob("0*.png"))) == 10
    # the last batch (images 8, 9) is drawn full-size with its seed, so one loop shape serves every batch
    from ddpm_core.imaging import tensor_to_pil
    from ddpm_core.sampling import generate

    full = generate(ck.load_checkpoint("tiny"), batch_size=4, seed=2, num_inference_steps=3, n_snapshots=0, n_frames=0)
    with Image.open(out / "000009.png") as im:
        assert np.array_equal(np.asarray(im), np.asarray(tensor_to_pil(full.samples.clamp(-1, 1))[1]))
    ck.default_cache.clear()


@pytest.mark.slow
def test_compiled_path_equals_the_plain_loop(request):
    """torch.compile (inductor) fuses and reorders the UNet's sums: within its rounding, step by step; the first
    call pays the compilation."""
    if not run_in_own_process(request):
        return
    # inductor specialises its kernels to the intra-op thread count: compile at the count the product runs at
    torch.set_num_threads(request.getfixturevalue("one_intra_op_thread"))
    compiled = _teacher_forced(_model(), tiny_unet(3), "ddpm", num_inference_steps=8, mode="compile")
    assert compiled.path == "torch.compile"


def test_compare_steps_starts_every_pair_from_the_same_noise():
    from ddpm_core.sampling import compare_steps

    m = _model()
    runs = list(compare_steps(m, [("ddpm", 4), ("ddim", 3), ("dpmsolver++", 2)], seed=7))
    assert [(s, n) for s, n, _ in runs] == [("ddpm", 4), ("ddim", 3), ("dpmsolver++", 2)]
    x_T = [r.frames[0] for _, _, r in runs]  # each run's first frame is its x_T
    assert all(torch.equal(x, x_T[0]) for x in x_T) and x_T[0].shape == (1, 3, 8, 8)
    assert [len(r.timesteps) for _, _, r in runs] == [4, 3, 2]


def test_a_request_knows_its_timesteps_before_it_runs():
    """The run's step timesteps and network evaluations come before any network call; the request is immutable
    and the keyword form builds the same run."""
    m, calls = _model(), []
    m.unet.register_forward_hook(lambda *_: calls.append(1))
    request = SampleRequest(batch_size=2, seed=4, sampler="heun-karras", num_inference_steps=5, mode=PLAIN)
    run = generate_steps(m, request)
    assert len(run.timesteps) == 5 and run.evaluations == 9 and not calls  # Heun: twice a step but the last
    with pytest.raises(AttributeError):
        request.seed = 5
    result = generate(m, request)
    assert len(calls) == 9 and result.timesteps == run.evaluation_timesteps
    again = generate(m, batch_size=2, seed=4, sampler="heun-karras", num_inference_steps=5, mode=PLAIN)
    assert torch.equal(again.samples, result.samples)
    with pytest.raises(ValueError, match="unknown sampler"):
        generate_steps(m, request, sampler="nonsense")
