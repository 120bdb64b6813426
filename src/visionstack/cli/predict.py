"""``visionstack predict CHECKPOINT IMAGES...``: top-k classes of images, as a table, CSV or JSON.

The checkpoint carries the model config, class names and data section, so no config file is needed; images
are preprocessed with the evaluation pipeline of that data section.
"""

from __future__ import annotations

import argparse
import io
import sys

from visionstack.cli.args import add_amp, amp_of


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("checkpoint", help="a checkpoint written by visionstack train")
    parser.add_argument(
        "images",
        nargs="*",
        metavar="IMAGES",
        help="image files, folders (searched recursively), glob patterns, or @list.txt",
    )
    parser.add_argument(
        "--list",
        dest="list_files",
        action="append",
        default=[],
        metavar="FILE",
        help="a text file with one image path per line (repeatable)",
    )
    parser.add_argument("--topk", type=int, default=5, help="classes per image (default 5)")
    parser.add_argument("--format", choices=("table", "csv", "json"), default="table")
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--workers", type=int, default=0, help="decoding worker processes (default 0)")
    parser.add_argument("--device", default=None, help="cpu, cuda, cuda:1 ... (default: cuda when available)")
    add_amp(parser)
    parser.add_argument(
        "--output", "-o", default=None, metavar="FILE", help="write CSV / JSON / table text here"
    )
    parser.add_argument("--no-progress", action="store_true", help="hide the progress bar")


def run(args: argparse.Namespace) -> int:
    from rich.console import Console
    from rich.table import Table

    from visionstack.engine.distributed import default_device
    from visionstack.engine.run_log import progress_enabled
    from visionstack.errors import ConfigError
    from visionstack.tools.predict import (
        collect_images,
        decode_policy_of,
        eval_transform,
        load_checkpoint_model,
        predict_paths,
        predictions_to_csv,
        predictions_to_json,
    )

    for flag, value in (("--topk", args.topk), ("--batch-size", args.batch_size)):
        if value < 1:
            raise ConfigError(flag, f"must be >= 1, got {value}")
    paths = collect_images(args.images, args.list_files)
    device = default_device(args.device)
    model, cfg, names = load_checkpoint_model(args.checkpoint, device)
    predictions = predict_paths(
        model,
        paths,
        eval_transform(cfg, model),
        names,
        topk=args.topk,
        batch_size=args.batch_size,
        device=device,
        num_workers=args.workers,
        decode=decode_policy_of(cfg),
        progress=progress_enabled(False if args.no_progress else None),
        amp=amp_of(args, cfg),
    )
    if args.format == "csv":
        text = predictions_to_csv(predictions)
    elif args.format == "json":
        text = predictions_to_json(predictions)
    else:
        table = Table()
        table.add_column("image", no_wrap=True, min_width=min(100, max(len(p.path) for p in predictions)))
        for i in range(len(predictions[0].names)):
            table.add_column(f"top{i + 1}")
        for p in predictions:
            table.add_row(p.path, *[f"{n} ({prob:.3f})" for n, prob in zip(p.names, p.probs)])
        if args.output is None:
            Console().print(table)
            return 0
        console = Console(record=True, width=200, file=io.StringIO())
        console.print(table)
        text = console.export_text()
    if args.output:
        from visionstack.core.io import atomic_write

        atomic_write(args.output, lambda tmp: tmp.write_text(text, encoding="utf-8"))
        print(f"wrote {len(predictions)} predictions to {args.output}", file=sys.stderr)
    else:
        sys.stdout.write(text)
    return 0
