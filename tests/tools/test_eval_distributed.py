"""Evaluation under torch.distributed: two gloo ranks, each on its shard, give the single-process report."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from tests.tools.conftest import write_images

DATA = {
    "val": {"type": "image_folder"},
    "image_size": 16,
    "preset": "simple",
    "batch_size": 2,
    "num_workers": 0,
}
MODEL = {"type": "recognizer", "backbone": "test_tiny", "num_classes": 3, "embedding_dim": 6}


def _evaluate(root: str, rank: int = 0, world: int = 1) -> dict:
    from tests.conftest import _register_tiny

    _register_tiny()
    from visionstack.data.loader import build_dataset, build_loader
    from visionstack.engine.evaluation import Evaluator
    from visionstack.models.build import build_model
    from visionstack.tools.reports import ReportMetrics
    from visionstack.tools.retrieval import evaluate_embeddings

    torch.manual_seed(0)
    model = build_model(MODEL).eval()
    dataset = build_dataset({**DATA, "root": root}, "val")
    loader = build_loader(dataset, 2, distributed=world > 1, pad=False, num_replicas=world, rank=rank)
    metric = lambda: ReportMetrics(3, dataset.class_names, (1, 2))  # noqa: E731
    found = Evaluator(loader, 3, (1, 2), "cpu", metric=metric, embeddings=True).collect(model)
    report, (embeddings, labels) = found.metrics["logits"], found.embeddings
    return {
        "confusion": report.confusion.tolist(),
        "top": report.topk,
        "macro": report.macro,
        "n_embeddings": len(labels),
        "retrieval": evaluate_embeddings(embeddings, labels),
    }


def _worker(rank: int, world: int, root: str, init_file: str, out: str) -> None:
    import torch.distributed as dist

    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=world)
    try:
        result = _evaluate(root, rank, world)
    finally:
        dist.destroy_process_group()
    Path(out, f"rank{rank}.json").write_text(json.dumps(result))


@pytest.mark.slow
def test_two_ranks_equal_one_process(tmp_path) -> None:
    root = write_images(tmp_path / "images", per_class=3)  # 9 images: uneven shards of 5 and 4
    import torch.multiprocessing as mp

    mp.spawn(_worker, args=(2, str(root), str(tmp_path / "init"), str(tmp_path)), nprocs=2, join=True)
    single = json.loads(json.dumps(_evaluate(str(root))))
    assert sum(map(sum, single["confusion"])) == 9 and single["n_embeddings"] == 9
    for rank in (0, 1):  # every rank holds the reduced result
        ranked = json.loads((tmp_path / f"rank{rank}.json").read_text())
        assert ranked["confusion"] == single["confusion"] and ranked["n_embeddings"] == 9
        for key in ("top", "macro", "retrieval"):
            assert ranked[key] == pytest.approx(single[key])
