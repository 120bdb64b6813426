"""``visionstack eval CHECKPOINT [CFG]``: top-k, per-class, macro / micro metrics and a confusion matrix.

What it computes is :func:`visionstack.tools.evaluate.evaluate_checkpoint`; this module parses the
arguments, writes ``metrics.json``, ``per_class.csv`` and ``confusion_matrix.png`` to ``--out`` and prints a
summary table. Under ``torchrun`` each rank evaluates its shard and rank 0 writes the files.
"""

from __future__ import annotations

import argparse
from collections.abc import Mapping
from typing import Any

from visionstack.cli.args import add_amp, add_overrides, amp_of


def add_arguments(parser: argparse.ArgumentParser) -> None:
    from visionstack.tools.evaluate import SPLITS
    from visionstack.tools.tta import TTA_MODES

    parser.add_argument("checkpoint", nargs="?", default=None, help="checkpoint or run directory to evaluate")
    parser.add_argument(
        "config", nargs="?", default=None, help="run config (optional: the checkpoint carries its own)"
    )
    parser.add_argument(
        "--checkpoint", dest="checkpoint_flag", default=None, metavar="PATH", help=argparse.SUPPRESS
    )
    add_overrides(parser, "data.root=/data/cub data.val_batch_size=64")
    parser.add_argument("--split", choices=SPLITS, default="val", help="data split to evaluate (default val)")
    parser.add_argument(
        "--tta",
        choices=TTA_MODES,
        default=None,
        help="test-time augmentation (default: eval.tta of the config, else none)",
    )
    add_amp(parser, "train.amp of the run, as in validation")
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


def _summary(reports: Mapping[str, Any], retrieval: Mapping[str, float] | None, title: str) -> Any:
    from rich.table import Table

    from visionstack.tools.reports import format_float

    keys = list(reports)
    table = Table("metric", *keys, title=title)
    first = reports[keys[0]]
    blank = [""] * (len(keys) - 1)
    for k in first.topk:
        table.add_row(f"top-{k} accuracy", *[format_float(reports[o].topk.get(k)) for o in keys])
    for avg in ("macro", "micro"):
        for m in ("precision", "recall", "f1"):
            table.add_row(f"{m} ({avg})", *[format_float(getattr(reports[o], avg)[m]) for o in keys])
    scored = [r for r in first.per_class if r.accuracy is not None]
    if scored:
        worst = min(scored, key=lambda r: r.accuracy)
        table.add_row("worst class", f"{worst.name} ({format_float(worst.accuracy)})", *blank)
    table.add_row("samples", str(first.num_samples), *blank)
    for name, value in (retrieval or {}).items():
        shown = format_float(value) if "num_" not in name else f"{int(value)}"
        table.add_row(f"retrieval {name}", shown, *blank)
    return table


def run(args: argparse.Namespace) -> int:
    from pathlib import Path

    from rich.console import Console

    from visionstack.engine import distributed
    from visionstack.engine.run_log import progress_enabled
    from visionstack.errors import ConfigError
    from visionstack.tools.evaluate import default_out_dir, evaluate_checkpoint

    checkpoint = args.checkpoint_flag or args.checkpoint
    config = args.config
    if args.checkpoint_flag and args.checkpoint:  # `eval CFG --checkpoint PATH` (the older spelling)
        config = args.checkpoint
    if checkpoint is None:
        raise ConfigError("checkpoint", "give the checkpoint (or run directory) to evaluate")
    device = distributed.init_distributed(args.device)
    try:
        rank = distributed.get_rank()
        result = evaluate_checkpoint(
            checkpoint,
            config,
            args.overrides,
            split=args.split,
            tta=args.tta,
            batch_size=args.batch_size,
            workers=args.workers,
            device=device,
            amp="config" if args.amp is None else amp_of(args),
            progress=rank == 0 and progress_enabled(False if args.no_progress else None),
        )
        if rank != 0:
            return 0
        out = Path(args.out) if args.out else default_out_dir(checkpoint, args.split, result.tta)
        paths = result.save(out, sort=args.sort)
    finally:
        distributed.cleanup()
    title = f"{checkpoint} on {args.split}" + (f" (tta {result.tta})" if result.tta else "")
    console = Console()
    console.print(_summary(result.reports, result.retrieval, title))
    console.print(
        "micro: every sample counts once (= top-1 accuracy); macro: mean over classes. "
        f"Wrote {', '.join(str(p) for p in paths.values())}"
    )
    return 0
