"""Feature-map descriptions shared by every backbone."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class FeatureInfo:
    """One feature map a backbone returns: its channels, total stride (``reduction``) and module path."""

    channels: int
    reduction: int
    name: str
