"""Model summaries: parameters per part, FLOPs, output shapes, per-layer table, feature_info (what
``visionstack info`` shows), and the model a config path or a name describes (:func:`build_target`)."""

from __future__ import annotations

import contextlib
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn


@dataclass
class LayerRow:
    """One module in the per-layer summary."""

    name: str
    type: str
    output_shape: str
    params: int
    depth: int


@dataclass
class ModelSummary:
    """What ``visionstack info`` prints. FLOPs count one multiply-add (MAC) as 2 FLOPs."""

    input_shape: tuple[int, ...]
    parts: list[tuple[str, int, int]]  # (part, total params, trainable params)
    total_params: int
    trainable_params: int
    flops: int
    output_shapes: dict[str, str]
    feature_info: list[Any] = field(default_factory=list)
    layers: list[LayerRow] = field(default_factory=list)

    @property
    def macs(self) -> int:
        return self.flops // 2


def count_params(module: nn.Module) -> tuple[int, int]:
    """(total, trainable) parameter counts, shared parameters counted once."""
    seen: dict[int, nn.Parameter] = {id(p): p for p in module.parameters()}
    total = sum(p.numel() for p in seen.values())
    trainable = sum(p.numel() for p in seen.values() if p.requires_grad)
    return total, trainable


def count_flops(model: nn.Module, images: torch.Tensor) -> int:
    """FLOPs of one forward pass (torch.utils.flop_counter; 1 MAC = 2 FLOPs)."""
    from torch.utils.flop_counter import FlopCounterMode

    with torch.no_grad(), FlopCounterMode(display=False) as counter:
        model(images)
    return int(counter.get_total_flops())


def _shape(value: Any) -> str:
    if isinstance(value, torch.Tensor):
        return "x".join(str(s) for s in value.shape)
    if isinstance(value, (list, tuple)):
        return "[" + ", ".join(_shape(v) for v in value) + "]"
    if isinstance(value, dict):
        return "{" + ", ".join(f"{k}: {_shape(v)}" for k, v in value.items()) + "}"
    return type(value).__name__


def layer_table(model: nn.Module, images: torch.Tensor, max_depth: int = 3) -> list[LayerRow]:
    """torchinfo-style rows: every module up to ``max_depth`` with its output shape and own parameters."""
    rows: list[LayerRow] = []
    handles = []
    index: dict[int, int] = {}
    for name, module in model.named_modules():
        depth = name.count(".") + 1 if name else 0
        if depth == 0 or depth > max_depth:
            continue
        total, _ = count_params(module)
        index[id(module)] = len(rows)
        rows.append(LayerRow(name, type(module).__name__, "-", total, depth))

        def hook(mod: nn.Module, _inp: Any, out: Any) -> None:
            row = rows[index[id(mod)]]
            if row.output_shape == "-":
                row.output_shape = _shape(out)

        handles.append(module.register_forward_hook(hook))
    try:
        with torch.no_grad():
            model(images)
    finally:
        for h in handles:
            h.remove()
    return rows


def summarize(
    model: nn.Module,
    input_size: int | tuple[int, int] = 224,
    layers: bool = False,
    max_depth: int = 3,
    in_chans: int = 3,
) -> ModelSummary:
    """Summarize ``model`` (a classifier, a method or a bare backbone) at one input size, batch 1."""
    h, w = (input_size, input_size) if isinstance(input_size, int) else input_size
    images = torch.zeros(1, in_chans, h, w)
    was_training = model.training
    model.eval()
    try:
        parts = [(name, *count_params(child)) for name, child in model.named_children()]
        total, trainable = count_params(model)
        flops = count_flops(model, images)
        outputs: dict[str, str] = {}
        with torch.no_grad():
            out = model(images)
            outputs["output"] = _shape(out)
            extract = getattr(model, "extract", None)
            if callable(extract):
                for stage in ("backbone", "pre_logits"):
                    with contextlib.suppress(ValueError, NotImplementedError):
                        outputs[stage] = _shape(extract(images, stage=stage))
        backbone = getattr(model, "backbone", model)
        info = list(getattr(backbone, "feature_info", []) or [])
        rows = layer_table(model, images, max_depth) if layers else []
    finally:
        model.train(was_training)
    return ModelSummary((1, in_chans, h, w), parts, total, trainable, flops, outputs, info, rows)


def build_target(
    target: str,
    overrides: Sequence[str] = (),
    num_classes: int | None = None,
    input_size: int | None = None,
    features_only: bool = False,
) -> tuple[nn.Module, int]:
    """The model ``visionstack info`` / ``bench`` describe, and its square input size.

    ``target`` is a run config (its ``model`` section; 1000 classes when neither it nor ``num_classes``
    says) or a model name for :func:`visionstack.create_model`. The size is ``input_size``, else the
    config's ``data.image_size``, else the backbone's pretrained input size, else 224.
    """
    path = Path(target)
    size: Any = input_size
    if path.suffix.lower() in (".yaml", ".yml", ".json") or path.is_file():
        from visionstack.core.config import load_config
        from visionstack.models.build import build_model

        cfg = load_config(path, overrides)
        model_cfg = dict(cfg["model"])
        head = model_cfg.get("head")
        if num_classes is not None:
            model_cfg["num_classes"] = num_classes
        elif "num_classes" not in model_cfg and not (isinstance(head, dict) and "num_classes" in head):
            model_cfg["num_classes"] = 1000
        model = build_model(model_cfg)
        size = size or (cfg.get("data") or {}).get("image_size")
    else:
        from visionstack.models.build import create_model

        model = create_model(target, num_classes=num_classes, features_only=features_only)
    if size is None:
        pretrained = getattr(getattr(model, "backbone", model), "pretrained_cfg", None) or {}
        size = tuple(pretrained.get("input_size", (3, 224, 224)))[-1]
    return model, int(size if not isinstance(size, (list, tuple)) else size[0])
