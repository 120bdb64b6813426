"""Redraw a run's curves (loss, learning rate, accuracy) from the CSV files training writes: what
``visionstack plot`` runs. The drawing is training's own (:func:`visionstack.engine.run_log.plot_curves`).

Example::

    redraw_curves("runs/digits")      # -> runs/digits/curves.png
"""

from __future__ import annotations

import csv
import os
from pathlib import Path
from typing import Any

from visionstack.engine.run_log import plot_curves
from visionstack.errors import VisionStackError

__all__ = ["read_rows", "redraw_curves"]

STEP_CSV = "train_log.csv"
EPOCH_CSV = "metrics.csv"


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


def redraw_curves(
    run_dir: str | os.PathLike[str], out: str | os.PathLike[str] | None = None
) -> tuple[Path, int, int]:
    """Draw ``curves.png`` (or ``out``) of ``run_dir``; returns the file and the step / epoch row counts."""
    run_dir = Path(run_dir)
    if not run_dir.is_dir():
        raise VisionStackError(f"{run_dir}: run directory not found")
    step_rows = read_rows(run_dir / STEP_CSV, "step")
    epoch_rows = read_rows(run_dir / EPOCH_CSV, "epoch")
    if not step_rows and not epoch_rows:
        raise VisionStackError(
            f"{run_dir}: no {STEP_CSV} or {EPOCH_CSV} with rows; is it a visionstack run directory?"
        )
    path = plot_curves(step_rows, epoch_rows, out or run_dir / "curves.png")
    return path, len(step_rows), len(epoch_rows)
