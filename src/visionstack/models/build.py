"""The one funnel from a name or a config to a model: ``vs.create_model`` and ``vs.build_model``.

``build_model(cfg)`` builds a whole model (``image_classifier`` or a fine-grained method) from its config.

``create_model("resnet50", num_classes=200, weights="r50.pth")`` builds the backbone (any name in the
BACKBONES registry: torchvision names, ``timm/<name>``, visionstack's own) and, unless ``features_only``,
wraps it in an :class:`~visionstack.models.methods.classifier.ImageClassifier` with the model's ``native`` encoder
and head, so with the original class count its logits are the original model's.
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from typing import Any

from torch import nn

from visionstack.core.build import DEFAULT_MODEL_TYPE, build_part, root_path, validate_model_config
from visionstack.core.registry import BACKBONES, METHODS
from visionstack.errors import ConfigError
from visionstack.models.methods.classifier import ImageClassifier
from visionstack.models.parts.native import NativePath

__all__ = ["build_model", "create_model"]


def create_model(
    name: str,
    num_classes: int | None = None,
    weights: str | os.PathLike | None = None,
    features_only: bool = False,
    out_indices: int | Sequence[int] | None = None,
    *,
    encoder: Any = None,
    head: Any = None,
    loss: Any = "cross_entropy",
    **backbone_kwargs: Any,
) -> nn.Module:
    """Build a registered backbone, or a classifier around it.

    Args:
        name: backbone name (``resnet50``, ``vit_b_16``, ``timm/convnext_tiny``, an FGVCLib alias...).
        num_classes: classes of the classifier; default: the original model's (1000 for ImageNet models).
            With the original count the model's own classifier weights are kept, otherwise the final layer
            is new (a weights file whose classifier has ``num_classes`` rows still fills it).
        weights: weights file or tag, loaded into the backbone (see ``visionstack.load_weights``).
        features_only: return the backbone itself: a list of NCHW maps per forward.
        out_indices: levels to return (negatives from the end). Without ``features_only`` the classifier
            then pools the selected maps with ``gap`` and a ``linear`` head instead of the native path.
        encoder, head, loss: override the classifier's parts (configs or names, e.g. ``encoder="gem"``).
        backbone_kwargs: other backbone options (``output_stride``, ``frozen_stages``, ``in_chans``...).

    Returns:
        The backbone (``features_only``) or an ``ImageClassifier``; either carries ``pretrained_cfg``
        (input size, mean, std, ...) when the backbone knows it.
    """
    cfg: dict[str, Any] = {"type": name, **backbone_kwargs}
    if weights is not None:
        cfg["weights"] = os.fspath(weights)
    if features_only:
        cfg["features_only"] = True
    if out_indices is not None:
        cfg["out_indices"] = out_indices if isinstance(out_indices, int) else list(out_indices)
    backbone = build_part(BACKBONES, cfg, "backbone")
    if features_only:
        return backbone
    native = out_indices is None and isinstance(backbone, NativePath)
    pretrained_cfg = getattr(backbone, "pretrained_cfg", None)
    if num_classes is None:
        num_classes = getattr(backbone, "num_classes", None) or (pretrained_cfg or {}).get("num_classes")
    if num_classes is None:
        raise ConfigError(
            "num_classes", f"give num_classes: {name} does not say how many classes it was made for"
        )
    model = ImageClassifier(
        backbone=backbone,
        encoder=encoder if encoder is not None else ("native" if native else "gap"),
        head=head if head is not None else ("native" if native else "linear"),
        loss=loss,
        num_classes=num_classes,
    )
    if pretrained_cfg is not None:
        model.pretrained_cfg = pretrained_cfg
    return model


def build_model(cfg: Any, **overrides: Any):
    """Build a whole model (``image_classifier`` or a fine-grained method) from its config."""
    if not isinstance(cfg, Mapping):
        raise ConfigError("model", f"expected a mapping, got {type(cfg).__name__}")
    cfg = dict(cfg)
    cfg.setdefault("type", DEFAULT_MODEL_TYPE)
    cfg.update(overrides)
    with root_path():
        validate_model_config(cfg, "model")
        return build_part(METHODS, cfg, "model")
