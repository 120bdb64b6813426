"""Feature-map descriptions and the one place where token grids and layouts become NCHW maps.

:class:`FeatureInfo` is what a backbone tells about each map it returns; :class:`Level` also says in which
layout the model itself produces the map: ``NCHW``, ``NHWC`` (Swin), tokens ``NLC`` (ViT, with prefix --
class / register -- tokens before the grid), channels-first tokens ``NCL`` or pooled vectors ``NC``.
:func:`to_nchw` / :func:`from_nchw` convert between that layout and the NCHW maps backbones return;
:func:`explain_tokens` finds the stride, prefix count and rounding that explain a token count.

Example::

    level = Level("encoder", channels=768, reduction=16, layout="NLC", num_prefix_tokens=1)
    fmap, cls = to_nchw(tokens, level, image_hw=(224, 224))   # [B, 768, 14, 14], [B, 1, 768]
    assert torch.equal(from_nchw(fmap, cls, level), tokens)
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import torch

__all__ = [
    "LAYOUTS",
    "MAX_PREFIX_TOKENS",
    "TOKEN_STRIDES",
    "FeatureInfo",
    "Level",
    "explain_tokens",
    "from_nchw",
    "to_nchw",
    "token_grid",
]

LAYOUTS = ("NCHW", "NHWC", "NLC", "NCL", "NC")
#: at most this many tokens before a grid count as prefix (class, distillation, register) tokens
MAX_PREFIX_TOKENS = 16
#: token strides tried when nothing says which one a token sequence has: powers of two first
TOKEN_STRIDES: tuple[int, ...] = (*(2**k for k in range(7)), *(r for r in range(3, 65) if r & (r - 1)))


@dataclass(frozen=True)
class FeatureInfo:
    """One feature map a backbone returns: its channels, total stride (``reduction``) and module path."""

    channels: int
    reduction: int
    name: str


@dataclass(frozen=True)
class Level:
    """One level: the module whose output it is and how to read that output as a map.

    ``layout`` is one of :data:`LAYOUTS`; a token level (``NLC``) has ``num_prefix_tokens`` tokens before
    its grid, whose height is ``H / reduction`` rounded by ``grid_rounding`` (``floor`` / ``ceil``).
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


def token_grid(image_hw: Sequence[int], reduction: int, rounding: str = "ceil") -> tuple[int, int]:
    """Grid height and width of a token level of stride ``reduction`` for an image of ``image_hw``."""
    fn = math.floor if rounding == "floor" else math.ceil
    return fn(int(image_hw[0]) / reduction), fn(int(image_hw[1]) / reduction)


def explain_tokens(
    counts: Sequence[int],
    sizes: Sequence[Sequence[int]],
    strides: Sequence[int] = TOKEN_STRIDES,
    prefix: int | None = None,
) -> tuple[int, int, str] | None:
    """``(reduction, prefix tokens, rounding)`` that explain token ``counts`` at image ``sizes``, or None.

    The first stride (of ``strides``, in order) and rounding whose grid leaves the same 0 to
    :data:`MAX_PREFIX_TOKENS` extra tokens at every size wins; ``prefix`` (when known and not 0) must be
    that number. One size alone must give a grid of more than one cell (a 1x1 grid is a pooled vector).
    """
    for r in dict.fromkeys(strides):
        for rounding in ("floor", "ceil"):
            grids = [math.prod(token_grid(s, r, rounding)) for s in sizes]
            extras = {n - g for n, g in zip(counts, grids)}
            if len(extras) != 1 or not 0 <= (extra := extras.pop()) <= MAX_PREFIX_TOKENS:
                continue
            if prefix and extra != prefix:
                continue
            if len(sizes) > 1 or grids[0] > 1:
                return r, extra, rounding
    return None


def _grid(n: int, image_hw: Sequence[int], level: Level) -> tuple[int, int]:
    """The ``h x w`` grid of ``n`` tokens: the level's stride when it accounts for every token, else the
    factorization of ``n`` closest to the image's aspect ratio."""
    h, w = token_grid(image_hw, level.reduction, level.grid_rounding)
    if h * w == n:
        return h, w
    aspect = int(image_hw[0]) / int(image_hw[1])
    best = min((abs(math.log((d / (n // d)) / aspect)), d) for d in range(1, n + 1) if n % d == 0)[1]
    return best, n // best


def to_nchw(
    x: torch.Tensor, level: Level, image_hw: Sequence[int]
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """A level's raw output as an NCHW map (a view where possible) and its prefix tokens ``[B, P, C]``."""
    layout = level.layout
    if layout == "NCHW":
        return x, None
    if layout == "NHWC":
        return x.permute(0, 3, 1, 2), None
    if layout == "NC":
        return x[:, :, None, None], None
    p = level.num_prefix_tokens if layout == "NLC" else 0
    tokens = x.transpose(1, 2)[:, :, p:] if layout == "NLC" else x
    fmap = tokens.unflatten(2, _grid(tokens.shape[2], image_hw, level))
    return fmap, (x[:, :p] if p else None)


def from_nchw(fmap: torch.Tensor, prefix: torch.Tensor | None, level: Level) -> torch.Tensor:
    """The inverse of :func:`to_nchw`: the level's output in the model's own layout."""
    layout = level.layout
    if layout == "NCHW":
        return fmap
    if layout == "NHWC":
        return fmap.permute(0, 2, 3, 1)
    if layout == "NC":
        return fmap.flatten(1)
    if layout == "NCL":
        return fmap.flatten(2)
    tokens = fmap.flatten(2).transpose(1, 2)
    if level.num_prefix_tokens:
        if prefix is None:
            raise ValueError(f"level {level.name!r} needs its {level.num_prefix_tokens} prefix token(s)")
        tokens = torch.cat([prefix, tokens], dim=1)
    return tokens
