"""``visionstack config show CFG [--set k=v ...]``: the merged, resolved config."""

from __future__ import annotations

import argparse

from visionstack.cli.args import add_overrides


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "action", choices=["show", "check"], help="show: print the merged config; check: validate only"
    )
    parser.add_argument("config", help="YAML or JSON run config")
    add_overrides(parser, "model.head.num_classes=10 train.epochs=3")


def run(args: argparse.Namespace) -> int:
    from visionstack.core.config import dump_config, load_config

    cfg = load_config(args.config, args.overrides)
    cfg.pop("_source_", None)
    if args.action == "show":
        print(dump_config(cfg), end="")
    else:
        print(f"{args.config}: OK")
    return 0
