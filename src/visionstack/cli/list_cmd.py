"""``visionstack list [KIND] [PATTERN]``: registered parts as a table."""

from __future__ import annotations

import argparse


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "kind",
        nargs="?",
        default=None,
        help="backbone, encoder, neck, head, loss, method, dataset, transform, optimizer, "
        "scheduler, metric (default: a count per kind)",
    )
    parser.add_argument(
        "pattern", nargs="?", default="*", help="glob pattern, e.g. 'resnet*' or 'timm/convnext*'"
    )
    parser.add_argument("--aliases", action="store_true", help="show the aliases of each name")


def run(args: argparse.Namespace) -> int:
    from rich.console import Console
    from rich.table import Table

    from visionstack.core.registry import REGISTRIES, registry_for

    console = Console()
    if args.kind is None:
        table = Table("kind", "registered", "example")
        for kind, reg in REGISTRIES.items():
            names = reg.names()
            table.add_row(kind, str(len(names)), ", ".join(names[:4]) + (" ..." if len(names) > 4 else ""))
        console.print(table)
        console.print("`visionstack list KIND [PATTERN]` lists one kind; timm models are `timm/<name>`.")
        return 0
    reg = registry_for(args.kind)
    names = reg.list(args.pattern)
    table = Table(
        "name", *(["aliases"] if args.aliases else []), title=f"{reg.kind}s matching {args.pattern!r}"
    )
    for name in names:
        table.add_row(name, *([", ".join(reg.aliases_of(name))] if args.aliases else []))
    console.print(table)
    console.print(f"{len(names)} {reg.kind}(s)")
    return 0 if names else 1
