"""Retrieval metrics on hand-computed toy cases (unit vectors at known angles)."""

from __future__ import annotations

import math

import pytest
import torch
from torchmetrics.functional.retrieval import retrieval_average_precision

from visionstack.tools.retrieval import (
    average_precision,
    class_means,
    evaluate_embeddings,
    knn_predict,
    label_disjoint_split,
    mean_average_precision,
    precision_recall,
    recall_at_k,
    retrieval_metrics,
    split_gallery_query,
    topk_accuracy,
)


def _at(*degrees: float) -> torch.Tensor:
    rad = torch.tensor(degrees, dtype=torch.float64) * math.pi / 180
    return torch.stack([rad.cos(), rad.sin()], dim=1).float()


# gallery: A at 0 and 45 degrees, B at 90 and 180; queries: A at 10, B at 60, A at 130
GALLERY, GALLERY_LABELS = _at(0, 90, 45, 180), torch.tensor([0, 1, 0, 1])
QUERY, QUERY_LABELS = _at(10, 60, 130), torch.tensor([0, 1, 0])
# rankings (closest first): q0 -> A A B B; q1 -> A B A B; q2 -> B B A A


def test_average_precision_and_map_by_hand() -> None:
    ap = average_precision(QUERY, QUERY_LABELS, GALLERY, GALLERY_LABELS)
    expected = [1.0, (1 / 2 + 2 / 4) / 2, (1 / 3 + 2 / 4) / 2]
    assert ap.tolist() == pytest.approx(expected, abs=1e-6)
    assert mean_average_precision(QUERY, QUERY_LABELS, GALLERY, GALLERY_LABELS) == pytest.approx(
        sum(expected) / 3, abs=1e-6
    )


def test_average_precision_matches_torchmetrics_on_random_data() -> None:
    g = torch.Generator().manual_seed(0)
    q, gal = torch.randn(20, 8, generator=g), torch.randn(50, 8, generator=g)
    ql, gl = torch.randint(0, 5, (20,), generator=g), torch.randint(0, 5, (50,), generator=g)
    ours = average_precision(q, ql, gal, gl)
    sims = torch.nn.functional.normalize(q, dim=1) @ torch.nn.functional.normalize(gal, dim=1).T
    for i in range(20):  # torchmetrics ignores items with scores <= 0: shift the cosines (ranks unchanged)
        reference = retrieval_average_precision(sims[i] + 2, gl == ql[i]).item()
        assert ours[i].item() == pytest.approx(reference, abs=1e-6)


def test_recall_at_k_by_hand() -> None:
    assert recall_at_k(QUERY, QUERY_LABELS, GALLERY, GALLERY_LABELS, ks=(1, 2, 3, 4)) == pytest.approx(
        {1: 1 / 3, 2: 2 / 3, 3: 1.0, 4: 1.0}
    )


def test_topk_accuracy_ranks_classes_by_their_closest_item() -> None:
    # class scores: q0 A .985 > B .174; q1 A .966 > B .866 (label B); q2 B .766 > A .087 (label A)
    assert topk_accuracy(QUERY, QUERY_LABELS, GALLERY, GALLERY_LABELS, ks=(1, 2)) == pytest.approx(
        {1: 1 / 3, 2: 1.0}
    )


def test_knn_majority_vote_and_tie_break() -> None:
    assert knn_predict(QUERY, GALLERY, GALLERY_LABELS, k=3).tolist() == [0, 0, 1]
    # k=2: q1 sees A then B (a tie): the earlier vote wins
    assert knn_predict(QUERY, GALLERY, GALLERY_LABELS, k=2).tolist() == [0, 0, 1]
    assert knn_predict(QUERY, GALLERY, torch.tensor([7, 3, 7, 3]), k=1).tolist() == [7, 7, 3]


def test_precision_recall_curve_per_query() -> None:
    precision, recall = precision_recall(QUERY, QUERY_LABELS, GALLERY, GALLERY_LABELS)
    assert precision[1].tolist() == pytest.approx([0, 1 / 2, 1 / 3, 1 / 2])
    assert recall[1].tolist() == pytest.approx([0, 0.5, 0.5, 1.0])
    assert recall[0].tolist() == pytest.approx([0.5, 1, 1, 1])


def test_class_mean_gallery() -> None:
    means, classes = class_means(GALLERY, GALLERY_LABELS)
    assert classes.tolist() == [0, 1]
    assert torch.allclose(means, _at(22.5, 135), atol=1e-6)
    out = retrieval_metrics(
        QUERY, QUERY_LABELS, GALLERY, GALLERY_LABELS, ks=(1, 2), knn_k=1, gallery_mode="class_means"
    )
    # q0 -> A (right); q1 at 60: A 37.5 degrees away, B 75 (wrong); q2 at 130: B 5 away (wrong)
    assert out["top1"] == pytest.approx(1 / 3) and out["top2"] == pytest.approx(1.0)
    assert out["knn1"] == pytest.approx(1 / 3)
    assert out["map"] == pytest.approx((1 + 0.5 + 0.5) / 3)


def test_euclidean_metric_differs_from_cosine_when_norms_differ() -> None:
    gallery, labels = torch.tensor([[1.0, 0.0], [10.0, 1.0]]), torch.tensor([0, 1])
    query = torch.tensor([[9.0, 0.0]])
    assert knn_predict(query, gallery, labels, metric="cosine").tolist() == [0]
    assert knn_predict(query, gallery, labels, metric="euclidean").tolist() == [1]


def test_gallery_query_split_takes_the_first_per_class() -> None:
    labels = torch.tensor([2, 0, 2, 1, 0, 2, 1])
    g, q = split_gallery_query(labels, per_class=1)
    assert g.tolist() == [0, 1, 3] and q.tolist() == [2, 4, 5, 6]
    g, q = split_gallery_query(labels, per_class=2)
    assert g.tolist() == [0, 1, 2, 3, 4, 6] and q.tolist() == [5]


def test_label_disjoint_split() -> None:
    labels = torch.arange(10).repeat_interleave(3)
    train, val = label_disjoint_split(labels, val_fraction=0.3, seed=1)
    assert len(set(labels[train].tolist()) & set(labels[val].tolist())) == 0
    assert len(set(labels[val].tolist())) == 3 and len(train) + len(val) == 30
    assert sorted(torch.cat([train, val]).tolist()) == list(range(30))
    again = label_disjoint_split(labels, val_fraction=0.3, seed=1)[1]
    assert torch.equal(val, again)
    with pytest.raises(ValueError, match="empty"):
        label_disjoint_split(labels, val_fraction=0.01)


def test_evaluate_embeddings_end_to_end() -> None:
    embeddings = torch.cat([GALLERY, QUERY])
    labels = torch.cat([GALLERY_LABELS, QUERY_LABELS])
    # per_class=2 makes the first two of each class the gallery: exactly GALLERY
    out = evaluate_embeddings(embeddings, labels, per_class=2, ks=(1,), knn_k=3)
    assert out["num_gallery"] == 4 and out["num_queries"] == 3
    assert out["recall@1"] == pytest.approx(1 / 3) and out["knn3"] == pytest.approx(1 / 3)
    assert out["map"] == pytest.approx((1 + 0.5 + (1 / 3 + 0.5) / 2) / 3, abs=1e-6)
