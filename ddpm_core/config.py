"""diffusers scheduler configs <-> :class:`~ddpm_core.diffusion.GaussianDiffusion`: the adapter, in one place.

A DDPMScheduler / DDIMScheduler config (``scheduler_config.json``) names the schedule and the reverse-process
options; every key is honoured, unknown keys or unsupported values raise ``ValueError`` naming them, and the old
keys of early diffusers releases map as diffusers maps them.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Mapping

import torch

from .schedule import NoiseSchedule

if TYPE_CHECKING:
    from .diffusion import GaussianDiffusion

PREDICTION_TYPES = ("epsilon", "sample", "v_prediction")
VARIANCE_TYPES = ("fixed_small", "fixed_small_log", "fixed_large", "learned_range")

# Keys of a diffusers scheduler config and what we do with them. Keys starting with "_" are metadata.
CONFIG_KEYS = {
    "num_train_timesteps",
    "beta_start",
    "beta_end",
    "beta_schedule",
    "trained_betas",
    "variance_type",
    "clip_sample",
    "clip_sample_range",
    "prediction_type",
    "thresholding",
    "dynamic_thresholding_ratio",
    "sample_max_value",
    "timestep_spacing",
    "steps_offset",
    "rescale_betas_zero_snr",
    "set_alpha_to_one",  # DDIMScheduler: the alpha used after the last step
}
# Keys of early diffusers releases: ``timesteps`` was the old name of ``num_train_timesteps`` and ``tensor_format``
# chose numpy/torch (it has no effect on the maths).
OLD_KEYS = {"timesteps": "num_train_timesteps", "tensor_format": None}


def normalised(config: Mapping[str, Any] | str, overrides: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """The config (a dict or a JSON path) with ``overrides`` applied, old keys renamed, metadata dropped; a
    ``ValueError`` for unknown keys."""
    if isinstance(config, (str, bytes)) or hasattr(config, "__fspath__"):
        import json
        from pathlib import Path

        try:
            config = json.loads(Path(config).read_text())
        except (OSError, json.JSONDecodeError) as err:
            raise ValueError(f"cannot read scheduler config {str(config)!r}: {err}") from err
    if not isinstance(config, Mapping):
        raise ValueError(f"a scheduler config must be a mapping, got {type(config).__name__}")
    cfg: dict[str, Any] = {}
    for key, value in {**config, **(overrides or {})}.items():
        if key.startswith("_"):
            continue
        if key in OLD_KEYS:
            new = OLD_KEYS[key]
            if new is None:
                continue
            if new in config and config[new] != value:
                raise ValueError(f"config has both {key}={value!r} and {new}={config[new]!r}")
            key = new
        if key not in CONFIG_KEYS:
            raise ValueError(f"unsupported scheduler config key {key!r} (value {value!r})")
        cfg[key] = value
    return cfg


def diffusion_kwargs(config: Mapping[str, Any] | str, **overrides: Any) -> tuple[NoiseSchedule, dict[str, Any]]:
    """The schedule and the GaussianDiffusion keyword arguments a scheduler config (dict or JSON path) describes."""
    cfg = normalised(config, overrides)
    T = cfg.get("num_train_timesteps", 1000)
    if isinstance(T, bool) or not isinstance(T, int) or T < 1:
        raise ValueError(f"num_train_timesteps must be a positive integer, got {T!r}")
    vt = cfg.get("variance_type", "fixed_small")
    if vt not in VARIANCE_TYPES:
        raise ValueError(f"unsupported variance_type {vt!r}; supported: {VARIANCE_TYPES}")
    trained = cfg.get("trained_betas")
    if trained is not None and len(trained) != T:
        # diffusers takes len(trained_betas) as T silently; a mismatch is almost always a config error.
        raise ValueError(f"trained_betas has {len(trained)} entries but num_train_timesteps is {T}")
    try:
        schedule = NoiseSchedule.make(
            cfg.get("beta_schedule", "linear"),
            num_timesteps=T,
            beta_start=float(cfg.get("beta_start", 1e-4)),
            beta_end=float(cfg.get("beta_end", 0.02)),
            trained_betas=trained,
            rescale_betas_zero_snr=bool(cfg.get("rescale_betas_zero_snr", False)),
        )
    except (TypeError, ValueError) as err:
        raise ValueError(f"bad schedule in scheduler config: {err}") from err
    return schedule, dict(
        prediction_type=cfg.get("prediction_type", "epsilon"),
        variance_type=vt,
        clip_sample=cfg.get("clip_sample", True),
        clip_sample_range=cfg.get("clip_sample_range", 1.0),
        thresholding=cfg.get("thresholding", False),
        dynamic_thresholding_ratio=cfg.get("dynamic_thresholding_ratio", 0.995),
        sample_max_value=cfg.get("sample_max_value", 1.0),
        timestep_spacing=cfg.get("timestep_spacing", "leading"),
        steps_offset=cfg.get("steps_offset", 0) or 0,
        set_alpha_to_one=cfg.get("set_alpha_to_one", True),
    )


def diffusion_config(d: "GaussianDiffusion") -> dict[str, Any]:
    """A DDPMScheduler config dict that rebuilds ``d`` (custom schedules as ``trained_betas``)."""
    name = d.schedule.name
    zero_snr = name.endswith("+zero_snr")
    base = name.removesuffix("+zero_snr")
    named = base in ("linear", "scaled_linear", "squaredcos_cap_v2", "sigmoid") and d.schedule.beta_start is not None
    if d.timestep_map.numel() != d.num_timesteps or not torch.equal(d.timestep_map, torch.arange(d.num_timesteps)):
        raise ValueError("a respaced diffusion has no scheduler config; save the full diffusion's config")
    return {
        "num_train_timesteps": d.num_timesteps,
        "beta_start": d.schedule.beta_start if named else 1e-4,
        "beta_end": d.schedule.beta_end if named else 0.02,
        "beta_schedule": base if named else "linear",
        "trained_betas": None if named else d.schedule.betas.tolist(),
        "variance_type": d.variance_type,
        "clip_sample": d.clip_sample,
        "clip_sample_range": d.clip_sample_range,
        "prediction_type": d.prediction_type,
        "thresholding": d.thresholding,
        "dynamic_thresholding_ratio": d.dynamic_thresholding_ratio,
        "sample_max_value": d.sample_max_value,
        "timestep_spacing": d.timestep_spacing,
        "steps_offset": d.steps_offset,
        "rescale_betas_zero_snr": zero_snr and named,
    }
