"""ImageClassifier: backbone -> [neck on maps] -> encoder -> [neck on vectors] -> head -> loss."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch
from torch import nn

from visionstack.core.build import build_part, current_path
from visionstack.core.registry import BACKBONES, ENCODERS, HEADS, METHODS, NECKS
from visionstack.errors import ConfigError
from visionstack.models.methods.base import Method, PartCfg, build_losses, required, resolve_num_classes
from visionstack.models.parts.base import as_list, single, total_channels


@METHODS.register("image_classifier", aliases=("ImageClassifier", "classifier", "baseline_classifier"))
class ImageClassifier(Method):
    """A classifier composed of registered parts; channels are wired from each part's ``out_channels``.

    Args:
        backbone: backbone config or module; returns a list of NCHW maps.
        encoder: pooling config (default ``gap``); ``native`` keeps a zoo model's own pooling path.
        neck: optional neck; placed before the encoder if it consumes maps, after it otherwise.
        head: head config (default ``linear``); ``num_classes`` may come from this class's argument.
        loss: one loss config or a list; their ``loss*`` entries are summed by :meth:`train_step`.
        num_classes: classes of the head when the head config does not say.
    """

    stages = ("backbone", "neck", "encoder", "pre_logits", "logits")
    default_stage = "pre_logits"
    provides = {
        "encoder": ("in_channels", "backbone"),
        "neck": ("in_channels",),
        "head": ("in_channels", "num_classes"),
        "loss": ("num_classes", "in_channels"),
    }

    def __init__(
        self,
        backbone: PartCfg,
        encoder: PartCfg = "gap",
        neck: PartCfg = None,
        head: PartCfg = "linear",
        loss: PartCfg | list = "cross_entropy",
        num_classes: int | None = None,
    ) -> None:
        super().__init__()
        required(head, "head", "a classifier")
        self.backbone = build_part(BACKBONES, required(backbone, "backbone", "a classifier"), "backbone")
        channels: Any = single(list(self.backbone.out_channels))
        self.map_neck = self.vector_neck = None
        neck_cfg_consumes = _neck_consumes(neck)
        if neck is not None and neck_cfg_consumes == "maps":
            self.map_neck = build_part(NECKS, neck, "neck", {"in_channels": channels})
            channels = self.map_neck.out_channels
        pooled = self.map_neck is not None and getattr(self.map_neck, "outputs", "maps") == "vectors"
        if pooled:  # the neck already pools (e.g. global_average_pooling): no encoder after it
            if encoder not in (None, "gap"):
                raise ConfigError(
                    current_path("encoder"),
                    "the neck already pools maps into vectors; leave the encoder out or set it to null",
                )
            encoder = None
        elif encoder is None:
            raise ConfigError(
                current_path("encoder"),
                "null leaves the feature maps unpooled: give an encoder "
                "(e.g. gap) or a neck that pools (global_average_pooling)",
            )
        self.encoder = build_part(
            ENCODERS, encoder, "encoder", {"in_channels": channels, "backbone": self.backbone}
        )
        if self.encoder is not None:
            channels = self.encoder.out_channels
        if neck is not None and neck_cfg_consumes == "vectors":
            self.vector_neck = build_part(NECKS, neck, "neck", {"in_channels": channels})
            channels = self.vector_neck.out_channels
        self.feature_channels = total_channels(channels)
        head_num_classes = resolve_num_classes(head, num_classes)
        self.head = build_part(
            HEADS,
            head,
            "head",
            {
                "in_channels": self.feature_channels,
                "num_classes": head_num_classes,
                "backbone": self.backbone,
            },
        )
        self.num_classes = int(getattr(self.head, "num_classes", head_num_classes))
        self.loss = build_losses(
            loss, {"num_classes": self.num_classes, "in_channels": self.feature_channels}
        )

    # -- inference --------------------------------------------------------------------------------
    def forward_features(self, images: torch.Tensor, record: dict[str, Any] | None = None) -> torch.Tensor:
        """Images -> the vector the head consumes; ``record`` (when given) receives the ``backbone``,
        ``neck`` and ``encoder`` outputs on the way."""
        x: Any = self.backbone(images)
        if record is not None:
            record["backbone"] = x
        if self.map_neck is not None:
            x = self.map_neck(x)
        if record is not None and self.vector_neck is None:
            record["neck"] = x  # without a neck: the backbone maps
        if self.encoder is not None:
            x = self.encoder(x if len(as_list(x)) > 1 else as_list(x)[0])
        if record is not None:
            record["encoder"] = x
        if self.vector_neck is not None:
            x = self.vector_neck(x)
            if record is not None:
                record["neck"] = x
        x = as_list(x)
        return x[0] if len(x) == 1 else torch.cat([t.flatten(1) for t in x], dim=1)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        """Images ``[B, 3, H, W]`` -> logits ``[B, num_classes]``."""
        return self.head(self.forward_features(images))

    def forward_train(self, images: torch.Tensor) -> dict[str, torch.Tensor]:
        features = self.forward_features(images)
        return {"logits": self.head(features), "features": features}

    def stage_outputs(self, images: torch.Tensor) -> dict[str, Any]:
        """``backbone`` (maps), ``neck`` (its output; the maps without a neck), ``encoder`` (pooled),
        ``pre_logits`` (what the head's last layer sees), ``logits``."""
        record: dict[str, Any] = {}
        features = self.forward_features(images, record)
        record["pre_logits"] = self.head.pre_logits(features)
        record["logits"] = self.head(features)
        return record

    # -- training ---------------------------------------------------------------------------------
    def compute_losses(
        self, outputs: dict[str, torch.Tensor], targets: torch.Tensor
    ) -> dict[str, torch.Tensor]:
        if self.loss is None:
            raise RuntimeError("this model has no loss configured; set model.loss")
        return self.loss(outputs, targets)

    def training_losses(self, batch: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """The configured losses on the model's training outputs."""
        return self.compute_losses(self.forward_train(batch["image"]), batch["label"])


def _neck_consumes(neck: PartCfg) -> str:
    if neck is None:
        return "vectors"
    if isinstance(neck, nn.Module):
        return getattr(neck, "consumes", "vectors")
    name = neck if isinstance(neck, str) else neck.get("type")
    try:
        return getattr(NECKS.get(name), "consumes", "vectors")
    except KeyError:
        return "vectors"  # build_part reports the unknown name with its path
