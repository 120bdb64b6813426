"""Output stride 8 / 16 by dilation for any model that downsamples with convolutions and pooling layers.

No per-model tables: a probe (:func:`visionstack.models.features.probe.run_probe`) gives every module's input and
output reduction ``r_in`` / ``r_out``; for an ``output_stride`` ``os`` each ``Conv2d`` / ``MaxPool2d`` /
``AvgPool2d`` that reads or writes a map coarser than ``os`` gets

* stride 1 (it no longer downsamples: every map stays at ``os``),
* dilation times ``D = r_in / os`` (its taps keep their spacing in image pixels),
* padding ``p * D`` before and ``dilation * D * (k - 1) - p * D`` after (per side; an asymmetric pair,
  such as ConvNeXt's kernel-2 downsampling conv, is applied by a forward pre-hook).

This is what torchvision's ``replace_stride_with_dilation`` and timm's ``output_stride`` do, written once:
the dilated model's maps sampled every ``r / os`` pixels equal the original maps (exactly, for inputs whose
size the total stride divides). Every other module reading such a map must act per position (norms,
activations, 1x1 maps, adaptive pooling, per-channel parameters); a module that mixes positions in another
way (window attention, position tables), an average pool that would need dilation, padding that does not
keep ``size / stride``, or a downsampling op that crosses ``os`` makes :func:`dilate` raise with the list.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from visionstack.models.features.probe import Record, classify, run_probe

__all__ = ["dilate"]

_POOLS = (nn.MaxPool2d, nn.AvgPool2d)
#: leaf modules that act on each position alone (or pool globally): unaffected by dilation
_POINTWISE: tuple[type, ...] = (
    nn.modules.batchnorm._NormBase,
    nn.LayerNorm,
    nn.GroupNorm,
    nn.Identity,
    nn.Linear,
    nn.modules.dropout._DropoutNd,
    nn.Flatten,
    nn.AdaptiveAvgPool2d,
    nn.AdaptiveMaxPool2d,
)


class PadInput:
    """Forward pre-hook: pad the module's input by ``pad`` (``F.pad`` order) with ``value``."""

    def __init__(self, pad: tuple[int, int, int, int], value: float) -> None:
        self.pad, self.value = pad, value

    def __call__(self, module: nn.Module, args: tuple[Any, ...]) -> tuple[Any, ...]:
        return (F.pad(args[0], self.pad, value=self.value), *args[1:])


def _pointwise(module: nn.Module) -> bool:
    if isinstance(module, _POINTWISE):
        return True
    if isinstance(module, nn.MultiheadAttention):
        return False
    name = type(module).__name__
    return type(module).__module__ == "torch.nn.modules.activation" or name in ("StochasticDepth", "Permute")


def _pair(value: Any) -> tuple[int, int]:
    return (value, value) if isinstance(value, int) else (int(value[0]), int(value[1]))


def _plan(module: nn.Module, r_in: int, r_out: int, os: int, rec: Record) -> dict[str, Any] | str:
    """The new stride / dilation / padding of a conv or pool, or why it cannot be dilated."""
    if r_in < os < r_out:
        return f"downsamples from {r_in} to {r_out} in one step, across output_stride {os}"
    padding = getattr(module, "padding", 0)
    if isinstance(padding, str) or getattr(module, "padding_mode", "zeros") != "zeros":
        return f"padding {padding!r} / mode {getattr(module, 'padding_mode', 'zeros')!r}"
    k, s, p = _pair(module.kernel_size), _pair(module.stride or module.kernel_size), _pair(padding)
    d0 = _pair(getattr(module, "dilation", 1))
    if any(h_in != h_out * st for h_in, h_out, st in zip(rec.in_shape[2:], rec.shape[2:], s)):
        return "its padding does not keep size / stride"
    factor = r_in // os if r_in > os else 1
    if isinstance(module, nn.AvgPool2d) and factor > 1 and max(k) > 1:
        return "AvgPool2d has no dilation"
    before = [pi * factor for pi in p]
    after = [di * factor * (ki - 1) - b for di, ki, b in zip(d0, k, before)]
    if min(after) < 0:
        return "its padding exceeds its kernel"
    return {"factor": factor, "dilation": tuple(di * factor for di in d0), "before": before, "after": after}


def _apply(module: nn.Module, plan: dict[str, Any]) -> None:
    before, after = plan["before"], plan["after"]
    # MaxPool2d also refuses padding beyond half its (undilated) kernel: such padding goes in the hook
    symmetric = before == after and not (
        isinstance(module, _POOLS) and any(b > ki // 2 for b, ki in zip(before, _pair(module.kernel_size)))
    )
    module.stride = (1, 1)
    if not isinstance(module, nn.AvgPool2d):
        module.dilation = plan["dilation"]
    module.padding = tuple(before) if symmetric else (0, 0)
    if not symmetric:
        value = -math.inf if isinstance(module, nn.MaxPool2d) else 0.0
        module.register_forward_pre_hook(PadInput((before[1], after[1], before[0], after[0]), value))


def dilate(
    model: nn.Module, output_stride: int, sizes: Sequence[tuple[int, int]], end: str | None = None
) -> list[str]:
    """Make ``model``'s maps stop at ``output_stride`` by dilation, in place; return the changed modules.

    Args:
        model: the model (its parameters are not touched: weights load as before).
        output_stride: 8, 16, ...: the largest reduction left.
        sizes: probe input sizes ``(H, W)`` (two that differ by a multiple of 64, or the model's one size).
        end: only modules that finish no later than this module (the deepest level) are considered.

    Raises:
        ValueError: listing the modules that cannot follow (nothing is changed then).
    """
    with torch.no_grad():
        runs = [run_probe(model, tuple(s), 3) for s in sizes]
    records = runs[0]
    stop = records[end].end if end else math.inf
    plans: dict[str, dict[str, Any]] = {}
    problems: list[str] = []
    for name, module in model.named_modules():
        rec = records.get(name)
        if rec is None or rec.end > stop or not all(name in run and run[name].shape for run in runs):
            continue
        kin = classify([run[name].in_shape for run in runs], sizes) if rec.in_shape else None
        kout = classify([run[name].shape for run in runs], sizes)
        r_in, r_out = (k["reduction"] if k else None for k in (kin, kout))
        if not any(r is not None and r > output_stride for r in (r_in, r_out)):
            continue
        label = f"{name} ({type(module).__name__})"
        if any(True for _ in module.children()):  # a container: its own parameters must be per-channel
            if any(sum(n > 1 for n in p.shape) > 1 for p in module.parameters(recurse=False)):
                problems.append(f"{label}: has position-dependent parameters")
            continue
        if isinstance(module, (nn.Conv2d, *_POOLS)):
            if r_in is None or r_out is None or kin["layout"] != "NCHW":
                problems.append(f"{label}: its input or output is not an NCHW map")
                continue
            plan = _plan(module, r_in, r_out, output_stride, rec)
            if isinstance(plan, str):
                problems.append(f"{label}: {plan}")
            elif plan["factor"] > 1 or r_out > r_in:
                plans[name] = plan
        elif not _pointwise(module):
            problems.append(f"{label}: mixes positions in a way dilation cannot follow")
    if problems:
        more = f"; ... {len(problems) - 5} more" if len(problems) > 5 else ""
        raise ValueError("; ".join(problems[:5]) + more)
    for name, plan in plans.items():
        _apply(model.get_submodule(name), plan)
    return list(plans)
