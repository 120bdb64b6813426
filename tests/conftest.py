"""Shared fixtures: a tiny registered multi-scale backbone so model tests need no zoo model."""

from __future__ import annotations

import os

import pytest
import torch
from torch import nn

from visionstack.core.build import PositiveInt
from visionstack.models.backbones.base import Backbone
from visionstack.models.features.layout import FeatureInfo

os.environ.setdefault("OMP_NUM_THREADS", "1")
torch.set_num_threads(max(1, min(2, torch.get_num_threads())))


class TinyBackbone(Backbone):
    """Three conv stages (reductions 2, 4, 8) returning the selected maps, for fast tests."""

    def __init__(
        self,
        widths: list[PositiveInt] | None = None,
        out_indices: list[int] | None = None,
        features_only: bool = False,
        in_chans: int = 3,
    ) -> None:
        super().__init__()
        widths = widths or [8, 12, 16]
        stages, prev = [], in_chans
        for w in widths:
            stages.append(
                nn.Sequential(nn.Conv2d(prev, w, 3, stride=2, padding=1), nn.BatchNorm2d(w), nn.ReLU())
            )
            prev = w
        self.stages = nn.ModuleList(stages)
        levels = [FeatureInfo(w, 2 ** (i + 1), f"stages.{i}") for i, w in enumerate(widths)]
        self.select_levels(levels, out_indices, features_only)

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        outs = []
        for i, stage in enumerate(self.stages):
            x = stage(x)
            if i in self.out_indices:
                outs.append(x)
        return outs


def _register_tiny() -> None:
    from visionstack.core.registry import BACKBONES

    if "test_tiny" not in BACKBONES:
        BACKBONES.register("test_tiny")(TinyBackbone)


@pytest.fixture(scope="session", autouse=True)
def tiny_backbone_registered() -> None:
    _register_tiny()


@pytest.fixture
def rng() -> torch.Generator:
    return torch.Generator().manual_seed(0)
