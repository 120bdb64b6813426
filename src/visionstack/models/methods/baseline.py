"""The fine-grained baseline: any backbone + pooling + linear head, optionally trained with mixup / cutmix.

FGVCLib's ResNet-50 baseline is ``backbone: resnet50, encoder: gap, head: linear``. The mixing variants
are options of this method's :meth:`Baseline.train_step`: with ``mixup_alpha`` and/or ``cutmix_alpha``
above zero, each batch is mixed (torchvision's ``MixUp`` / ``CutMix``; one of them at random when both
are on) and the loss receives the mixed soft targets ``[B, K]``.
"""

from __future__ import annotations

from collections.abc import Mapping

import torch
from torch import nn
from torchvision.transforms import v2

from visionstack.core.registry import METHODS
from visionstack.models.classifier import ImageClassifier, PartCfg


def make_mixer(num_classes: int, mixup_alpha: float, cutmix_alpha: float) -> nn.Module | None:
    """torchvision's batch mixer for the given alphas (``None`` when both are 0)."""
    for name, alpha in (("mixup_alpha", mixup_alpha), ("cutmix_alpha", cutmix_alpha)):
        if alpha < 0:
            raise ValueError(f"{name} must be >= 0, got {alpha}")
    mixers: list[nn.Module] = []
    if mixup_alpha > 0:
        mixers.append(v2.MixUp(alpha=float(mixup_alpha), num_classes=num_classes))
    if cutmix_alpha > 0:
        mixers.append(v2.CutMix(alpha=float(cutmix_alpha), num_classes=num_classes))
    if not mixers:
        return None
    return mixers[0] if len(mixers) == 1 else v2.RandomChoice(mixers)


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
        if not 0.0 <= mix_prob <= 1.0:
            raise ValueError(f"mix_prob must be in [0, 1], got {mix_prob}")
        self.mix_prob = float(mix_prob)
        self.mixer = make_mixer(self.num_classes, mixup_alpha, cutmix_alpha)

    def mix(self, images: torch.Tensor, labels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Mixed images and soft targets ``[B, K]`` (unchanged inputs when no mixer or not drawn)."""
        if self.mixer is None or torch.rand(()) >= self.mix_prob:
            return images, labels
        if labels.dim() != 1:
            raise ValueError(
                "the batch labels are already soft ([B, K]); mix either in the trainer (train.mixup / "
                "train.cutmix) or in the baseline method (model.mixup_alpha / model.cutmix_alpha), not both"
            )
        return self.mixer(images, labels.long())

    def train_step(self, batch: Mapping[str, torch.Tensor], optim) -> dict[str, torch.Tensor]:
        """One update on the (possibly mixed) batch; the loss gets soft targets when mixed."""
        images, targets = self.mix(batch["image"], batch["label"])
        return super().train_step({**batch, "image": images, "label": targets}, optim)
