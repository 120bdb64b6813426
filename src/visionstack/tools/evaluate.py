"""Evaluate a checkpoint on a split: top-k, per-class, macro / micro metrics, a confusion matrix and, for
models with an ``embedding`` output (the recognizer), retrieval metrics. What ``visionstack eval`` runs.

The model, its class names and (without a config) the data section come from the checkpoint. Every
``logits*`` output of the model is scored (PMG's ``logits_concat`` beside ``logits``); the loop is the
Trainer's (:class:`visionstack.engine.evaluation.Evaluator`) with the full classification report as the
metric, so under ``torchrun`` each rank scores its shard and the states are summed across ranks.

Example::

    result = evaluate_checkpoint("runs/pmg", split="val", tta="flip")
    result.main.topk[1]                  # top-1 accuracy of ``logits``
    result.save("runs/pmg/eval_val")     # metrics.json, per_class.csv, confusion_matrix.png
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from visionstack.core.build import check_keys
from visionstack.core.config import apply_overrides, load_config
from visionstack.core.schema import validate_config
from visionstack.data.loader import loader_from_data_cfg
from visionstack.engine import distributed
from visionstack.engine.evaluation import Evaluator
from visionstack.errors import ConfigError, DataError
from visionstack.tools.predict import eval_transform, load_checkpoint_model, pretrained_cfg_of
from visionstack.tools.reports import ClassificationReport, ReportMetrics
from visionstack.tools.tta import TTAModel, check_mode, tta_transform

__all__ = ["EvalResult", "evaluate_checkpoint", "default_out_dir", "resolve_config", "retrieval_options"]

SPLITS = ("val", "test", "train")
RETRIEVAL_KEYS = ("per_class", "ks", "knn_k", "metric", "gallery_mode")


def resolve_config(
    config: str | Path | None, overrides: Sequence[str], checkpoint_cfg: Mapping[str, Any]
) -> dict[str, Any]:
    """The run config: ``config`` with overrides, else the checkpoint's config with overrides."""
    if config is not None:
        return load_config(config, overrides)
    cfg = apply_overrides(dict(checkpoint_cfg), overrides)
    validate_config(cfg)
    return cfg


def retrieval_options(eval_cfg: Mapping[str, Any]) -> dict[str, Any] | None:
    """``eval.retrieval``: ``false`` turns retrieval off; a mapping gives :func:`evaluate_embeddings` options
    (``per_class``, ``ks``, ``knn_k``, ``metric``, ``gallery_mode``); default on, with its defaults."""
    value = eval_cfg.get("retrieval", True)
    if value is False or value is None:
        return None
    if value is True:
        return {}
    if not isinstance(value, Mapping):
        raise ConfigError("eval.retrieval", f"expected true, false or a mapping, got {value!r}")
    check_keys(value, RETRIEVAL_KEYS, "eval.retrieval")
    return dict(value)


@dataclass
class EvalResult:
    """The reports of every ``logits*`` output (by output key), retrieval metrics, and what was evaluated."""

    reports: dict[str, ClassificationReport]
    retrieval: dict[str, float] | None
    checkpoint: str
    split: str
    tta: str | None
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def main(self) -> ClassificationReport:
        """The report of ``logits`` (the model's prediction)."""
        return self.reports["logits"] if "logits" in self.reports else next(iter(self.reports.values()))

    def save(self, out_dir: str | Path, sort: str = "accuracy") -> dict[str, Path]:
        """``metrics.json`` (with the other outputs and retrieval under ``outputs`` / ``retrieval``),
        ``per_class.csv`` and ``confusion_matrix.png`` of the main output."""
        main = self.main
        main.extra = {
            "checkpoint": self.checkpoint,
            "split": self.split,
            "tta": self.tta,
            "outputs": {k: _brief(r) for k, r in self.reports.items()},
            **({"retrieval": self.retrieval} if self.retrieval is not None else {}),
        }
        return main.save(out_dir, sort=sort)


def default_out_dir(checkpoint: str | Path, split: str, tta: str | None) -> Path:
    """``eval_<split>[_<tta>]`` inside a run directory, or beside a checkpoint file."""
    path = Path(checkpoint)
    return (path if path.is_dir() else path.parent) / f"eval_{split}{'_' + tta if tta else ''}"


def evaluate_checkpoint(
    checkpoint: str | Path,
    config: str | Path | None = None,
    overrides: Sequence[str] = (),
    split: str = "val",
    tta: str | None = None,
    batch_size: int | None = None,
    workers: int | None = None,
    device: str | torch.device = "cpu",
    amp: str | bool | None = "config",
    progress: bool = False,
) -> EvalResult:
    """Evaluate ``checkpoint`` on ``split`` of its data section (or of ``config``).

    ``tta``: ``flip`` / ``five_crop`` / ``ten_crop`` (default: ``eval.tta`` of the config). ``amp``: the
    mixed precision of the forward; ``"config"`` (default) takes the run's ``train.amp``, as validation
    during training did.
    """
    if split not in SPLITS:
        raise ConfigError("--split", f"expected one of {', '.join(SPLITS)}, got {split!r}")
    device = torch.device(device)
    model, ckpt_cfg, names = load_checkpoint_model(checkpoint, device)
    cfg = resolve_config(config, overrides, ckpt_cfg)
    data = dict(cfg.get("data") or {})
    if not data:
        raise ConfigError("data", "no data section: give a config or --set data.val.type=... data.root=...")
    if batch_size is not None:
        data["val_batch_size"] = batch_size
    if workers is not None:
        data["num_workers"] = workers
    eval_cfg = dict(cfg.get("eval") or {})
    tta = check_mode(tta or eval_cfg.get("tta"))
    transform = tta_transform(eval_transform(cfg, model), tta)
    dataset, loader = loader_from_data_cfg(
        data,
        split,
        distributed=distributed.is_distributed(),
        pretrained_cfg=pretrained_cfg_of(model),
        transform=transform,
    )
    if names is not None and list(dataset.class_names) != list(names):
        raise DataError(
            f"the {split} set's classes do not match the checkpoint's: {len(dataset.class_names)} "
            f"vs {len(names)} classes" + _first_difference(names, dataset.class_names)
        )
    names = list(names or dataset.class_names)
    topk = eval_cfg.get("topk", (1, 5))
    topk = [topk] if isinstance(topk, int) else list(topk)
    options = retrieval_options(eval_cfg)
    evaluator = Evaluator(
        loader,
        len(names),
        topk,
        device,
        amp=(cfg.get("train") or {}).get("amp") if amp == "config" else amp,
        metric=lambda: ReportMetrics(len(names), names, topk),
        embeddings=options is not None,
        progress=progress,
    )
    found = evaluator.collect(TTAModel(model, tta) if tta else model)
    retrieval = None
    if found.embeddings is not None and options is not None:
        from visionstack.tools.retrieval import evaluate_embeddings

        retrieval = evaluate_embeddings(*found.embeddings, **options)
    return EvalResult(found.metrics, retrieval, str(checkpoint), split, tta)


def _brief(report: ClassificationReport) -> dict[str, Any]:
    return {**{f"top{k}": v for k, v in report.topk.items()}, "macro": report.macro, "micro": report.micro}


def _first_difference(a: Sequence[str], b: Sequence[str]) -> str:
    for i, (x, y) in enumerate(zip(a, b)):
        if x != y:
            return f"; class {i} is {x!r} in the checkpoint and {y!r} in the data"
    return ""
