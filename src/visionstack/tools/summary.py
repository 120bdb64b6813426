"""Model summaries: parameters per part, FLOPs, output shapes, per-layer table, feature_info."""

from __future__ import annotations

import contextlib
from dataclasses import dataclass, field
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
