"""The ``native`` encoder and head: a zoo model's own pooling / pre-logits path and its own classifier.

A classifier built as ``backbone -> native encoder -> native head`` computes exactly what the zoo model
computes, so ``vs.create_model("resnet50", num_classes=1000, weights=<torchvision file>)`` returns
torchvision's logits; either part can still be swapped in a config (``encoder: gem``, ``head: cosine``).

**Protocol.** A backbone offers a native path by implementing :class:`NativePath`:

* ``native_encoder() -> nn.Module`` -- takes what the backbone's ``forward`` returns (its last map, plus
  prefix tokens where the model needs them: the encoder may switch the backbone's
  ``return_prefix_tokens`` on) and returns the vector the model's final classifier reads; it has
  ``in_channels`` and ``out_channels``.
* ``native_head(num_classes) -> nn.Module`` -- the final classifier for ``num_classes``: the model's own
  weights when the class count is the model's (or when the loaded file has a classifier of that size),
  a freshly initialized layer otherwise.

The torchvision backbones get theirs from :func:`visionstack.models.features.graph_cut.split_native`; timm
backbones from timm's ``forward_head`` (``visionstack.models.backbones.timm``).

**How the torchvision path is found** (no per-model code): the model is traced with torch.fx; the final
classifier is the last module with parameters on the way to the output (``fc``, ``classifier.3``,
``heads.head``; SqueezeNet: the 1x1 conv ``classifier.1``); the encoder is every operation between the
backbone's last level and that module's input (ResNet: avgpool + flatten; ConvNeXt: avgpool + LayerNorm2d +
flatten; ViT: the class token, after the encoder's final norm; MobileNetV3: avgpool + Linear + Hardswish +
Dropout; DenseNet: ReLU + avgpool + flatten). A Linear classifier becomes a ``linear`` head with its
weights; anything else (SqueezeNet's conv + ReLU + pooling) is kept as a graph head.
"""

from __future__ import annotations

import copy
from typing import Any, Protocol, runtime_checkable

import torch
from torch import nn

from visionstack.core.build import invalid
from visionstack.core.registry import ENCODERS, HEADS
from visionstack.models.features.graph_cut import NativeSplit
from visionstack.models.features.layout import Level, from_nchw
from visionstack.models.parts.base import Channels, Head
from visionstack.models.parts.heads import LinearHead

__all__ = [
    "NativeEncoder",
    "NativeGraphHead",
    "NativePath",
    "build_native_encoder",
    "build_native_head",
    "in_units",
    "native_head_from",
    "out_units",
]


@runtime_checkable
class NativePath(Protocol):
    """What a backbone implements to offer the zoo model's own pooling path and classifier."""

    def native_encoder(self) -> nn.Module: ...

    def native_head(self, num_classes: int) -> nn.Module: ...


# -- modules ------------------------------------------------------------------------------------------
class NativeEncoder(nn.Module):
    """The zoo model's own path from its last feature map to its classifier's input.

    ``forward`` takes the backbone's output (one NCHW map, or the map and its prefix tokens), restores the
    model's own layout (tokens with the class token for ViT, NHWC for Swin-like levels) and runs ``tail``.
    """

    def __init__(self, tail: nn.Module, level: Level, out_channels: int) -> None:
        super().__init__()
        self.tail = tail
        self.level = level
        self.in_channels = level.channels
        self.out_channels = int(out_channels)

    def forward(self, features: Any) -> torch.Tensor:
        if isinstance(features, (list, tuple)):
            raw = from_nchw(features[0], features[1] if len(features) > 1 else None, self.level)
        else:
            raw = from_nchw(features, None, self.level)
        return self.tail(raw)


class NativeGraphHead(Head):
    """A classifier that is more than one Linear (SqueezeNet: conv 1x1 + ReLU + pooling), kept as traced."""

    def __init__(self, graph: nn.Module, in_channels: int, num_classes: int) -> None:
        super().__init__(in_channels, num_classes)
        self.graph = graph

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.graph(x)


def _resized(layer: nn.Module, num_classes: int) -> nn.Module:
    """A fresh copy of a final Linear / Conv2d with ``num_classes`` outputs."""
    if isinstance(layer, nn.Linear):
        return nn.Linear(layer.in_features, num_classes, bias=layer.bias is not None)
    if isinstance(layer, nn.Conv2d):
        return nn.Conv2d(
            layer.in_channels,
            num_classes,
            layer.kernel_size,
            layer.stride,
            layer.padding,
            layer.dilation,
            bias=layer.bias is not None,
        )
    raise invalid("num_classes", f"cannot give a {type(layer).__name__} classifier another number of classes")


def out_units(layer: nn.Module) -> int:
    """Outputs of a Linear / Conv2d classifier (its number of classes)."""
    return int(getattr(layer, "out_features", None) or layer.out_channels)


def in_units(layer: nn.Module) -> int:
    """Inputs of a Linear / Conv2d classifier."""
    return int(getattr(layer, "in_features", None) or layer.in_channels)


def native_head_from(
    split: NativeSplit, num_classes: int, spare: dict[str, torch.Tensor] | None = None
) -> Head:
    """The classifier of ``split`` for ``num_classes``: its own weights when the class count is the model's,
    or the tensors in ``spare`` (a weights file's classifier that did not fit the model) when they fit."""
    final = split.final
    layer = copy.deepcopy(final) if out_units(final) == num_classes else _resized(final, num_classes)
    if spare:
        prefix = split.final_name + "."
        state = {k[len(prefix) :]: v for k, v in spare.items() if k.startswith(prefix)}
        own = layer.state_dict()
        if state and all(k in own and own[k].shape == v.shape for k, v in state.items()):
            layer.load_state_dict(state, strict=False)
    if split.head is None:
        head = LinearHead(in_units(layer), num_classes)
        with torch.no_grad():
            head.fc.weight.copy_(layer.weight)
            if layer.bias is not None:
                head.fc.bias.copy_(layer.bias)
            else:
                head.fc.bias.zero_()  # a bias-free classifier (MaxViT): a zero bias keeps the logits
        return head
    graph = copy.deepcopy(split.head)
    graph.add_submodule(split.final_name, layer)
    return NativeGraphHead(graph, in_units(layer), num_classes)


# -- registry entries ---------------------------------------------------------------------------------
def _native_of(backbone: Any, what: str) -> NativePath:
    if not isinstance(backbone, NativePath):
        raise invalid(
            "type",
            f"the native {what} needs a zoo backbone (torchvision or timm/<name>); {type(backbone).__name__} "
            f"has no native path -- use e.g. encoder: gap and head: linear",
        )
    return backbone


@ENCODERS.register("native", aliases=("native_pooling", "model_pooling"))
def build_native_encoder(in_channels: Channels, backbone: nn.Module | None = None) -> nn.Module:
    """The backbone's own pooling and pre-logits path (see :class:`NativePath`); the classifier passes
    ``backbone``."""
    return _native_of(backbone, "encoder").native_encoder()


@HEADS.register("native", aliases=("native_classifier", "model_head"))
def build_native_head(in_channels: int, num_classes: int, backbone: nn.Module | None = None) -> nn.Module:
    """The backbone's own final classifier for ``num_classes`` (see :class:`NativePath`); the classifier
    passes ``backbone``."""
    head = _native_of(backbone, "head").native_head(num_classes)
    expected = getattr(head, "in_channels", in_channels)
    if expected != in_channels:
        raise invalid(
            "", f"the native head reads {expected} channels but the previous part gives {in_channels}"
        )
    return head
