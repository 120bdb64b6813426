"""What a run reports: a progress bar, a summary line per epoch, CSV files, TensorBoard events, PNG curves.

Files in the run directory (rank 0 only):

- ``metrics.csv``: one row per epoch (``epoch``, ``step``, ``lr``, ``train/<loss keys>`` averaged over the
  epoch, ``val/top1``, ``val/top5``, ``val/loss``, ``val_ema/...``, ``time``); columns are the union of the
  keys seen.
- ``train_log.csv``: one row every ``train.log_interval`` steps (losses, lr, images/s).
- ``tensorboard/``: the same scalars as TensorBoard events (``tensorboard --logdir <work_dir>``): per step
  ``step/<key>``, per epoch ``train/<loss>``, ``val/...``, ``epoch/lr``.
- ``curves.png``: training loss and learning rate per step, evaluation metrics per epoch.

On resume, rows and events after the resumed step are dropped, so the files read as one run.
"""

from __future__ import annotations

import csv
import math
import os
import sys
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)

from visionstack.core.io import atomic_write


def progress_enabled(setting: bool | None = None) -> bool:
    """Whether to draw a progress bar: ``train.progress`` if set, else only on a TTY outside CI."""
    if setting is not None:
        return bool(setting)
    if os.environ.get("CI", "").lower() in ("1", "true", "yes"):
        return False
    return sys.stderr.isatty()


def count_progress(label: str, enabled: bool) -> Progress:
    """A transient ``label  [bar]  done/total  eta`` bar on stderr for a loop over a known count; a
    disabled bar costs nothing. Use as a context manager and ``add_task`` / ``advance`` on it."""
    return Progress(
        TextColumn(label),
        BarColumn(),
        MofNCompleteColumn(),
        TimeRemainingColumn(),
        console=Console(stderr=True),
        disable=not enabled,
        transient=True,
    )


class EpochProgress:
    """A rich progress bar on stderr (one task per epoch) with loss, lr and images/s; a no-op when disabled."""

    def __init__(self, enabled: bool) -> None:
        self.bar: Progress | None = None
        self.task: Any = None
        if enabled:
            self.bar = Progress(
                TextColumn("[bold]{task.description}"),
                BarColumn(),
                TextColumn("{task.completed}/{task.total}"),
                TextColumn("loss {task.fields[loss]}  lr {task.fields[lr]}  {task.fields[ips]} img/s"),
                TimeElapsedColumn(),
                TimeRemainingColumn(),
                console=Console(stderr=True),
                transient=True,
            )
            self.bar.start()

    def start_epoch(self, description: str, total: int, completed: int, lr: float) -> None:
        if self.bar is not None:
            self.task = self.bar.add_task(
                description, total=total, completed=completed, loss="-", lr=f"{lr:.3g}", ips="-"
            )

    def advance(self) -> None:
        if self.bar is not None:
            self.bar.update(self.task, advance=1)

    def show(self, values: Mapping[str, float]) -> None:
        """Update the fields from logged values (``loss``, ``lr``, ``ips``)."""
        if self.bar is not None:
            self.bar.update(
                self.task,
                loss=f"{values.get('loss', float('nan')):.4f}",
                lr=f"{values.get('lr', float('nan')):.3g}",
                ips=f"{values.get('ips', 0):.0f}",
            )

    def end_epoch(self) -> None:
        if self.bar is not None and self.task is not None:
            self.bar.remove_task(self.task)
            self.task = None

    def stop(self) -> None:
        if self.bar is not None:
            self.bar.stop()
            self.bar = None


def _read_rows(path: Path) -> list[dict[str, str]]:
    if not path.is_file():
        return []
    with open(path, newline="", encoding="utf-8") as fh:
        return list(csv.DictReader(fh))


def _write_rows(path: Path, rows: list[Mapping[str, Any]]) -> None:
    columns: list[str] = []
    for row in rows:
        columns.extend(k for k in row if k not in columns)

    def write(tmp: Path) -> None:
        with open(tmp, "w", newline="", encoding="utf-8") as fh:
            writer = csv.DictWriter(fh, fieldnames=columns)
            writer.writeheader()
            writer.writerows(rows)

    atomic_write(path, write)


def _fmt(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:.6g}"
    return str(value)


