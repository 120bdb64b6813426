"""``visionstack verify DATA_CFG_OR_FOLDER [--set k=v ...] [--split train|val|test|all] [--workers N]``.

Decodes every image of the config's datasets (or every image file under a folder) with the decode policy
(:mod:`visionstack.tools.verify`) and prints a table of the bad files and why. Exit code 1 if any file is
bad, 0 otherwise.
"""

from __future__ import annotations

import argparse
import os

from visionstack.cli.args import add_overrides


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "target", help="a run or data config (YAML/JSON) with a `data` section, or a folder of images"
    )
    add_overrides(parser, "data.root=/data/CUB_200_2011")
    parser.add_argument(
        "--split",
        choices=["train", "val", "test", "all"],
        default="all",
        help="which datasets of the config to check (default: all that are configured)",
    )
    parser.add_argument(
        "--workers",
        type=int,
        default=min(4, os.cpu_count() or 1),
        help="decoding threads (default: %(default)s)",
    )


def run(args: argparse.Namespace) -> int:
    from rich.console import Console
    from rich.progress import Progress
    from rich.table import Table

    from visionstack.tools.verify import files_to_verify, verify_files

    files, policy = files_to_verify(args.target, args.overrides, args.split)
    console = Console(width=None if Console().is_terminal else 240)
    total = sum(len(v) for v in files.values())
    with Progress(console=console, transient=True, disable=not console.is_terminal) as progress:
        tasks = {split: progress.add_task(f"decoding {split}", total=len(p)) for split, p in files.items()}
        bad = verify_files(
            files, policy, args.workers, lambda split, n, _t: progress.update(tasks[split], completed=n)
        )
    if bad:
        table = Table("split", "file", "reason", title=f"{len(bad)} bad file(s)")
        for column in table.columns[1:]:
            column.overflow = "fold"  # long paths wrap; they are never shortened with an ellipsis
        for split, path, reason in bad:
            table.add_row(split, path, reason)
        console.print(table)
    splits = ", ".join(f"{s}: {len(p)}" for s, p in files.items())
    console.print(f"checked {total} file(s) ({splits}): {len(bad)} bad")
    return 1 if bad else 0
