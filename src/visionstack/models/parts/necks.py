"""Necks: transform backbone maps (or pooled vectors) between backbone and head.

The necks here consume the backbone's list of maps (``consumes = "maps"``), so they sit before the
encoder. ``in_channels`` is wired by the builder (the backbone's ``out_channels``); ``out_channels``
says what the next part receives.
"""

from __future__ import annotations

from collections import OrderedDict
from typing import Literal

import torch
from torch import nn

from visionstack.core.build import invalid
from visionstack.core.registry import NECKS
from visionstack.models.parts.base import Channels, Features, Neck, as_list, single

#: torchvision's ``Bottleneck.expansion`` (torchvision is imported only when such a neck is built)
BOTTLENECK_EXPANSION = 4


def _widths(channels: Channels) -> list[int]:
    return [int(c) for c in channels] if isinstance(channels, (list, tuple)) else [int(channels)]


def _per_level(value: int | list[int], levels: int, name: str) -> list[int]:
    values = [value] * levels if isinstance(value, int) else list(value)
    if len(values) != levels:
        raise invalid(name, f"has {len(values)} entries but the neck receives {levels} maps")
    if any(not isinstance(v, int) or isinstance(v, bool) or v < 1 for v in values):
        raise invalid(name, f"must hold positive ints, got {value!r}")
    return values


def _check_levels(x: Features, expected: int, name: str) -> list[torch.Tensor]:
    maps = as_list(x)
    if len(maps) != expected:
        raise ValueError(f"neck {name!r} was built for {expected} maps, got {len(maps)}")
    return maps


def basic_conv(
    in_ch: int, out_ch: int, kernel_size: int, stride: int = 1, padding: int = 0, momentum: float = 0.01
) -> nn.Sequential:
    """Conv (no bias) -> BatchNorm -> ReLU (PMG's ``BasicConv`` uses BN momentum 0.01, MMCV's 0.1)."""
    return nn.Sequential(
        nn.Conv2d(in_ch, out_ch, kernel_size, stride=stride, padding=padding, bias=False),
        nn.BatchNorm2d(out_ch, eps=1e-5, momentum=momentum),
        nn.ReLU(inplace=True),
    )


