"""Heads: feature vectors ``[B, C]`` -> logits ``[B, num_classes]``.

``in_channels`` is wired by the builder; ``num_classes`` comes from the head config or the model.
Every head's :meth:`pre_logits` returns what its last layer sees (for the cosine head: the L2-normalized
embedding), which ``model.extract(images, stage="pre_logits")`` exposes.
"""

from __future__ import annotations

import math
from typing import Literal

import torch
import torch.nn.functional as F
from torch import nn

from visionstack.core.build import current_path, invalid
from visionstack.core.registry import HEADS, normalize
from visionstack.errors import ConfigError
from visionstack.models.parts.base import Head

#: An activation name, one of :data:`ACTIVATIONS` (matched case- and separator-insensitively, e.g. ``ELU``).
#: Typed ``str`` so that a wrong name reaches :func:`make_activation`, whose error lists the options.
Activation = str
ACTIVATIONS: dict[str, type[nn.Module]] = {
    "relu": nn.ReLU,
    "gelu": nn.GELU,
    "silu": nn.SiLU,
    "elu": nn.ELU,
    "leaky_relu": nn.LeakyReLU,
    "hardswish": nn.Hardswish,
    "mish": nn.Mish,
    "tanh": nn.Tanh,
    "sigmoid": nn.Sigmoid,
}
Norm = Literal["bn", "ln"]


def _dropout(p: float) -> nn.Module:
    if not 0.0 <= p < 1.0:
        raise invalid("dropout", f"must be in [0, 1), got {p}")
    return nn.Dropout(p) if p > 0 else nn.Identity()


def make_activation(name: str) -> nn.Module:
    """A fresh activation module from the closed set :data:`ACTIVATIONS`.

    An unknown name raises :class:`ConfigError` at the part's ``activation`` key, listing the options.
    """
    key = {normalize(n): n for n in ACTIVATIONS}.get(normalize(name)) if isinstance(name, str) else None
    if key is None:
        raise ConfigError(
            current_path("activation"), f"unknown activation {name!r}; choose one of {', '.join(ACTIVATIONS)}"
        )
    return ACTIVATIONS[key]()


@HEADS.register("linear", aliases=("LinearClsHead", "classifier_1fc", "Classifier_1FC", "fc"))
class LinearHead(Head):
    """Optional dropout, then one fully connected layer ``C -> num_classes``."""

    def __init__(self, in_channels: int, num_classes: int, dropout: float = 0.0) -> None:
        super().__init__(in_channels, num_classes)
        self.dropout = _dropout(dropout)
        self.fc = nn.Linear(self.in_channels, num_classes)

    def pre_logits(self, x: torch.Tensor) -> torch.Tensor:
        return x

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(self.dropout(x))


@HEADS.register("classifier_drop_1fc", aliases=("Classifier_Drop_1FC",))
class DropLinearHead(LinearHead):
    """FGVCLib ``classifier_drop_1fc``: ``Dropout(p=0.5)`` then one fully connected layer."""

    def __init__(self, in_channels: int, num_classes: int, dropout: float = 0.5) -> None:
        super().__init__(in_channels, num_classes, dropout=dropout)


@HEADS.register("classifier_2fc", aliases=("Classifier_2FC",))
class TwoLayerHead(Head):
    """FGVCLib / PMG ``classifier_2fc``: ``BN1d(C) -> Linear(C, mid) -> BN1d(mid) -> act -> Linear(mid, K)``.

    ``mid_channels`` is FGVCLib's ``hid_dim`` (PMG: 512). ``activation`` is one of :data:`ACTIVATIONS`:
    ``relu`` (the default, as FGVCLib and the official PMG-V2 code) or ``elu`` (the official PMG and
    MC-Loss code).
    """

    def __init__(
        self, in_channels: int, num_classes: int, mid_channels: int = 512, activation: Activation = "relu"
    ) -> None:
        super().__init__(in_channels, num_classes)
        if mid_channels < 1:
            raise invalid("mid_channels", f"must be positive, got {mid_channels}")
        self.features = nn.Sequential(
            nn.BatchNorm1d(self.in_channels),
            nn.Linear(self.in_channels, mid_channels),
            nn.BatchNorm1d(mid_channels),
            make_activation(activation),
        )
        self.fc = nn.Linear(mid_channels, num_classes)

    def pre_logits(self, x: torch.Tensor) -> torch.Tensor:
        return self.features(x)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(self.pre_logits(x))


