"""reports.py against a hand-computed confusion matrix on a fixed prediction set."""

from __future__ import annotations

import csv
import json
import math

import numpy as np
import pytest
import torch
from PIL import Image

from visionstack.tools.reports import (
    ReportMetrics,
    class_order,
    classification_report,
    normalize_rows,
    plot_confusion_matrix,
)

# 10 samples, 3 classes. Rows = true class, columns = predicted class:
#   true 0 (samples 0, 1, 2, 9) -> predicted 0, 1, 0, 1  => [2, 2, 0]
#   true 1 (samples 3, 4)       -> predicted 1, 2        => [0, 1, 1]
#   true 2 (samples 5, 6, 7, 8) -> predicted 2, 2, 0, 2  => [1, 0, 3]
LABELS = [0, 0, 0, 1, 1, 2, 2, 2, 2, 0]
PREDS = [0, 1, 0, 1, 2, 2, 2, 0, 2, 1]
SECOND = [1, 0, 2, 0, 1, 0, 1, 2, 1, 0]  # each sample's runner-up class
CONFUSION = [[2, 2, 0], [0, 1, 1], [1, 0, 3]]


def _logits(num_classes: int = 3) -> torch.Tensor:
    logits = torch.zeros(len(PREDS), num_classes)
    logits[torch.arange(len(PREDS)), torch.tensor(PREDS)] = 2.0
    logits[torch.arange(len(PREDS)), torch.tensor(SECOND)] = 1.0
    return logits


def test_report_equals_hand_computed_values() -> None:
    report = classification_report(_logits(), torch.tensor(LABELS), ["cat", "dog", "eel"], topk=(1, 2, 5))
    assert report.confusion.tolist() == CONFUSION
    assert report.num_samples == 10
    # top-1: 2 + 1 + 3 correct of 10; the 4 wrong samples (1, 4, 7, 9) all have the label as runner-up,
    # so top-2 is 10 of 10
    assert report.topk == {1: pytest.approx(0.6), 2: pytest.approx(1.0)}  # k=5 > 3 classes is left out
    support, predicted = [4, 2, 4], [3, 3, 4]
    recall = [2 / 4, 1 / 2, 3 / 4]
    precision = [2 / 3, 1 / 3, 3 / 4]
    f1 = [4 / 7, 2 / 5, 3 / 4]
    for c, row in enumerate(report.per_class):
        assert (row.name, row.support, row.predicted) == (["cat", "dog", "eel"][c], support[c], predicted[c])
        assert row.accuracy == pytest.approx(recall[c])
        assert row.recall == pytest.approx(recall[c])
        assert row.precision == pytest.approx(precision[c])
        assert row.f1 == pytest.approx(f1[c])
    assert report.macro == pytest.approx(
        {"precision": sum(precision) / 3, "recall": sum(recall) / 3, "f1": sum(f1) / 3}
    )
    # micro: every sample counts once -> precision = recall = F1 = accuracy for single-label data
    assert report.micro == pytest.approx({"precision": 0.6, "recall": 0.6, "f1": 0.6})


def test_absent_class_is_left_out_of_macro_and_has_no_accuracy(tmp_path) -> None:
    report = classification_report(_logits(4), torch.tensor(LABELS), topk=(1,))
    assert report.per_class[3].support == 0 and report.per_class[3].accuracy is None
    assert report.macro["precision"] == pytest.approx((2 / 3 + 1 / 3 + 3 / 4) / 3)
    paths = report.save(tmp_path)
    rows = list(csv.DictReader(paths["per_class"].open()))
    assert [r["support"] for r in rows] == ["4", "2", "4", "0"]
    assert rows[3]["accuracy"] == "" and float(rows[0]["accuracy"]) == pytest.approx(0.5)
    data = json.loads(paths["metrics"].read_text())
    assert data["top1"] == pytest.approx(0.6) and data["per_class"][3]["accuracy"] is None
    assert data["confusion_matrix"][:3] == [r + [0] for r in CONFUSION]
    assert "micro" in data["conventions"] and "macro" in data["conventions"]


def test_batched_updates_and_soft_labels_match_one_shot() -> None:
    metrics = ReportMetrics(3, topk=(1, 2))
    labels = torch.tensor(LABELS)
    soft = torch.nn.functional.one_hot(labels, 3).float() * 0.9 + 0.1 / 3
    for start in range(0, 10, 4):
        metrics.update(_logits()[start : start + 4], soft[start : start + 4])
    batched = metrics.compute()
    assert batched.confusion.tolist() == CONFUSION and batched.topk[1] == pytest.approx(0.6)
    metrics.reset()
    metrics.update(_logits(), labels)
    assert metrics.compute().macro == pytest.approx(batched.macro)
    with pytest.raises(ValueError, match=r"expected logits \[B, 3\]"):
        metrics.update(torch.zeros(2, 4), torch.zeros(2, dtype=torch.long))


def test_class_order_and_row_normalization() -> None:
    confusion = np.array(CONFUSION)
    # accuracies 0.5, 0.5, 0.75: best first, ties by name
    assert class_order(confusion, ["b", "a", "c"], "accuracy") == [2, 1, 0]
    assert class_order(confusion, ["b", "a", "c"], "name") == [1, 0, 2]
    assert class_order(confusion, ["b", "a", "c"], "index") == [0, 1, 2]
    with_empty = np.array([[1, 0], [0, 0]])
    assert class_order(with_empty, ["z", "a"], "accuracy") == [0, 1]  # a class without samples goes last
    norm = normalize_rows(with_empty)
    assert norm.tolist() == [[1.0, 0.0], [0.0, 0.0]]
    assert np.allclose(normalize_rows(confusion).sum(axis=1), 1.0)


@pytest.mark.parametrize("n", [3, 200])
def test_confusion_matrix_png(tmp_path, n: int) -> None:
    rng = np.random.default_rng(0)
    confusion = rng.integers(0, 5, size=(n, n)) + np.eye(n, dtype=int) * 20
    path = plot_confusion_matrix(confusion, [f"class_{i}" for i in range(n)], tmp_path / "cm.png")
    with Image.open(path) as image:
        assert image.format == "PNG" and min(image.size) >= 600
        if n == 200:  # large figures grow so that each of the 200 rows stays several pixels tall
            assert min(image.size) >= 3000
    assert not math.isnan(float(normalize_rows(confusion).sum()))