@NECKS.register("multi_scale_conv", aliases=("MultiScaleConv",))
class MultiScaleConv(Neck):
    """PMG's per-level conv blocks: for each map, BasicConv 1x1 ``C -> mid`` then 3x3 ``mid -> out``.

    Args:
        mid_channels: hidden width, one for all levels or one per level (PMG: 512).
        out_channels: output width, one or per level; default half the widest input (PMG: 2048 // 2).
    """

    consumes = "maps"

    def __init__(
        self,
        in_channels: Channels,
        mid_channels: int | list[int] = 512,
        out_channels: int | list[int] | None = None,
    ) -> None:
        super().__init__(in_channels)
        widths = _widths(in_channels)
        mids = _per_level(mid_channels, len(widths), "mid_channels")
        outs = _per_level(
            out_channels if out_channels is not None else max(max(widths) // 2, 1),
            len(widths),
            "out_channels",
        )
        self.blocks = nn.ModuleList(
            nn.Sequential(basic_conv(c, m, 1), basic_conv(m, o, 3, padding=1))
            for c, m, o in zip(widths, mids, outs)
        )
        self.out_channels = single(outs)

    def forward(self, x: Features) -> Features:
        maps = _check_levels(x, len(self.blocks), "multi_scale_conv")
        out = [block(t) for block, t in zip(self.blocks, maps)]
        return out[0] if len(out) == 1 else out


@NECKS.register("fpn", aliases=("FPN", "FeaturePyramidNetwork"))
class FPN(Neck):
    """``torchvision.ops.FeaturePyramidNetwork``: top-down pathway with lateral 1x1 and output 3x3 convs.

    Args:
        out_channels: width of every output map (default 256).
        extra_blocks: ``max_pool`` adds one coarser level (max pool of the last output), as in Faster R-CNN.
        norm: ``bn`` puts BatchNorm after every conv.
    """

    consumes = "maps"

    def __init__(
        self,
        in_channels: Channels,
        out_channels: int = 256,
        extra_blocks: Literal["none", "max_pool"] = "none",
        norm: Literal["none", "bn"] = "none",
    ) -> None:
        super().__init__(in_channels)
        if extra_blocks not in ("none", "max_pool") or norm not in ("none", "bn"):
            raise invalid(
                "extra_blocks",
                f"extra_blocks must be none|max_pool and norm none|bn, got {extra_blocks!r}, {norm!r}",
            )
        if out_channels < 1:
            raise invalid("out_channels", f"must be positive, got {out_channels}")
        widths = _widths(in_channels)
        self.num_inputs = len(widths)
        from torchvision.ops.feature_pyramid_network import FeaturePyramidNetwork, LastLevelMaxPool

        self.fpn = FeaturePyramidNetwork(
            widths,
            out_channels,
            extra_blocks=LastLevelMaxPool() if extra_blocks == "max_pool" else None,
            norm_layer=nn.BatchNorm2d if norm == "bn" else None,
        )
        levels = self.num_inputs + (1 if extra_blocks == "max_pool" else 0)
        self.out_channels = single([out_channels] * levels)

    def forward(self, x: Features) -> Features:
        maps = _check_levels(x, self.num_inputs, "fpn")
        out = list(self.fpn(OrderedDict((str(i), t) for i, t in enumerate(maps))).values())
        return out[0] if len(out) == 1 else out


@NECKS.register("hr_fuse_scales", aliases=("HRFuseScales",))
class HRFuseScales(Neck):
    """HRNet's multi-resolution fusion (MMPretrain ``HRFuseScales``) into one map.

    Each level (finest first, each half the size of the previous) is widened by one ResNet bottleneck to
    ``mid_channels[i]`` (default 128, 256, 512, 1024, doubling on); from the finest, the running map is
    downsampled by a 3x3 stride-2 conv-BN-ReLU to the next width and added to that level; a final 1x1
    conv-BN-ReLU gives ``out_channels`` (default 2048). Output: one map at the coarsest resolution.
    """

    consumes = "maps"

    def __init__(
        self, in_channels: Channels, out_channels: int = 2048, mid_channels: list[int] | None = None
    ) -> None:
        super().__init__(in_channels)
        widths = _widths(in_channels)
        mids = mid_channels if mid_channels is not None else [128 * 2**i for i in range(len(widths))]
        mids = _per_level(mids, len(widths), "mid_channels")
        if any(m % BOTTLENECK_EXPANSION for m in mids):
            raise invalid("mid_channels", f"must be multiples of {BOTTLENECK_EXPANSION}, got {mids}")
        if out_channels < 1:
            raise invalid("out_channels", f"must be positive, got {out_channels}")
        self.increase_layers = nn.ModuleList(self._bottleneck(c, m) for c, m in zip(widths, mids))
        self.downsample_layers = nn.ModuleList(
            basic_conv(mids[i], mids[i + 1], 3, stride=2, padding=1, momentum=0.1)
            for i in range(len(mids) - 1)
        )
        self.final_layer = basic_conv(mids[-1], out_channels, 1, momentum=0.1)
        self.out_channels = out_channels

    @staticmethod
    def _bottleneck(in_ch: int, out_ch: int) -> nn.Module:
        from torchvision.models.resnet import Bottleneck

        downsample = None
        if in_ch != out_ch:
            downsample = nn.Sequential(nn.Conv2d(in_ch, out_ch, 1, bias=False), nn.BatchNorm2d(out_ch))
        return Bottleneck(in_ch, out_ch // Bottleneck.expansion, downsample=downsample)

    def forward(self, x: Features) -> torch.Tensor:
        maps = _check_levels(x, len(self.increase_layers), "hr_fuse_scales")
        feat = self.increase_layers[0](maps[0])
        for i, down in enumerate(self.downsample_layers):
            feat = down(feat)
            if feat.shape[2:] != maps[i + 1].shape[2:]:
                raise ValueError(
                    f"hr_fuse_scales needs each map half the size of the previous one: map {i + 1} is "
                    f"{list(maps[i + 1].shape[2:])}, the downsampled map {i} is {list(feat.shape[2:])}"
                )
            feat = feat + self.increase_layers[i + 1](maps[i + 1])
        return self.final_layer(feat)


@NECKS.register("global_average_pooling", aliases=("GlobalAveragePooling", "gap_neck"))
class GlobalAveragePoolingNeck(Neck):
    """MMPretrain's ``GlobalAveragePooling`` neck: each map ``[B, C, H, W]`` -> ``[B, C]``.

    It already pools, so the classifier needs no encoder after it: leave ``encoder`` unset or ``null``.
    """

    consumes = "maps"
    outputs = "vectors"

    def __init__(self, in_channels: Channels) -> None:
        super().__init__(in_channels)

    def forward(self, x: Features) -> Features:
        out = [t.mean(dim=(2, 3)) for t in as_list(x)]
        return out[0] if len(out) == 1 else out
