"""Retrieval evaluation of embedding models: functions on ``embeddings [N, D]`` and ``labels [N]`` tensors.

* Splits: :func:`split_gallery_query` (per class, the first ``k`` samples are the gallery, the rest the
  queries) and :func:`label_disjoint_split` (train / val with no class in common, for open-set tests).
* Gallery: every reference embedding (``gallery="all"``) or one mean per class (``"class_means"``).
* Metrics: :func:`recall_at_k` (a same-label item among the ``k`` nearest), :func:`topk_accuracy` (the
  label among the ``k`` best-ranked classes, a class scoring its closest gallery item), :func:`knn_predict`
  / kNN accuracy (majority vote of the ``k`` nearest), :func:`average_precision` and mAP, and
  :func:`precision_recall` (per query, at every rank).

Similarity is the cosine (``metric="cosine"``) or the negative Euclidean distance (``"euclidean"``);
ranks break ties by gallery order. Large sets are processed in chunks of queries.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Iterator, Sequence
from typing import Literal

import torch
import torch.nn.functional as F

Metric = Literal["cosine", "euclidean"]
GalleryMode = Literal["all", "class_means"]
CHUNK = 1024


def _check(embeddings: torch.Tensor, labels: torch.Tensor, name: str) -> None:
    if embeddings.dim() != 2:
        raise ValueError(f"{name} embeddings must be [N, D], got shape {tuple(embeddings.shape)}")
    if labels.dim() != 1 or labels.shape[0] != embeddings.shape[0]:
        raise ValueError(
            f"{name} labels must be [N] with N = {embeddings.shape[0]}, got {tuple(labels.shape)}"
        )


def similarity(query: torch.Tensor, gallery: torch.Tensor, metric: Metric = "cosine") -> torch.Tensor:
    """``[Q, G]`` similarities (higher is closer): cosine, or the negative Euclidean distance."""
    if metric == "cosine":
        return F.normalize(query.float(), dim=1) @ F.normalize(gallery.float(), dim=1).T
    if metric == "euclidean":
        return -torch.cdist(query.float(), gallery.float())
    raise ValueError(f"metric must be 'cosine' or 'euclidean', got {metric!r}")


# -- splits ---------------------------------------------------------------------------------------
def split_gallery_query(labels: torch.Tensor, per_class: int = 1) -> tuple[torch.Tensor, torch.Tensor]:
    """Indices ``(gallery, query)``: per class, its first ``per_class`` samples (in order) are gallery.

    Classes with ``per_class`` samples or fewer contribute only gallery items.
    """
    if per_class < 1:
        raise ValueError(f"per_class must be >= 1, got {per_class}")
    labels = labels.reshape(-1)
    order = torch.sort(labels, stable=True).indices  # samples grouped by class, dataset order inside
    sorted_labels = labels[order]
    starts = torch.ones_like(sorted_labels, dtype=torch.bool)
    starts[1:] = sorted_labels[1:] != sorted_labels[:-1]
    group_start = torch.cummax(torch.where(starts, torch.arange(len(labels)), 0), dim=0).values
    rank_in_class = torch.arange(len(labels)) - group_start
    is_gallery = torch.zeros(len(labels), dtype=torch.bool)
    is_gallery[order] = rank_in_class < per_class
    index = torch.arange(len(labels))
    return index[is_gallery], index[~is_gallery]


def label_disjoint_split(
    labels: torch.Tensor, val_fraction: float = 0.5, seed: int = 0
) -> tuple[torch.Tensor, torch.Tensor]:
    """Indices ``(train, val)`` whose classes do not overlap; ``round(val_fraction * K)`` random classes
    (drawn with ``seed``) go to val."""
    classes = torch.unique(labels)
    n_val = round(val_fraction * len(classes))
    if not 0 < n_val < len(classes):
        raise ValueError(f"val_fraction {val_fraction} of {len(classes)} classes leaves one side empty")
    perm = torch.randperm(len(classes), generator=torch.Generator().manual_seed(seed))
    val_classes = classes[perm[:n_val]]
    in_val = torch.isin(labels, val_classes)
    index = torch.arange(len(labels))
    return index[~in_val], index[in_val]


def class_means(
    embeddings: torch.Tensor, labels: torch.Tensor, normalize: bool = True
) -> tuple[torch.Tensor, torch.Tensor]:
    """One mean embedding per class: ``(means [K, D], classes [K])`` (sorted classes); L2-normalized
    (before and after averaging) when ``normalize``."""
    _check(embeddings, labels, "gallery")
    x = F.normalize(embeddings.float(), dim=1) if normalize else embeddings.float()
    classes, inverse = torch.unique(labels, return_inverse=True)
    sums = torch.zeros(len(classes), x.shape[1], dtype=x.dtype).index_add_(0, inverse, x)
    means = sums / torch.bincount(inverse, minlength=len(classes))[:, None]
    return (F.normalize(means, dim=1) if normalize else means), classes


# -- ranking --------------------------------------------------------------------------------------
def _ranked(
    query: torch.Tensor,
    query_labels: torch.Tensor,
    gallery: torch.Tensor,
    gallery_labels: torch.Tensor,
    metric: Metric,
    chunk: int = CHUNK,
) -> Iterator[tuple[torch.Tensor, torch.Tensor, torch.Tensor]]:
    """Per chunk of queries: gallery labels in rank order ``[q, G]``, relevance ``[q, G]``, sorted sims."""
    _check(query, query_labels, "query")
    _check(gallery, gallery_labels, "gallery")
    if len(gallery) == 0:
        raise ValueError("the gallery is empty")
    for start in range(0, len(query), chunk):
        sims = similarity(query[start : start + chunk], gallery, metric)
        sorted_sims, order = torch.sort(sims, dim=1, descending=True, stable=True)
        ranked_labels = gallery_labels[order]
        yield ranked_labels, ranked_labels == query_labels[start : start + chunk, None], sorted_sims


def _ks(ks: int | Sequence[int]) -> list[int]:
    ks = [ks] if isinstance(ks, int) else list(ks)
    if not ks or any(k < 1 for k in ks):
        raise ValueError(f"k values must be positive, got {ks}")
    return ks


def _hit_rates(correct: Iterable[torch.Tensor], ks: list[int], total: int) -> dict[int, float]:
    """Per ``k``: the fraction of ``total`` rows (over all chunks of ``[q, ranks]`` booleans) with a hit
    in their first ``k`` ranks."""
    hits = dict.fromkeys(ks, 0)
    for chunk in correct:
        for k in ks:
            hits[k] += int(chunk[:, :k].any(dim=1).sum())
    return {k: hits[k] / max(total, 1) for k in ks}


def recall_at_k(
    query: torch.Tensor,
    query_labels: torch.Tensor,
    gallery: torch.Tensor,
    gallery_labels: torch.Tensor,
    ks: int | Sequence[int] = (1, 5),
    metric: Metric = "cosine",
) -> dict[int, float]:
    """Fraction of queries with at least one same-label item among their ``k`` nearest gallery items."""
    ranked = (rel for _, rel, _ in _ranked(query, query_labels, gallery, gallery_labels, metric))
    return _hit_rates(ranked, _ks(ks), len(query))


def topk_accuracy(
    query: torch.Tensor,
    query_labels: torch.Tensor,
    gallery: torch.Tensor,
    gallery_labels: torch.Tensor,
    ks: int | Sequence[int] = (1, 5),
    metric: Metric = "cosine",
) -> dict[int, float]:
    """Fraction of queries whose label is among the ``k`` best classes; a class scores the similarity
    of its closest gallery item (with a class-mean gallery: nearest-class-mean classification)."""
    ks = _ks(ks)
    classes, inverse = torch.unique(gallery_labels, return_inverse=True)

    def correct_per_chunk() -> Iterator[torch.Tensor]:
        for start in range(0, len(query), CHUNK):
            sims = similarity(query[start : start + CHUNK], gallery, metric)
            scores = torch.full((len(sims), len(classes)), -math.inf).scatter_reduce(
                1, inverse.expand_as(sims), sims, reduce="amax"
            )
            ranked = classes[torch.sort(scores, dim=1, descending=True, stable=True).indices]
            yield ranked == query_labels[start : start + CHUNK, None]

    return _hit_rates(correct_per_chunk(), ks, len(query))


def knn_predict(
    query: torch.Tensor,
    gallery: torch.Tensor,
    gallery_labels: torch.Tensor,
    k: int = 1,
    metric: Metric = "cosine",
) -> torch.Tensor:
    """Labels ``[Q]`` by majority vote of the ``k`` nearest gallery items; ties go to the class whose
    first vote ranks higher."""
    _ks(k)
    k = min(k, len(gallery))
    dummy = torch.zeros(len(query), dtype=gallery_labels.dtype)
    classes, inverse = torch.unique(gallery_labels, return_inverse=True)
    out = []
    for ranked, _, _ in _ranked(query, dummy, gallery, inverse, metric):
        top = ranked[:, :k]
        counts = torch.zeros(len(top), len(classes))
        first = torch.zeros(len(top), len(classes))
        for r in range(k):
            col = top[:, r : r + 1]
            counts.scatter_add_(1, col, torch.ones(len(top), 1))
            first.scatter_reduce_(1, col, torch.full((len(top), 1), float(k - r)), reduce="amax")
        score = counts * (k + 1) + first  # the count decides; the earlier first vote breaks ties
        out.append(classes[score.argmax(dim=1)])
    return torch.cat(out) if out else gallery_labels[:0]


def average_precision(
    query: torch.Tensor,
    query_labels: torch.Tensor,
    gallery: torch.Tensor,
    gallery_labels: torch.Tensor,
    metric: Metric = "cosine",
) -> torch.Tensor:
    """AP of every query ``[Q]``: mean of precision@rank over the ranks of its relevant items (NaN when
    the gallery holds none of its class)."""
    out = []
    for _, rel, _ in _ranked(query, query_labels, gallery, gallery_labels, metric):
        relf = rel.float()
        precision = relf.cumsum(dim=1) / torch.arange(1, rel.shape[1] + 1)
        out.append((precision * relf).sum(dim=1) / relf.sum(dim=1))  # 0/0 -> NaN
    return torch.cat(out) if out else torch.zeros(0)


def mean_average_precision(
    query: torch.Tensor,
    query_labels: torch.Tensor,
    gallery: torch.Tensor,
    gallery_labels: torch.Tensor,
    metric: Metric = "cosine",
) -> float:
    """Mean AP over the queries that have at least one relevant gallery item (NaN if none has)."""
    ap = average_precision(query, query_labels, gallery, gallery_labels, metric)
    ap = ap[~ap.isnan()]
    return float(ap.mean()) if len(ap) else math.nan


def precision_recall(
    query: torch.Tensor,
    query_labels: torch.Tensor,
    gallery: torch.Tensor,
    gallery_labels: torch.Tensor,
    metric: Metric = "cosine",
) -> tuple[torch.Tensor, torch.Tensor]:
    """Per query, precision and recall ``[Q, G]`` when the ``r + 1`` best-ranked items are returned."""
    precision, recall = [], []
    for _, rel, _ in _ranked(query, query_labels, gallery, gallery_labels, metric):
        found = rel.float().cumsum(dim=1)
        precision.append(found / torch.arange(1, rel.shape[1] + 1))
        recall.append(found / found[:, -1:].clamp_min(1))
    return torch.cat(precision), torch.cat(recall)


# -- one call -------------------------------------------------------------------------------------
def retrieval_metrics(
    query: torch.Tensor,
    query_labels: torch.Tensor,
    gallery: torch.Tensor,
    gallery_labels: torch.Tensor,
    ks: Sequence[int] = (1, 5),
    knn_k: int = 5,
    metric: Metric = "cosine",
    gallery_mode: GalleryMode = "all",
) -> dict[str, float]:
    """``top<k>``, ``recall@<k>``, ``knn<knn_k>`` accuracy and ``map`` of queries against a gallery of
    every reference (``"all"``) or of the class means (``"class_means"``)."""
    if gallery_mode == "class_means":
        gallery, gallery_labels = class_means(gallery, gallery_labels, normalize=metric == "cosine")
    elif gallery_mode != "all":
        raise ValueError(f"gallery_mode must be 'all' or 'class_means', got {gallery_mode!r}")
    out: dict[str, float] = {}
    for k, v in topk_accuracy(query, query_labels, gallery, gallery_labels, ks, metric).items():
        out[f"top{k}"] = v
    for k, v in recall_at_k(query, query_labels, gallery, gallery_labels, ks, metric).items():
        out[f"recall@{k}"] = v
    predicted = knn_predict(query, gallery, gallery_labels, knn_k, metric)
    out[f"knn{knn_k}"] = float((predicted == query_labels).float().mean()) if len(query) else math.nan
    out["map"] = mean_average_precision(query, query_labels, gallery, gallery_labels, metric)
    return out


def evaluate_embeddings(
    embeddings: torch.Tensor,
    labels: torch.Tensor,
    per_class: int = 1,
    ks: Sequence[int] = (1, 5),
    knn_k: int = 5,
    metric: Metric = "cosine",
    gallery_mode: GalleryMode = "all",
) -> dict[str, float]:
    """Split by :func:`split_gallery_query` (``per_class`` gallery items per class), then
    :func:`retrieval_metrics`; also reports ``num_queries`` and ``num_gallery``."""
    _check(embeddings, labels, "")
    g, q = split_gallery_query(labels, per_class)
    if len(q) == 0:
        raise ValueError(f"no queries: every class has at most per_class={per_class} samples")
    out = retrieval_metrics(
        embeddings[q], labels[q], embeddings[g], labels[g], ks, knn_k, metric, gallery_mode
    )
    return {**out, "num_queries": float(len(q)), "num_gallery": float(len(g))}
