"""Loading DDPM checkpoints safely: bundled folders by name, Hub repos by id, into a bounded LRU cache.

Only ``UNet2DModel`` configs are accepted (checked from ``config.json`` before any weights are read);
safetensors are preferred, ``.bin`` weights go through ``torch.load(weights_only=True)``; no remote code is ever
run. Local names resolve only inside ``checkpoints/``. Without a network, a Hub id that is not in the local
cache fails in seconds with a message that names the bundled model.
"""

from __future__ import annotations

import json
import os
import re
import socket
import threading
import time
from collections import OrderedDict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from .diffusion import GaussianDiffusion

CHECKPOINT_DIR = Path(os.environ.get("DDPM_CHECKPOINT_DIR", Path(__file__).resolve().parents[1] / "checkpoints"))
BUNDLED_DEFAULT = "ddpm-mnist-28"
#: Public DDPM checkpoints of Ho et al. (converted to diffusers by Google); all pixel-space UNet2DModels.
HUB_MODELS = (
    "google/ddpm-cifar10-32",
    "google/ddpm-celebahq-256",
    "google/ddpm-ema-church-256",
    "google/ddpm-cat-256",
    "google/ddpm-ema-bedroom-256",
)
CACHE_SIZE = int(os.environ.get("DDPM_MODEL_CACHE_SIZE", 3))
MAX_WEIGHTS_BYTES = 1_500_000_000  # a pixel-space DDPM UNet is < 500 MB; refuse anything far larger

_NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,95}$")
_HUB_ID_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,95}/[A-Za-z0-9][A-Za-z0-9_.-]{0,95}$")
_DEFAULT_SCHEDULER = {
    "beta_schedule": "linear",
    "num_train_timesteps": 1000,
    "variance_type": "fixed_small",
    "clip_sample": True,
}


@dataclass
class LoadedModel:
    """A UNet2DModel, its diffusion (from the repo's scheduler config) and where they came from."""

    name: str
    unet: Any
    diffusion: GaussianDiffusion
    source: str  # "bundled" or "hub"
    scheduler_config: dict
    notes: list[str] = field(default_factory=list)

    @property
    def sample_shape(self) -> tuple[int, int, int]:
        cfg = self.unet.config
        size = cfg.sample_size
        h, w = (size, size) if isinstance(size, int) else (int(size[0]), int(size[-1]))  # diffusers allows (H, W)
        return cfg.in_channels, h, w

    @property
    def num_parameters(self) -> int:
        return sum(p.numel() for p in self.unet.parameters())

    @property
    def device(self) -> torch.device:
        return next(self.unet.parameters()).device

    @property
    def dtype(self) -> torch.dtype:
        return next(self.unet.parameters()).dtype


def bundled_models(root: Path | None = None) -> list[str]:
    """Names of the pipeline folders in ``root`` (default: the repo's ``checkpoints/``, the offline models)."""
    root = Path(root) if root is not None else CHECKPOINT_DIR
    if not root.is_dir():
        return []
    return sorted(
        p.name for p in root.iterdir() if (p / "unet" / "config.json").is_file() or (p / "config.json").is_file()
    )


MAX_ID_CHARS = 96 + 1 + 96  # huggingface_hub: owner and name of at most 96 characters each


def validate_model_id(name: str, root: Path | None = None) -> tuple[str, str]:
    """Classify ``name`` as ``("bundled", name)`` or ``("hub", repo_id)``; ``ValueError`` for anything else.

    Paths, URLs, ``..`` and absolute names are refused: local models are only the folders in ``checkpoints/``.
    """
    if not isinstance(name, str):
        raise ValueError(f"a model name must be text (a bundled name or a Hub id), got {type(name).__name__}")
    name = name.strip()
    if len(name) > MAX_ID_CHARS:  # Hub ids are at most 96 characters; never echo a huge string back
        raise ValueError(
            f"{name[:40]!r}... ({len(name)} characters) is too long for a model name or Hub id "
            f"(at most {MAX_ID_CHARS})"
        )
    if not name:
        raise ValueError("no model given: pick a bundled model or type a Hub id such as google/ddpm-cifar10-32")
    if "://" in name or name.startswith(("/", "~", "\\")) or ".." in name or "\\" in name or "--" in name:
        raise ValueError(
            f"{name!r} is not allowed: give a bundled model name ({', '.join(bundled_models(root)) or 'none'}) "
            "or a Hub id of the form owner/name"
        )
    if _NAME_RE.match(name):
        if name in bundled_models(root):
            return "bundled", name
        raise ValueError(
            f"no bundled model named {name!r}; bundled: {', '.join(bundled_models(root)) or 'none'}. "
            "Hub models are given as owner/name"
        )
    if _HUB_ID_RE.match(name):
        return "hub", name
    raise ValueError(f"{name!r} is neither a bundled model name nor a Hub id of the form owner/name")


