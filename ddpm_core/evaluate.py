"""Does the bundled model draw recognisable digits? An honest, reproducible measurement.

    python -m ddpm_core.evaluate checkpoints/ddpm-mnist-28 --num 500 --steps 100

1. A small CNN digit classifier is trained on the ``classifier`` split of the 5k MNIST digits (1,500 images the
   diffusion model never saw) and its accuracy measured on the ``heldout`` split (500 images neither saw).
2. ``--num`` samples are drawn with DDPM Explorer's own sampler (``GaussianDiffusion``), fixed seed.
3. Reported: (a) the fraction classified with confidence >= 0.9, (b) the class histogram, (c) the Fréchet
   distance in the classifier's 128-d feature space between the samples and the held-out digits, beside the same
   distance for real-vs-real (500 digits of the diffusion split vs held-out) and noise-vs-real (N(0, I) clipped).
Results go to ``eval.json`` and the model card's "Evaluation" section; a grid of samples to ``samples.png``.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F


class DigitNet(nn.Module):
    """A small CNN: [B x 1 x 28 x 28] in [-1, 1] -> 10 logits; ``features`` gives the 128-d penultimate layer."""

    def __init__(self):
        super().__init__()
        self.conv = nn.Sequential(
            nn.Conv2d(1, 32, 3, padding=1), nn.ReLU(), nn.Conv2d(32, 32, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
            nn.Conv2d(32, 64, 3, padding=1), nn.ReLU(), nn.Conv2d(64, 64, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
        )
        self.fc = nn.Sequential(nn.Flatten(), nn.Dropout(0.3), nn.Linear(64 * 7 * 7, 128), nn.ReLU())
        self.head = nn.Linear(128, 10)

    def features(self, x):
        return self.fc(self.conv(x))

    def forward(self, x):
        return self.head(self.features(x))


def train_classifier(seed: int = 0, epochs: int = 30) -> tuple[DigitNet, float]:
    """Train on the ``classifier`` split (random shifts of up to 2 px as augmentation); accuracy on ``heldout``."""
    from .data import mnist_split, to_model_range

    torch.manual_seed(seed)
    X, y = mnist_split("classifier")
    Xh, yh = mnist_split("heldout")
    x, y = to_model_range(X), torch.from_numpy(y)
    net = DigitNet()
    opt = torch.optim.AdamW(net.parameters(), 2e-3, weight_decay=1e-4)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, 3e-3, total_steps=epochs * ((len(x) + 63) // 64))
    g = torch.Generator().manual_seed(seed)
    for _ in range(epochs):
        net.train()
        for idx in torch.randperm(len(x), generator=g).split(64):
            xb = x[idx]
            dx, dy = torch.randint(-2, 3, (2,), generator=g).tolist()
            xb = torch.roll(xb, (dy, dx), dims=(2, 3))
            loss = F.cross_entropy(net(xb), y[idx])
            opt.zero_grad()
            loss.backward()
            opt.step()
            sched.step()
    net.eval()
    with torch.no_grad():
        acc = (net(to_model_range(Xh)).argmax(1) == torch.from_numpy(yh)).float().mean().item()
    return net, acc


def frechet_distance(a: np.ndarray, b: np.ndarray) -> float:
    """||mu_a - mu_b||^2 + Tr(S_a + S_b - 2 (S_a S_b)^(1/2)) between two ``[N x D]`` feature sets."""
    from scipy import linalg

    mu_a, mu_b = a.mean(0), b.mean(0)
    s_a, s_b = np.cov(a, rowvar=False), np.cov(b, rowvar=False)
    covmean = linalg.sqrtm(s_a @ s_b)
    if not np.isfinite(covmean).all():
        eps = np.eye(len(s_a)) * 1e-6
        covmean = linalg.sqrtm((s_a + eps) @ (s_b + eps))
    return float(((mu_a - mu_b) ** 2).sum() + np.trace(s_a + s_b - 2 * covmean.real))


@torch.no_grad()
def _features(net: DigitNet, x: torch.Tensor) -> np.ndarray:
    return torch.cat([net.features(b) for b in x.split(250)]).numpy().astype(np.float64)


def evaluate(folder: Path, num: int = 500, steps: int | None = 100, sampler: str = "ddpm", batch: int = 100, seed: int = 0) -> dict:
    from .checkpoints import ModelCache
    from .data import mnist_split, to_model_range
    from .imaging import make_grid, tensor_to_pil
    from .sampling import generate

    import ddpm_core.checkpoints as ck

    folder = Path(folder).resolve()
    ck.CHECKPOINT_DIR = folder.parent  # load this folder through the same safe loader the Space uses
    model = ModelCache(size=1).get(folder.name)
    t0 = time.time()
    net, acc = train_classifier(seed)
    t_cls = time.time() - t0
    t0 = time.time()
    chunks = [generate(model, batch_size=min(batch, num - k), seed=seed + k, sampler=sampler, num_inference_steps=steps,
                       n_snapshots=1, n_frames=1).samples for k in range(0, num, batch)]
    samples = torch.cat(chunks).clamp(-1, 1)
    t_sample = time.time() - t0
    with torch.no_grad():
        probs = torch.cat([F.softmax(net(b), 1) for b in samples.split(250)])
    conf, pred = probs.max(1)
    hist = np.bincount(pred.numpy(), minlength=10) / len(pred)
    Xh, _ = mnist_split("heldout")
    Xd, _ = mnist_split("diffusion")
    real = to_model_range(Xh)
    other_real = to_model_range(Xd[np.random.default_rng(seed).permutation(len(Xd))[: len(real)]])
    noise = torch.randn(len(real), 1, 28, 28, generator=torch.Generator().manual_seed(seed)).clamp(-1, 1)
    f_real = _features(net, real)
    with torch.no_grad():
        real_conf = torch.cat([F.softmax(net(b), 1).max(1).values for b in real.split(250)])
    n_cmp = min(len(real), len(samples))
    result = {
        "classifier_heldout_accuracy": round(acc, 4),
        "num_samples": int(len(samples)),
        "sampler": f"{sampler.upper()} ({model.diffusion.variance_type}), {steps or model.diffusion.num_timesteps} steps "
                   f"({model.diffusion.timestep_spacing} spacing), seeds {seed}..{seed + (num - 1) // batch}",
        "confident_fraction_0.9": round(float((conf >= 0.9).float().mean()), 4),
        "confident_fraction_0.9_real_heldout": round(float((real_conf >= 0.9).float().mean()), 4),
        "class_histogram": [round(float(h), 4) for h in hist],
        "fd_samples_vs_heldout": round(frechet_distance(_features(net, samples[:n_cmp]), f_real[:n_cmp]), 3),
        "fd_real_vs_heldout": round(frechet_distance(_features(net, other_real), f_real), 3),
        "fd_noise_vs_heldout": round(frechet_distance(_features(net, noise), f_real), 3),
        "seconds_classifier": round(t_cls, 1),
        "seconds_sampling": round(t_sample, 1),
        "device": str(model.device),
    }
    result["targets_met"] = bool(result["confident_fraction_0.9"] >= 0.85 and min(hist) >= 0.04 and max(hist) <= 0.20
                                 and result["fd_samples_vs_heldout"] < 0.25 * result["fd_noise_vs_heldout"])
    (folder / "eval.json").write_text(json.dumps(result, indent=2) + "\n")
    make_grid(tensor_to_pil(samples[:64]), ncols=16, scale=2).save(folder / "samples.png")
    _update_card(folder, result, num, steps, sampler)
    return result


def _update_card(folder: Path, r: dict, num: int, steps, sampler: str) -> None:
    card_path = folder / "README.md"
    if not card_path.is_file():
        return
    card = card_path.read_text()
    hist = " | ".join(f"{h:.1%}" for h in r["class_histogram"])
    section = f"""## Evaluation

