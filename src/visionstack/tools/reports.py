"""Classification reports: top-k accuracy, per-class accuracy, macro and micro precision / recall / F1,
and the confusion matrix, all computed with torchmetrics (so they reduce across ranks under torchrun).

Conventions (also written into ``metrics.json``):

- **micro** averages count every sample once: for single-label classification micro precision = micro
  recall = micro F1 = top-1 accuracy.
- **macro** averages give every class the same weight: the unweighted mean of the per-class values. Classes
  that appear neither in the labels nor in the predictions are left out of the macro mean (torchmetrics'
  rule); macro recall is the mean per-class accuracy ("balanced accuracy").
- **per-class accuracy** of class ``c`` = correct predictions of ``c`` / samples of ``c`` (its recall);
  ``None`` (empty in the CSV) when the class has no sample.
- the confusion matrix has true classes as rows and predicted classes as columns (raw counts).

:meth:`ClassificationReport.save` writes ``metrics.json``, ``per_class.csv`` and ``confusion_matrix.png``
(row-normalized; classes sorted by per-class accuracy, best first, ties by name -- or by name or index).
"""

from __future__ import annotations

import csv
import json
import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch
from torch import nn

from visionstack.core.io import atomic_write

SortOrder = Literal["accuracy", "name", "index"]
CONVENTIONS = {
    "micro": "every sample counts once; for single-label data micro precision = recall = F1 = top-1 accuracy",
    "macro": "unweighted mean over classes (classes absent from labels and predictions are left out); "
    "macro recall = mean per-class accuracy",
    "per_class_accuracy": "correct predictions of the class / samples of the class (its recall); null without samples",
    "confusion_matrix": "rows = true class, columns = predicted class, raw counts",
}


@dataclass
class ClassRow:
    """One class of the report; ``accuracy`` is ``None`` when the class has no sample."""

    index: int
    name: str
    support: int
    predicted: int
    accuracy: float | None
    precision: float
    recall: float
    f1: float


