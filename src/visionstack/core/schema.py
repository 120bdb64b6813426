"""The run config's sections and the keys each accepts; validation of a whole run config."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from visionstack.core.build import check_keys, validate_model_config
from visionstack.errors import ConfigError

#: Top-level sections of a run config and the keys each accepts (``None``: free-form, checked elsewhere).
RUN_SECTIONS: dict[str, set[str] | None] = {
    "model": None,
    "data": {
        "root",
        "train",
        "val",
        "test",
        "image_size",
        "resize_size",
        "transforms",
        "train_transforms",
        "val_transforms",
        "batch_size",
        "val_batch_size",
        "num_workers",
        "mean",
        "std",
        "interpolation",
        "decode",
        "pin_memory",
        "persistent_workers",
        "drop_last",
        "preset",
        "sampler",
    },
    "train": {
        "epochs",
        "steps",
        "optimizer",
        "scheduler",
        "amp",
        "ema",
        "seed",
        "deterministic",
        "checkpoint",
        "grad_accum",
        "clip_grad",
        "channels_last",
        "compile",
        "mixup",
        "cutmix",
        "mix_prob",
        "log_interval",
        "nonfinite",
        "device",
        "sync_bn",
        "progress",
        "max_steps_per_epoch",
        "find_unused_parameters",
    },
    "eval": {"interval", "topk", "tta", "metric", "retrieval"},
    "work_dir": None,
    "name": None,
    "description": None,
}


def validate_config(cfg: Mapping[str, Any]) -> None:
    """Check the sections of a run config and every part's arguments, before anything is built."""
    if not isinstance(cfg, Mapping):
        raise ConfigError("", f"a config must be a mapping, got {type(cfg).__name__}")
    check_keys(
        {k: v for k, v in cfg.items() if not (isinstance(k, str) and k.startswith("_"))}, RUN_SECTIONS, ""
    )
    for name, keys in RUN_SECTIONS.items():
        section = cfg.get(name)
        if keys is None or section is None:
            continue
        if not isinstance(section, Mapping):
            raise ConfigError(name, f"expected a mapping, got {type(section).__name__} ({section!r})")
        check_keys(section, keys, name)
    if "model" in cfg:
        validate_model_config(cfg["model"], "model")
    if isinstance(cfg.get("work_dir"), (dict, list)):
        raise ConfigError("work_dir", "expected a path string")
