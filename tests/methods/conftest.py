"""Fixtures of the method tests: a tiny block-convolution backbone (for PMG-V2) registered by name."""

from __future__ import annotations

from collections.abc import Sequence

import pytest
import torch
from torch import nn

from visionstack.core.registry import BACKBONES
from visionstack.models.backbones.base import Backbone
from visionstack.models.backbones.resnet_bc import merge_tiles, split_tiles
from visionstack.models.features.layout import FeatureInfo


class TinyBlockBackbone(Backbone):
    """ResNet-like layout (stem stride 2, then strides 1, 2, 2, 2) with tiny widths; stages run on tiles in training.

    Levels: 0 stem, 1..4 the stages (as ``resnet50_bc``); ``blocks`` gives the block count of each stage.
    """

    def __init__(
        self,
        widths: list[int] | None = None,
        out_indices: list[int] | None = None,
        features_only: bool = False,
        blocks: list[int] | None = None,
    ) -> None:
        super().__init__()
        widths = widths or [8, 8, 12, 16, 16]
        self.stem = nn.Sequential(
            nn.Conv2d(3, widths[0], 3, stride=2, padding=1), nn.BatchNorm2d(widths[0]), nn.ReLU()
        )
        self.stages = nn.ModuleList(
            nn.Sequential(
                nn.Conv2d(widths[i], widths[i + 1], 3, stride=1 if i == 0 else 2, padding=1),
                nn.BatchNorm2d(widths[i + 1]),
                nn.ReLU(),
            )
            for i in range(4)
        )
        self.blocks = list(blocks or [0, 0, 0, 0])
        reductions = [2, 2, 4, 8, 16]
        levels = [FeatureInfo(w, r, f"level{i}") for i, (w, r) in enumerate(zip(widths, reductions))]
        self.select_levels(levels, out_indices, features_only)

    def forward(self, x: torch.Tensor, blocks: Sequence[int] | None = None) -> list[torch.Tensor]:
        counts = list(blocks) if blocks is not None else self.blocks
        x = self.stem(x)
        outs = [x] if 0 in self.out_indices else []
        for k, stage in enumerate(self.stages, start=1):
            b = counts[k - 1] if self.training else 0
            x = merge_tiles(stage(split_tiles(x, b)), b)
            if k in self.out_indices:
                outs.append(x)
        return outs


@pytest.fixture(scope="session", autouse=True)
def tiny_block_backbone_registered() -> None:
    if "test_tiny_bc" not in BACKBONES:
        BACKBONES.register("test_tiny_bc")(TinyBlockBackbone)
