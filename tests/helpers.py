"""Test helpers: checkpoint folders of every layout, a pre-filled huggingface_hub cache, a host-sync detector, and
running a test in a process of its own."""

import json
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import torch
from diffusers import DDPMScheduler, UNet2DModel
from torch.utils._python_dispatch import TorchDispatchMode

ROOT = Path(__file__).resolve().parents[1]
DATA = ROOT / "tests" / "data"  # public UNet configs of real Hub checkpoints
FAKE_COMMIT = "0123456789abcdef0123456789abcdef01234567"
# What a saved DDPMPipeline folder of this repo holds (diffusers' layout plus its model card).
PIPELINE_FILES = (
    "model_index.json",
    "unet/config.json",
    "unet/diffusion_pytorch_model.safetensors",
    "scheduler/scheduler_config.json",
    "README.md",
)


def save_pipeline_folder(unet, folder: Path, scheduler_kwargs=None) -> Path:
    """diffusers' pipeline layout: model_index.json, unet/, scheduler/."""
    from diffusers import DDPMPipeline

    DDPMPipeline(unet=unet, scheduler=DDPMScheduler(**(scheduler_kwargs or {}))).save_pretrained(folder)
    return folder


def save_flat_folder(unet, folder: Path, scheduler_kwargs=None, bin_only=False) -> Path:
    """The older flat layout: config.json + weights + scheduler_config.json at the root."""
    folder.mkdir(parents=True, exist_ok=True)
    if bin_only:
        (folder / "config.json").write_text(json.dumps(dict(unet.config, _class_name="UNet2DModel")))
        torch.save(unet.state_dict(), folder / "diffusion_pytorch_model.bin")
    else:
        unet.save_pretrained(folder)
    DDPMScheduler(**(scheduler_kwargs or {})).save_config(folder)
    return folder


def prefill_hub_cache(cache: Path, repo_id: str, folder: Path) -> Path:
    """Lay ``folder`` out as huggingface_hub's cache holds a downloaded repo (refs/main -> snapshots/<commit>/)."""
    repo_dir = cache / f"models--{repo_id.replace('/', '--')}"
    snap = repo_dir / "snapshots" / FAKE_COMMIT
    shutil.copytree(folder, snap, dirs_exist_ok=True)
    (repo_dir / "refs").mkdir(parents=True, exist_ok=True)
    (repo_dir / "refs" / "main").write_text(FAKE_COMMIT)
    return repo_dir


def cifar10_unet(seed=0) -> UNet2DModel:
    """Random weights of the real google/ddpm-cifar10-32 architecture (35.7M parameters)."""
    torch.manual_seed(seed)
    config = json.loads((DATA / "unet-ddpm-cifar10-32.config.json").read_text())
    return UNet2DModel.from_config(config)


def _patch_png_size(data: bytes, width: int, height: int) -> bytes:
    """Rewrite a PNG's IHDR to claim another size (with a valid CRC): a decompression bomb in a few bytes."""
    import struct
    import zlib

    ihdr = bytearray(data[12:29])  # b"IHDR" + 13 bytes
    ihdr[4:12] = struct.pack(">II", width, height)
    return data[:8] + data[8:12] + bytes(ihdr) + struct.pack(">I", zlib.crc32(bytes(ihdr)) & 0xFFFFFFFF) + data[33:]


