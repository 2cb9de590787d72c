"""Shared test setup. The environment must be set before gradio / huggingface_hub are imported."""

import atexit
import os
import shutil
import sys
import tempfile
from pathlib import Path

os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_HUB_DISABLE_TELEMETRY", "1")
os.environ.setdefault("DIFFUSERS_VERBOSITY", "error")
os.environ.setdefault("NO_PROXY", "127.0.0.1,localhost")
os.environ.setdefault("MPLCONFIGDIR", os.path.join(tempfile.gettempdir(), "ddpm-explorer-mpl"))
if "GRADIO_TEMP_DIR" not in os.environ:
    # the servers' uploads and results go to a folder of this run, removed after it: nothing depends on, or piles
    # up in, the machine's shared /tmp/gradio
    os.environ["GRADIO_TEMP_DIR"] = tempfile.mkdtemp(prefix="ddpm-explorer-gradio-")
    atexit.register(shutil.rmtree, os.environ["GRADIO_TEMP_DIR"], ignore_errors=True)

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import pytest  # noqa: E402
import torch  # noqa: E402

torch.set_num_threads(min(2, os.cpu_count() or 1))


def tiny_unet(out_channels: int = 3, sample_size: int = 8, seed: int = 0, in_channels: int = 3):
    """A randomly initialised 2-level UNet2DModel with attention: milliseconds per call, real diffusers code."""
    from diffusers import UNet2DModel

    torch.manual_seed(seed)
    return UNet2DModel(
        sample_size=sample_size,
        in_channels=in_channels,
        out_channels=out_channels,
        layers_per_block=1,
        block_out_channels=(16, 32),
        down_block_types=("DownBlock2D", "AttnDownBlock2D"),
        up_block_types=("AttnUpBlock2D", "UpBlock2D"),
        norm_num_groups=8,
    ).eval()


@pytest.fixture
def one_intra_op_thread():
    """One intra-op thread for the numerical tests' small tensors (4x4 to 8x8 images): on a two-core machine the
    thread pool's hand-offs cost more than the work (a tiny UNet call: ~15 ms on one thread, 0.2-0.7 s on two).
    Numerically irrelevant: both sides of every comparison run under the same setting. Yields the suite's thread
    count, for a test that must run at it."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield n
    torch.set_num_threads(n)


@pytest.fixture(scope="session")
def unet3():
    return tiny_unet(3)


@pytest.fixture(scope="session")
def unet6():
    return tiny_unet(6, seed=1)


def free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def serve(warm: bool = False):
    """The Space, built and launched on a free 127.0.0.1 port (``warm``: after the warm-up it runs before serving, as
    ``python app.py`` does): yields (app module, url), then closes it."""
    import app

    app.GUARD.trust_proxy = True  # as behind the Spaces proxy: load tests tell their users apart by X-Forwarded-For
    demo = app.build_demo()
    port = free_port()
    app.launch(demo, warm=warm, server_name="127.0.0.1", server_port=port, prevent_thread_lock=True, quiet=True)
    yield app, f"http://127.0.0.1:{port}/"
    demo.close()


@pytest.fixture(scope="module")
def served():
    """The Space for one test module, without the warm-up (most tests do not time anything)."""
    yield from serve()
