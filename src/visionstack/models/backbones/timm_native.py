"""The native path of a timm model: how its ``forward_features`` output looks, and its own head.

:func:`probe_final_features` reads the layout of ``forward_features`` (NCHW, NHWC, tokens with prefix
tokens, channels-first tokens or pooled vectors) from one small forward pass; :func:`to_nchw` /
:func:`from_nchw` convert that output to the NCHW map a backbone returns and back.
:class:`TimmNativeEncoder` (``forward_head(pre_logits=True)``) and :class:`TimmNativeHead` (timm's final
classifier) are the ``native`` encoder and head, so a classifier built from them reproduces timm's logits.
"""

from __future__ import annotations

import inspect
import math
from typing import TYPE_CHECKING, Any, NamedTuple

import torch
from torch import nn

from visionstack.models.features import FeatureInfo
from visionstack.models.parts import Head
from visionstack.models.weights import load_weights

if TYPE_CHECKING:
    from visionstack.models.backbones.timm import TimmBackbone

__all__ = [
    "FinalFeatures",
    "TimmNativeEncoder",
    "TimmNativeHead",
    "from_nchw",
    "probe_final_features",
    "to_nchw",
]


class FinalFeatures(NamedTuple):
    """How a model's ``forward_features`` output looks: its layout, channels, prefix tokens, list length."""

    layout: str  # NCHW, NHWC, NLC (tokens), NCL (channels-first tokens) or NC (pooled)
    channels: int
    num_prefix: int
    parts: int  # > 1: a list of tensors, the last one is the map


def probe_final_features(model: nn.Module, input_size: Any, last: FeatureInfo) -> FinalFeatures:
    """Run ``forward_features`` once on one small image (then, if the model needs it, one of its own input
    size) and read the layout of the output."""
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
    if len(shape) == 2:
        return FinalFeatures("NC", shape[1], 0, parts)
    if len(shape) == 4:
        nhwc = str(getattr(model, "output_fmt", "")) == "NHWC" or (
            shape[1] != expected and shape[3] == expected
        )
        return FinalFeatures("NHWC" if nhwc else "NCHW", shape[3] if nhwc else shape[1], 0, parts)
    if len(shape) != 3:
        raise ValueError(f"cannot read forward_features output of shape {shape} as a map")
    if shape[1] == expected and shape[2] != expected:
        return FinalFeatures("NCL", shape[1], 0, parts)
    prefix = getattr(model, "num_prefix_tokens", None)
    if prefix is None:  # tokens beyond the grid of the last level are prefix tokens
        grid = math.ceil(x.shape[-2] / last.reduction) * math.ceil(x.shape[-1] / last.reduction)
        prefix = shape[1] - grid if 0 < shape[1] - grid <= 16 else 0
    return FinalFeatures("NLC", shape[2], int(prefix), parts)


def to_nchw(
    feats: torch.Tensor, layout: str, image_size: Any, num_prefix: int, reduction: int = 0
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Features in ``layout`` as an NCHW map, plus the prefix tokens ``[B, P, C]`` (or None).

    A token grid is ``ceil(H / reduction) x ceil(W / reduction)`` when that accounts for every token, else
    the factorization of the token count closest to the image's aspect ratio.
    """
    if layout == "NC":
        return feats[:, :, None, None], None
    if layout == "NHWC":
        return feats.permute(0, 3, 1, 2), None
    if layout == "NCHW":
        return feats, None
    tokens = feats if layout == "NCL" else feats[:, num_prefix:].transpose(1, 2)
    h, w = _grid(tokens.shape[2], int(image_size[0]), int(image_size[1]), reduction)
    fmap = tokens.reshape(tokens.shape[0], tokens.shape[1], h, w)
    return fmap, (feats[:, :num_prefix] if layout == "NLC" and num_prefix else None)


def from_nchw(fmap: torch.Tensor, layout: str, prefix: torch.Tensor | None = None) -> torch.Tensor:
    """Inverse of :func:`to_nchw`: the map (and prefix tokens) back in the model's own layout."""
    if layout == "NC":
        return fmap.flatten(1)
    if layout == "NHWC":
        return fmap.permute(0, 2, 3, 1)
    if layout == "NCL":
        return fmap.flatten(2)
    if layout == "NLC":
        tokens = fmap.flatten(2).transpose(1, 2)
        return tokens if prefix is None else torch.cat([prefix, tokens], dim=1)
    return fmap


def _grid(n: int, h_img: int, w_img: int, reduction: int = 0) -> tuple[int, int]:
    """The ``h x w`` grid of ``n`` tokens for an image of ``h_img x w_img``."""
    if reduction and math.ceil(h_img / reduction) * math.ceil(w_img / reduction) == n:
        return math.ceil(h_img / reduction), math.ceil(w_img / reduction)
    best = None
    for h in range(1, n + 1):
        if n % h == 0:
            err = abs(math.log((h / (n // h)) / (h_img / w_img)))
            if best is None or err < best[0]:
                best = (err, h)
    h = best[1] if best else 1
    return h, n // h


class TimmNativeEncoder(nn.Module):
    """``forward_head(features, pre_logits=True)`` of the backbone's timm model.

    It has no parameters of its own: the pooling / norm / hidden layers stay in the backbone's model,
    which this encoder shares (not as a submodule, so nothing is counted or saved twice).
    """

    def __init__(self, backbone: TimmBackbone) -> None:
        super().__init__()
        object.__setattr__(self, "_backbone", backbone)
        model = backbone.model
        self.in_channels = backbone.feature_info[0].channels
        self.out_channels = int(getattr(model, "head_hidden_size", None) or model.num_features)

    def forward(self, features: Any) -> torch.Tensor:
        items = list(features) if isinstance(features, (list, tuple)) else [features]
        backbone = self._backbone
        raw = from_nchw(items[0], backbone.final.layout, items[1] if len(items) > 1 else None)
        return backbone.model.forward_head(raw, pre_logits=True)


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
