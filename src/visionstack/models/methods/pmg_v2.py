"""PMG-V2 (Du et al., "Progressive Learning of Category-Consistent Multi-Granularity Features for
Fine-Grained Visual Classification", TPAMI 2021).

PMG-V2 replaces PMG's jigsaw images by block convolution inside the backbone (``resnet50_bc``: in step
``s`` the stages run on ``b x b`` tiles of their input map, block counts ``[8, 8, 0, 0]``,
``[4, 4, 4, 0]``, ``[2, 2, 2, 2]`` for layer1..layer4) and adds a category-consistency constraint:
images of the same class should have the same most-discriminative block at the step's granularity.

For a level's backbone map ``F [B, C, H, W]`` in step ``s`` with granularity ``g_s`` (8, 4, 2), the
block descriptor is: average inside each of the ``g_s x g_s`` blocks, maximum over the blocks, then a
min-max normalization over the channels (``v = (v - min_c v) / (max_c v - min_c v)``). The consistency
loss is the mean squared difference between the descriptors of every pair of images in the batch with
the same label (the official code pairs each image with one positive of its class, giving the same
value). Step ``s`` minimizes ``CE(classifier_s) + alpha_s * w * L_cc`` with ``alpha = [0.01, 0.05, 0.1]``
and ``w = CE / L_cc`` (detached) so the constraint is a fixed fraction of the classification loss, as
the official code does (``adaptive_weight: false`` uses ``w = 1``). There is no concatenated classifier;
the prediction is the sum of the level classifiers.

Training batches need same-class pairs: ``data.sampler: {type: class_balanced, images_per_class: 2}``
draws ``batch_size / 2`` classes x 2 images (the official code appends one positive per image; on such
batches the mean over same-class pairs equals its ``MSELoss(f[:B], f[B:])``).
"""

from __future__ import annotations

import inspect
from collections.abc import Mapping
from typing import Any

import torch
import torch.nn.functional as F

from visionstack.core.build import current_path
from visionstack.core.registry import METHODS
from visionstack.errors import ConfigError
from visionstack.models.backbones.resnet_bc import PMG_V2_BLOCKS
from visionstack.models.methods.base import PartCfg
from visionstack.models.methods.multi_level import MultiGranularityNet

DEFAULT_CONSISTENCY_WEIGHTS = (0.01, 0.05, 0.1)


def block_descriptor(x: torch.Tensor, blocks: int, eps: float = 1e-9) -> torch.Tensor:
    """``[B, C, H, W] -> [B, C]``: block-wise average (``blocks x blocks`` grid), max over blocks, and
    min-max normalization over channels (each row then spans ``[0, 1]``)."""
    if x.dim() != 4:
        raise ValueError(f"expected a feature map [B, C, H, W], got shape {tuple(x.shape)}")
    pooled = F.adaptive_avg_pool2d(x, max(int(blocks), 1))
    v = pooled.amax(dim=(2, 3))
    low, high = v.amin(dim=1, keepdim=True), v.amax(dim=1, keepdim=True)
    return (v - low) / (high - low + eps)