# ---------------------------------------------------------------- the network
_net_lock = threading.Lock()
_net_state: dict[str, float | bool] = {"checked": 0.0, "ok": False}


def hub_reachable(timeout: float = 2.0, ttl: float = 60.0) -> bool:
    """Whether huggingface.co answers a TCP connect within ``timeout`` s (cached ``ttl`` s).

    huggingface_hub retries for ~20 s when there is no network; this check keeps a missing network a fast error.
    DNS lookups cannot be timed out in-thread, so the probe runs in a daemon thread that is waited on.
    """
    from huggingface_hub import constants

    if constants.HF_HUB_OFFLINE:
        return False
    with _net_lock:
        if time.monotonic() - float(_net_state["checked"]) < ttl:
            return bool(_net_state["ok"])
    result = {"ok": False}

    def probe():
        try:
            host = re.sub(r"^https?://", "", constants.ENDPOINT).split("/")[0]
            with socket.create_connection((host, 443), timeout=timeout):
                result["ok"] = True
        except OSError:
            pass

    th = threading.Thread(target=probe, daemon=True)
    th.start()
    th.join(timeout + 0.5)
    with _net_lock:
        _net_state.update(checked=time.monotonic(), ok=result["ok"])
    return result["ok"]


def _hub_file(repo_id: str, filename: str, local_only: bool, cache_dir: str | None) -> Path | None:
    """Path of ``filename`` in ``repo_id`` (downloaded or cached), or None if the repo has no such file (online)
    or the cache has none (offline). A network failure while online is a ``ValueError`` naming the bundled model."""
    from huggingface_hub import hf_hub_download
    from huggingface_hub.errors import EntryNotFoundError, LocalEntryNotFoundError

    try:
        return Path(hf_hub_download(repo_id, filename, local_files_only=local_only, cache_dir=cache_dir))
    except LocalEntryNotFoundError as err:
        if local_only:
            return None
        raise ValueError(
            f"the Hugging Face Hub could not be reached for {repo_id}; try again later or use the "
            f"bundled model ({_bundled_hint()})"
        ) from err
    except EntryNotFoundError:
        return None


def _bundled_hint() -> str:
    names = bundled_models()
    return BUNDLED_DEFAULT if BUNDLED_DEFAULT in names else ", ".join(names) or "none"


