"""ImageClassifier: backbone -> [neck on maps] -> encoder -> [neck on vectors] -> head -> loss."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch
from torch import nn

from visionstack.core.build import build_part, current_path
from visionstack.core.registry import BACKBONES, ENCODERS, HEADS, LOSSES, METHODS, NECKS
from visionstack.errors import ConfigError
from visionstack.models.parts.base import LossSet, as_list, single, total_channels, total_loss

PartCfg = str | Mapping[str, Any] | nn.Module | None
STAGES = ("backbone", "neck", "encoder", "pre_logits", "logits")


def build_losses(cfg: Any, provided: Mapping[str, Any], key: str = "loss") -> nn.Module | None:
    """One loss config, or a list of them, as a :class:`LossSet`."""
    if cfg is None:
        return None
    items = cfg if isinstance(cfg, (list, tuple)) else [cfg]
    losses = []
    for i, item in enumerate(items):
        sub = f"{key}.{i}" if isinstance(cfg, (list, tuple)) else key
        losses.append(build_part(LOSSES, item, sub, provided))
    return LossSet(losses)


@METHODS.register("image_classifier", aliases=("ImageClassifier", "classifier", "baseline_classifier"))
class ImageClassifier(nn.Module):
    """A classifier composed of registered parts; channels are wired from each part's ``out_channels``.

    Args:
        backbone: backbone config or module; returns a list of NCHW maps.
        encoder: pooling config (default ``gap``); ``native`` keeps a zoo model's own pooling path.
        neck: optional neck; placed before the encoder if it consumes maps, after it otherwise.
        head: head config (default ``linear``); ``num_classes`` may come from this class's argument.
        loss: one loss config or a list; their ``loss*`` entries are summed by :meth:`train_step`.
        num_classes: classes of the head when the head config does not say.
    """

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
        for key, value in (("backbone", backbone), ("head", head)):
            if value is None:
                raise ConfigError(current_path(key), "a classifier needs one; null is not allowed here")
        self.backbone = build_part(BACKBONES, backbone, "backbone")
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
        head_num_classes = head.get("num_classes") if isinstance(head, Mapping) else None
        head_num_classes = head_num_classes or getattr(head, "num_classes", None) or num_classes
        if head_num_classes is None:
            raise ConfigError(
                current_path("num_classes"),
                "the number of classes is not set: give model.num_classes or model.head.num_classes "
                "(training fills it from the data set)",
            )
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
    def forward_features(self, images: torch.Tensor) -> torch.Tensor:
        """Images -> the vector the head consumes."""
        x: Any = self.backbone(images)
        if self.map_neck is not None:
            x = self.map_neck(x)
        if self.encoder is not None:
            x = self.encoder(x if len(as_list(x)) > 1 else as_list(x)[0])
        if self.vector_neck is not None:
            x = self.vector_neck(x)
        x = as_list(x)
        return x[0] if len(x) == 1 else torch.cat([t.flatten(1) for t in x], dim=1)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        """Images ``[B, 3, H, W]`` -> logits ``[B, num_classes]``."""
        return self.head(self.forward_features(images))

    def forward_train(self, images: torch.Tensor) -> dict[str, torch.Tensor]:
        features = self.forward_features(images)
        return {"logits": self.head(features), "features": features}

    @torch.no_grad()
    def extract(self, images: torch.Tensor, stage: str = "pre_logits") -> Any:
        """Intermediate outputs: ``backbone`` (maps), ``neck``, ``encoder``, ``pre_logits``, ``logits``."""
        if stage not in STAGES:
            raise ValueError(f"unknown stage {stage!r}; stages are {', '.join(STAGES)}")
        x: Any = self.backbone(images)
        if stage == "backbone":
            return x
        if self.map_neck is not None:
            x = self.map_neck(x)
        if stage == "neck" and self.vector_neck is None:
            return x
        if stage in ("encoder", "neck", "pre_logits", "logits"):
            x = self.forward_features(images)
        if stage in ("encoder", "neck"):
            return x
        return self.head.pre_logits(x) if stage == "pre_logits" else self.head(x)

    # -- training ---------------------------------------------------------------------------------
    def compute_losses(
        self, outputs: dict[str, torch.Tensor], targets: torch.Tensor
    ) -> dict[str, torch.Tensor]:
        if self.loss is None:
            raise RuntimeError("this model has no loss configured; set model.loss")
        return self.loss(outputs, targets)

    def train_step(self, batch: Mapping[str, torch.Tensor], optim) -> dict[str, torch.Tensor]:
        """One optimization step on ``batch`` through ``optim`` (an OptimWrapper)."""
        with optim.autocast():
            outputs = self.forward_train(batch["image"])
            losses = self.compute_losses(outputs, batch["label"])
        total = total_loss(losses)
        optim.update(total)
        return {"loss": total.detach(), **{k: v.detach() for k, v in losses.items()}}

    @torch.no_grad()
    def predict_step(self, images: torch.Tensor) -> dict[str, torch.Tensor]:
        """Predictions to score in evaluation: every ``logits*`` key is evaluated."""
        return {"logits": self(images)}


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
