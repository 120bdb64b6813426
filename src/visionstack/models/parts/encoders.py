"""Encoders: pool feature maps ``[B, C, H, W]`` into vectors ``[B, C']``.

Every encoder takes ``in_channels`` from the builder (an int for one map, a list for several maps, in which
case each map is pooled separately and a list of vectors comes back). Names follow visionstack, with the
FGVCLib and MMPretrain spellings as aliases.
"""

from __future__ import annotations

import math
from typing import Literal

import torch
import torch.nn.functional as F
from torch import nn

from visionstack.core.build import invalid
from visionstack.core.registry import ENCODERS
from visionstack.models.parts.base import Channels, Encoder, Features


def _check_map(x: torch.Tensor, name: str) -> None:
    if x.dim() != 4:
        raise ValueError(
            f"encoder {name!r} expects NCHW feature maps, got a tensor of shape {tuple(x.shape)}; "
            "after a neck that already pools (e.g. global_average_pooling) set `encoder: null`"
        )


@ENCODERS.register(
    "gap", aliases=("global_avg_pool", "GlobalAvgPool", "global_avg_pooling", "GlobalAveragePooling", "avg")
)
class GlobalAvgPool(Encoder):
    """Global average pooling: ``mean over H, W``; width unchanged."""

    def __init__(self, in_channels: Channels) -> None:
        super().__init__(in_channels)

    def pool(self, x: torch.Tensor) -> torch.Tensor:
        _check_map(x, "gap")
        return x.mean(dim=(2, 3))


@ENCODERS.register("gmp", aliases=("global_max_pool", "global_max_pooling", "GlobalMaxPooling", "max"))
class GlobalMaxPool(Encoder):
    """Global max pooling: ``max over H, W``; width unchanged."""

    def __init__(self, in_channels: Channels) -> None:
        super().__init__(in_channels)

    def pool(self, x: torch.Tensor) -> torch.Tensor:
        _check_map(x, "gmp")
        return x.amax(dim=(2, 3))


def _pair(value: int | list[int] | None, name: str) -> tuple[int, int] | None:
    if value is None:
        return None
    pair = [value, value] if isinstance(value, int) else list(value)
    if len(pair) != 2 or any(not isinstance(v, int) or isinstance(v, bool) or v < 1 for v in pair):
        raise invalid(name, f"must be a positive int or a list of two positive ints, got {value!r}")
    return pair[0], pair[1]


