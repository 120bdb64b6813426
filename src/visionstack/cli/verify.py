"""``visionstack verify DATA_CFG_OR_FOLDER [--set k=v ...] [--split train|val|test|all] [--workers N]``.

Decodes every image of the config's datasets (or every image file under a folder) with the decode policy
and prints a table of the bad files and why. Exit code 1 if any file is bad, 0 otherwise.
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


def _folder_files(folder: str) -> list[str]:
    from visionstack.data.decode import is_image_file

    files = []
    for dirpath, dirnames, filenames in os.walk(folder, followlinks=True):
        dirnames[:] = sorted(d for d in dirnames if not d.startswith("."))
        files.extend(
            os.path.join(dirpath, f) for f in sorted(filenames) if not f.startswith(".") and is_image_file(f)
        )
    return files


def _config_files(args: argparse.Namespace) -> tuple[dict[str, list[str]], dict]:
    from visionstack.core.config import load_config
    from visionstack.data.datasets import index_only
    from visionstack.data.decode import DecodePolicy
    from visionstack.data.loader import SPLITS, build_dataset
    from visionstack.errors import ConfigError

    cfg = load_config(args.target, args.overrides)
    data = cfg.get("data")
    if not isinstance(data, dict):
        raise ConfigError("data", f"{args.target} has no `data` section to verify")
    policy = {**(data.get("decode") or {}), "on_error": "raise"}  # report bad files, never drop them here
    DecodePolicy.from_cfg(policy)
    splits = [s for s in SPLITS if data.get(s) is not None] if args.split == "all" else [args.split]
    if not splits:
        raise ConfigError("data", "no dataset configured under data.train / data.val / data.test")
    with index_only():  # missing files are reported with the rest, not raised while listing
        files = {s: build_dataset(data, s, transform=None, decode=policy).paths for s in splits}
    return files, policy


def run(args: argparse.Namespace) -> int:
    from rich.console import Console
    from rich.progress import Progress
    from rich.table import Table

    from visionstack.data.decode import DecodePolicy, check_files
    from visionstack.errors import DataError

    if os.path.isdir(args.target):
        files, policy = {"folder": _folder_files(args.target)}, {}
        if not files["folder"]:
            raise DataError(f"{args.target}: no image files found")
    else:
        files, policy = _config_files(args)
    console = Console(width=None if Console().is_terminal else 240)
    decode_policy = DecodePolicy.from_cfg(policy)
    bad: list[tuple[str, str, str]] = []
    total = sum(len(v) for v in files.values())
    with Progress(console=console, transient=True, disable=not console.is_terminal) as progress:
        for split, paths in files.items():
            task = progress.add_task(f"decoding {split}", total=len(paths))
            found = check_files(
                paths,
                decode_policy,
                workers=max(1, args.workers),
                progress=lambda n, t=task: progress.update(t, completed=n),
            )
            bad.extend((split, path, reason) for path, reason in found)
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
