"""Run a model once with forward hooks and read every module's output as a feature map, or not.

:func:`run_probe` records, per module path, the shape of its input and of its (last) output and when its
call started and ended (on ``meta`` tensors, so nothing is computed). :func:`classify` reads one module's
outputs at the probe sizes as a map: its layout (``NCHW``, ``NHWC``, tokens ``NLC`` with prefix tokens),
channels and reduction (total stride). :mod:`visionstack.models.features.discovery` chooses the levels from these.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from visionstack.models.features.layout import explain_tokens

__all__ = ["BATCH", "Record", "classify", "run_probe"]

#: batch size of the probe images
BATCH = 2


@dataclass
class Record:
    """One module's call during a probe: start / end positions and input / output shapes."""

    start: int
    end: int = -1
    shape: tuple[int, ...] = ()
    in_channels: int | None = None
    in_shape: tuple[int, ...] = ()


# -- probing ----------------------------------------------------------------------------------------
def _first_tensor(value: Any) -> torch.Tensor | None:
    if isinstance(value, torch.Tensor):
        return value
    if isinstance(value, (list, tuple)) and value and isinstance(value[0], torch.Tensor):
        return value[0]
    return None


def run_probe(model: nn.Module, size: tuple[int, int], in_chans: int, meta: bool = True) -> dict[str, Record]:
    """One probe forward pass in eval mode (on meta tensors, or for real on zeros); module path -> what its
    last call returned."""
    records: dict[str, Record] = {}
    counter = [0]

    def pre_hook(name: str):
        def hook(module: nn.Module, args: Any) -> None:
            counter[0] += 1
            if name not in records:
                first = _first_tensor(args)
                records[name] = Record(
                    start=counter[0],
                    in_channels=None if first is None else first.shape[1],
                    in_shape=() if first is None else tuple(first.shape),
                )

        return hook

    def post_hook(name: str):
        def hook(module: nn.Module, args: Any, output: Any) -> None:
            counter[0] += 1
            record = records[name]
            record.end = counter[0]
            out = _first_tensor(output)
            record.shape = tuple(out.shape) if out is not None else ()

        return hook

    handles = []
    for name, module in model.named_modules():
        handles.append(module.register_forward_pre_hook(pre_hook(name)))
        handles.append(module.register_forward_hook(post_hook(name)))
    modes = {m: m.training for m in model.modules()}
    model.eval()
    try:
        with torch.no_grad():
            if meta:
                _meta_forward(model, torch.zeros(BATCH, in_chans, *size, device="meta"))
            else:
                device = next((t.device for t in model.parameters()), torch.device("cpu"))
                model(torch.zeros(BATCH, in_chans, *size, device=device))
    finally:
        for handle in handles:
            handle.remove()
        for module, mode in modes.items():
            module.training = mode
    return records


def _meta_forward(model: nn.Module, x: torch.Tensor) -> Any:
    """Run ``model`` on a meta tensor with meta stand-ins for its parameters and buffers (no compute)."""
    tensors = {
        n: torch.empty_like(t, device="meta") for n, t in model.named_parameters(remove_duplicate=False)
    }
    tensors.update(
        {n: torch.empty_like(t, device="meta") for n, t in model.named_buffers(remove_duplicate=False)}
    )
    return torch.func.functional_call(model, tensors, (x,), strict=False, tie_weights=True)


# -- reading one output -------------------------------------------------------------------------------
def _stride(delta_in: int, delta_out: int) -> float | None:
    return delta_in / delta_out if delta_out > 0 else None


def _same(a: float, b: float) -> bool:
    return abs(a - b) <= 0.1 * max(a, b)


def _reduction(value: float) -> int:
    """An integral reduction: exact ratios stay (ViT-H/14: 14), others snap to the nearest power of two."""
    if abs(value - round(value)) < 1e-6:
        return max(1, int(round(value)))
    return 2 ** max(0, round(math.log2(value)))


def classify(shapes: Sequence[tuple[int, ...]], sizes: Sequence[tuple[int, int]]) -> dict[str, Any] | None:
    """Layout, channels and reduction of one module's outputs at the probe sizes (None: not a map)."""
    first = shapes[0]
    if not first or first[0] != BATCH or any(len(s) != len(first) for s in shapes):
        return None
    if len(first) == 4:
        for layout, c_dim, h_dim in (("NCHW", 1, 2), ("NHWC", 3, 1)):
            if any(s[c_dim] != first[c_dim] for s in shapes):
                continue
            reduction = _map_reduction([s[h_dim : h_dim + 2] for s in shapes], sizes)
            if reduction is not None:
                return {"layout": layout, "channels": first[c_dim], "reduction": reduction}
        return None
    if len(first) == 3 and all(s[2] == first[2] for s in shapes):
        found = explain_tokens([s[1] for s in shapes], sizes)
        if found is not None:
            r, p, rounding = found
            return {
                "layout": "NLC",
                "channels": first[2],
                "reduction": r,
                "num_prefix_tokens": p,
                "grid_rounding": rounding,
            }
    return None


def _map_reduction(hws: Sequence[Sequence[int]], sizes: Sequence[tuple[int, int]]) -> int | None:
    if len(sizes) == 2:
        r_h = _stride(sizes[1][0] - sizes[0][0], hws[1][0] - hws[0][0])
        r_w = _stride(sizes[1][1] - sizes[0][1], hws[1][1] - hws[0][1])
        if r_h is None or r_w is None or not _same(r_h, r_w):
            return None
        # the map must also be about image / r (not e.g. an upsampled or cropped tensor)
        h, w = hws[0]
        if not (sizes[0][0] / (2 * r_h) <= h <= sizes[0][0] / r_h + 2):
            return None
        return _reduction((r_h + r_w) / 2)
    (h, w), (img_h, img_w) = hws[0], sizes[0]
    if h < 1 or w < 1 or (h == 1 and w == 1) or not _same(img_h / h, img_w / w):
        return None  # a 1x1 output of a large image is pooled, not a map
    return _reduction(img_h / h) if img_h / h >= 1 else None
