"""Test-time augmentation: average a model's logits over a horizontal flip or five / ten crops.

- ``flip``: logits of the image and of its mirror image, averaged.
- ``five_crop`` / ``ten_crop``: the evaluation pipeline's ``CenterCrop(s)`` becomes ``FiveCrop(s)`` /
  ``TenCrop(s)`` (four corners + center, and their mirrors for ten), so the crops come from the same resized
  image the center crop was taken from; the model's logits over the crops are averaged.

Use :func:`tta_transform` on the evaluation pipeline and wrap the model in :class:`TTAModel`; its
``predict_step`` takes the batches that pipeline produces (``[B, 3, H, W]`` or ``[B, n_crops, 3, H, W]``) and
returns every ``logits*`` key (and other per-sample outputs) averaged, so the evaluator needs no TTA-specific code.
"""

from __future__ import annotations

from typing import Any, Literal

import torch
from torch import nn
from torchvision.transforms import v2

from visionstack.errors import ConfigError

TTAMode = Literal["flip", "five_crop", "ten_crop"]
TTA_MODES: tuple[str, ...] = ("flip", "five_crop", "ten_crop")


class StackCrops(nn.Module):
    """The tuple of crops ``FiveCrop`` / ``TenCrop`` return as one tensor ``[n_crops, C, H, W]``."""

    def forward(self, crops: Any) -> torch.Tensor:
        if isinstance(crops, torch.Tensor):
            return crops.unsqueeze(0)
        return torch.stack([torch.as_tensor(c) for c in crops])


def check_mode(mode: str | None) -> str | None:
    """``None`` or one of :data:`TTA_MODES`; anything else raises a :class:`ConfigError`."""
    if mode is None or mode in TTA_MODES:
        return mode
    from visionstack.core.build import closest

    raise ConfigError(
        "eval.tta",
        f"unknown test-time augmentation {mode!r}.{closest(str(mode), TTA_MODES)} "
        f"Choose one of {', '.join(TTA_MODES)}",
    )


def tta_transform(pipeline: v2.Compose, mode: str | None) -> v2.Compose:
    """The evaluation ``pipeline`` adapted to ``mode``: unchanged for ``None`` and ``flip``; for multi-crop,
    its ``CenterCrop`` replaced by ``FiveCrop`` / ``TenCrop`` of the same size and the crops stacked."""
    mode = check_mode(mode)
    if mode in (None, "flip"):
        return pipeline
    steps = list(pipeline.transforms)
    index = next((i for i, t in enumerate(steps) if isinstance(t, v2.CenterCrop)), None)
    if index is None:
        names = ", ".join(type(t).__name__ for t in steps)
        raise ConfigError(
            "eval.tta",
            f"{mode} needs a CenterCrop in the evaluation transforms to replace "
            f"(they are: {names}); use the fgvc or imagenet preset, or tta=flip",
        )
    size = steps[index].size
    steps[index] = v2.FiveCrop(size) if mode == "five_crop" else v2.TenCrop(size)
    return v2.Compose([*steps, StackCrops()])


class TTAModel(nn.Module):
    """Wraps a model so that ``predict_step`` / ``forward`` average logits over the augmented views.

    ``flip`` expects ``[B, 3, H, W]`` batches; multi-crop modes expect ``[B, n_crops, 3, H, W]`` (what
    :func:`tta_transform` produces) and also accept plain ``[B, 3, H, W]`` (one view).
    """

    def __init__(self, model: nn.Module, mode: str) -> None:
        super().__init__()
        mode = check_mode(mode)
        if mode is None:
            raise ValueError("TTAModel needs a mode: flip, five_crop or ten_crop")
        self.model = model
        self.mode = mode

    def _views(self, images: torch.Tensor) -> tuple[torch.Tensor, int]:
        if self.mode == "flip":
            if images.ndim != 4:
                raise ValueError(f"flip TTA expects images [B, 3, H, W], got {tuple(images.shape)}")
            return torch.cat([images, images.flip(-1)]), 2
        if images.ndim == 4:
            return images, 1
        if images.ndim != 5:
            raise ValueError(
                f"{self.mode} TTA expects images [B, n_crops, 3, H, W], got {tuple(images.shape)}"
            )
        b, n = images.shape[:2]
        return images.reshape(b * n, *images.shape[2:]), n

    def _average(self, value: torch.Tensor, n: int) -> torch.Tensor:
        if self.mode == "flip":  # views are [all originals; all mirrors]
            return value.reshape(n, -1, *value.shape[1:]).mean(0)
        return value.reshape(-1, n, *value.shape[1:]).mean(1)

    @torch.no_grad()
    def predict_step(self, images: torch.Tensor) -> dict[str, torch.Tensor]:
        """The wrapped model's ``predict_step`` on every view; each per-sample output (``logits*``,
        embeddings) averaged over the views."""
        views, n = self._views(images)
        outputs = self.model.predict_step(views)
        total = views.shape[0]
        return {
            k: self._average(v, n) if isinstance(v, torch.Tensor) and v.ndim and v.shape[0] == total else v
            for k, v in outputs.items()
        }

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        views, n = self._views(images)
        return self._average(self.model(views), n)
