"""Block-convolution ResNets of PMG-V2 (Du et al., TPAMI 2021, "Progressive Learning of Category-Consistent
Multi-Granularity Features for Fine-Grained Visual Classification").

In training, before each stage ``layer1..layer4`` whose block count ``b`` is above 1, the feature map is cut
into ``b x b`` tiles that are stacked on the batch axis; the stage runs on the tiles (no information flows
across tile borders, so each tile's features describe a part of the object) and its output tiles are put
back together into the full map. In evaluation every stage sees the whole map, so the network is exactly a
torchvision ResNet, and torchvision's weights files (or tags) load into it by name.

PMG-V2 trains in progressive steps with block counts ``[8, 8, 0, 0]``, ``[4, 4, 4, 0]`` and ``[2, 2, 2, 2]``
(at 448 px the deepest tiled stage sees 14 px tiles); a method sets them per step with :meth:`ResNetBC.tiled`
or ``forward(images, blocks=...)``. ``blocks`` in the config fixes counts for every training step.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator, Sequence

import torch
from torch import nn
from torchvision.models.resnet import Bottleneck, ResNet

from visionstack.core.build import invalid
from visionstack.core.registry import BACKBONES
from visionstack.models.backbones.base import Backbone
from visionstack.models.features.layout import FeatureInfo
from visionstack.models.weights.load import WeightsReport, load_weights

__all__ = ["PMG_V2_BLOCKS", "ResNet101BC", "ResNet50BC", "ResNetBC", "merge_tiles", "split_tiles"]

#: Block counts per stage (layer1..layer4) of PMG-V2's three progressive training steps.
PMG_V2_BLOCKS: tuple[tuple[int, int, int, int], ...] = ((8, 8, 0, 0), (4, 4, 4, 0), (2, 2, 2, 2))
_STAGES = ("layer1", "layer2", "layer3", "layer4")


def split_tiles(x: torch.Tensor, blocks: int) -> torch.Tensor:
    """``[B, C, H, W]`` -> ``[b*b*B, C, H/b, W/b]``: tile ``(i, j)`` (row-major) holds rows ``i*H/b ...``."""
    if blocks <= 1:
        return x
    n, c, h, w = x.shape
    if h % blocks or w % blocks:
        raise ValueError(
            f"a {h}x{w} feature map cannot be cut into {blocks}x{blocks} equal tiles; "
            f"use an input size whose maps are divisible by the block counts"
        )
    th, tw = h // blocks, w // blocks
    tiles = x.reshape(n, c, blocks, th, blocks, tw).permute(2, 4, 0, 1, 3, 5)
    return tiles.reshape(blocks * blocks * n, c, th, tw)


def merge_tiles(x: torch.Tensor, blocks: int) -> torch.Tensor:
    """Inverse of :func:`split_tiles`: ``[b*b*B, C, h, w]`` -> ``[B, C, b*h, b*w]``."""
    if blocks <= 1:
        return x
    nt, c, h, w = x.shape
    n = nt // (blocks * blocks)
    grid = x.reshape(blocks, blocks, n, c, h, w).permute(2, 3, 0, 4, 1, 5)
    return grid.reshape(n, c, blocks * h, blocks * w)


class ResNetBC(Backbone, ResNet):
    """A torchvision ResNet whose stages run on ``b x b`` tiles in training (block convolution).

    Levels: ``relu`` (stem, stride 2), ``layer1`` .. ``layer4`` (strides 4 .. 32); ``out_indices`` picks
    among them (negatives from the end). Stages after the last selected level are dropped.

    Args:
        features_only: return every level unless ``out_indices`` says otherwise.
        out_indices: levels to return; default: all with ``features_only``, else the last.
        weights: a weights file or a torchvision tag (``IMAGENET1K_V2``) of the plain ResNet.
        strict: fail unless every weight matches.
        blocks: block counts for layer1..layer4 used in every training forward (0 or 1: whole map).
        output_stride: 8 or 16 replace the last strides by dilation; 32 (default) keeps them.
        frozen_stages: -1 trains all; 0 freezes the stem; ``k`` also freezes layer1..layer``k``.
        norm_eval: keep every BatchNorm in eval mode (running statistics frozen) during training.
        in_chans: input channels; a 3-channel first conv in the weights is adapted as timm does.
    """

    layers_per_stage: tuple[int, int, int, int] = (3, 4, 6, 3)
    weights_arch = "resnet50"

    def __init__(
        self,
        features_only: bool = False,
        out_indices: list[int] | int | None = None,
        weights: str | None = None,
        strict: bool = False,
        blocks: list[int] | None = None,
        output_stride: int | None = None,
        frozen_stages: int = -1,
        norm_eval: bool = False,
        in_chans: int = 3,
    ) -> None:
        dilation = {
            None: [False, False, False],
            32: [False, False, False],
            16: [False, False, True],
            8: [False, True, True],
        }
        if output_stride not in dilation:
            raise invalid("output_stride", f"must be 8, 16 or 32, got {output_stride!r}")
        ResNet.__init__(
            self,
            Bottleneck,
            list(self.layers_per_stage),
            replace_stride_with_dilation=dilation[output_stride],
        )
        if in_chans != 3:
            self.conv1 = nn.Conv2d(in_chans, 64, kernel_size=7, stride=2, padding=3, bias=False)
            nn.init.kaiming_normal_(self.conv1.weight, mode="fan_out", nonlinearity="relu")
        del self.fc, self.avgpool  # the classifier lives in the head
        self.blocks = self._check_blocks(blocks)
        stride = output_stride or 32
        reductions = [2, 4, min(8, stride), min(16, stride), min(32, stride)]
        widths = [64, 256, 512, 1024, 2048]
        names = ("relu", *_STAGES)
        levels = [FeatureInfo(w, r, n) for w, r, n in zip(widths, reductions, names)]
        self.select_levels(levels, out_indices, features_only)
        self.last_level = max(self.out_indices)
        for k in range(self.last_level + 1, 5):
            setattr(self, _STAGES[k - 1], None)
        self.norm_eval = bool(norm_eval)
        if self.check_frozen_stages(frozen_stages, self.last_level + 1) >= 0:
            stem: list[nn.Module] = [self.conv1, self.bn1]
            frozen = stem + [getattr(self, _STAGES[k]) for k in range(frozen_stages)]
            self.freeze(frozen)
        self.weights_report: WeightsReport | None = None
        if weights:
            self.weights_report = load_weights(
                self, weights, strict=strict, arch=self.weights_arch, family="torchvision", input_conv="conv1"
            )

    @staticmethod
    def _check_blocks(blocks: Sequence[int] | None) -> list[int]:
        if blocks is None:
            return [0, 0, 0, 0]
        if len(blocks) != 4 or any(not isinstance(b, int) or b < 0 for b in blocks):
            raise invalid("blocks", f"must be 4 non-negative ints (layer1..layer4), got {list(blocks)!r}")
        return list(blocks)

    @contextlib.contextmanager
    def tiled(self, blocks: Sequence[int]) -> Iterator[None]:
        """Use ``blocks`` (counts for layer1..layer4) for the training forwards inside the ``with``."""
        previous, self.blocks = self.blocks, self._check_blocks(blocks)
        try:
            yield
        finally:
            self.blocks = previous

    # -- native classification path (torchvision's avgpool + fc) --------------------------------------
    def native_encoder(self) -> nn.Module:
        """torchvision ResNet's own pooling: global average of the last map."""
        from visionstack.models.parts.encoders import GlobalAvgPool

        if self.out_indices != [4]:
            raise ValueError("the native encoder reads layer4 only: leave out_indices unset")
        return GlobalAvgPool(2048)

    def native_head(self, num_classes: int) -> nn.Module:
        """A linear classifier; ``fc`` of the loaded weights file when it has ``num_classes`` rows."""
        from visionstack.models.parts.heads import LinearHead

        head = LinearHead(2048, num_classes)
        unused = self.weights_report.unused if self.weights_report is not None else {}
        weight, bias = unused.get("fc.weight"), unused.get("fc.bias")
        if weight is not None and bias is not None and weight.shape == head.fc.weight.shape:
            with torch.no_grad():
                head.fc.weight.copy_(weight)
                head.fc.bias.copy_(bias)
        return head

    def forward(self, x: torch.Tensor, blocks: Sequence[int] | None = None) -> list[torch.Tensor]:
        """Images -> the selected maps; ``blocks`` overrides the block counts of this (training) call."""
        counts = self._check_blocks(blocks) if blocks is not None else self.blocks
        x = self.relu(self.bn1(self.conv1(x)))
        outs = [x] if 0 in self.out_indices else []
        x = self.maxpool(x)
        for k in range(1, self.last_level + 1):
            stage = getattr(self, _STAGES[k - 1])
            b = counts[k - 1] if self.training else 0
            x = merge_tiles(stage(split_tiles(x, b)), b)
            if k in self.out_indices:
                outs.append(x)
        return outs


@BACKBONES.register("resnet50_bc", aliases=("resnet50_ccbc",))
class ResNet50BC(ResNetBC):
    """ResNet-50 with block convolution (PMG-V2); loads torchvision ``resnet50`` weights."""

    layers_per_stage = (3, 4, 6, 3)
    weights_arch = "resnet50"


@BACKBONES.register("resnet101_bc", aliases=("resnet101_ccbc",))
class ResNet101BC(ResNetBC):
    """ResNet-101 with block convolution (PMG-V2); loads torchvision ``resnet101`` weights."""

    layers_per_stage = (3, 4, 23, 3)
    weights_arch = "resnet101"
