"""The structure multi-granularity methods share (PMG, PMG-V2): backbone levels -> per-level conv blocks
(a maps neck) -> pooling -> one classifier per level."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from torch import nn

from visionstack.core.build import build_part, current_path
from visionstack.core.registry import BACKBONES, ENCODERS, HEADS, NECKS
from visionstack.errors import ConfigError
from visionstack.models.methods.base import Method, PartCfg, build_losses, required, resolve_num_classes
from visionstack.models.parts.base import as_list, single, total_loss

__all__ = ["MultiGranularityNet"]


def _widths(channels: Any) -> list[int]:
    return [int(c) for c in channels] if isinstance(channels, (list, tuple)) else [int(channels)]


class MultiGranularityNet(Method):
    """Backbone levels -> per-level conv blocks (a maps neck) -> pooling -> one classifier per level.

    The same ``head`` config is built once per level (each with that level's width); ``loss`` applies to
    every classifier's logits.
    """

    def __init__(
        self,
        backbone: PartCfg,
        neck: PartCfg,
        encoder: PartCfg,
        head: PartCfg,
        loss: PartCfg | list,
        num_classes: int | None,
    ) -> None:
        super().__init__()
        for key, value in (("head", head), ("encoder", encoder)):
            required(value, key, "this method")
        self.backbone = build_part(BACKBONES, required(backbone, "backbone", "this method"), "backbone")
        channels = _widths(self.backbone.out_channels)
        self.neck = None
        if neck is not None:
            self.neck = build_part(NECKS, neck, "neck", {"in_channels": single(channels)})
            if (
                getattr(self.neck, "consumes", "maps") != "maps"
                or getattr(self.neck, "outputs", "maps") != "maps"
            ):
                raise ConfigError(
                    current_path("neck"),
                    "needs a neck that maps feature maps to feature maps "
                    "(e.g. multi_scale_conv), one per backbone level",
                )
            channels = _widths(self.neck.out_channels)
        self.encoder = build_part(
            ENCODERS, encoder, "encoder", {"in_channels": single(channels), "backbone": self.backbone}
        )
        self.feature_widths = _widths(self.encoder.out_channels)
        self.levels = len(self.feature_widths)
        self.num_classes = resolve_num_classes(head, num_classes)
        self.heads = nn.ModuleList(
            build_part(HEADS, head, "head", {"in_channels": w, "num_classes": self.num_classes})
            for w in self.feature_widths
        )
        self.loss = build_losses(loss, {"num_classes": self.num_classes})
        required(self.loss, "loss", "this method")

    def level_features(self, maps: Sequence[torch.Tensor]) -> list[torch.Tensor]:
        """Backbone maps -> one pooled vector per level."""
        x: Any = list(maps)
        if self.neck is not None:
            x = as_list(self.neck(x))
        return as_list(self.encoder(x if len(x) > 1 else x[0]))

    def level_logits(self, features: Sequence[torch.Tensor]) -> list[torch.Tensor]:
        return [head(f) for head, f in zip(self.heads, features)]

    def step_loss(self, logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        """The configured loss(es) on one classifier's logits, summed."""
        return total_loss(self.loss(logits, targets))