class RunLogger:
    """Writes the run's CSV, TensorBoard and PNG files and prints the epoch summaries.

    Args:
        work_dir: the run directory.
        enabled: write files and print (rank 0); other ranks get a logger that does nothing.
        resume_step: drop logged rows and events after this global step (resuming).
        tensorboard: write TensorBoard events.
    """

    def __init__(
        self,
        work_dir: str | os.PathLike[str],
        enabled: bool = True,
        resume_step: int | None = None,
        tensorboard: bool = True,
    ) -> None:
        self.work_dir = Path(work_dir)
        self.enabled = enabled
        self.console = Console()
        self.epoch_rows: list[dict[str, Any]] = []
        self.step_rows: list[dict[str, Any]] = []
        self.writer = None
        if not enabled:
            return
        self.work_dir.mkdir(parents=True, exist_ok=True)
        if resume_step is not None:
            self.epoch_rows = [r for r in _read_rows(self.metrics_csv) if int(r["step"]) <= resume_step]
            self.step_rows = [r for r in _read_rows(self.train_csv) if int(r["step"]) <= resume_step]
            _write_rows(self.metrics_csv, self.epoch_rows)
            _write_rows(self.train_csv, self.step_rows)
        if tensorboard:
            from torch.utils.tensorboard import SummaryWriter

            purge = None if resume_step is None else resume_step + 1
            self.writer = SummaryWriter(str(self.work_dir / "tensorboard"), purge_step=purge)

    @property
    def metrics_csv(self) -> Path:
        return self.work_dir / "metrics.csv"

    @property
    def train_csv(self) -> Path:
        return self.work_dir / "train_log.csv"

    def log_step(self, step: int, epoch: int, values: Mapping[str, float]) -> None:
        """Record training values (losses, lr, images/s) at global ``step``."""
        if not self.enabled:
            return
        row = {"step": step, "epoch": epoch, **{k: _fmt(v) for k, v in values.items()}}
        self.step_rows.append(row)
        new_file = not self.train_csv.is_file()
        if new_file or list(row) != list(self.step_rows[0]):
            _write_rows(self.train_csv, self.step_rows)
        else:
            with open(self.train_csv, "a", newline="", encoding="utf-8") as fh:
                csv.DictWriter(fh, fieldnames=list(row)).writerow(row)
        if self.writer is not None:
            for key, value in values.items():
                self.writer.add_scalar(f"step/{key}", float(value), step)

    def log_epoch(self, epoch: int, step: int, values: Mapping[str, float]) -> None:
        """Record an epoch's averages and evaluation results; rewrite ``metrics.csv`` and ``curves.png``."""
        if not self.enabled:
            return
        self.epoch_rows.append({"epoch": epoch, "step": step, **{k: _fmt(v) for k, v in values.items()}})
        _write_rows(self.metrics_csv, self.epoch_rows)
        if self.writer is not None:
            for key, value in values.items():
                if key.startswith(("val", "train/")) or key in ("lr",):
                    self.writer.add_scalar(key if "/" in key else f"epoch/{key}", float(value), step)
            self.writer.flush()
        self.plot()

    def summary(self, epoch: int, epochs: int, values: Mapping[str, float], seconds: float) -> None:
        """The one-line epoch summary on the console."""
        if not self.enabled:
            return
        shown = []
        for key, value in values.items():
            if key.startswith("train/") or key.startswith("val") or key == "lr":
                shown.append(f"{key} {value:.4g}" if isinstance(value, float) else f"{key} {value}")
        self.console.print(
            f"epoch {epoch}/{epochs}  " + "  ".join(shown) + f"  ({seconds:.1f}s)",
            highlight=False,
            soft_wrap=True,
        )

    def print(self, message: str) -> None:
        if self.enabled:
            self.console.print(message, highlight=False, soft_wrap=True)

    def plot(self) -> Path | None:
        """Draw ``curves.png`` from the logged rows (matplotlib, Agg backend)."""
        if not self.enabled or not (self.step_rows or self.epoch_rows):
            return None
        return plot_curves(self.step_rows, self.epoch_rows, self.work_dir / "curves.png")

    def close(self) -> None:
        if self.writer is not None:
            self.writer.close()
            self.writer = None


def _series(rows: list[Mapping[str, Any]], x: str, key: str) -> tuple[list[float], list[float]]:
    xs, ys = [], []
    for row in rows:
        raw = row.get(key)
        if raw in (None, ""):
            continue
        value = float(raw)
        if math.isfinite(value):
            xs.append(float(row[x]))
            ys.append(value)
    return xs, ys


def plot_curves(
    step_rows: list[Mapping[str, Any]], epoch_rows: list[Mapping[str, Any]], out: str | os.PathLike[str]
) -> Path:
    """Three panels: training losses per step, learning rate per step, evaluation metrics per epoch."""
    import matplotlib

    matplotlib.use("Agg", force=False)
    from matplotlib.figure import Figure

    fig = Figure(figsize=(15, 4), tight_layout=True)
    loss_ax, lr_ax, val_ax = fig.subplots(1, 3)
    keys = [k for k in (step_rows[0] if step_rows else {}) if k.startswith("loss")]
    for key in keys:
        loss_ax.plot(*_series(step_rows, "step", key), label=key)
    loss_ax.set(title="training loss", xlabel="step")
    lr_ax.plot(*_series(step_rows, "step", "lr"))
    lr_ax.set(title="learning rate", xlabel="step")
    val_keys = sorted({k for r in epoch_rows for k in r if k.startswith("val") and "top" in k})
    for key in val_keys:
        val_ax.plot(*_series(epoch_rows, "epoch", key), marker="o", label=key)
    val_ax.set(title="evaluation", xlabel="epoch")
    for ax, has in ((loss_ax, keys), (val_ax, val_keys)):
        if has:
            ax.legend(fontsize="small")
    out = Path(out)
    atomic_write(out, lambda tmp: fig.savefig(tmp, format="png", dpi=80))
    return out
