"""visionstack: composable image-recognition models from one config.

The public API is imported lazily, so ``import visionstack`` and ``visionstack --help`` stay fast;
torch is loaded on first use of a model-related name.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

__version__ = "0.1.0"

_EXPORTS: dict[str, str] = {
    # registries
    "Registry": "visionstack.registry",
    "register": "visionstack.registry",
    "list_models": "visionstack.registry",
    "registry_for": "visionstack.registry",
    "BACKBONES": "visionstack.registry",
    "ENCODERS": "visionstack.registry",
    "NECKS": "visionstack.registry",
    "HEADS": "visionstack.registry",
    "LOSSES": "visionstack.registry",
    "METHODS": "visionstack.registry",
    "DATASETS": "visionstack.registry",
    "TRANSFORMS": "visionstack.registry",
    "OPTIMIZERS": "visionstack.registry",
    "SCHEDULERS": "visionstack.registry",
    "METRICS": "visionstack.registry",
    # config
    "load_config": "visionstack.config",
    "dump_config": "visionstack.config",
    # errors
    "ConfigError": "visionstack.errors",
    "UnknownNameError": "visionstack.errors",
    "CheckpointError": "visionstack.errors",
    "DataError": "visionstack.errors",
    # models
    "build_model": "visionstack.models.builder",
    "build_part": "visionstack.models.builder",
    "create_model": "visionstack.models.factory",
    "ImageClassifier": "visionstack.models.classifier",
    "FeatureInfo": "visionstack.models.features",
    "load_weights": "visionstack.models.weights",
    # data
    "decode_image": "visionstack.data.decode",
    "DecodePolicy": "visionstack.data.decode",
    "build_dataset": "visionstack.data.loader",
    "build_loader": "visionstack.data.loader",
    # engine
    "OptimWrapper": "visionstack.engine.optim_wrapper",
    "Trainer": "visionstack.engine.trainer",
    "predict_paths": "visionstack.engine.inference",
    "load_checkpoint_model": "visionstack.engine.inference",
    "export_model": "visionstack.engine.export",
}

__all__ = ["__version__", *_EXPORTS]


def __getattr__(name: str) -> Any:
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'visionstack' has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(__all__)


if TYPE_CHECKING:  # pragma: no cover
    from visionstack.config import dump_config, load_config
    from visionstack.data.decode import DecodePolicy, decode_image
    from visionstack.data.loader import build_dataset, build_loader
    from visionstack.engine.export import export_model
    from visionstack.engine.inference import load_checkpoint_model, predict_paths
    from visionstack.engine.optim_wrapper import OptimWrapper
    from visionstack.engine.trainer import Trainer
    from visionstack.errors import CheckpointError, ConfigError, DataError, UnknownNameError
    from visionstack.models.builder import build_model, build_part
    from visionstack.models.classifier import ImageClassifier
    from visionstack.models.factory import create_model
    from visionstack.models.features import FeatureInfo
    from visionstack.models.weights import load_weights
    from visionstack.registry import (
        BACKBONES,
        DATASETS,
        ENCODERS,
        HEADS,
        LOSSES,
        METHODS,
        METRICS,
        NECKS,
        OPTIMIZERS,
        SCHEDULERS,
        TRANSFORMS,
        Registry,
        list_models,
        register,
        registry_for,
    )
