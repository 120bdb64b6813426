"""Building the pieces of a run from its config: work dir, data, model, batch mixing, run files."""

from __future__ import annotations

import copy
import json
import math
import platform
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from visionstack.core.config import dump_config
from visionstack.errors import ConfigError


def library_versions() -> dict[str, str]:
    """Versions of python and the libraries a run depends on."""
    import numpy
    import timm
    import torchvision

    from visionstack.core.version import __version__

    versions = {
        "visionstack": __version__,
        "python": platform.python_version(),
        "torch": torch.__version__,
        "torchvision": torchvision.__version__,
        "timm": timm.__version__,
        "numpy": numpy.__version__,
    }
    return {k: str.__str__(v) for k, v in versions.items()}  # plain str (torch's is a TorchVersion)


def resolve_work_dir(cfg: Mapping[str, Any], work_dir: str | Path | None = None) -> Path:
    """``work_dir`` argument, else the config's ``work_dir``, else ``runs/<config file stem>``."""
    if work_dir:
        return Path(work_dir)
    if cfg.get("work_dir"):
        return Path(str(cfg["work_dir"]))
    source = cfg.get("_source_")
    return Path("runs") / (Path(source).stem if source else "run")


def positive_int(value: Any, path: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ConfigError(path, f"expected a positive integer, got {value!r}")
    return value


def run_length(train_cfg: Mapping[str, Any], epoch_len: int) -> tuple[int, int, str]:
    """``(total steps, epochs, unit)`` of a run of ``train.epochs`` or ``train.steps`` (unit ``"epoch"`` or
    ``"step"``), with ``epoch_len`` batches per epoch."""
    if train_cfg.get("steps") is not None:
        if train_cfg.get("epochs") is not None:
            raise ConfigError("train.steps", "give train.epochs or train.steps, not both")
        steps = positive_int(train_cfg["steps"], "train.steps")
        return steps, math.ceil(steps / epoch_len), "step"
    epochs = positive_int(train_cfg.get("epochs", 1), "train.epochs")
    return epochs * epoch_len, epochs, "epoch"


def eval_interval(value: Any, run_unit: str) -> tuple[int, str]:
    """``eval.interval`` as ``(count, unit)``, unit ``"epoch"`` or ``"step"``.

    A number counts the run's unit: epochs in a ``train.epochs`` run, steps (batches) in a ``train.steps``
    run. ``{epochs: N}`` or ``{steps: N}`` names the unit explicitly (``{steps: 2000}`` in an epoch run with
    long epochs; ``{epochs: 1}`` in a step run).
    """
    if isinstance(value, Mapping):
        if len(value) != 1 or next(iter(value)) not in ("epochs", "steps"):
            raise ConfigError(
                "eval.interval", f"expected a number, {{epochs: N}} or {{steps: N}}, got {dict(value)!r}"
            )
        ((key, count),) = value.items()
        return positive_int(count, f"eval.interval.{key}"), key[:-1]
    return positive_int(value, "eval.interval"), run_unit


@dataclass
class RunData:
    """Datasets and loaders of a run; ``val_*`` are ``None`` without a ``data.val`` section."""

    train_set: Any
    train_loader: Any
    val_set: Any
    val_loader: Any

    @property
    def class_names(self) -> list[str]:
        return list(self.train_set.class_names)


def build_data(data_cfg: Mapping[str, Any], seed: int, distributed: bool) -> RunData:
    """Train (and val) datasets and loaders, built without transforms (set them with :func:`set_transforms`
    once the model, whose backbone may supply defaults, exists)."""
    from visionstack.data.loader import check_same_classes, loader_from_data_cfg

    if not data_cfg or data_cfg.get("train") is None:
        raise ConfigError("data.train", "no training set configured (e.g. {type: image_folder, root: ...})")
    train_set, train_loader = loader_from_data_cfg(data_cfg, "train", seed, distributed, transform=None)
    val_set = val_loader = None
    if data_cfg.get("val") is not None:
        val_set, val_loader = loader_from_data_cfg(data_cfg, "val", seed, distributed, transform=None)
        check_same_classes(train_set, val_set, "val")
    return RunData(train_set, train_loader, val_set, val_loader)


def set_transforms(data: RunData, data_cfg: Mapping[str, Any], model: nn.Module) -> None:
    """Train / val transforms from the data section, with the backbone's ``pretrained_cfg`` as defaults."""
    from visionstack.data.transforms import transforms_from_data_cfg

    pretrained = getattr(getattr(model, "backbone", model), "pretrained_cfg", None) or {}
    data.train_set.transform = transforms_from_data_cfg(data_cfg, train=True, pretrained_cfg=pretrained)
    if data.val_set is not None:
        data.val_set.transform = transforms_from_data_cfg(data_cfg, train=False, pretrained_cfg=pretrained)


def model_config_with_classes(model_cfg: Any, num_classes: int) -> dict[str, Any]:
    """The model config with ``num_classes`` set from the training set when neither the model nor its head
    gives it; a configured count that differs from the data raises."""
    if not isinstance(model_cfg, Mapping):
        raise ConfigError("model", f"expected a mapping, got {model_cfg!r}")
    cfg = copy.deepcopy(dict(model_cfg))
    head = cfg.get("head")
    configured = cfg.get("num_classes")
    if configured is None and isinstance(head, Mapping):
        configured = head.get("num_classes")
    if configured is None:
        cfg["num_classes"] = int(num_classes)
    elif configured != num_classes:
        raise ConfigError(
            "model.num_classes", f"is {configured} but the training set has {num_classes} classes"
        )
    return cfg


def write_run_files(work_dir: Path, cfg: Mapping[str, Any], versions: Mapping[str, str]) -> None:
    """``config.yaml`` (the resolved config) and ``versions.json`` in the run directory."""
    from visionstack.core.io import atomic_write

    work_dir.mkdir(parents=True, exist_ok=True)
    text = dump_config({k: v for k, v in cfg.items() if k != "_source_"})
    atomic_write(work_dir / "config.yaml", lambda tmp: tmp.write_text(text, encoding="utf-8"))
    payload = json.dumps(dict(versions), indent=2) + "\n"
    atomic_write(work_dir / "versions.json", lambda tmp: tmp.write_text(payload, encoding="utf-8"))
