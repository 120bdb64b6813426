"""Adapters that plug a visionstack multi-scale backbone into torchvision's detection / FPN stack.

torchvision's ``FeaturePyramidNetwork`` and detection models (``FasterRCNN``, ``RetinaNet``, ``MaskRCNN``,
...) expect a backbone that returns an ``OrderedDict[str, Tensor]`` of maps and has an ``out_channels``
attribute. ``visionstack`` backbones return a list and describe their maps in ``feature_info``; these
adapters bridge the two::

    from torchvision.models.detection import FasterRCNN
    from visionstack.models.integrations.detection import backbone_with_fpn

    backbone = backbone_with_fpn("resnet50", out_indices=[1, 2, 3, 4], weights="r50.pth")
    detector = FasterRCNN(backbone, num_classes=3)

The maps are named ``"0"``, ``"1"``, ... (what torchvision's default anchor generator and RoI pooler use);
the FPN adds a ``"pool"`` map by default, so four selected levels give the five maps FasterRCNN expects.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Sequence
from typing import Any

import torch
from torch import nn

__all__ = ["BackboneWithFPN", "FeatureDict", "backbone_with_fpn"]


class FeatureDict(nn.Module):
    """A visionstack backbone whose ``forward`` returns ``OrderedDict[name, map]``.

    Args:
        backbone: returns a list of NCHW maps and has ``feature_info`` / ``out_channels``.
        names: one name per map (default ``"0"``, ``"1"``, ...). Extra outputs after the maps (prefix
            tokens) are dropped.
    """

    def __init__(self, backbone: nn.Module, names: Sequence[str] | None = None) -> None:
        super().__init__()
        channels = [int(c) for c in backbone.out_channels]
        self.names = list(names) if names is not None else [str(i) for i in range(len(channels))]
        if len(self.names) != len(channels):
            raise ValueError(f"{len(self.names)} names for {len(channels)} feature maps")
        self.body = backbone
        self.out_channels = channels
        self.reductions = [int(f.reduction) for f in backbone.feature_info]

    def forward(self, x: torch.Tensor) -> OrderedDict[str, torch.Tensor]:
        return OrderedDict(zip(self.names, self.body(x)))


class BackboneWithFPN(nn.Module):
    """Backbone maps -> torchvision ``FeaturePyramidNetwork``; ``out_channels`` is the FPN width (an int).

    Args:
        backbone: a visionstack backbone (``features_only=True`` with the levels to use).
        out_channels: FPN channels.
        extra_blocks: torchvision FPN extra block; default ``LastLevelMaxPool`` (adds ``"pool"``).
        names: map names (default ``"0"``, ``"1"``, ...).
    """

    def __init__(
        self,
        backbone: nn.Module,
        out_channels: int = 256,
        extra_blocks: nn.Module | None = None,
        names: Sequence[str] | None = None,
    ) -> None:
        super().__init__()
        from torchvision.ops.feature_pyramid_network import FeaturePyramidNetwork, LastLevelMaxPool

        self.body = FeatureDict(backbone, names)
        self.fpn = FeaturePyramidNetwork(
            in_channels_list=self.body.out_channels,
            out_channels=out_channels,
            extra_blocks=extra_blocks if extra_blocks is not None else LastLevelMaxPool(),
        )
        self.out_channels = out_channels

    def forward(self, x: torch.Tensor) -> OrderedDict[str, torch.Tensor]:
        return self.fpn(self.body(x))


def backbone_with_fpn(
    name: str | nn.Module,
    out_indices: Sequence[int] | None = (1, 2, 3, 4),
    out_channels: int = 256,
    extra_blocks: nn.Module | None = None,
    **backbone_kwargs: Any,
) -> BackboneWithFPN:
    """A registered backbone (by name, built ``features_only``) or a built one, with an FPN on top.

    ``out_indices`` defaults to levels 1-4 (reductions 4-32 for ResNets, as torchvision's
    ``resnet_fpn_backbone``); ``backbone_kwargs`` go to the backbone (``weights``, ``frozen_stages``,
    ``norm_eval``...).
    """
    if isinstance(name, nn.Module):
        backbone = name
    else:
        from visionstack.models.build import create_model

        indices = None if out_indices is None else list(out_indices)
        backbone = create_model(name, features_only=True, out_indices=indices, **backbone_kwargs)
    return BackboneWithFPN(backbone, out_channels=out_channels, extra_blocks=extra_blocks)
