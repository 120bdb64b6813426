"""Evaluation metrics by name (torchmetrics), reduced across ranks.

Registered in ``METRICS``: ``accuracy`` (top-k micro accuracy; aliases ``topk``, ``topk_accuracy``) and
``macro_accuracy`` (mean of per-class accuracies). Builders take ``(num_classes, k)`` and return a
``torchmetrics.Metric``.

Across DDP ranks: the evaluation loader shards the set without padding (each sample on exactly one rank,
:func:`visionstack.data.loader.build_loader` with ``pad=False``), and torchmetrics sums the per-rank
counts when ``compute()`` runs, so no sample is counted twice and none is missed.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import torch
import torch.nn.functional as F
from torchmetrics import MeanMetric, Metric
from torchmetrics.classification import MulticlassAccuracy

from visionstack.core.registry import METRICS


@METRICS.register("accuracy", aliases=("topk", "topk_accuracy", "top_k_accuracy"))
def topk_accuracy(num_classes: int, k: int = 1) -> Metric:
    """Fraction of samples whose label is among the ``k`` highest logits."""
    return MulticlassAccuracy(num_classes=num_classes, top_k=k, average="micro")


@METRICS.register("macro_accuracy", aliases=("mean_class_accuracy", "balanced_accuracy"))
def macro_accuracy(num_classes: int, k: int = 1) -> Metric:
    """Mean over classes of the per-class top-``k`` accuracy."""
    return MulticlassAccuracy(num_classes=num_classes, top_k=k, average="macro")


class ClassificationMetrics:
    """Top-k accuracies and mean cross-entropy of one logits output.

    ``compute()`` returns ``{"top1": ..., "top5": ..., "loss": ...}`` (ks above ``num_classes`` left out),
    reduced over every rank of an initialized process group.
    """

    def __init__(
        self, num_classes: int, topk: Sequence[int] = (1, 5), device: torch.device | str = "cpu"
    ) -> None:
        self.ks = sorted({int(k) for k in topk if 1 <= int(k) <= num_classes}) or [1]
        build = METRICS.get("accuracy")
        self.accuracy = {k: build(num_classes, k).to(device) for k in self.ks}
        self.loss = MeanMetric().to(device)

    @torch.no_grad()
    def update(self, logits: torch.Tensor, labels: torch.Tensor) -> None:
        logits = logits.float()
        for metric in self.accuracy.values():
            metric.update(logits, labels)
        self.loss.update(F.cross_entropy(logits, labels, reduction="none"))

    def compute(self) -> dict[str, float]:
        out = {f"top{k}": float(m.compute()) for k, m in self.accuracy.items()}
        out["loss"] = float(self.loss.compute())
        return out


class RunningSums:
    """Sums and counts of the scalar training logs, without a host sync per step.

    Each step's scalars are stacked into one small tensor on the device (one kernel); :meth:`drain` reduces
    them on the host's request. Non-finite values are left out (a skipped step's NaN loss does not poison
    the epoch mean).
    """

    def __init__(self) -> None:
        self.pending: dict[tuple[str, ...], list[torch.Tensor]] = {}

    @torch.no_grad()
    def add(self, logs: Mapping[str, Any]) -> None:
        keys = tuple(k for k, v in logs.items() if isinstance(v, torch.Tensor) and v.numel() == 1)
        if keys:
            values = torch.stack([logs[k].detach().reshape(()).float() for k in keys])
            self.pending.setdefault(keys, []).append(values)

    def drain(self) -> dict[str, tuple[float, float]]:
        """``{key: (sum, count)}`` of the finite values added since the last drain."""
        out: dict[str, tuple[float, float]] = {}
        for keys, rows in self.pending.items():
            values = torch.stack(rows)
            finite = torch.isfinite(values)
            sums = torch.where(finite, values, torch.zeros_like(values)).sum(0).tolist()
            counts = finite.sum(0).tolist()
            for key, total, count in zip(keys, sums, counts):
                prev = out.get(key, (0.0, 0.0))
                out[key] = (prev[0] + total, prev[1] + count)
        self.pending = {}
        return out