def _fetch_hub(repo_id: str, cache_dir: str | None) -> tuple[Path, str | None]:
    """Download (or find cached) the UNet config + weights and the scheduler config; returns (folder, subfolder)."""
    from huggingface_hub.errors import GatedRepoError, HfHubHTTPError, RepositoryNotFoundError

    online = hub_reachable()
    bundled = _bundled_hint()
    try:
        for sub in ("unet", None):
            prefix = f"{sub}/" if sub else ""
            config = _hub_file(repo_id, prefix + "config.json", not online, cache_dir)
            if config is None:
                continue
            if json.loads(config.read_text()).get("_class_name") != "UNet2DModel":
                if sub is None:
                    break  # a flat repo with another class: reported by _check_config below
                continue
            weights = _hub_file(repo_id, prefix + "diffusion_pytorch_model.safetensors", not online, cache_dir)
            if weights is None:
                weights = _hub_file(repo_id, prefix + "diffusion_pytorch_model.bin", not online, cache_dir)
            if weights is None:
                raise ValueError(
                    f"{repo_id} has a UNet config but no diffusion_pytorch_model weights"
                    + ("" if online else " in the local cache (the Hub is not reachable)")
                )
            for sched in ("scheduler/scheduler_config.json", "scheduler_config.json"):
                _hub_file(repo_id, sched, not online, cache_dir)
            return config.parent.parent if sub else config.parent, sub
    except RepositoryNotFoundError as err:
        raise ValueError(f"no model {repo_id!r} on the Hugging Face Hub (or it is private)") from err
    except GatedRepoError as err:
        raise ValueError(f"{repo_id} is gated: it needs an access token") from err
    except (HfHubHTTPError, OSError) as err:
        if online:
            raise ValueError(
                f"the Hugging Face Hub could not be reached for {repo_id} ({type(err).__name__}); "
                f"try again later or use the bundled model ({bundled})"
            ) from err
        raise
    if not online:
        raise ValueError(
            f"the Hugging Face Hub cannot be reached and {repo_id} is not in the local cache; "
            f"the bundled model ({bundled}) works offline"
        )
    # The repo exists but holds no UNet2DModel at the root or in unet/.
    root_cfg = _hub_file(repo_id, "config.json", False, cache_dir)
    cls = json.loads(root_cfg.read_text()).get("_class_name") if root_cfg else None
    raise ValueError(
        f"{repo_id} is not a UNet2DModel checkpoint"
        + (f" (its model is a {cls})" if cls else "")
        + ": only unconditional pixel-space DDPM UNets are supported"
    )


def _check_config(config_path: Path, name: str) -> dict:
    try:
        config = json.loads(config_path.read_text())
    except (OSError, json.JSONDecodeError) as err:
        raise ValueError(f"{name}: unreadable config.json ({err})") from err
    cls = config.get("_class_name")
    if cls != "UNet2DModel":
        raise ValueError(
            f"{name} is a {cls or 'model without _class_name'}, not a UNet2DModel: "
            "only unconditional pixel-space DDPM UNets are supported"
        )
    for key in ("in_channels", "out_channels", "sample_size"):
        if key not in config:
            raise ValueError(f"{name}: config.json lacks {key!r}")
    return config


def first_sentence(err: BaseException) -> str:
    """The first sentence of an error's text, on one line and without terminal colour codes: what a visitor needs
    (torch's refusal of a pickle goes on to explain how to load it unsafely, which is not advice to pass on)."""
    text = re.sub(r"\x1b\[[0-9;]*m", "", str(err))
    return " ".join(re.split(r"(?<=[^.])\.(?:\s|$)", text, maxsplit=1)[0].split())


def _load_unet(folder: Path, subfolder: str | None, name: str):
    from diffusers import UNet2DModel
    from diffusers.utils import is_accelerate_available

    base = folder / subfolder if subfolder else folder
    config = _check_config(base / "config.json", name)
    st, binary = base / "diffusion_pytorch_model.safetensors", base / "diffusion_pytorch_model.bin"
    weights = st if st.is_file() else binary
    if not weights.is_file():
        raise ValueError(f"{name}: no diffusion_pytorch_model.safetensors or .bin next to its config")
    if weights.stat().st_size > MAX_WEIGHTS_BYTES:
        raise ValueError(f"{name}: weights of {weights.stat().st_size / 1e9:.1f} GB are too large for a DDPM UNet")
    try:
        if weights == st:
            # accelerate (training only) speeds up loading big models; without it, ask for the plain load outright
            # instead of having diffusers warn at every start of the Space
            low_mem = is_accelerate_available()
            try:
                unet = UNet2DModel.from_pretrained(
                    str(folder), subfolder=subfolder, use_safetensors=True, low_cpu_mem_usage=low_mem
                )
            except ValueError as err:  # diffusers' shape check: its first sentence names the tensor
                raise ValueError(f"{name}: weights do not fit the config ({first_sentence(err)})") from err
        else:
            # .bin is a pickle: only tensors may come out of it (weights_only), never code.
            unet = UNet2DModel.from_config(config)
            state = torch.load(weights, map_location="cpu", weights_only=True)
            missing, unexpected = unet.load_state_dict(state, strict=False)
            if missing or unexpected:
                raise ValueError(
                    f"{name}: weights do not fit the config (missing {len(missing)}, unexpected {len(unexpected)} keys)"
                )
    except ValueError:
        raise
    except Exception as err:  # corrupt files, pickles with code (refused by weights_only), shape mismatches
        raise ValueError(
            f"{name}: the weights could not be loaded safely ({type(err).__name__}: {first_sentence(err)})"
        ) from err
    return unet.eval().requires_grad_(False)