class _WindowPool(Encoder):
    """FGVCLib ``max_pooling_2d`` / ``avg_pooling_2d``: a ``kernel_size``/``stride`` window pool, flattened.

    Without ``kernel_size`` the window is the whole map (global pooling, width ``C``). With a kernel the
    pooled map has ``h' x w'`` cells and the vector has ``C * h' * w'`` values; the head's width must be
    known before any image is seen, so either give ``map_size`` (the size of the map entering the encoder,
    e.g. 14 for a stride-32 backbone on 448 px images) or choose the kernel so that the pooled map is 1x1
    (FGVCLib's usage: ``kernel_size`` = map size). A pooled map of another size than declared raises.
    """

    kind = "window"

    def __init__(
        self,
        in_channels: Channels,
        kernel_size: int | list[int] | None = None,
        stride: int | list[int] | None = None,
        padding: int = 0,
        map_size: int | list[int] | None = None,
    ) -> None:
        self.kernel_size = _pair(kernel_size, "kernel_size")
        self.stride = _pair(stride, "stride") or self.kernel_size
        if padding < 0 or (self.kernel_size and 2 * padding > min(self.kernel_size)):
            raise invalid("padding", f"must be >= 0 and at most half the kernel, got {padding}")
        if self.kernel_size is None and (stride is not None or padding):
            raise invalid("stride", "stride/padding need a kernel_size (without one the pooling is global)")
        self.padding = padding
        self.map_size = _pair(map_size, "map_size")
        self.pooled_size = self._pooled_size()
        super().__init__(in_channels)

    def _pooled_size(self) -> tuple[int, int]:
        if self.kernel_size is None or self.map_size is None:
            return (1, 1)
        size = []
        for n, k, s in zip(self.map_size, self.kernel_size, self.stride):
            out = (n + 2 * self.padding - k) // s + 1
            if out < 1:
                raise invalid(
                    "kernel_size", f"kernel_size {self.kernel_size} is larger than map_size {self.map_size}"
                )
            size.append(out)
        return size[0], size[1]

    def out_channels_of(self, channels: int) -> int:
        return channels * math.prod(self.pooled_size)

    def window(self, x: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def pool(self, x: torch.Tensor) -> torch.Tensor:
        _check_map(x, self.kind)
        if self.kernel_size is None:
            return x.amax(dim=(2, 3)) if self.kind == "max_pooling_2d" else x.mean(dim=(2, 3))
        y = self.window(x)
        if tuple(y.shape[2:]) != self.pooled_size:
            hint = (
                f"set map_size: {list(x.shape[2:])}"
                if self.map_size is None
                else f"map_size is {list(self.map_size)} but the map is {list(x.shape[2:])}"
            )
            raise ValueError(
                f"encoder {self.kind!r} pooled a {list(x.shape[2:])} map to {list(y.shape[2:])}, but the "
                f"head was built for {list(self.pooled_size)}: {hint}"
            )
        return y.flatten(1)


@ENCODERS.register("max_pooling_2d", aliases=("MaxPool2d", "max_pool_2d"))
class MaxPooling2d(_WindowPool):
    """``nn.MaxPool2d(kernel_size, stride, padding)`` then flatten (see :class:`_WindowPool`)."""

    kind = "max_pooling_2d"

    def window(self, x: torch.Tensor) -> torch.Tensor:
        return F.max_pool2d(x, self.kernel_size, self.stride, self.padding)


@ENCODERS.register("avg_pooling_2d", aliases=("AvgPool2d", "avg_pool_2d"))
class AvgPooling2d(_WindowPool):
    """``nn.AvgPool2d(kernel_size, stride, padding)`` then flatten (see :class:`_WindowPool`)."""

    kind = "avg_pooling_2d"

    def window(self, x: torch.Tensor) -> torch.Tensor:
        return F.avg_pool2d(x, self.kernel_size, self.stride, self.padding)


@ENCODERS.register("gem", aliases=("GeneralizedMeanPooling", "generalized_mean_pooling", "GeM"))
class GeneralizedMeanPool(Encoder):
    """Generalized-mean pooling (Radenovic et al.): ``(mean(clamp(x, eps) ** p)) ** (1 / p)``.

    ``p = 1`` is average pooling, ``p -> inf`` approaches max pooling. ``p`` is learned unless
    ``learn_p`` is false.
    """

    def __init__(
        self, in_channels: Channels, p: float = 3.0, eps: float = 1e-6, learn_p: bool = True
    ) -> None:
        super().__init__(in_channels)
        if not p > 0 or not math.isfinite(p):
            raise invalid("p", f"must be a positive finite number, got {p}")
        if not eps > 0:
            raise invalid("eps", f"must be positive, got {eps}")
        self.eps = eps
        p_value = torch.tensor([float(p)])
        if learn_p:
            self.p = nn.Parameter(p_value)
        else:
            self.register_buffer("p", p_value)

    def pool(self, x: torch.Tensor) -> torch.Tensor:
        _check_map(x, "gem")
        p = self.p.to(x.dtype)
        return x.clamp(min=self.eps).pow(p).mean(dim=(2, 3)).pow(1.0 / p)

    def extra_repr(self) -> str:
        return f"p={float(self.p.detach()):.4g}, eps={self.eps}, learn_p={isinstance(self.p, nn.Parameter)}"


@ENCODERS.register("bilinear_attention_pooling", aliases=("bap", "BAP", "BilinearAttentionPooling"))
class BilinearAttentionPool(Encoder):
    """Bilinear attention pooling from WS-DAN (Hu et al., 2019).

    ``M = num_attentions`` attention maps ``A = ReLU(BN(conv1x1(F)))``; the part features are
    ``f[m, c] = pool_hw(A[m] * F[c])`` (``avg``: the mean, i.e. ``einsum('bmhw,bchw->bmc') / (H*W)``;
    ``max``: the maximum), flattened to ``M * C`` values, then signed square root
    ``sign(f) * sqrt(|f| + 1e-12)`` and L2 normalization over all ``M * C`` values, times ``scale``
    (WS-DAN feeds ``100 *`` the normalized features to its classifier: set ``scale: 100`` to match).
    Several maps get one attention layer each.
    """

    def __init__(
        self,
        in_channels: Channels,
        num_attentions: int = 32,
        pool: Literal["avg", "max"] = "avg",
        scale: float = 1.0,
    ) -> None:
        if not isinstance(num_attentions, int) or num_attentions < 1:
            raise invalid("num_attentions", f"must be a positive int, got {num_attentions!r}")
        if pool not in ("avg", "max"):
            raise invalid("pool", f"must be 'avg' or 'max', got {pool!r}")
        self.num_attentions = num_attentions
        super().__init__(in_channels)
        self.pool_mode = pool
        self.scale = float(scale)
        widths = self.in_channels if isinstance(self.in_channels, list) else [int(self.in_channels)]
        self.attentions = nn.ModuleList(
            nn.Sequential(
                nn.Conv2d(c, num_attentions, kernel_size=1, bias=False),
                nn.BatchNorm2d(num_attentions, eps=0.001),
                nn.ReLU(inplace=True),
            )
            for c in widths
        )

    def out_channels_of(self, channels: int) -> int:
        return self.num_attentions * channels

    def attention_maps(self, x: torch.Tensor, level: int = 0) -> torch.Tensor:
        """The ``[B, M, H, W]`` attention maps of one feature map."""
        return self.attentions[level](x)

    def bilinear_pool(self, features: torch.Tensor, attentions: torch.Tensor) -> torch.Tensor:
        """Pool ``features [B, C, H, W]`` under ``attentions [B, M, h, w]`` into ``[B, M * C]``."""
        b, _, h, w = features.shape
        if attentions.shape[2:] != features.shape[2:]:
            attentions = F.interpolate(attentions, size=(h, w), mode="bilinear", align_corners=True)
        if self.pool_mode == "avg":
            matrix = torch.einsum("bmhw,bchw->bmc", attentions, features) / float(h * w)
        else:
            matrix = (attentions.unsqueeze(2) * features.unsqueeze(1)).amax(dim=(3, 4))
        matrix = matrix.reshape(b, -1)
        matrix = torch.sign(matrix) * torch.sqrt(matrix.abs() + 1e-12)
        return F.normalize(matrix, dim=-1) * self.scale

    def forward_with_attention(self, x: torch.Tensor, level: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
        """``(pooled features, attention maps)`` of one map, for methods that crop/drop by attention."""
        _check_map(x, "bilinear_attention_pooling")
        attentions = self.attention_maps(x, level)
        return self.bilinear_pool(x, attentions), attentions

    def pool(self, x: torch.Tensor) -> torch.Tensor:
        return self.forward_with_attention(x)[0]

    def forward(self, x: Features) -> Features:
        if isinstance(x, (list, tuple)):
            if len(x) != len(self.attentions):
                raise ValueError(f"expected {len(self.attentions)} feature maps, got {len(x)}")
            pooled = [self.forward_with_attention(t, i)[0] for i, t in enumerate(x)]
            return pooled[0] if len(pooled) == 1 else pooled
        return self.pool(x)
