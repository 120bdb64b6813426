"""Arguments shared by several verbs."""

from __future__ import annotations

import argparse


def add_overrides(
    parser: argparse.ArgumentParser, example: str = "train.epochs=3 data.batch_size=64"
) -> None:
    """``--set KEY=VALUE ...`` into ``args.overrides``; repeated ``--set`` flags add up."""
    parser.add_argument(
        "--set",
        dest="overrides",
        nargs="+",
        action="extend",
        default=[],
        metavar="KEY=VALUE",
        help=f"config overrides such as {example}",
    )