def _scheduler_config(folder: Path, subfolder: str | None) -> tuple[dict, list[str]]:
    for path in (folder / "scheduler" / "scheduler_config.json", folder / "scheduler_config.json"):
        if path.is_file():
            try:
                return json.loads(path.read_text()), []
            except json.JSONDecodeError as err:
                raise ValueError(f"unreadable scheduler config {path.name}: {err}") from err
    return dict(_DEFAULT_SCHEDULER), ["no scheduler config found: assumed DDPM's linear 1000-step schedule"]


def _load(name: str, device: torch.device, dtype: torch.dtype, cache_dir: str | None, root: Path) -> LoadedModel:
    kind, ident = validate_model_id(name, root)
    if kind == "bundled":
        folder = (root / ident).resolve()
        if root.resolve() not in folder.parents:
            raise ValueError(f"{name!r} resolves outside {root.name}/")
        subfolder = "unet" if (folder / "unet" / "config.json").is_file() else None
    else:
        folder, subfolder = _fetch_hub(ident, cache_dir or os.environ.get("HF_HUB_CACHE"))
    unet = _load_unet(folder, subfolder, ident)
    sched_cfg, notes = _scheduler_config(folder, subfolder)
    learned = unet.config.out_channels == 2 * unet.config.in_channels
    overrides = {}
    if learned and sched_cfg.get("variance_type") != "learned_range":
        overrides["variance_type"] = "learned_range"
        notes.append("the UNet outputs 2C channels: using learned_range variance")
    if not learned and unet.config.out_channels != unet.config.in_channels:
        raise ValueError(
            f"{name}: out_channels={unet.config.out_channels} fits neither a fixed nor a learned variance"
        )
    diffusion = GaussianDiffusion.from_config(sched_cfg, **overrides)
    unet = unet.to(device)
    if unet.dtype != dtype:
        unet = unet.to(dtype)
    return LoadedModel(ident, unet, diffusion, kind, sched_cfg, notes)


class ModelCache:
    """A thread-safe LRU cache of loaded models keyed by (name, device, dtype); at most ``size`` entries.
    Bundled names are looked up in ``root`` (default: the repo's ``checkpoints/``, read when a model is loaded)."""

    def __init__(self, size: int = CACHE_SIZE, root: str | Path | None = None):
        self.size = max(1, size)
        self._root = Path(root) if root is not None else None
        self._models: OrderedDict[tuple, LoadedModel] = OrderedDict()
        self._lock = threading.Lock()

    def get(
        self,
        name: str,
        device: torch.device | str = "cpu",
        dtype: torch.dtype = torch.float32,
        cache_dir: str | None = None,
    ) -> LoadedModel:
        root = self.root
        validate_model_id(name, root)  # a list or dict as a name must be a clear ValueError, not a failed dict lookup
        key = (name.strip(), str(torch.device(device)), dtype, str(root))
        with self._lock:
            if key in self._models:
                self._models.move_to_end(key)
                return self._models[key]
            model = _load(name, torch.device(device), dtype, cache_dir, root)
            self._models[key] = model
            while len(self._models) > self.size:
                self._models.popitem(last=False)
            return model

    @property
    def root(self) -> Path:
        return self._root if self._root is not None else CHECKPOINT_DIR

    def __len__(self) -> int:
        return len(self._models)

    def clear(self) -> None:
        with self._lock:
            self._models.clear()


default_cache = ModelCache()  # the process-wide cache behind load_checkpoint (the app, the CLIs)


def load_checkpoint(
    name: str = BUNDLED_DEFAULT,
    device: torch.device | str = "cpu",
    dtype: torch.dtype = torch.float32,
    cache_dir: str | None = None,
) -> LoadedModel:
    """Load a bundled model by name or a Hub model by id (through the shared LRU cache)."""
    return default_cache.get(name, device, dtype, cache_dir)
