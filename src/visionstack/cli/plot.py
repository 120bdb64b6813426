"""``visionstack plot RUN_DIR``: redraw a run's curves (loss, learning rate, accuracy) from its CSV files.

Reads ``train_log.csv`` (per step) and ``metrics.csv`` (per epoch) that training writes and draws them with
the same function training uses (:func:`visionstack.engine.run_log.plot_curves`) into ``curves.png``.
"""

from __future__ import annotations

import argparse
import csv
from pathlib import Path
from typing import Any

from visionstack.errors import VisionStackError

STEP_CSV = "train_log.csv"
EPOCH_CSV = "metrics.csv"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "run_dir", metavar="RUN_DIR", help="a run directory (with train_log.csv / metrics.csv)"
    )
    parser.add_argument(
        "--out", "-o", default=None, metavar="FILE", help="PNG to write (default RUN_DIR/curves.png)"
    )


def read_rows(path: Path, required: str) -> list[dict[str, Any]]:
    """The rows of a run CSV (``[]`` when the file is absent); a file without a ``required`` column or with
    non-numeric values raises a :class:`VisionStackError` naming it."""
    if not path.is_file():
        return []
    try:
        with open(path, newline="", encoding="utf-8") as handle:
            rows = list(csv.DictReader(handle))
    except (UnicodeDecodeError, csv.Error) as err:
        raise VisionStackError(f"{path}: not a readable CSV file ({err})") from None
    if rows and required not in rows[0]:
        raise VisionStackError(f"{path}: no {required!r} column (columns: {', '.join(map(str, rows[0]))})")
    for number, row in enumerate(rows, start=2):
        for key, value in row.items():
            if value in (None, "") or key is None:
                continue
            try:
                float(value)
            except ValueError:
                raise VisionStackError(f"{path}, line {number}: {key}={value!r} is not a number") from None
    return rows


def run(args: argparse.Namespace) -> int:
    from visionstack.engine.run_log import plot_curves

    run_dir = Path(args.run_dir)
    if not run_dir.is_dir():
        raise VisionStackError(f"{run_dir}: run directory not found")
    step_rows = read_rows(run_dir / STEP_CSV, "step")
    epoch_rows = read_rows(run_dir / EPOCH_CSV, "epoch")
    if not step_rows and not epoch_rows:
        raise VisionStackError(
            f"{run_dir}: no {STEP_CSV} or {EPOCH_CSV} with rows; is it a visionstack run directory?"
        )
    out = plot_curves(step_rows, epoch_rows, args.out or run_dir / "curves.png")
    print(f"wrote {out} ({len(step_rows)} step rows, {len(epoch_rows)} epoch rows)")
    return 0
