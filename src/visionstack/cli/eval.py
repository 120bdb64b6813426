"""``visionstack eval [CFG] --checkpoint PATH``: top-k, per-class, macro / micro metrics and a confusion matrix.

The model, its class names and (without ``CFG``) the data section come from the checkpoint. Writes
``metrics.json``, ``per_class.csv`` and ``confusion_matrix.png`` (see :mod:`visionstack.tools.reports`) to
``--out`` and prints a summary table. Every ``logits*`` output of the model is scored (e.g. PMG's
``logits_concat``); the files describe ``logits`` and ``metrics.json`` lists the others under ``outputs``.
Models that also return an ``embedding`` (the recognizer) get retrieval metrics (recall@k, mAP, kNN).

Under ``torchrun`` each rank evaluates its shard of the split (no sample twice); the metric states are summed
across ranks and rank 0 writes the files.
"""

from __future__ import annotations

import argparse
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from visionstack.cli.args import add_overrides

SPLITS = ("val", "test", "train")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    from visionstack.tools.tta import TTA_MODES

    parser.add_argument(
        "config", nargs="?", default=None, help="run config (optional: the checkpoint carries its own)"
    )
    parser.add_argument("--checkpoint", required=True, metavar="PATH", help="checkpoint to evaluate")
    add_overrides(parser, "data.root=/data/cub data.val_batch_size=64")
    parser.add_argument("--split", choices=SPLITS, default="val", help="data split to evaluate (default val)")
    parser.add_argument(
        "--tta",
        choices=TTA_MODES,
        default=None,
        help="test-time augmentation (default: eval.tta of the config, else none)",
    )
    parser.add_argument(
        "--out",
        default=None,
        metavar="DIR",
        help="output folder (default: eval_<split> beside the checkpoint)",
    )
    parser.add_argument("--batch-size", type=int, default=None, help="overrides data.val_batch_size")
    parser.add_argument("--workers", type=int, default=None, help="overrides data.num_workers")
    parser.add_argument("--device", default=None, help="cpu, cuda ... (default: cuda when available)")
    parser.add_argument(
        "--sort",
        choices=("accuracy", "name", "index"),
        default="accuracy",
        help="class order of the confusion-matrix plot (default: per-class accuracy)",
    )
    parser.add_argument("--no-progress", action="store_true", help="hide the progress bar")


def resolve_config(
    config: str | None, overrides: Sequence[str], checkpoint_cfg: Mapping[str, Any]
) -> dict[str, Any]:
    """The run config: ``config`` with overrides, else the checkpoint's config with overrides."""
    from visionstack.core.config import apply_overrides, load_config
    from visionstack.core.schema import validate_config

    if config is not None:
        return load_config(config, overrides)
    cfg = apply_overrides(dict(checkpoint_cfg), overrides)
    validate_config(cfg)
    return cfg


def retrieval_options(eval_cfg: Mapping[str, Any]) -> dict[str, Any] | None:
    """``eval.retrieval``: ``false`` turns retrieval off; a mapping gives :func:`evaluate_embeddings` options
    (``per_class``, ``ks``, ``knn_k``, ``metric``, ``gallery_mode``); default on, with its defaults."""
    from visionstack.core.build import check_keys
    from visionstack.errors import ConfigError

    value = eval_cfg.get("retrieval", True)
    if value is False or value is None:
        return None
    if value is True:
        return {}
    if not isinstance(value, Mapping):
        raise ConfigError("eval.retrieval", f"expected true, false or a mapping, got {value!r}")
    check_keys(value, ("per_class", "ks", "knn_k", "metric", "gallery_mode"), "eval.retrieval")
    return dict(value)


def collect_reports(
    model: Any,
    loader: Any,
    num_classes: int,
    class_names: Sequence[str] | None,
    topk: Sequence[int],
    device: Any,
    progress: bool = False,
) -> tuple[dict[str, Any], Any]:
    """Run ``model.predict_step`` over ``loader``: a :class:`ReportMetrics` per ``logits*`` output and the
    ``(embeddings, labels)`` of an ``embedding`` output (gathered from every rank), or None."""
    import torch

    from visionstack.engine import distributed
    from visionstack.engine.run_log import count_progress
    from visionstack.tools.reports import ReportMetrics

    metrics: dict[str, ReportMetrics] = {}
    embeddings, labels_seen, indices = [], [], []
    bar = count_progress("eval", progress)
    with bar, torch.no_grad():
        task = bar.add_task("eval", total=len(loader))
        for batch in loader:
            images = batch["image"].to(device, non_blocking=True)
            labels = batch["label"].to(device)
            outputs = model.predict_step(images)
            for key, value in outputs.items():
                if key.startswith("logits"):
                    if key not in metrics:
                        metrics[key] = ReportMetrics(num_classes, class_names, topk).to(device)
                    metrics[key].update(value, labels)
            if "embedding" in outputs:
                embeddings.append(outputs["embedding"].float().cpu())
                labels_seen.append((labels.argmax(1) if labels.ndim == 2 else labels).cpu())
                indices.append(batch["index"].cpu())
            bar.advance(task)
    if distributed.is_distributed():  # a rank without batches still joins every reduction
        for key in sorted({k for ranked in distributed.all_gather_object(sorted(metrics)) for k in ranked}):
            if key not in metrics:
                metrics[key] = ReportMetrics(num_classes, class_names, topk).to(device)
    if not metrics:
        from visionstack.errors import CheckpointError

        raise CheckpointError(f"{type(model).__name__}.predict_step returned no 'logits' output to evaluate")
    reports = {key: metrics[key].compute() for key in sorted(metrics)}  # sums the states over ranks
    parts = [torch.cat(embeddings), torch.cat(labels_seen), torch.cat(indices)] if embeddings else None
    if distributed.is_distributed():  # every rank's embeddings, in data set order (the same split as alone)
        ranked = [r for r in distributed.all_gather_object(parts) if r is not None]
        parts = [torch.cat([r[i] for r in ranked]) for i in range(3)] if ranked else None
    if parts is None:
        return reports, None
    order = torch.argsort(parts[2])
    return reports, (parts[0][order], parts[1][order])