@HEADS.register("stacked_linear", aliases=("StackedLinearClsHead",))
class StackedLinearHead(Head):
    """MMPretrain ``StackedLinearClsHead``: for each width in ``mid_channels``,
    ``Linear -> norm? -> activation -> dropout``; then ``Linear(mid_channels[-1], num_classes)``.

    Args:
        mid_channels: hidden widths (at least one).
        dropout: dropout after each hidden block.
        activation: one of ``relu gelu silu elu leaky_relu hardswish mish tanh sigmoid``.
        norm: ``bn`` (BatchNorm1d) or ``ln`` (LayerNorm) after each hidden Linear; default none.
    """

    def __init__(
        self,
        in_channels: int,
        num_classes: int,
        mid_channels: list[int],
        dropout: float = 0.0,
        activation: Activation = "relu",
        norm: Norm | None = None,
    ) -> None:
        super().__init__(in_channels, num_classes)
        mids = list(mid_channels)
        if not mids or any(not isinstance(m, int) or isinstance(m, bool) or m < 1 for m in mids):
            raise invalid("mid_channels", f"must be a non-empty list of positive ints, got {mid_channels!r}")
        if norm not in (None, "bn", "ln"):
            raise invalid("norm", f"must be 'bn', 'ln' or null, got {norm!r}")
        layers: list[nn.Module] = []
        prev = self.in_channels
        for width in mids:
            layers.append(nn.Linear(prev, width))
            if norm is not None:
                layers.append(nn.BatchNorm1d(width) if norm == "bn" else nn.LayerNorm(width))
            layers += [make_activation(activation), _dropout(dropout)]
            prev = width
        self.mid_channels = mids
        self.layers = nn.Sequential(*layers)
        self.fc = nn.Linear(prev, num_classes)

    def pre_logits(self, x: torch.Tensor) -> torch.Tensor:
        return self.layers(x)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(self.pre_logits(x))


@HEADS.register("mlp", aliases=("MLPHead", "mlp_head"))
class MLPHead(StackedLinearHead):
    """A multilayer perceptron head: ``hidden_channels`` (default: one layer as wide as the input),
    GELU, dropout, then ``Linear(hidden[-1], num_classes)``; built like ``stacked_linear``."""

    def __init__(
        self,
        in_channels: int,
        num_classes: int,
        hidden_channels: list[int] | None = None,
        activation: Activation = "gelu",
        dropout: float = 0.0,
        norm: Norm | None = None,
    ) -> None:
        hidden = hidden_channels if hidden_channels is not None else [int(in_channels)]
        super().__init__(in_channels, num_classes, hidden, dropout=dropout, activation=activation, norm=norm)


@HEADS.register("cosine", aliases=("CosineClsHead", "cosine_classifier", "NormLinear", "normalized_linear"))
class CosineHead(Head):
    """Cosine classifier: ``logits = scale * cos(x, w_k) (+ bias_k)``.

    Features and class weights are L2-normalized, so the logits are the cosines of the angles between the
    embedding and each class vector, times ``scale`` (fixed, or learned when ``learn_scale``).
    :meth:`pre_logits` (and :meth:`embed`) return the normalized embedding.
    """

    def __init__(
        self,
        in_channels: int,
        num_classes: int,
        scale: float = 16.0,
        learn_scale: bool = False,
        bias: bool = False,
        eps: float = 1e-12,
    ) -> None:
        super().__init__(in_channels, num_classes)
        if not scale > 0 or not math.isfinite(scale):
            raise invalid("scale", f"must be a positive finite number, got {scale}")
        self.eps = eps
        self.weight = nn.Parameter(torch.empty(num_classes, self.in_channels))
        nn.init.kaiming_uniform_(self.weight, a=math.sqrt(5))
        self.bias = nn.Parameter(torch.zeros(num_classes)) if bias else None
        scale_value = torch.tensor(float(scale))
        if learn_scale:
            self.scale = nn.Parameter(scale_value)
        else:
            self.register_buffer("scale", scale_value)

    def pre_logits(self, x: torch.Tensor) -> torch.Tensor:
        return F.normalize(x, dim=-1, eps=self.eps)

    def embed(self, x: torch.Tensor) -> torch.Tensor:
        """The L2-normalized embedding (same as :meth:`pre_logits`)."""
        return self.pre_logits(x)

    def cosine(self, x: torch.Tensor) -> torch.Tensor:
        """Cosine similarity ``[B, num_classes]`` between features and class weights."""
        return F.linear(self.pre_logits(x), F.normalize(self.weight, dim=-1, eps=self.eps))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        logits = self.scale * self.cosine(x)
        return logits + self.bias if self.bias is not None else logits

    def extra_repr(self) -> str:
        return (
            f"in_channels={self.in_channels}, num_classes={self.num_classes}, "
            f"scale={float(self.scale.detach()):.4g}, learn_scale={isinstance(self.scale, nn.Parameter)}, "
            f"bias={self.bias is not None}"
        )
