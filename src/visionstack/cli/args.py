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


def add_amp(parser: argparse.ArgumentParser, default: str = "train.amp of the run") -> None:
    """``--amp bf16|bfloat16|fp16|float16|half|none`` into ``args.amp`` (``None``: not given)."""
    from visionstack.engine.precision import AMP_CHOICES

    parser.add_argument(
        "--amp",
        choices=(*AMP_CHOICES, "none"),
        default=None,
        help=f"mixed precision of the forward (default: {default})",
    )


def amp_of(args: argparse.Namespace, cfg: dict | None = None) -> str | None:
    """The ``--amp`` choice; when it was not given, the run config's ``train.amp`` (or none)."""
    if args.amp is None:
        return ((cfg or {}).get("train") or {}).get("amp")
    return None if args.amp == "none" else args.amp


def add_model_target(parser: argparse.ArgumentParser) -> None:
    """``TARGET`` (a run config or a model name), ``--input-size``, ``--num-classes``, ``--set`` and
    ``--features-only``: what :func:`visionstack.tools.summary.build_target` takes."""
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
    parser.add_argument("--features-only", action="store_true", help="for a model name: the bare backbone")
