"""What every bench shares: an offline environment, the repo on the import path, the machine's description, and
models of the real Hub architectures with random weights. Import it first: ``import common``.
"""

from __future__ import annotations

import json
import os
import platform
import socket
import sys
import tempfile
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")
os.environ.setdefault("NO_PROXY", "127.0.0.1,localhost")

ROOT = Path(__file__).resolve().parents[1]
TMP = Path(tempfile.gettempdir())  # scratch files of the benches
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

#: bench name -> (public UNet config in tests/data, its scheduler config)
ARCHITECTURES = {
    "cifar10-arch": (
        "unet-ddpm-cifar10-32.config.json",
        {"beta_schedule": "linear", "variance_type": "fixed_large", "clip_sample": True},
    ),
    "celebahq-arch": (
        "unet-ddpm-celebahq-256.config.json",
        {"beta_schedule": "linear", "variance_type": "fixed_small", "clip_sample": True},
    ),
}


def free_port() -> int:
    """A free TCP port on 127.0.0.1, for an app the bench starts."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def machine() -> str:
    """One line naming the machine and the versions a figure was measured with."""
    import torch

    gpu = f", {torch.cuda.get_device_name()}" if torch.cuda.is_available() else ""
    return (
        f"{platform.machine()}, {os.cpu_count()} CPUs{gpu}; Python {platform.python_version()}, torch {torch.__version__}, "
        f"{torch.get_num_threads()} threads"
    )


def load_model(name: str, device="cpu", dtype=None):
    """A bundled model or Hub id through the loader, or ``cifar10-arch`` / ``celebahq-arch``: the real architecture
    with random weights (seeded), as a :class:`ddpm_core.checkpoints.LoadedModel`."""
    import torch
    from diffusers import UNet2DModel

    from ddpm_core import GaussianDiffusion
    from ddpm_core.checkpoints import LoadedModel, load_checkpoint

    dtype = dtype or torch.float32
    if name not in ARCHITECTURES:
        return load_checkpoint(name, device, dtype)
    config_file, sched = ARCHITECTURES[name]
    torch.manual_seed(0)
    cfg = json.loads((ROOT / "tests" / "data" / config_file).read_text())
    unet = UNet2DModel.from_config(cfg).eval().requires_grad_(False).to(device, dtype)
    return LoadedModel(f"{name} (random weights)", unet, GaussianDiffusion.from_config(sched), "bench", sched)


def write_json(path: str | Path, payload: dict) -> None:
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    Path(path).write_text(json.dumps({"machine": machine(), **payload}, indent=1, default=str) + "\n")
