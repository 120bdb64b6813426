"""Mutual-Channel Loss (MC-Loss; Chang et al., "The Devil is in the Channels: Mutual-Channel Loss for
Fine-Grained Image Classification", TIP 2020).

The last feature map ``F [B, C, H, W]`` is read as ``K`` groups of channels, ``xi_i`` channels for class
``i`` (``C = sum_i xi_i``). Two components act on it:

* discriminality ``L_dis = CE(GAP(CCMP(F * M)), y)``: a channel-wise attention mask ``M`` (CWA) drops
  ``floor(xi_i * drop_ratio)`` random channels of every group (one draw per batch; ``drop_ratio = 0.5``
  drops 1 of 3 for VGG-16 with ``xi = 3``), cross-channel max pooling (CCMP) keeps the maximum of each
  group at every position, global average pooling gives one score per class, and cross entropy follows.
* diversity ``D = mean_{b,i} (1 / xi_i) * sum_hw max_{j in group i} softmax_hw(F_{b,j})``: each channel is
  softmax-normalized over space, CCMP takes the group maximum and the result is summed over space; ``D``
  is 1 when the channels of a group peak at disjoint positions and ``1 / xi`` when they coincide.

Total loss ``L = CE(classifier) + mu * (L_dis + lambda * (1 - D))``. Up to the constant ``mu * lambda``
this is the paper's ``CE + mu * (L_dis - lambda * L_div)`` with ``L_div`` normalized per class by
``xi_i`` (as in the official code). The classifier itself sees ``F`` through ``encoder`` and ``head``.

Channel groups: with ``channels_per_class: xi`` a conv block (3x3 conv, BN, ReLU) projects the backbone
map to ``K * xi`` channels, as the paper's VGG-16 whose last conv layer outputs ``200 * 3 = 600``;
without it the backbone's own ``C`` channels are split into ``K`` groups as evenly as possible (the last
``C mod K`` classes get one channel more), as the official ResNet-50 code (152 groups of 10, 48 of 11).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from visionstack.core.build import build_part, current_path
from visionstack.core.registry import BACKBONES, METHODS
from visionstack.errors import ConfigError
from visionstack.models.methods.base import PartCfg, required, resolve_num_classes
from visionstack.models.methods.classifier import ImageClassifier
from visionstack.models.parts.necks import basic_conv


def channel_groups(channels: int, num_classes: int) -> list[int]:
    """Channels per class: ``C // K`` each, the last ``C % K`` classes one more."""
    if channels < num_classes:
        raise ValueError(
            f"{channels} channels cannot give each of {num_classes} classes a channel; "
            "set channels_per_class to project the map"
        )
    base, extra = divmod(channels, num_classes)
    return [base] * (num_classes - extra) + [base + 1] * extra


class ChannelGrouping(nn.Module):
    """Gathers a map's channels into class groups ``[B, K, xi_max, H*W]``; padded slots get ``fill``."""

    def __init__(self, groups: list[int]) -> None:
        super().__init__()
        self.groups = list(groups)
        width = max(groups)
        starts = torch.tensor([0, *groups[:-1]]).cumsum(0)
        slots = torch.arange(width)
        valid = slots[None, :] < torch.tensor(groups)[:, None]
        index = torch.where(valid, starts[:, None] + slots[None, :], torch.zeros((), dtype=torch.long))
        self.register_buffer("index", index, persistent=False)
        self.register_buffer("valid", valid, persistent=False)
        self.register_buffer("sizes", torch.tensor(groups, dtype=torch.float32), persistent=False)

    def forward(self, x: torch.Tensor, fill: float) -> torch.Tensor:
        b, c, h, w = x.shape
        if c != sum(self.groups):
            raise ValueError(f"the map has {c} channels but the class groups need {sum(self.groups)}")
        grouped = x.reshape(b, c, h * w)[:, self.index]  # [B, K, xi_max, HW]
        return grouped.masked_fill(~self.valid[None, :, :, None], fill)

    def random_mask(
        self, drop_ratio: float, device: torch.device, generator: torch.Generator | None = None
    ) -> torch.Tensor:
        """CWA: a 0/1 channel mask ``[C]`` dropping ``floor(xi_i * drop_ratio)`` random channels per group."""
        k, width = self.index.shape
        scores = torch.rand(k, width, generator=generator).to(device).masked_fill(~self.valid, 2.0)
        ranks = scores.argsort(dim=1).argsort(dim=1)
        drop = ranks < torch.floor(self.sizes * drop_ratio)[:, None].to(device)
        mask = torch.ones(sum(self.groups), device=device)
        mask[self.index[self.valid]] = (~drop[self.valid]).float()
        return mask


def discriminality_logits(
    x: torch.Tensor, grouping: ChannelGrouping, mask: torch.Tensor | None
) -> torch.Tensor:
    """``GAP(CCMP(F * M))``: one score per class ``[B, K]``."""
    if mask is not None:
        x = x * mask[None, :, None, None]
    return grouping(x, float("-inf")).amax(dim=2).mean(dim=2)


def diversity(x: torch.Tensor, grouping: ChannelGrouping) -> torch.Tensor:
    """``D``: per class, spatial softmax of each channel, CCMP, sum over space, divided by ``xi_i``; mean."""
    b, c, h, w = x.shape
    soft = F.softmax(x.reshape(b, c, h * w).float(), dim=2).reshape(b, c, h, w)
    peaks = grouping(soft, 0.0).amax(dim=2).sum(dim=2)  # [B, K]
    return (peaks / grouping.sizes).mean()


