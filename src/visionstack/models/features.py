"""Feature-map descriptions and the base class every backbone shares."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from torch import nn


@dataclass(frozen=True)
class FeatureInfo:
    """One feature map a backbone returns: its channels, total stride (``reduction``) and module path."""

    channels: int
    reduction: int
    name: str


def resolve_out_indices(
    out_indices: int | Sequence[int] | None, num_levels: int, features_only: bool
) -> list[int]:
    """Turn user ``out_indices`` (negatives count from the end) into sorted, unique level numbers.

    ``None`` means every level with ``features_only`` (as in timm) and the last level otherwise.
    """
    if out_indices is None:
        return list(range(num_levels)) if features_only else [num_levels - 1]
    if isinstance(out_indices, int):
        out_indices = [out_indices]
    if len(out_indices) == 0:
        raise ValueError("out_indices is empty: name at least one level (or leave it out)")
    resolved = []
    for i in out_indices:
        if not isinstance(i, int) or isinstance(i, bool):
            raise ValueError(f"out_indices must be integers, got {i!r}")
        if not -num_levels <= i < num_levels:
            raise ValueError(f"out_indices entry {i} is out of range: this backbone has {num_levels} levels "
                             f"(0..{num_levels - 1}, or -{num_levels}..-1)")
        resolved.append(i % num_levels)
    if len(set(resolved)) != len(resolved):
        raise ValueError(f"out_indices {list(out_indices)} name a level twice")
    return sorted(resolved)


class Backbone(nn.Module):
    """Base of every backbone: ``forward(images) -> list[Tensor]`` (NCHW), one per selected level."""

    feature_info: list[FeatureInfo]

    @property
    def out_channels(self) -> list[int]:
        return [f.channels for f in self.feature_info]

    @property
    def reductions(self) -> list[int]:
        return [f.reduction for f in self.feature_info]
