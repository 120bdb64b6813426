"""The native path of a timm model: how its ``forward_features`` output looks, and its own head.

:func:`probe_final_features` reads the layout of ``forward_features`` (NCHW, NHWC, tokens with prefix
tokens, channels-first tokens or pooled vectors) from one small forward pass, as a
:class:`~visionstack.models.features.layout.Level` that :mod:`~visionstack.models.features.layout` converts.
:class:`TimmNativeEncoder` (``forward_head(pre_logits=True)``) and :class:`TimmNativeHead` (timm's final
classifier) are the ``native`` encoder and head, so a classifier built from them reproduces timm's logits.
"""

from __future__ import annotations

import inspect
import math
from typing import Any

import torch
from torch import nn

from visionstack.models.features.layout import MAX_PREFIX_TOKENS, FeatureInfo, Level, from_nchw, token_grid
from visionstack.models.parts.base import Head
from visionstack.models.weights.load import load_weights

__all__ = ["TimmNativeEncoder", "TimmNativeHead", "probe_final_features"]


def probe_final_features(model: nn.Module, input_size: Any, last: FeatureInfo) -> tuple[Level, int]:
    """Run ``forward_features`` once on one small image (then, if the model needs it, one of its own input
    size) and read its output as a :class:`Level` named ``forward_features`` (layout ``NC`` for pooled
    vectors, ``NCL`` for channels-first tokens), with the number of tensors it returns (> 1: a list whose
    last tensor is the map)."""
    channels, *own = (int(v) for v in input_size)
    low = (getattr(model, "pretrained_cfg", None) or {}).get("min_input_size") or (0, 0, 0)
    sizes = [(max(64, int(low[-2])), max(64, int(low[-1]))), tuple(own)]
    g = torch.Generator().manual_seed(0)
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            for i, hw in enumerate(sizes):
                x = torch.randn(1, channels, *hw, generator=g)
                try:
                    feats = model.forward_features(x)
                    break
                except (RuntimeError, AssertionError, ValueError):  # too small for this model
                    if i == len(sizes) - 1:
                        raise
    finally:
        model.train(was_training)
    parts = len(feats) if isinstance(feats, (list, tuple)) else 1
    out = feats[-1] if parts > 1 else feats
    expected = last.channels if parts > 1 else int(model.num_features)
    shape = tuple(out.shape)

    def level(layout: str, channels: int, prefix: int = 0) -> tuple[Level, int]:
        return Level("forward_features", int(channels), last.reduction, layout, prefix), parts

    if len(shape) == 2:
        return level("NC", shape[1])
    if len(shape) == 4:
        nhwc = str(getattr(model, "output_fmt", "")) == "NHWC" or (
            shape[1] != expected and shape[3] == expected
        )
        return level("NHWC" if nhwc else "NCHW", shape[3] if nhwc else shape[1])
    if len(shape) != 3:
        raise ValueError(f"cannot read forward_features output of shape {shape} as a map")
    if shape[1] == expected and shape[2] != expected:
        return level("NCL", shape[1])
    prefix = getattr(model, "num_prefix_tokens", None)
    if prefix is None:  # tokens beyond the grid of the last level are prefix tokens
        grid = math.prod(token_grid(x.shape[-2:], last.reduction))
        prefix = shape[1] - grid if 0 < shape[1] - grid <= MAX_PREFIX_TOKENS else 0
    return level("NLC", shape[2], int(prefix))


class TimmNativeEncoder(nn.Module):
    """``forward_head(features, pre_logits=True)`` of a timm model whose ``forward_features`` output is read
    as ``level``.

    It has no parameters of its own: the pooling / norm / hidden layers stay in the backbone's model,
    which this encoder shares (not as a submodule, so nothing is counted or saved twice).
    """

    def __init__(self, model: nn.Module, level: Level) -> None:
        super().__init__()
        object.__setattr__(self, "_model", model)
        self.level = level
        self.in_channels = level.channels
        self.out_channels = int(getattr(model, "head_hidden_size", None) or model.num_features)

    def forward(self, features: Any) -> torch.Tensor:
        items = list(features) if isinstance(features, (list, tuple)) else [features]
        raw = from_nchw(items[0], items[1] if len(items) > 1 else None, self.level)
        return self._model.forward_head(raw, pre_logits=True)


class TimmNativeHead(Head):
    """timm's final classifier for ``num_classes`` applied to the pre-logits vector.

    Built like timm builds it (a Linear, a 1x1 conv, LeViT's BN + Linear, ...; of a pooling
    ``ClassifierHead`` only its ``fc``); two heads (distillation) are averaged as timm does in eval.
    ``exact`` is False where timm's logits read more than the pre-logits vector: DeiT-style distillation
    tokens (two vectors) and VOLO's auxiliary token head; the head then approximates timm's logits.
    """

    def __init__(self, reference: nn.Module, num_classes: int) -> None:
        """``reference``: the timm model built with ``num_classes`` outputs (on the meta device is enough:
        only its classifier's layout is read)."""
        super().__init__(
            int(getattr(reference, "head_hidden_size", None) or reference.num_features), num_classes
        )
        found = reference.get_classifier()
        modules = [_final_layer(m) for m in (found if isinstance(found, (tuple, list)) else [found])]
        self.exact = (
            getattr(reference, "aux_head", None) is None and getattr(reference, "dist_token", None) is None
        )
        paths = {id(m): name for name, m in reference.named_modules()}
        self.paths = [paths.get(id(m), "") for m in modules]  # where timm's state dict keeps them
        self.classifiers = nn.ModuleList(m.to_empty(device="cpu") for m in modules)
        for m in self.classifiers.modules():
            if hasattr(m, "reset_parameters"):
                m.reset_parameters()

    def load_from(self, state: dict[str, torch.Tensor]) -> None:
        """Load a timm state dict's classifier tensors (e.g. ``fc.weight``) where their shapes fit."""
        for path, module in zip(self.paths, self.classifiers):
            sub = {k[len(path) + 1 :]: v for k, v in state.items() if path and k.startswith(path + ".")}
            if sub:
                load_weights(module, sub, log=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        outs = [
            m(x[:, :, None, None]).flatten(1) if isinstance(m, nn.Conv2d) else m(x) for m in self.classifiers
        ]
        return outs[0] if len(outs) == 1 else torch.stack(outs).mean(0)


def _final_layer(module: nn.Module) -> nn.Module:
    """The layer that makes logits: a head that also pools (``forward(x, pre_logits)``) gives its ``fc``."""
    fc = getattr(module, "fc", None)
    pools = "pre_logits" in inspect.signature(module.forward).parameters
    return fc if pools and isinstance(fc, nn.Module) else module
