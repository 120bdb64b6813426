"""``python -m visionstack.demo`` (``make demo``): train the default config on the digits set on CPU, evaluate
the best checkpoint on the held-out split, print a results table and the run directory.

Options: ``--set key=value ...`` (config overrides), ``--work-dir DIR``, ``--config PATH``.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

DEFAULT_CONFIG = Path(__file__).resolve().parents[2] / "configs" / "demo" / "digits.yaml"
TARGET = 0.97


def free_dir(base: Path) -> Path:
    """``base`` if it does not exist yet, else ``base_2``, ``base_3``... (earlier demo runs stay intact)."""
    if not base.exists():
        return base
    n = 2
    while base.with_name(f"{base.name}_{n}").exists():
        n += 1
    return base.with_name(f"{base.name}_{n}")


def evaluate_checkpoint(path: Path, device: str = "cpu") -> tuple[dict[str, float], int]:
    """Top-k accuracy of a checkpoint on its config's held-out split (``data.val``), with the val transforms."""
    from visionstack.data.loader import loader_from_data_cfg
    from visionstack.data.transforms import transforms_from_data_cfg
    from visionstack.engine.checkpoint.format import load_model_for_inference
    from visionstack.engine.evaluation import Evaluator

    model, cfg, names = load_model_for_inference(path, device)
    pretrained = getattr(getattr(model, "backbone", model), "pretrained_cfg", None) or {}
    data = cfg["data"]
    transform = transforms_from_data_cfg(data, train=False, pretrained_cfg=pretrained)
    dataset, loader = loader_from_data_cfg(data, "val", transform=transform)
    topk = (cfg.get("eval") or {}).get("topk", [1, 5])
    return Evaluator(loader, len(names), topk, device).run(model), len(dataset)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m visionstack.demo", description=__doc__.split("\n\n")[0])
    parser.add_argument("--config", default=str(DEFAULT_CONFIG), help="run config (default: the digits demo)")
    parser.add_argument(
        "--set", dest="overrides", nargs="+", action="extend", default=[], metavar="KEY=VALUE"
    )
    parser.add_argument("--work-dir", default=None, help="run directory (default: a new runs/digits[_N])")
    args = parser.parse_args(argv)

    from rich.console import Console
    from rich.table import Table

    from visionstack.core.config import load_config
    from visionstack.engine.trainer import Trainer

    console = Console()
    cfg = load_config(args.config, args.overrides)
    work_dir = Path(args.work_dir) if args.work_dir else free_dir(Path(cfg.get("work_dir") or "runs/digits"))
    model = cfg["model"]["backbone"]
    console.print(
        f"[bold]visionstack demo[/]: {model if isinstance(model, str) else model.get('type')} on the "
        f"digits set, {cfg['train'].get('epochs')} epochs on {cfg['train'].get('device', 'cpu')}"
    )
    start = time.perf_counter()
    trainer = Trainer(cfg, work_dir=work_dir)
    console.print(
        f"train {len(trainer.data.train_set)} images, held-out {len(trainer.data.val_set)} images, "
        f"{len(trainer.class_names)} classes; run directory {work_dir}"
    )
    trainer.fit()
    train_time = time.perf_counter() - start
    best = trainer.checkpointer.best_weights
    results, count = evaluate_checkpoint(best, str(trainer.device))
    top1 = results["top1"]

    table = Table(title="visionstack demo: digits, held-out split")
    table.add_column("metric")
    table.add_column("value", justify="right")
    for key in sorted(k for k in results if k.startswith("top")):
        table.add_row(f"test {key}", f"{100 * results[key]:.2f} %")
    table.add_row("test loss (cross-entropy)", f"{results['loss']:.4f}")
    table.add_row("test images", str(count))
    table.add_row("epochs", str(trainer.epochs))
    table.add_row("training + evaluation time", f"{train_time:.0f} s")
    table.add_row("best checkpoint", str(best))
    table.add_row("run directory", str(work_dir.resolve()))
    console.print(table)
    ok = top1 >= TARGET
    verdict = "[green]reached[/]" if ok else "[red]missed[/]"
    console.print(
        f"top-1 {100 * top1:.2f} % {verdict} the {100 * TARGET:.0f} % target. Curves: "
        f"{work_dir / 'curves.png'}; metrics: {work_dir / 'metrics.csv'}; "
        f"TensorBoard: tensorboard --logdir {work_dir}"
    )
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
