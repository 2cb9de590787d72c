"""The bundled checkpoint: present, small, loadable by both diffusers and our loader, and it draws digits."""

import json
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from helpers import PIPELINE_FILES

ROOT = Path(__file__).resolve().parents[1]
CK = ROOT / "checkpoints" / "ddpm-mnist-28"


def test_bundled_checkpoint_is_shipped_in_diffusers_format():
    for f in (*PIPELINE_FILES, "eval.json", "samples.png"):
        assert (CK / f).is_file(), f
    # shipped files only (a local training run leaves resumable checkpoint-N folders, which git ignores)
    size = sum(
        p.stat().st_size
        for p in CK.rglob("*")
        if p.is_file() and not any(part.startswith("checkpoint-") for part in p.parts)
    )
    assert size < 25 * 2**20
    assert not list(CK.rglob("*.bin")) and not list(CK.rglob("*.pkl"))  # no pickles shipped


def test_model_card_reports_the_recorded_evaluation():
    r = json.loads((CK / "eval.json").read_text())
    card = (CK / "README.md").read_text()
    assert f"{r['confident_fraction_0.9']:.1%}" in card and f"{r['fd_samples_vs_heldout']:.2f}" in card
    assert "python -m ddpm_core.evaluate" in card and "python -m ddpm_core.train" in card
    assert r["num_samples"] >= 500 and r["targets_met"]
    assert (
        r["confident_fraction_0.9"] >= 0.85 and 0.04 <= min(r["class_histogram"]) and max(r["class_histogram"]) <= 0.20
    )
    assert r["fd_samples_vs_heldout"] < 0.05 * r["fd_noise_vs_heldout"]


def test_both_loaders_load_it_and_agree():
    from diffusers import DDPMPipeline

    from ddpm_core.checkpoints import ModelCache
    from ddpm_core.sampling import generate

    pipe = DDPMPipeline.from_pretrained(str(CK))
    pipe.set_progress_bar_config(disable=True)
    ref = pipe(
        batch_size=2, num_inference_steps=20, generator=torch.Generator().manual_seed(1), output_type="np"
    ).images
    ours = generate(
        ModelCache().get("ddpm-mnist-28"), batch_size=2, seed=1, num_inference_steps=20, mode="plain"
    ).samples
    assert abs((ours / 2 + 0.5).clamp(0, 1).permute(0, 2, 3, 1).numpy() - ref).max() < 1e-4


@pytest.mark.slow
def test_it_draws_recognisable_digits():
    """A fresh, smaller run of the evaluation: 100 samples; the 500-sample figures are in eval.json."""
    from ddpm_core.checkpoints import ModelCache
    from ddpm_core.classifier import train_classifier
    from ddpm_core.sampling import generate

    net, acc = train_classifier(0, epochs=15)
    assert acc > 0.93
    x = generate(ModelCache().get("ddpm-mnist-28"), batch_size=100, seed=123, num_inference_steps=100).samples.clamp(
        -1, 1
    )
    with torch.no_grad():
        conf, pred = F.softmax(net(x), 1).max(1)
    assert (conf >= 0.9).float().mean() >= 0.7  # 100 samples: the 500-sample figure minus sampling noise
    assert len(set(pred.tolist())) == 10  # every digit appears
