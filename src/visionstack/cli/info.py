"""``visionstack info CFG|NAME``: parameters per part, FLOPs, output shapes, feature_info, layers."""

from __future__ import annotations

import argparse

from visionstack.cli.args import add_model_target


def add_arguments(parser: argparse.ArgumentParser) -> None:
    add_model_target(parser)
    parser.add_argument("--layers", action="store_true", help="add a per-layer table (torchinfo-style)")
    parser.add_argument("--depth", type=int, default=3, help="module depth of the per-layer table")


def run(args: argparse.Namespace) -> int:
    from rich.console import Console
    from rich.table import Table

    from visionstack.tools.summary import build_target, summarize

    model, size = build_target(
        args.target, args.overrides, args.num_classes, args.input_size, args.features_only
    )
    s = summarize(model, size, layers=args.layers, max_depth=args.depth)
    console = Console()
    table = Table("part", "params", "trainable", title=f"{args.target} at {s.input_shape}")
    for name, total, trainable in s.parts:
        table.add_row(name, f"{total:,}", f"{trainable:,}")
    table.add_row("[b]total", f"[b]{s.total_params:,}", f"[b]{s.trainable_params:,}")
    console.print(table)
    console.print(
        f"FLOPs: {s.flops / 1e9:.3f} G ({s.macs / 1e9:.3f} G multiply-adds; 1 MAC = 2 FLOPs), batch 1"
    )
    for key, shape in s.output_shapes.items():
        console.print(f"{key}: {shape}")
    if s.feature_info:
        ft = Table("level", "name", "channels", "reduction", title="feature_info")
        for i, f in enumerate(s.feature_info):
            ft.add_row(str(i), f.name, str(f.channels), str(f.reduction))
        console.print(ft)
    if s.layers:
        lt = Table("layer", "type", "output", "params")
        for row in s.layers:
            lt.add_row(
                "  " * (row.depth - 1) + row.name.rsplit(".", 1)[-1],
                row.type,
                row.output_shape,
                f"{row.params:,}",
            )
        console.print(lt)
    return 0