@dataclass
class ClassificationReport:
    """Everything ``visionstack eval`` reports for one set of logits."""

    num_samples: int
    topk: dict[int, float]
    macro: dict[str, float]
    micro: dict[str, float]
    per_class: list[ClassRow]
    confusion: np.ndarray
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def class_names(self) -> list[str]:
        return [row.name for row in self.per_class]

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready metrics (the confusion matrix as nested lists of counts)."""
        return {
            "num_samples": self.num_samples,
            "num_classes": len(self.per_class),
            **{f"top{k}": v for k, v in self.topk.items()},
            "macro": self.macro,
            "micro": self.micro,
            "per_class": [row.__dict__ for row in self.per_class],
            "confusion_matrix": self.confusion.tolist(),
            **self.extra,
            "conventions": CONVENTIONS,
        }

    def save(self, out_dir: str | Path, sort: SortOrder = "accuracy", prefix: str = "") -> dict[str, Path]:
        """Write ``{prefix}metrics.json``, ``{prefix}per_class.csv``, ``{prefix}confusion_matrix.png``."""
        out = Path(out_dir)
        out.mkdir(parents=True, exist_ok=True)
        paths = {
            "metrics": out / f"{prefix}metrics.json",
            "per_class": out / f"{prefix}per_class.csv",
            "confusion_matrix": out / f"{prefix}confusion_matrix.png",
        }
        text = json.dumps(self.to_dict(), indent=2) + "\n"
        atomic_write(paths["metrics"], lambda tmp: tmp.write_text(text, encoding="utf-8"))
        write_per_class_csv(self.per_class, paths["per_class"])
        plot_confusion_matrix(self.confusion, self.class_names, paths["confusion_matrix"], sort=sort)
        return paths


class ReportMetrics(nn.Module):
    """Accumulates logits and labels batch by batch; :meth:`compute` gives a :class:`ClassificationReport`.

    A torchmetrics ``MetricCollection`` holds the state, so ``compute`` sums it over every rank when
    ``torch.distributed`` is initialized. Top-k values with ``k`` above the number of classes are left out.
    Soft labels ``[B, K]`` are scored by their arg-max.
    """

    def __init__(
        self, num_classes: int, class_names: Sequence[str] | None = None, topk: Sequence[int] = (1, 5)
    ) -> None:
        super().__init__()
        from torchmetrics import MetricCollection
        from torchmetrics.classification import (
            MulticlassAccuracy,
            MulticlassConfusionMatrix,
            MulticlassF1Score,
            MulticlassPrecision,
            MulticlassRecall,
        )

        if num_classes < 2:
            raise ValueError(f"a classification report needs at least 2 classes, got {num_classes}")
        names = (
            [str(n) for n in class_names] if class_names is not None else [str(i) for i in range(num_classes)]
        )
        if len(names) != num_classes:
            raise ValueError(f"{len(names)} class names for {num_classes} classes")
        self.num_classes = num_classes
        self.names = names
        self.ks = sorted({int(k) for k in topk if 1 <= int(k) <= num_classes} | {1})
        metrics: dict[str, Any] = {
            f"top{k}": MulticlassAccuracy(num_classes, top_k=k, average="micro") for k in self.ks
        }
        for avg in ("macro", "micro", "none"):
            arg = None if avg == "none" else avg
            metrics[f"precision_{avg}"] = MulticlassPrecision(num_classes, average=arg)
            metrics[f"recall_{avg}"] = MulticlassRecall(num_classes, average=arg)
            metrics[f"f1_{avg}"] = MulticlassF1Score(num_classes, average=arg)
        metrics["confusion"] = MulticlassConfusionMatrix(num_classes)
        self.metrics = MetricCollection(metrics, compute_groups=False)

    @torch.no_grad()
    def update(self, logits: torch.Tensor, labels: torch.Tensor) -> None:
        """Add a batch: ``logits [B, K]`` and integer ``labels [B]`` (or soft ``[B, K]``)."""
        if labels.ndim == 2:
            labels = labels.argmax(dim=1)
        if logits.ndim != 2 or logits.shape[1] != self.num_classes:
            raise ValueError(f"expected logits [B, {self.num_classes}], got {tuple(logits.shape)}")
        self.metrics.update(logits.detach().float(), labels.long())

    def reset(self) -> None:
        self.metrics.reset()

    def compute(self) -> ClassificationReport:
        values = {k: v.detach().cpu() for k, v in self.metrics.compute().items()}
        confusion = values["confusion"].long().numpy()
        support = confusion.sum(axis=1)
        predicted = confusion.sum(axis=0)
        rows = []
        for c, name in enumerate(self.names):
            acc = float(confusion[c, c] / support[c]) if support[c] > 0 else None
            rows.append(
                ClassRow(
                    c,
                    name,
                    int(support[c]),
                    int(predicted[c]),
                    acc,
                    float(values["precision_none"][c]),
                    float(values["recall_none"][c]),
                    float(values["f1_none"][c]),
                )
            )
        return ClassificationReport(
            num_samples=int(support.sum()),
            topk={k: float(values[f"top{k}"]) for k in self.ks},
            macro={m: float(values[f"{m}_macro"]) for m in ("precision", "recall", "f1")},
            micro={m: float(values[f"{m}_micro"]) for m in ("precision", "recall", "f1")},
            per_class=rows,
            confusion=confusion,
        )


def classification_report(
    logits: torch.Tensor,
    labels: torch.Tensor,
    class_names: Sequence[str] | None = None,
    topk: Sequence[int] = (1, 5),
) -> ClassificationReport:
    """The report of one set of ``logits [N, K]`` and ``labels [N]``."""
    metrics = ReportMetrics(int(logits.shape[1]), class_names, topk)
    metrics.update(logits, labels)
    return metrics.compute()


def write_per_class_csv(rows: Sequence[ClassRow], path: str | Path) -> None:
    """One line per class: index, name, support, predicted, accuracy, precision, recall, f1."""
    columns = ["index", "name", "support", "predicted", "accuracy", "precision", "recall", "f1"]

    def write(tmp: Path) -> None:
        with open(tmp, "w", newline="", encoding="utf-8") as handle:
            writer = csv.writer(handle)
            writer.writerow(columns)
            for row in rows:
                values = [getattr(row, c) for c in columns]
                writer.writerow(
                    ["" if v is None else (f"{v:.6f}" if isinstance(v, float) else v) for v in values]
                )

    atomic_write(path, write)


def class_order(confusion: np.ndarray, class_names: Sequence[str], sort: SortOrder = "accuracy") -> list[int]:
    """Display order: by per-class accuracy (best first; classes without samples last; ties by name),
    by name, or by index."""
    n = len(class_names)
    if sort == "index":
        return list(range(n))
    if sort == "name":
        return sorted(range(n), key=lambda i: (str(class_names[i]), i))
    if sort != "accuracy":
        raise ValueError(f"sort must be 'accuracy', 'name' or 'index', got {sort!r}")
    support = confusion.sum(axis=1)
    acc = [confusion[i, i] / support[i] if support[i] else -1.0 for i in range(n)]
    return sorted(range(n), key=lambda i: (-acc[i], str(class_names[i]), i))


def normalize_rows(confusion: np.ndarray) -> np.ndarray:
    """Each row divided by its total (rows without samples stay 0)."""
    totals = confusion.sum(axis=1, keepdims=True).astype(np.float64)
    return np.divide(confusion, totals, out=np.zeros(confusion.shape, dtype=np.float64), where=totals > 0)


def plot_confusion_matrix(
    confusion: np.ndarray,
    class_names: Sequence[str],
    path: str | Path,
    sort: SortOrder = "accuracy",
    title: str | None = None,
) -> Path:
    """Save the row-normalized confusion matrix as a PNG, readable up to ~200 classes.

    The figure grows with the number of classes (6 to 24 inches); tick labels are drawn only when a cell is
    at least 5 points tall, and cell values only up to 20 classes.
    """
    from matplotlib.figure import Figure

    n = len(class_names)
    order = class_order(confusion, class_names, sort)
    matrix = normalize_rows(np.asarray(confusion))[np.ix_(order, order)]
    size = min(24.0, max(6.0, 0.12 * n + 3.0))
    fig = Figure(figsize=(size + 1.5, size), dpi=100 if n <= 50 else 150)
    ax = fig.subplots()
    image = ax.imshow(matrix, vmin=0.0, vmax=1.0, cmap="Blues", interpolation="nearest")
    fig.colorbar(image, ax=ax, fraction=0.046, pad=0.04, label="fraction of the true class")
    cell_points = 0.75 * size * 72 / max(n, 1)
    if cell_points >= 5:
        font = min(10.0, cell_points * 0.8)
        names = [str(class_names[i]) for i in order]
        ax.set_xticks(range(n), names, rotation=90, fontsize=font)
        ax.set_yticks(range(n), names, fontsize=font)
    else:
        ax.set_xticks([])
        ax.set_yticks([])
    if n <= 20:
        for i in range(n):
            for j in range(n):
                if matrix[i, j] > 0:
                    ax.text(
                        j,
                        i,
                        f"{matrix[i, j]:.2f}",
                        ha="center",
                        va="center",
                        fontsize=8,
                        color="white" if matrix[i, j] > 0.5 else "black",
                    )
    ax.set_xlabel("predicted class")
    ax.set_ylabel("true class")
    order_text = {
        "accuracy": "sorted by per-class accuracy",
        "name": "sorted by name",
        "index": "class order",
    }[sort]
    ax.set_title(title or f"confusion matrix ({n} classes, row-normalized, {order_text})")
    fig.tight_layout()
    path = Path(path)
    atomic_write(path, lambda tmp: fig.savefig(tmp, format="png"))
    return path


def format_float(value: float | None) -> str:
    """A metric for tables: 4 decimals, ``-`` for missing or NaN."""
    return "-" if value is None or (isinstance(value, float) and math.isnan(value)) else f"{value:.4f}"