@METHODS.register("mcl", aliases=("mutual_channel_loss", "mc_loss"))
class MutualChannel(ImageClassifier):
    """A classifier trained with cross entropy plus the mutual-channel loss on its last feature map.

    Args:
        backbone: its last map is ``F`` (VGG-16 / ResNet-50: the last conv stage).
        num_classes: classes (filled from the data set by training).
        channels_per_class: ``xi``; projects the map to ``K * xi`` channels (None: group its own channels).
        encoder: pooling for the classifier (``gmp``, as the official code's max pooling).
        head: classifier (``classifier_2fc``, as the official code).
        loss: classification loss of the head (``cross_entropy``).
        mu: weight of the MC-Loss; lambda_div: weight of the diversity term inside it.
        drop_ratio: fraction of each group's channels the CWA mask drops (``floor``).
    """

    stages = ("backbone", "channels", "encoder", "pre_logits", "logits")

    def __init__(
        self,
        backbone: PartCfg,
        num_classes: int | None = None,
        channels_per_class: int | None = None,
        encoder: PartCfg = "gmp",
        head: PartCfg = "classifier_2fc",
        loss: PartCfg | list = "cross_entropy",
        mu: float = 1.5,
        lambda_div: float = 13.3,
        drop_ratio: float = 0.5,
    ) -> None:
        k = resolve_num_classes(head, num_classes)
        built = build_part(BACKBONES, required(backbone, "backbone", "a classifier"), "backbone")
        if len(built.out_channels) != 1:
            raise ConfigError(
                current_path("backbone.out_indices"),
                "mcl reads one feature map: select one "
                f"level (e.g. out_indices: [-1]), got {len(built.out_channels)}",
            )
        width = int(built.out_channels[0])
        projection = None
        if channels_per_class is not None:
            if channels_per_class < 1:
                raise ConfigError(
                    current_path("channels_per_class"), f"must be >= 1, got {channels_per_class}"
                )
            projection = _Projection(width, k * channels_per_class)
            width = k * channels_per_class
        try:
            groups = channel_groups(width, k)
        except ValueError as err:
            raise ConfigError(current_path("channels_per_class"), str(err)) from None
        if not 0.0 <= drop_ratio < 1.0:
            raise ConfigError(current_path("drop_ratio"), f"must be in [0, 1), got {drop_ratio}")
        super().__init__(built, encoder=encoder, neck=projection, head=head, loss=loss, num_classes=k)
        self.grouping = ChannelGrouping(groups)
        self.mu, self.lambda_div, self.drop_ratio = float(mu), float(lambda_div), float(drop_ratio)

    def channel_map(self, images: torch.Tensor, maps: list[torch.Tensor] | None = None) -> torch.Tensor:
        """``F``: the last backbone map (of ``maps`` when given), projected to ``K * xi`` channels when
        ``channels_per_class``."""
        x = (self.backbone(images) if maps is None else maps)[0]
        return self.map_neck(x) if self.map_neck is not None else x

    def _classify(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        features = self.encoder(x)
        return features, self.head(features)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self._classify(self.channel_map(images))[1]

    @torch.no_grad()
    def predict_step(self, images: torch.Tensor) -> dict[str, torch.Tensor]:
        """``logits`` (the classifier) and ``logits_channels`` (``GAP(CCMP(F))``, the class-aligned groups)."""
        x = self.channel_map(images)
        return {
            "logits": self._classify(x)[1],
            "logits_channels": discriminality_logits(x, self.grouping, None),
        }

    def stage_outputs(self, images: torch.Tensor) -> dict[str, Any]:
        """``backbone`` (maps), ``channels`` (``F``), ``encoder`` (pooled), ``pre_logits`` and ``logits``."""
        maps = self.backbone(images)
        x = self.channel_map(images, maps)
        features, logits = self._classify(x)
        pre_logits = self.head.pre_logits(features)
        return {
            "backbone": maps,
            "channels": x,
            "encoder": features,
            "pre_logits": pre_logits,
            "logits": logits,
        }

    def mc_losses(self, x: torch.Tensor, targets: torch.Tensor) -> dict[str, torch.Tensor]:
        """``loss_mc_dis = mu * L_dis`` and ``loss_mc_div = mu * lambda * (1 - D)`` on the map ``x``."""
        mask = self.grouping.random_mask(self.drop_ratio, x.device) if self.training else None
        dis = F.cross_entropy(discriminality_logits(x.float(), self.grouping, mask), targets)
        return {
            "loss_mc_dis": self.mu * dis,
            "loss_mc_div": self.mu * self.lambda_div * (1.0 - diversity(x, self.grouping)),
        }

    def training_losses(self, batch: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """``CE + mu * (L_dis + lambda * (1 - D))`` as its three terms."""
        targets = batch["label"]
        x = self.channel_map(batch["image"])
        features, logits = self._classify(x)
        losses = self.compute_losses({"logits": logits, "features": features}, targets)
        losses.update(self.mc_losses(x, targets))
        return losses


class _Projection(nn.Module):
    """3x3 conv -> BN -> ReLU to ``K * xi`` channels; a maps neck for :class:`ImageClassifier`."""

    consumes = "maps"

    def __init__(self, in_channels: int, out_channels: int) -> None:
        super().__init__()
        self.in_channels, self.out_channels = in_channels, out_channels
        self.block = basic_conv(in_channels, out_channels, 3, padding=1, momentum=0.1)

    def forward(self, x: Any) -> torch.Tensor:
        return self.block(x[-1] if isinstance(x, (list, tuple)) else x)
