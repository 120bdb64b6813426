"""The fine-grained baseline: any backbone + pooling + linear head, optionally trained with mixup / cutmix.

FGVCLib's ResNet-50 baseline is ``backbone: resnet50, encoder: gap, head: linear``. The mixing variants
are options of this method's training step: with ``mixup_alpha`` and/or ``cutmix_alpha``
above zero, each batch is mixed (timm's ``Mixup``; mixup or cutmix at random per batch when both
are on; :mod:`visionstack.models.methods.mixing`, the mixer ``train.mixup`` also uses) and the loss receives
the mixed soft targets ``[B, K]``.
"""

from __future__ import annotations

from collections.abc import Mapping

import torch

from visionstack.core.build import current_path
from visionstack.core.registry import METHODS
from visionstack.models.methods.classifier import ImageClassifier, PartCfg
from visionstack.models.methods.mixing import build_batch_mixer


@METHODS.register("baseline", aliases=("fgvc_baseline",))
class Baseline(ImageClassifier):
    """:class:`ImageClassifier` whose training step can mix the batch (mixup / cutmix).

    Args:
        backbone, encoder, neck, head, loss, num_classes: as for :class:`ImageClassifier`.
        mixup_alpha: Beta(alpha, alpha) parameter of mixup; 0 turns it off.
        cutmix_alpha: Beta(alpha, alpha) parameter of cutmix; 0 turns it off.
        mix_prob: probability that a batch is mixed at all (when a mixer is on).
    """

    def __init__(
        self,
        backbone: PartCfg,
        encoder: PartCfg = "gap",
        neck: PartCfg = None,
        head: PartCfg = "linear",
        loss: PartCfg | list = "cross_entropy",
        num_classes: int | None = None,
        mixup_alpha: float = 0.0,
        cutmix_alpha: float = 0.0,
        mix_prob: float = 1.0,
    ) -> None:
        super().__init__(backbone, encoder=encoder, neck=neck, head=head, loss=loss, num_classes=num_classes)
        keys = (current_path("mixup_alpha"), current_path("cutmix_alpha"), current_path("mix_prob"))
        self.mixer = build_batch_mixer(self.num_classes, mixup_alpha, cutmix_alpha, mix_prob, keys)

    def mix(self, images: torch.Tensor, labels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Mixed images and soft targets ``[B, K]`` (the inputs unchanged without a mixer)."""
        if self.mixer is None:
            return images, labels
        return self.mixer(images, labels)

    def training_losses(self, batch: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """The losses on the (possibly mixed) batch; the loss gets soft targets when mixed."""
        images, targets = self.mix(batch["image"], batch["label"])
        return super().training_losses({**batch, "image": images, "label": targets})