Reproduce: `python -m ddpm_core.evaluate {folder.relative_to(folder.parents[1]).as_posix()} --num {num} --steps {steps} --sampler {sampler}`
(results also in `eval.json`; samples below in `samples.png`).

A small CNN classifier trained on 1,500 digits the diffusion model never saw reaches
**{r['classifier_heldout_accuracy']:.1%}** accuracy on 500 held-out digits. On {r['num_samples']} samples from DDPM Explorer's sampler
({r['sampler']}):

| measure | value | target |
|---|---|---|
| classified with confidence >= 0.9 | **{r['confident_fraction_0.9']:.1%}** (real held-out digits: {r['confident_fraction_0.9_real_heldout']:.1%}) | >= 85% |
| smallest / largest class share | {min(r['class_histogram']):.1%} / {max(r['class_histogram']):.1%} | 4% .. 20% |
| Fréchet distance (classifier features), samples vs held-out | **{r['fd_samples_vs_heldout']:.2f}** | far nearer real-vs-real than noise |
| ... real (diffusion split) vs held-out | {r['fd_real_vs_heldout']:.2f} | |
| ... N(0, I) noise vs held-out | {r['fd_noise_vs_heldout']:.2f} | |

Class histogram (0..9): {hist}

![samples](samples.png)
"""
    head = card.split("## Evaluation")[0].rstrip() + "\n\n"
    card_path.write_text(head + section)


def main(argv=None):
    p = argparse.ArgumentParser(prog="python -m ddpm_core.evaluate", description=__doc__.split("\n\n")[0])
    p.add_argument("folder", help="a pipeline folder trained on the bundled MNIST digits")
    p.add_argument("--num", type=int, default=500)
    p.add_argument("--steps", type=int, default=100, help="inference steps (0: all T)")
    p.add_argument("--sampler", default="ddpm", choices=("ddpm", "ddim"))
    p.add_argument("--batch", type=int, default=100)
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args(argv)
    r = evaluate(Path(args.folder), args.num, args.steps or None, args.sampler, args.batch, args.seed)
    print(json.dumps(r, indent=2))


if __name__ == "__main__":
    main()
