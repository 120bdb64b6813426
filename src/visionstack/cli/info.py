"""``visionstack info CFG|NAME``: parameters per part, FLOPs, output shapes, feature_info, layers."""

from __future__ import annotations

import argparse
from pathlib import Path

from visionstack.cli.args import add_overrides


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "target", help="a run config (YAML/JSON) or a model name (e.g. resnet50, timm/convnext_tiny)"
    )
    parser.add_argument(
        "--input-size",
        type=int,
        default=None,
        help="square input size (default: data.image_size of the config, the backbone's "
        "pretrained input size, or 224)",
    )
    parser.add_argument("--num-classes", type=int, default=None, help="classes when the config does not say")
    add_overrides(parser)
    parser.add_argument("--layers", action="store_true", help="add a per-layer table (torchinfo-style)")
    parser.add_argument("--depth", type=int, default=3, help="module depth of the per-layer table")
    parser.add_argument("--features-only", action="store_true", help="for a model name: the bare backbone")


def build_target(args: argparse.Namespace):
    """The model and its input size from a config path or a model name."""
    target = Path(args.target)
    if target.suffix.lower() in (".yaml", ".yml", ".json") or target.is_file():
        from visionstack.core.config import load_config
        from visionstack.models.build import build_model

        cfg = load_config(target, args.overrides)
        model_cfg = dict(cfg["model"])
        if args.num_classes is not None:
            model_cfg["num_classes"] = args.num_classes
        elif "num_classes" not in model_cfg and not _head_has_classes(model_cfg):
            model_cfg["num_classes"] = 1000
        size = args.input_size or (cfg.get("data") or {}).get("image_size")
        return build_model(model_cfg), size
    from visionstack.models.build import create_model

    model = create_model(args.target, num_classes=args.num_classes, features_only=args.features_only)
    return model, args.input_size


def _head_has_classes(model_cfg: dict) -> bool:
    head = model_cfg.get("head")
    return isinstance(head, dict) and "num_classes" in head


def run(args: argparse.Namespace) -> int:
    from rich.console import Console
    from rich.table import Table

    from visionstack.tools.summary import summarize

    model, size = build_target(args)
    backbone = getattr(model, "backbone", model)
    pretrained = getattr(backbone, "pretrained_cfg", None) or {}
    if size is None:
        size = tuple(pretrained.get("input_size", (3, 224, 224)))[-1]
    s = summarize(model, int(size), layers=args.layers, max_depth=args.depth)
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