def _summary(reports: Mapping[str, Any], retrieval: Mapping[str, float] | None, title: str) -> Any:
    from rich.table import Table

    from visionstack.tools.reports import format_float

    keys = list(reports)
    table = Table("metric", *keys, title=title)
    first = reports[keys[0]]
    for k in first.topk:
        table.add_row(f"top-{k} accuracy", *[format_float(reports[o].topk.get(k)) for o in keys])
    for avg in ("macro", "micro"):
        for m in ("precision", "recall", "f1"):
            table.add_row(f"{m} ({avg})", *[format_float(getattr(reports[o], avg)[m]) for o in keys])
    accs = [r.accuracy for r in first.per_class if r.accuracy is not None]
    if accs:
        worst = min((r for r in first.per_class if r.accuracy is not None), key=lambda r: r.accuracy)
        table.add_row(
            "worst class", f"{worst.name} ({format_float(worst.accuracy)})", *[""] * (len(keys) - 1)
        )
    table.add_row("samples", str(first.num_samples), *[""] * (len(keys) - 1))
    for name, value in (retrieval or {}).items():
        table.add_row(
            f"retrieval {name}",
            format_float(value) if "num_" not in name else f"{int(value)}",
            *[""] * (len(keys) - 1),
        )
    return table


def run(args: argparse.Namespace) -> int:
    from visionstack.engine import distributed

    device = distributed.init_distributed(args.device)
    try:
        return _evaluate(args, device)
    finally:
        distributed.cleanup()


def _evaluate(args: argparse.Namespace, device: Any) -> int:
    from rich.console import Console

    from visionstack.data.loader import loader_from_data_cfg
    from visionstack.engine import distributed
    from visionstack.engine.run_log import progress_enabled
    from visionstack.errors import ConfigError, DataError
    from visionstack.tools.predict import eval_transform, load_checkpoint_model, pretrained_cfg_of
    from visionstack.tools.tta import TTAModel, check_mode, tta_transform

    world, rank = distributed.get_world_size(), distributed.get_rank()
    model, ckpt_cfg, names = load_checkpoint_model(args.checkpoint, device)
    cfg = resolve_config(args.config, args.overrides, ckpt_cfg)
    data = dict(cfg.get("data") or {})
    if not data:
        raise ConfigError("data", "no data section: give a config or --set data.val.type=... data.root=...")
    if args.batch_size is not None:
        data["val_batch_size"] = args.batch_size
    if args.workers is not None:
        data["num_workers"] = args.workers
    eval_cfg = dict(cfg.get("eval") or {})
    tta = check_mode(args.tta or eval_cfg.get("tta"))
    transform = tta_transform(eval_transform(cfg, model), tta)
    dataset, loader = loader_from_data_cfg(
        data, args.split, distributed=world > 1, pretrained_cfg=pretrained_cfg_of(model), transform=transform
    )
    if names is not None and list(dataset.class_names) != list(names):
        raise DataError(
            f"the {args.split} set's classes do not match the checkpoint's: {len(dataset.class_names)} "
            f"vs {len(names)} classes" + _first_difference(names, dataset.class_names)
        )
    names = list(names or dataset.class_names)
    evaluated = TTAModel(model, tta) if tta else model
    topk = eval_cfg.get("topk", (1, 5))
    progress = rank == 0 and progress_enabled(False if args.no_progress else None)
    reports, embedded = collect_reports(
        evaluated, loader, len(names), names, [topk] if isinstance(topk, int) else topk, device, progress
    )
    retrieval = None
    options = retrieval_options(eval_cfg)
    if embedded is not None and options is not None:
        from visionstack.tools.retrieval import evaluate_embeddings

        retrieval = evaluate_embeddings(*embedded, **options)
    if rank != 0:
        return 0
    out = Path(args.out) if args.out else default_out_dir(args.checkpoint, args.split, tta)
    main = reports["logits"] if "logits" in reports else next(iter(reports.values()))
    main.extra = {
        "checkpoint": str(args.checkpoint),
        "split": args.split,
        "tta": tta,
        "outputs": {k: _brief(r) for k, r in reports.items()},
    }
    if retrieval is not None:
        main.extra["retrieval"] = retrieval
    paths = main.save(out, sort=args.sort)
    console = Console()
    console.print(
        _summary(reports, retrieval, f"{args.checkpoint} on {args.split}" + (f" (tta {tta})" if tta else ""))
    )
    console.print(
        f"micro: every sample counts once (= top-1 accuracy); macro: mean over classes. "
        f"Wrote {', '.join(str(p) for p in paths.values())}"
    )
    return 0


def default_out_dir(checkpoint: str | Path, split: str, tta: str | None) -> Path:
    """``eval_<split>[_<tta>]`` inside a run directory, or beside a checkpoint file."""
    path = Path(checkpoint)
    return (path if path.is_dir() else path.parent) / f"eval_{split}{'_' + tta if tta else ''}"


def _brief(report: Any) -> dict[str, Any]:
    return {**{f"top{k}": v for k, v in report.topk.items()}, "macro": report.macro, "micro": report.micro}


def _first_difference(a: Sequence[str], b: Sequence[str]) -> str:
    for i, (x, y) in enumerate(zip(a, b)):
        if x != y:
            return f"; class {i} is {x!r} in the checkpoint and {y!r} in the data"
    return ""
