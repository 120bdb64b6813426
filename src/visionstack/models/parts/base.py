"""Base classes of the composable parts and the rules for how channels flow between them.

Each part declares ``in_channels`` (what it receives) and ``out_channels`` (what it gives), so the
builder wires widths automatically. ``int`` means one tensor, ``list[int]`` one tensor per feature level.
"""

from __future__ import annotations

import torch
from torch import nn

from visionstack.core.build import invalid

Channels = int | list[int]
Features = torch.Tensor | list[torch.Tensor]


def as_list(x: Features) -> list[torch.Tensor]:
    return list(x) if isinstance(x, (list, tuple)) else [x]


def total_channels(channels: Channels) -> int:
    """Width of the concatenation of ``channels``."""
    return sum(channels) if isinstance(channels, (list, tuple)) else int(channels)


def single(channels: Channels) -> Channels:
    """A one-element channel list becomes an int (one map in, one map out)."""
    if isinstance(channels, (list, tuple)) and len(channels) == 1:
        return int(channels[0])
    return channels


class Encoder(nn.Module):
    """Pools map(s) ``[B, C, H, W]`` into vector(s) ``[B, C']``.

    Subclasses implement :meth:`pool` for one map and, if the width changes, :meth:`out_channels_of`.
    A list of maps gives a list of vectors.
    """

    def __init__(self, in_channels: Channels) -> None:
        super().__init__()
        self.in_channels = single(in_channels)
        if isinstance(self.in_channels, list):
            self.out_channels: Channels = [self.out_channels_of(c) for c in self.in_channels]
        else:
            self.out_channels = self.out_channels_of(int(self.in_channels))

    def out_channels_of(self, channels: int) -> int:
        return channels

    def pool(self, x: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def forward(self, x: Features) -> Features:
        if isinstance(x, (list, tuple)):
            pooled = [self.pool(t) for t in x]
            return pooled[0] if len(pooled) == 1 else pooled
        return self.pool(x)


class Neck(nn.Module):
    """Transforms features between backbone and head.

    ``consumes = "maps"``: the neck sits between backbone and encoder and takes the list of maps
    (FPN, multi-scale conv). ``consumes = "vectors"``: it sits after the encoder.
    """

    consumes: str = "vectors"

    def __init__(self, in_channels: Channels) -> None:
        super().__init__()
        self.in_channels = in_channels
        self.out_channels: Channels = in_channels


class Head(nn.Module):
    """Maps a feature vector ``[B, C]`` to logits ``[B, num_classes]``.

    :meth:`pre_logits` returns what the last layer sees (the embedding for cosine heads).
    """

    def __init__(self, in_channels: int, num_classes: int) -> None:
        super().__init__()
        if not isinstance(num_classes, int) or isinstance(num_classes, bool) or num_classes < 1:
            raise invalid("num_classes", f"must be a positive int, got {num_classes!r}")
        self.in_channels = int(in_channels)
        self.num_classes = num_classes

    def pre_logits(self, x: torch.Tensor) -> torch.Tensor:
        return x


def logits_of(outputs: torch.Tensor | dict[str, torch.Tensor]) -> torch.Tensor:
    return outputs["logits"] if isinstance(outputs, dict) else outputs


class Loss(nn.Module):
    """``(outputs, targets) -> {"loss_<name>": weight * value}``.

    ``outputs`` is the logits tensor or a dict with ``logits`` (and e.g. ``features``); ``targets`` are
    class indices ``[B]`` or soft targets ``[B, K]``. Subclasses implement :meth:`compute`.
    """

    default_name = "loss"

    def __init__(self, weight: float = 1.0, name: str | None = None) -> None:
        super().__init__()
        self.weight = float(weight)
        self.name = name or self.default_name

    def compute(self, outputs: torch.Tensor | dict[str, torch.Tensor], targets: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def forward(self, outputs, targets) -> dict[str, torch.Tensor]:
        key = self.name if self.name.startswith("loss") else f"loss_{self.name}"
        value = self.compute(outputs, targets)
        return {key: value if self.weight == 1.0 else self.weight * value}  # no kernel for a unit weight


class LossSet(nn.ModuleList):
    """Several losses applied to the same outputs; their entries are merged into one dict."""

    def forward(self, outputs, targets) -> dict[str, torch.Tensor]:  # type: ignore[override]
        out: dict[str, torch.Tensor] = {}
        for loss in self:
            for key, value in loss(outputs, targets).items():
                out[key] = out[key] + value if key in out else value
        return out


def total_loss(losses: dict[str, torch.Tensor]) -> torch.Tensor:
    """The sum of every ``loss*`` entry, in float32.

    A single float32 entry is returned as it is: no stack, no sum, no extra kernels in the forward or the
    backward pass.
    """
    values = [v for k, v in losses.items() if k.startswith("loss")]
    if not values:
        raise ValueError(f"no 'loss*' entries to sum among {sorted(losses)}")
    if len(values) == 1:
        value = values[0]
        return value if value.dtype == torch.float32 else value.float()
    return torch.stack([v.float() for v in values]).sum()
