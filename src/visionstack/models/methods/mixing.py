"""The one batch mixer: timm's ``Mixup`` (mixup and / or cutmix) with soft targets ``[B, K]``.

Used by the Trainer for ``train.mixup`` / ``train.cutmix`` / ``train.mix_prob`` and by the ``baseline``
method for ``mixup_alpha`` / ``cutmix_alpha`` / ``mix_prob``. Each batch is mixed with its mirror image
(``images.flip(0)``), with one ``lambda`` drawn per batch from ``Beta(alpha, alpha)``; with both alphas
above zero, mixup or cutmix is chosen at random per batch; ``prob`` is the chance that a batch is mixed
at all. Labels become ``lam * onehot(y) + (1 - lam) * onehot(y.flip(0))`` (cutmix: ``lam`` is the area
kept); a batch that is not mixed, or of odd size, gets one-hot targets, so the loss always sees ``[B, K]``.

Example::

    mixer = build_batch_mixer(num_classes=200, mixup=0.2, cutmix=1.0)
    images, targets = mixer(batch["image"], batch["label"])     # targets [B, 200]
"""

from __future__ import annotations

from typing import Any

import torch

from visionstack.errors import ConfigError

__all__ = ["BatchMixer", "build_batch_mixer"]


class BatchMixer:
    """Mixes a batch of images and their class indices (see the module docstring)."""

    def __init__(self, num_classes: int, mixup: float = 0.0, cutmix: float = 0.0, prob: float = 1.0) -> None:
        from timm.data import Mixup

        self.num_classes = int(num_classes)
        self.mixup = Mixup(
            mixup_alpha=float(mixup),
            cutmix_alpha=float(cutmix),
            prob=float(prob),
            label_smoothing=0.0,
            num_classes=self.num_classes,
        )

    def __call__(self, images: torch.Tensor, labels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Mixed images (a new tensor; the input is left as it was) and soft targets ``[B, K]``."""
        from timm.data.mixup import mixup_target

        if labels.dim() != 1:
            raise ValueError(
                "the batch labels are already soft ([B, K]); mix either in the trainer (train.mixup / "
                "train.cutmix) or in the baseline method (model.mixup_alpha / model.cutmix_alpha), not both"
            )
        if len(images) % 2:  # timm pairs each image with its mirror in the batch
            return images, mixup_target(labels, self.num_classes, lam=1.0, smoothing=0.0)
        return self.mixup(images.clone(), labels)


def _number(value: Any, path: str, low: float, high: float | None = None) -> float:
    ok = not isinstance(value, bool) and isinstance(value, (int, float)) and value >= low
    if not ok or (high is not None and value > high):
        bound = f"in [{low:g}, {high:g}]" if high is not None else f">= {low:g}"
        raise ConfigError(path, f"expected a number {bound}, got {value!r}")
    return float(value)


def build_batch_mixer(
    num_classes: int,
    mixup: float | None = 0.0,
    cutmix: float | None = 0.0,
    prob: float | None = 1.0,
    paths: tuple[str, str, str] = ("train.mixup", "train.cutmix", "train.mix_prob"),
) -> BatchMixer | None:
    """A :class:`BatchMixer` for the given alphas (``None`` when both are 0 or unset); ``paths`` name the
    config keys in error messages."""
    alphas = [_number(v or 0.0, p, 0.0) for v, p in zip((mixup, cutmix), paths)]
    if not any(alphas):
        return None
    return BatchMixer(num_classes, *alphas, prob=_number(1.0 if prob is None else prob, paths[2], 0.0, 1.0))
