"""The Evaluator: ``model.predict_step(images)`` over a loader; every ``logits*`` output is scored.

Method-agnostic: ``logits`` gives ``top1``, ``top5``, ``loss`` (mean cross-entropy); another output
``logits_<name>`` gives ``<name>/top1`` ... Results are reduced over ranks (see
:mod:`visionstack.engine.metrics`).
"""

from __future__ import annotations

import contextlib
from collections.abc import Mapping, Sequence
from typing import Any

import torch
from torch import nn

from visionstack.engine import distributed
from visionstack.engine.metrics import ClassificationMetrics

_AMP = {"bf16": torch.bfloat16, "fp16": torch.float16}


def logits_outputs(outputs: Any) -> dict[str, torch.Tensor]:
    """``{metric prefix: logits}`` of a ``predict_step`` result (a tensor counts as ``logits``)."""
    if isinstance(outputs, torch.Tensor):
        return {"": outputs}
    if not isinstance(outputs, Mapping):
        raise TypeError(f"predict_step must return a tensor or a dict, got {type(outputs).__name__}")
    out = {}
    for key, value in outputs.items():
        if key == "logits":
            out[""] = value
        elif key.startswith("logits_"):
            out[key[len("logits_") :]] = value
    if not out:
        raise ValueError(f"predict_step returned no 'logits*' output (keys: {', '.join(outputs)})")
    return out


class Evaluator:
    """Scores a model on ``loader`` (batches ``{"image", "label", ...}``).

    Args:
        loader: the evaluation loader (unpadded shards under DDP).
        num_classes: classes of the logits.
        topk: accuracies to report.
        device: where batches go.
        amp: ``None``, ``"bf16"`` or ``"fp16"``: autocast for the forward.
        channels_last: feed images in channels-last memory format.
    """

    def __init__(
        self,
        loader: Any,
        num_classes: int,
        topk: Sequence[int] = (1, 5),
        device: torch.device | str = "cpu",
        amp: str | None = None,
        channels_last: bool = False,
    ) -> None:
        self.loader, self.num_classes, self.topk = loader, int(num_classes), tuple(topk)
        self.device = torch.device(device)
        self.amp = _AMP.get(amp) if amp else None
        self.channels_last = channels_last

    def _autocast(self) -> contextlib.AbstractContextManager:
        if self.amp is None:
            return contextlib.nullcontext()
        return torch.autocast(self.device.type, dtype=self.amp)

    @torch.no_grad()
    def run(self, model: nn.Module) -> dict[str, float]:
        """``{"top1": ..., "top5": ..., "loss": ..., "<name>/top1": ...}`` of ``model`` on the loader."""
        was_training = model.training
        model.eval()
        scores: dict[str, ClassificationMetrics] = {}
        try:
            for batch in self.loader:
                images = batch["image"].to(self.device, non_blocking=True)
                labels = batch["label"].to(self.device, non_blocking=True)
                if self.channels_last:
                    images = images.contiguous(memory_format=torch.channels_last)
                with self._autocast():
                    outputs = logits_outputs(model.predict_step(images))
                for name, logits in outputs.items():
                    if name not in scores:
                        scores[name] = ClassificationMetrics(self.num_classes, self.topk, self.device)
                    scores[name].update(logits, labels)
            if distributed.is_distributed():  # a rank without batches still joins every reduction
                names = sorted(
                    {n for ranked in distributed.all_gather_object(sorted(scores)) for n in ranked}
                )
                for name in names:
                    scores.setdefault(name, ClassificationMetrics(self.num_classes, self.topk, self.device))
            results: dict[str, float] = {}
            for name in sorted(scores):
                for key, value in scores[name].compute().items():
                    results[f"{name}/{key}" if name else key] = value
            return results
        finally:
            model.train(was_training)
