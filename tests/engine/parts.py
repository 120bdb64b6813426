"""Test-only parts, importable in-process and loadable with ``--plugins`` in subprocesses.

``test_tiny`` (the shared fixture backbone), ``test_tiny_nobn`` (no BatchNorm: DDP with per-rank batches then
matches one process exactly up to float rounding), ``test_tiny_killable`` (SIGKILLs its own process at the
``VS_KILL_AT``-th training forward) and the loss ``test_nan_at`` (cross-entropy, NaN at chosen calls).
"""

from __future__ import annotations

import os
import signal
import sys
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

ROOT = Path(__file__).resolve().parents[2]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from tests.conftest import TinyBackbone, _register_tiny  # noqa: E402
from visionstack.core.registry import BACKBONES, LOSSES  # noqa: E402
from visionstack.models.features.layout import FeatureInfo  # noqa: E402
from visionstack.models.parts.base import Loss, logits_of  # noqa: E402


class TinyNoBN(nn.Module):
    """Two strided convs with ReLU, no normalization."""

    def __init__(self, width: int = 6) -> None:
        super().__init__()
        self.body = nn.Sequential(
            nn.Conv2d(3, width, 3, 2, 1), nn.ReLU(), nn.Conv2d(width, width, 3, 2, 1), nn.ReLU()
        )
        self.feature_info = [FeatureInfo(width, 4, "body")]

    @property
    def out_channels(self) -> list[int]:
        return [f.channels for f in self.feature_info]

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        return [self.body(x)]


class TinyKillable(TinyBackbone):
    """TinyBackbone that SIGKILLs its process at the ``VS_KILL_AT``-th forward in training mode."""

    def __init__(self, **kwargs) -> None:
        super().__init__(**kwargs)
        self.calls = 0

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        if self.training:
            self.calls += 1
            if self.calls == int(os.environ.get("VS_KILL_AT", "0")):
                os.kill(os.getpid(), signal.SIGKILL)
        return super().forward(x)


class NanAt(Loss):
    """Cross-entropy whose value is NaN (with NaN gradients) at the given 1-based calls."""

    def __init__(self, at: list[int], weight: float = 1.0, name: str | None = None) -> None:
        super().__init__(weight=weight, name=name or "ce")
        self.at = set(at)
        self.calls = 0

    def compute(self, outputs, targets) -> torch.Tensor:
        self.calls += 1
        loss = F.cross_entropy(logits_of(outputs), targets)
        return loss * float("nan") if self.calls in self.at else loss


def register() -> None:
    _register_tiny()
    for name, obj, registry in (
        ("test_tiny_nobn", TinyNoBN, BACKBONES),
        ("test_tiny_killable", TinyKillable, BACKBONES),
        ("test_nan_at", NanAt, LOSSES),
    ):
        if name not in registry:
            registry.register(name)(obj)


register()