def upload_corpus(folder: Path) -> dict[str, tuple[Path, bool]]:
    """Every kind of upload the Space must handle: name -> (path, decodes?)."""
    import io

    import numpy as np
    from PIL import Image

    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    rgb = Image.fromarray(rng.integers(0, 256, (48, 64, 3), dtype=np.uint8))
    files: dict[str, tuple[Path, bool]] = {}

    def save(name, img, ok=True, **kw):
        p = folder / name
        img.save(p, **kw)
        files[name] = (p, ok)

    save("rgb.png", rgb)
    save("rgba.png", rgb.convert("RGBA"))
    save("la.png", rgb.convert("LA"))
    save("palette.png", rgb.convert("P"))
    save("gray.png", rgb.convert("L"))
    save("bilevel.png", rgb.convert("1"))
    save("sixteen_bit.png", Image.fromarray((rng.integers(0, 65536, (40, 30))).astype(np.uint16)))
    save("cmyk.jpg", rgb.convert("CMYK"), quality=90)
    save("photo.jpg", rgb, quality=90)
    save("anim.gif", rgb.convert("P"), save_all=True, append_images=[rgb.rotate(90).convert("P")])
    exif = Image.Exif()
    exif[274] = 6  # rotate 90 degrees clockwise on display
    save("exif_rotated.jpg", Image.new("RGB", (40, 20), (200, 30, 30)), exif=exif)
    save("tiny_1x1.png", Image.new("RGB", (1, 1), (10, 200, 10)))
    big = Image.fromarray(
        np.broadcast_to(np.linspace(0, 255, 6000, dtype=np.uint8)[None, :, None], (4000, 6000, 3)).copy()
    )
    save("huge_6000x4000.jpg", big, quality=70)
    save("float_ok.tif", Image.fromarray(rng.random((20, 20)).astype(np.float32)))
    bad = rng.random((20, 20)).astype(np.float32)
    bad[3, 3], bad[5, 5] = np.nan, np.inf
    save("float_nan.tif", Image.fromarray(bad), ok=False)
    save("strip_1x100000.png", Image.new("L", (100000, 1)), ok=False)

    buf = io.BytesIO()
    Image.new("1", (64, 64)).save(buf, format="PNG")
    (folder / "bomb.png").write_bytes(_patch_png_size(buf.getvalue(), 100_000, 100_000))
    files["bomb.png"] = (folder / "bomb.png", False)
    png, jpg = (folder / "rgb.png").read_bytes(), (folder / "photo.jpg").read_bytes()
    for name, data in {
        "truncated.png": png[: len(png) // 2],
        "truncated.jpg": jpg[: len(jpg) // 3],
        "empty.png": b"",
        "svg_renamed.png": b'<svg xmlns="http://www.w3.org/2000/svg" width="10" height="10"><rect width="10" height="10"/></svg>',
        "html_renamed.png": b"<!doctype html><html><body><script>alert(1)</script></body></html>",
        "random_bytes.png": bytes(rng.integers(0, 256, 4096, dtype=np.uint8)),
    }.items():
        (folder / name).write_bytes(data)
        files[name] = (folder / name, False)
    return files


class HostSyncs(TorchDispatchMode):
    """Records the operators that make a CUDA stream wait for the host (a scalar read, data-dependent shapes):
    inside a CUDA graph capture each one is an error, so the whole step must call none."""

    SYNCING = {
        "item",
        "_local_scalar_dense",
        "nonzero",
        "masked_select",
        "unique",
        "_unique2",
        "unique_consecutive",
        "equal",
        "is_nonzero",
    }

    def __init__(self):
        super().__init__()
        self.seen = []

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        name = func.__name__.split(".")[0]
        bool_index = name == "index" and any(isinstance(i, torch.Tensor) and i.dtype == torch.bool for i in args[1])
        if name in self.SYNCING or bool_index:
            self.seen.append(str(func))
        return func(*args, **(kwargs or {}))


class OpCount(TorchDispatchMode):
    """Counts the operators dispatched inside it: on a GPU each is (at least) one kernel launch."""

    def __init__(self):
        super().__init__()
        self.n = 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        self.n += 1
        return func(*args, **(kwargs or {}))


OWN_PROCESS = "DDPM_TEST_OWN_PROCESS"  # set to a test's node id in the process that runs it alone


def run_in_own_process(request, timeout: float = 850) -> bool:
    """Run the calling test again, alone, in a fresh Python process, and assert that it passed there.

    Returns True inside that process (the caller then does the work) and False in the suite's process (the caller
    returns). For torch.compile: inductor's generated C++ kernels, the OpenMP threads they start and its caches
    would otherwise stay in the suite's process for every later test, and a fault in generated code would end the
    whole run without naming the test. The child gets an empty inductor cache of its own.
    """
    nodeid = request.node.nodeid
    if os.environ.get(OWN_PROCESS) == nodeid:
        return True
    with tempfile.TemporaryDirectory(prefix="inductor-") as cache:
        env = dict(os.environ, **{OWN_PROCESS: nodeid, "TORCHINDUCTOR_CACHE_DIR": cache})
        cmd = [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", nodeid]
        proc = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=timeout)
    assert proc.returncode == 0 and "1 passed" in proc.stdout, f"{nodeid} in its own process:\n" + crash_report(
        proc.stdout + proc.stderr
    )
    return False


def crash_report(log: str, limit: int = 6000) -> str:
    """The part of a test log that says what went wrong: a fatal error's header and first frames (the test's own
    code, which the dump of every thread and the list of extension modules would push out of a log's tail),
    else the tail."""
    lines = log.splitlines()
    for i, line in enumerate(lines):
        if line.startswith("Fatal Python error"):
            return "\n".join(lines[i : i + 40])[:limit]
    return log[-limit:]
