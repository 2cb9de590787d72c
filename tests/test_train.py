"""Training CLI smoke test on the CPU: a few real steps on real digits, saved, reloaded, sampled both ways."""

import copy
import json

import pytest
import torch
from diffusers import DDPMPipeline

import ddpm_core.checkpoints as ck
from ddpm_core.data import MNIST_SPLIT, mnist_split
from ddpm_core.sampling import generate
from ddpm_core.train import main as train_main
from helpers import PIPELINE_FILES, OpCount

pytestmark = pytest.mark.timeout(600)


def test_mnist_splits_are_disjoint_and_stratified():
    parts = {k: mnist_split(k) for k in MNIST_SPLIT}
    for k, (X, y) in parts.items():
        assert len(X) == MNIST_SPLIT[k] and (torch.bincount(torch.from_numpy(y)) == MNIST_SPLIT[k] // 10).all()
    keys = {k: {x.tobytes() for x in X} for k, (X, _) in parts.items()}
    assert (
        not keys["diffusion"] & keys["classifier"]
        and not keys["diffusion"] & keys["heldout"]
        and not keys["classifier"] & keys["heldout"]
    )


def test_num_images_trains_on_a_fixed_nested_pick_repeated_to_fill_a_batch():
    """``--num-images``: k images picked by a fixed permutation, a larger k keeping a smaller k's images, each
    repeated equally often so that a one-image set still fills a batch of 16."""
    from torch.utils.data import TensorDataset

    from ddpm_core.data import first_images

    data = TensorDataset(torch.arange(100.0)[:, None])
    ten, hundred = (first_images(data, k) for k in (10, 100))
    assert [data[i][0].item() for i in ten.indices] == [data[i][0].item() for i in hundred.indices[:10]]
    assert sorted(hundred.indices) == list(range(100))  # all of them, once
    one = first_images(data, 1, fill=16)
    assert len(one) == 16 and len(set(one.indices)) == 1
    three = first_images(data, 3, fill=16)
    assert len(three) == 18 and sorted(set(three.indices)) == sorted(three.indices[:3])
    assert all(three.indices.count(i) == 6 for i in three.indices[:3])
    for bad in (0, 101):
        with pytest.raises(ValueError, match="--num-images must be between 1 and the 100 images"):
            first_images(data, bad)


def test_train_save_resume_reload_and_sample(tmp_path, monkeypatch):
    out = tmp_path / "ckpts" / "tiny-mnist"
    args = [
        "--data",
        "mnist",
        "--model-size",
        "tiny",
        "--batch-size",
        "8",
        "--save-every",
        "3",
        "--sample-every",
        "0",
        "--log-every",
        "1",
        "--out",
        str(out),
        "--threads",
        "2",
    ]
    train_main(args + ["--steps", "4"])
    assert (out / "checkpoint-3").is_dir()
    train_main(args + ["--steps", "6", "--resume", "latest"])
    log = [json.loads(line) for line in (out / "train_log.jsonl").read_text().splitlines()]
    # every step logged once per sitting: 1-4, then 4-6 again from the checkpoint at 3
    assert [r["step"] for r in log] == [1, 2, 3, 4, 4, 5, 6]
    assert all(0 < r["loss"] < 10 and 0 < r["lr"] for r in log)
    for f in PIPELINE_FILES:
        assert (out / f).is_file(), f
    assert "optimiser steps run | 6" in (out / "README.md").read_text()

    pipe = DDPMPipeline.from_pretrained(str(out))
    pipe.set_progress_bar_config(disable=True)
    ref = pipe(
        batch_size=2, num_inference_steps=5, generator=torch.Generator().manual_seed(0), output_type="np"
    ).images
    monkeypatch.setattr(ck, "CHECKPOINT_DIR", out.parent)
    model = ck.ModelCache().get("tiny-mnist")
    ours = generate(model, batch_size=2, seed=0, num_inference_steps=5, mode="plain").samples
    assert ours.shape == (2, 1, 28, 28)
    # the same weights and scheduler through both samplers: same images to well under one 8-bit level
    assert (((ours / 2 + 0.5).clamp(0, 1).permute(0, 2, 3, 1).numpy() - ref).__abs__().max()) < 1e-4


def test_init_from_starts_a_run_from_a_saved_pipeline(tmp_path):
    """--init-from copies a saved UNet's weights into the new run (fine-tuning); a UNet of another size is refused."""
    from safetensors.torch import load_file

    from ddpm_core.train import build_unet, load_initial_weights

    common = ["--data", "mnist", "--model-size", "tiny", "--batch-size", "4", "--sample-every", "0", "--threads", "2"]
    first = tmp_path / "first"
    train_main(common + ["--steps", "2", "--out", str(first)])
    saved = load_file(str(first / "unet" / "diffusion_pytorch_model.safetensors"))
    unet = build_unet("tiny", 28, 1)
    load_initial_weights(unet, first)
    assert all(torch.equal(unet.state_dict()[k], v) for k, v in saved.items())
    with pytest.raises(ValueError, match="does not match --model-size"):
        load_initial_weights(build_unet("small", 28, 1), first)
    with pytest.raises(ValueError, match="no unet/diffusion_pytorch_model.safetensors"):
        load_initial_weights(unet, tmp_path)
    second = tmp_path / "second"
    train_main(
        common + ["--steps", "1", "--lr", "0", "--ema-decay", "0", "--init-from", str(first), "--out", str(second)]
    )
    # with a learning rate of 0 the run keeps the weights it started from
    after = load_file(str(second / "unet" / "diffusion_pytorch_model.safetensors"))
    assert all(torch.equal(after[k], v) for k, v in saved.items())
    assert f"--init-from {first}" in (second / "README.md").read_text()


def test_the_ema_update_is_a_few_batched_ops_and_equals_the_per_tensor_one():
    """The training run's EMA steps with a fixed handful of operators, however many parameter tensors the UNet has
    (on a GPU each operator is a kernel launch), and averages as the per-tensor update does, to float32 rounding."""
    from pathlib import Path

    from ddpm_core.train import _make_accelerator, _set_up, parse_args

    args = parse_args(["--data", "mnist", "--model-size", "tiny", "--steps", "1", "--out", "unused"])
    tr, _ = _set_up(args, _make_accelerator("no", Path("unused")))
    params = list(tr.unet.parameters())
    assert len(params) > 100
    reference = copy.deepcopy(tr.ema)
    reference.foreach = False
    g = torch.Generator().manual_seed(0)
    for _ in range(20):
        with torch.no_grad():
            for p in params:
                p.add_(torch.randn(p.shape, generator=g))
        with OpCount() as ops:
            tr.ema.step(params)
        reference.step(params)
        assert ops.n <= 4
    # each update may round once differently (a fused multiply-subtract), by at most one ulp <= eps |value|; the
    # average shrinks earlier differences, so 20 updates stay within 20 such ulps
    bound = 20 * torch.finfo(torch.float32).eps * max(r.abs().max().item() for r in reference.shadow_params)
    for ours, ref in zip(tr.ema.shadow_params, reference.shadow_params):
        torch.testing.assert_close(ours, ref, rtol=0, atol=bound)


def test_a_checkpoint_is_written_by_the_clock_too(tmp_path):
    """``--save-minutes``: a resumable checkpoint once that much time has passed since the last, whatever
    ``--save-every`` says (here: never by steps), the newest two kept."""
    out = tmp_path / "clock"
    args = ["--data", "mnist", "--model-size", "tiny", "--batch-size", "4", "--sample-every", "0", "--threads", "1"]
    train_main(args + ["--steps", "4", "--save-every", "0", "--save-minutes", "1e-9", "--out", str(out)])
    assert sorted(p.name for p in out.glob("checkpoint-*")) == ["checkpoint-2", "checkpoint-3"]
    train_main(args + ["--steps", "3", "--save-every", "0", "--save-minutes", "0", "--out", str(tmp_path / "never")])
    assert not list((tmp_path / "never").glob("checkpoint-*"))
