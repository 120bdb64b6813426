"""``visionstack train CFG [--set k=v ...] [--work-dir DIR] [--resume auto|PATH] [--device cpu|cuda]``.

Under ``torchrun --nproc_per_node N -m visionstack train CFG`` every rank runs this; rank 0 writes files.
"""

from __future__ import annotations

import argparse

from visionstack.cli.args import add_overrides


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("config", help="YAML or JSON run config")
    add_overrides(parser, "train.epochs=3 data.batch_size=64")
    parser.add_argument(
        "--work-dir",
        default=None,
        metavar="DIR",
        help="run directory (default: the config's work_dir, else runs/<config name>)",
    )
    parser.add_argument(
        "--resume",
        default=None,
        metavar="auto|PATH",
        help="auto: continue from the newest valid checkpoint of the run directory (start fresh "
        "if none); PATH: continue from that checkpoint",
    )
    parser.add_argument(
        "--device",
        default=None,
        help="cpu, cuda, cuda:1 ... (default: train.device, else cuda when available)",
    )
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")


def run(args: argparse.Namespace) -> int:
    from visionstack.core.config import load_config
    from visionstack.engine import distributed
    from visionstack.engine.trainer import Trainer

    overrides = list(args.overrides)
    if args.no_progress:
        overrides.append("train.progress=false")
    cfg = load_config(args.config, overrides)
    try:
        trainer = Trainer(cfg, work_dir=args.work_dir, resume=args.resume, device=args.device)
        result = trainer.fit()
        if trainer.is_main:
            shown = ", ".join(f"{k} {v:.4f}" for k, v in result.items() if k.startswith("val") and "top" in k)
            print(f"done: {shown or 'no validation set'}; run directory: {result['work_dir']}")
    finally:
        distributed.cleanup()
    return 0
