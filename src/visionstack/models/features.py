"""Feature-map descriptions, their layouts, and the base class every backbone shares.

:class:`Level` says where a map comes from and in which layout the model produces it (``NCHW``, ``NHWC``,
tokens ``NLC``); :func:`to_nchw` / :func:`from_nchw` convert between that layout and the NCHW maps backbones
return. Levels are found by :mod:`visionstack.models.discovery`.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import torch
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
            raise ValueError(
                f"out_indices entry {i} is out of range: this backbone has {num_levels} levels "
                f"(0..{num_levels - 1}, or -{num_levels}..-1)"
            )
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


@dataclass(frozen=True)
class Level:
    """One discovered level: the module whose output it is and how to read that output as a map.

    ``layout`` is ``NCHW``, ``NHWC`` or ``NLC`` (tokens); a token level has ``num_prefix_tokens`` tokens
    before its grid, whose height is ``H / reduction`` rounded by ``grid_rounding`` (``floor`` / ``ceil``).
    """

    name: str
    channels: int
    reduction: int
    layout: str = "NCHW"
    num_prefix_tokens: int = 0
    grid_rounding: str = "ceil"

    @property
    def info(self) -> FeatureInfo:
        return FeatureInfo(self.channels, self.reduction, self.name)


def token_grid(n_tokens: int, image_hw: Sequence[int], reduction: int, rounding: str) -> tuple[int, int]:
    """Grid height and width of a token level for an image of ``image_hw`` (``rounding``: floor / ceil)."""
    fn = math.floor if rounding == "floor" else math.ceil
    return fn(int(image_hw[0]) / reduction), fn(int(image_hw[1]) / reduction)


# -- layouts -------------------------------------------------------------------------------
def to_nchw(
    x: torch.Tensor, level: Level, image_hw: Sequence[int]
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """A level's raw output as an NCHW map (a view where possible) and its prefix tokens ``[B, P, C]``."""
    if level.layout == "NCHW":
        return x, None
    if level.layout == "NHWC":
        return x.permute(0, 3, 1, 2), None
    p = level.num_prefix_tokens
    h, w = token_grid(x.shape[1], image_hw, level.reduction, level.grid_rounding)
    fmap = x[:, p:].transpose(1, 2).unflatten(2, (h, w))
    return fmap, (x[:, :p] if p else None)


def from_nchw(fmap: torch.Tensor, prefix: torch.Tensor | None, level: Level) -> torch.Tensor:
    """The inverse of :func:`to_nchw`: the level's output in the model's own layout."""
    if level.layout == "NCHW":
        return fmap
    if level.layout == "NHWC":
        return fmap.permute(0, 2, 3, 1)
    tokens = fmap.flatten(2).transpose(1, 2)
    if level.num_prefix_tokens:
        if prefix is None:
            raise ValueError(f"level {level.name!r} needs its {level.num_prefix_tokens} prefix token(s)")
        tokens = torch.cat([prefix, tokens], dim=1)
    return tokens