def same_label_pairs(labels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Indices ``(i, j)``, ``i < j``, of every pair of samples with equal (hard) labels."""
    if labels.dim() != 1:
        raise ValueError(
            "the consistency loss pairs images by class: it needs hard labels [B], "
            f"got shape {tuple(labels.shape)} (turn batch mixing off for pmg_v2)"
        )
    same = labels[:, None] == labels[None, :]
    i, j = torch.triu(same, diagonal=1).nonzero(as_tuple=True)
    return i, j


def category_consistency_loss(descriptors: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Mean squared difference between the descriptors ``[N, C]`` of same-label pairs (0 without pairs)."""
    i, j = same_label_pairs(labels)
    if i.numel() == 0:
        return descriptors.sum() * 0.0
    return (descriptors[i] - descriptors[j]).pow(2).mean()


@METHODS.register("pmg_v2", aliases=("pmg_ccbc",))
class PMGV2(MultiGranularityNet):
    """PMG-V2: block-convolution multi-granularity steps with the category-consistency loss.

    Args:
        backbone: a block-convolution backbone (``resnet50_bc``) whose ``forward`` takes ``blocks``;
            levels to train e.g. ``out_indices: [-3, -2, -1]`` (layer2..layer4).
        neck, encoder, head, loss, num_classes: as for PMG (one classifier per level, no concatenation).
        blocks: block counts (layer1..layer4) of each step; default ``[[8,8,0,0],[4,4,4,0],[2,2,2,2]]``.
        consistency_blocks: block grid of each step's descriptor (default ``[2**L, ..., 2]``: 8, 4, 2).
        consistency_weights: ``alpha`` of each step (default ``[0.01, 0.05, 0.1]``).
        adaptive_weight: scale the consistency term by ``CE / L_cc`` (detached), as the official code.
    """

    stages = ("backbone", "encoder", "logits")
    default_stage = "encoder"

    def __init__(
        self,
        backbone: PartCfg,
        neck: PartCfg = "multi_scale_conv",
        encoder: PartCfg = "gmp",
        head: PartCfg = "classifier_2fc",
        loss: PartCfg | list = "cross_entropy",
        num_classes: int | None = None,
        blocks: list[list[int]] | None = None,
        consistency_blocks: list[int] | None = None,
        consistency_weights: list[float] | None = None,
        adaptive_weight: bool = True,
    ) -> None:
        super().__init__(backbone, neck, encoder, head, loss, num_classes)
        if "blocks" not in inspect.signature(self.backbone.forward).parameters:
            raise ConfigError(
                current_path("backbone"),
                f"pmg_v2 needs a block-convolution backbone whose forward "
                f"takes `blocks` (resnet50_bc, resnet101_bc); got {type(self.backbone).__name__}",
            )
        steps = self.levels
        defaults = {
            "blocks": [list(b) for b in PMG_V2_BLOCKS],
            "consistency_blocks": [2 ** (steps - i) for i in range(steps)],
            "consistency_weights": list(DEFAULT_CONSISTENCY_WEIGHTS),
        }
        given = {
            "blocks": blocks,
            "consistency_blocks": consistency_blocks,
            "consistency_weights": consistency_weights,
        }
        for key, value in given.items():
            value = (
                [list(v) if isinstance(v, (list, tuple)) else v for v in value] if value is not None else None
            )
            value = value if value is not None else defaults[key]
            if len(value) != steps:
                hint = (
                    "" if given[key] is not None else " (the default is for three levels; set it explicitly)"
                )
                raise ConfigError(
                    current_path(key),
                    f"needs one entry per trained level ({steps}), got {len(value)}: {value}{hint}",
                )
            setattr(self, key, value)
        self.consistency_weights = [float(w) for w in self.consistency_weights]
        self.adaptive_weight = bool(adaptive_weight)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        """Images -> the sum of every level classifier's logits (the whole map at every stage)."""
        return torch.stack(self.level_logits(self.level_features(self.backbone(images)))).sum(0)

    def stage_outputs(self, images: torch.Tensor) -> dict[str, Any]:
        """``backbone`` (maps), ``encoder`` (pooled vector per level) and ``logits``."""
        maps = self.backbone(images)
        features = self.level_features(maps)
        return {
            "backbone": maps,
            "encoder": features,
            "logits": torch.stack(self.level_logits(features)).sum(0),
        }

    def train_step(self, batch: Mapping[str, torch.Tensor], optim) -> dict[str, torch.Tensor]:
        """One update per level: block counts of step ``s``, classifier ``s``, consistency on level ``s``.

        Logs ``loss_ce<k>``, ``loss_cc<k>`` (the weighted consistency term) per step ``k`` and ``loss``.
        """
        images, targets = batch["image"], batch["label"]
        logs: dict[str, torch.Tensor] = {}
        for step in range(self.levels):
            with optim.autocast():
                maps = self.backbone(images, blocks=self.blocks[step])
                features = self.level_features(maps)
                ce = self.step_loss(self.heads[step](features[step]), targets)
                descriptors = block_descriptor(maps[step].float(), self.consistency_blocks[step])
                consistency = category_consistency_loss(descriptors, targets)
                weight = self.consistency_weights[step]
                if self.adaptive_weight:
                    weight = weight * ce.detach() / consistency.detach().clamp_min(1e-12)
                cc = weight * consistency
            optim.update(ce + cc)
            logs[f"loss_ce{step + 1}"] = ce.detach()
            logs[f"loss_cc{step + 1}"] = cc.detach()
        return {"loss": torch.stack(list(logs.values())).sum(), **logs}
