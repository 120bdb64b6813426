"""The one evaluation loop: ``model.predict_step(images)`` over a loader, every ``logits*`` output scored.

The Trainer's validation and ``visionstack eval`` both run :meth:`Evaluator.collect`; they differ only in
the metric each output gets (``metric``: top-k accuracy and loss by default, the full classification
report for ``eval``) and in whether ``embedding`` outputs are gathered for retrieval. Under DDP each rank
scores its shard, metric states are reduced over ranks and embeddings gathered in data-set order.

Example::

    evaluator = Evaluator(val_loader, num_classes=200, topk=(1, 5), amp="bf16")
    evaluator.run(model)      # {"top1": 0.87, "top5": 0.97, "loss": 0.52, "concat/top1": ...}
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from visionstack.engine import distributed
from visionstack.engine.metrics import ClassificationMetrics
from visionstack.engine.precision import amp_dtype, autocast
from visionstack.engine.run_log import count_progress

__all__ = ["Evaluation", "Evaluator", "logits_outputs"]


def logits_outputs(outputs: Any) -> dict[str, torch.Tensor]:
    """The ``logits*`` entries of a ``predict_step`` result (a bare tensor counts as ``logits``)."""
    if isinstance(outputs, torch.Tensor):
        return {"logits": outputs}
    if not isinstance(outputs, Mapping):
        raise TypeError(f"predict_step must return a tensor or a dict, got {type(outputs).__name__}")
    found = {k: v for k, v in outputs.items() if k == "logits" or k.startswith("logits_")}
    if not found:
        raise ValueError(f"predict_step returned no 'logits*' output (keys: {', '.join(outputs)})")
    return found


@dataclass
class Evaluation:
    """What :meth:`Evaluator.collect` found: the computed metric of each ``logits*`` output and, when asked
    for and the model gives them, ``(embeddings [N, D], labels [N])`` in data-set order."""

    metrics: dict[str, Any]
    embeddings: tuple[torch.Tensor, torch.Tensor] | None = None


class Evaluator:
    """Scores models on ``loader`` (batches ``{"image", "label", "index"}``).

    Args:
        loader: the evaluation loader (unpadded shards under DDP).
        num_classes: classes of the logits.
        topk: accuracies to report.
        device: where batches go.
        amp: mixed precision of the forward (see :mod:`visionstack.engine.precision`).
        channels_last: feed images in channels-last memory format.
        metric: ``() -> metric`` with ``update(logits, labels)`` and ``compute()``, one per output
            (default: :class:`~visionstack.engine.metrics.ClassificationMetrics`: top-k and loss).
        embeddings: also gather ``embedding`` outputs (retrieval metrics).
        progress: draw a progress bar.
    """

    def __init__(
        self,
        loader: Any,
        num_classes: int,
        topk: Sequence[int] = (1, 5),
        device: torch.device | str = "cpu",
        amp: str | torch.dtype | None = None,
        channels_last: bool = False,
        metric: Callable[[], Any] | None = None,
        embeddings: bool = False,
        progress: bool = False,
    ) -> None:
        self.loader, self.num_classes, self.topk = loader, int(num_classes), tuple(topk)
        self.device = torch.device(device)
        self.amp = amp_dtype(amp, "amp")
        self.channels_last = channels_last
        self.embeddings = embeddings
        self.progress = progress
        self.metric = metric or (lambda: ClassificationMetrics(self.num_classes, self.topk, self.device))

    def _metric(self) -> Any:
        made = self.metric()
        return made.to(self.device) if isinstance(made, nn.Module) else made

    @torch.no_grad()
    def collect(self, model: nn.Module) -> Evaluation:
        """Run the loop once and compute every output's metric (reduced over ranks)."""
        was_training = model.training
        model.eval()
        scores: dict[str, Any] = {}
        gathered: list[list[torch.Tensor]] = []
        try:
            with count_progress("eval", self.progress) as bar:
                task = bar.add_task("eval", total=len(self.loader))
                for batch in self.loader:
                    images = batch["image"].to(self.device, non_blocking=True)
                    labels = batch["label"].to(self.device, non_blocking=True)
                    if self.channels_last:
                        images = images.contiguous(memory_format=torch.channels_last)
                    with autocast(self.device.type, self.amp):
                        outputs = model.predict_step(images)
                    for key, logits in logits_outputs(outputs).items():
                        if key not in scores:
                            scores[key] = self._metric()
                        scores[key].update(logits, labels)
                    if self.embeddings and isinstance(outputs, Mapping) and "embedding" in outputs:
                        hard = labels.argmax(1) if labels.ndim == 2 else labels
                        gathered.append(
                            [outputs["embedding"].float().cpu(), hard.cpu(), batch["index"].cpu()]
                        )
                    bar.advance(task)
            if distributed.is_distributed():  # a rank without batches still joins every reduction
                ranked = distributed.all_gather_object(sorted(scores))
                for key in sorted({k for keys in ranked for k in keys}):
                    scores.setdefault(key, self._metric())
            metrics = {key: scores[key].compute() for key in sorted(scores)}
            return Evaluation(metrics, self._embeddings(gathered) if self.embeddings else None)
        finally:
            model.train(was_training)

    @staticmethod
    def _embeddings(gathered: list[list[torch.Tensor]]) -> tuple[torch.Tensor, torch.Tensor] | None:
        parts = [torch.cat(column) for column in zip(*gathered)] if gathered else None
        if distributed.is_distributed():  # every rank's embeddings, in data-set order
            ranked = [r for r in distributed.all_gather_object(parts) if r is not None]
            parts = [torch.cat([r[i] for r in ranked]) for i in range(3)] if ranked else None
        if parts is None:
            return None
        order = torch.argsort(parts[2])
        return parts[0][order], parts[1][order]

    def run(self, model: nn.Module) -> dict[str, float]:
        """``{"top1": ..., "top5": ..., "loss": ..., "<name>/top1": ...}``: output ``logits`` unprefixed,
        ``logits_<name>`` under ``<name>/``."""
        results: dict[str, float] = {}
        for key, values in self.collect(model).metrics.items():
            prefix = "" if key == "logits" else key[len("logits_") :] + "/"
            results.update({f"{prefix}{name}": value for name, value in values.items()})
        return results
