"""``visionstack plot RUN_DIR``: redraw a run's curves (loss, learning rate, accuracy) from its CSV files
(:mod:`visionstack.tools.plot`) into ``curves.png``."""

from __future__ import annotations

import argparse


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "run_dir", metavar="RUN_DIR", help="a run directory (with train_log.csv / metrics.csv)"
    )
    parser.add_argument(
        "--out", "-o", default=None, metavar="FILE", help="PNG to write (default RUN_DIR/curves.png)"
    )


def run(args: argparse.Namespace) -> int:
    from visionstack.tools.plot import redraw_curves

    out, steps, epochs = redraw_curves(args.run_dir, args.out)
    print(f"wrote {out} ({steps} step rows, {epochs} epoch rows)")
    return 0
