"""visionstack: composable image-recognition models from one config.

The public API is imported lazily, so ``import visionstack`` and ``visionstack --help`` stay fast;
torch is loaded on first use of a model-related name.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

from visionstack.core.version import __version__

_EXPORTS: dict[str, str] = {
    # registries
    "Registry": "visionstack.core.registry",
    "register": "visionstack.core.registry",
    "list_models": "visionstack.core.registry",
    "registry_for": "visionstack.core.registry",
    "BACKBONES": "visionstack.core.registry",
    "ENCODERS": "visionstack.core.registry",
    "NECKS": "visionstack.core.registry",
    "HEADS": "visionstack.core.registry",
    "LOSSES": "visionstack.core.registry",
    "METHODS": "visionstack.core.registry",
    "DATASETS": "visionstack.core.registry",
    "TRANSFORMS": "visionstack.core.registry",
    "OPTIMIZERS": "visionstack.core.registry",
    "SCHEDULERS": "visionstack.core.registry",
    "METRICS": "visionstack.core.registry",
    "SAMPLERS": "visionstack.core.registry",
    # config
    "load_config": "visionstack.core.config",
    "dump_config": "visionstack.core.config",
    # errors
    "ConfigError": "visionstack.errors",
    "UnknownNameError": "visionstack.errors",
    "CheckpointError": "visionstack.errors",
    "DataError": "visionstack.errors",
    # models
    "build_model": "visionstack.models.build",
    "build_part": "visionstack.core.build",
    "create_model": "visionstack.models.build",
    "ImageClassifier": "visionstack.models.methods.classifier",
    "FeatureInfo": "visionstack.models.features.layout",
    "load_weights": "visionstack.models.weights.load",
    # data
    "decode_image": "visionstack.data.decode",
    "DecodePolicy": "visionstack.data.decode",
    "build_dataset": "visionstack.data.loader",
    "build_loader": "visionstack.data.loader",
    # engine and tools
    "OptimWrapper": "visionstack.engine.optim_wrapper",
    "Trainer": "visionstack.engine.trainer",
    "predict_paths": "visionstack.tools.predict",
    "load_checkpoint_model": "visionstack.tools.predict",
    "export_model": "visionstack.tools.export",
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
    from visionstack.core.build import build_part
    from visionstack.core.config import dump_config, load_config
    from visionstack.core.registry import (
        BACKBONES,
        DATASETS,
        ENCODERS,
        HEADS,
        LOSSES,
        METHODS,
        METRICS,
        NECKS,
        OPTIMIZERS,
        SAMPLERS,
        SCHEDULERS,
        TRANSFORMS,
        Registry,
        list_models,
        register,
        registry_for,
    )
    from visionstack.data.decode import DecodePolicy, decode_image
    from visionstack.data.loader import build_dataset, build_loader
    from visionstack.engine.optim_wrapper import OptimWrapper
    from visionstack.engine.trainer import Trainer
    from visionstack.errors import CheckpointError, ConfigError, DataError, UnknownNameError
    from visionstack.models.build import build_model, create_model
    from visionstack.models.features.layout import FeatureInfo
    from visionstack.models.methods.classifier import ImageClassifier
    from visionstack.models.weights.load import load_weights
    from visionstack.tools.export import export_model
    from visionstack.tools.predict import load_checkpoint_model, predict_paths
