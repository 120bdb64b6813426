"""Classification losses: ``(outputs, targets) -> {"loss_<name>": weight * value}``.

``outputs`` is the logits tensor or a dict with ``logits`` (and ``features`` for the center loss);
``targets`` are class indices ``[B]`` or class probabilities ``[B, K]`` (mixup / label smoothing /
multi-label). ``weight`` scales the value; ``name`` sets the key. The builder wires ``num_classes`` (and
``in_channels``, the feature width, for the center loss).
"""

from __future__ import annotations

from typing import Literal

import torch
import torch.nn.functional as F
from torch import nn

from visionstack.core.build import invalid
from visionstack.core.registry import LOSSES
from visionstack.models.parts.base import Loss, logits_of


def is_soft(targets: torch.Tensor) -> bool:
    """Whether ``targets`` are per-class probabilities ``[B, K]`` rather than indices ``[B]``."""
    return targets.dim() == 2


def check_hard_targets(targets: torch.Tensor) -> torch.Tensor:
    """Class-index targets ``[B]`` as int64; anything else that is not ``[B, K]`` raises."""
    if targets.dim() != 1 or targets.is_floating_point() or targets.dtype == torch.bool:
        raise ValueError(
            f"targets must be class indices [B] (integer) or probabilities [B, K], got {targets.dtype} "
            f"{tuple(targets.shape)}"
        )
    return targets.long()


def target_probabilities(targets: torch.Tensor, num_classes: int) -> torch.Tensor:
    """Targets as float ``[B, K]``: hard labels one-hot encoded, soft ones checked and returned."""
    if is_soft(targets):
        if targets.shape[1] != num_classes:
            raise ValueError(
                f"soft targets have {targets.shape[1]} classes but the logits have {num_classes}"
            )
        return targets.float()
    return F.one_hot(check_hard_targets(targets), num_classes).float()


def _check_pair(logits: torch.Tensor, targets: torch.Tensor) -> None:
    if logits.dim() != 2:
        raise ValueError(f"expected logits [B, K], got shape {tuple(logits.shape)}")
    if targets.shape[0] != logits.shape[0]:
        raise ValueError(f"{logits.shape[0]} predictions but {targets.shape[0]} targets")


def _class_vector(values: list[float] | None, num_classes: int | None, name: str) -> torch.Tensor | None:
    if values is None:
        return None
    if num_classes is not None and len(values) != num_classes:
        raise invalid(name, f"has {len(values)} entries but the model has {num_classes} classes")
    vector = torch.tensor([float(v) for v in values])
    if not torch.isfinite(vector).all() or (vector < 0).any():
        raise invalid(name, f"must be finite and non-negative, got {values}")
    return vector


class _ClassLoss(Loss):
    """A loss on logits with an optional per-class vector (weights) kept as a buffer."""

    def __init__(self, weight: float, name: str | None, num_classes: int | None) -> None:
        super().__init__(weight=weight, name=name)
        self.num_classes = num_classes

    def _vector(self, buffer: torch.Tensor | None, logits: torch.Tensor, what: str) -> torch.Tensor | None:
        if buffer is not None and buffer.numel() != logits.shape[1]:
            raise ValueError(
                f"{what} has {buffer.numel()} entries but the logits have {logits.shape[1]} classes"
            )
        return buffer


@LOSSES.register(
    "cross_entropy", aliases=("CrossEntropyLoss", "ce", "cross_entropy_loss", "softmax_cross_entropy")
)
class CrossEntropyLoss(_ClassLoss):
    """Softmax cross entropy (``torch.nn.functional.cross_entropy``) on hard or soft targets.

    ``label_smoothing`` mixes the target with the uniform distribution; ``class_weights`` (one per class)
    rescale each class's term; with hard targets the mean is then divided by the summed weights of the
    batch's targets (torch's convention), with soft targets it is a plain batch mean.
    """

    default_name = "ce"

    def __init__(
        self,
        label_smoothing: float = 0.0,
        class_weights: list[float] | None = None,
        num_classes: int | None = None,
        weight: float = 1.0,
        name: str | None = None,
    ) -> None:
        super().__init__(weight, name, num_classes)
        if not 0.0 <= label_smoothing <= 1.0:
            raise invalid("label_smoothing", f"must be in [0, 1], got {label_smoothing}")
        self.label_smoothing = float(label_smoothing)
        self.register_buffer("class_weights", _class_vector(class_weights, num_classes, "class_weights"))

    def compute(self, outputs, targets: torch.Tensor) -> torch.Tensor:
        logits = logits_of(outputs)
        _check_pair(logits, targets)
        if is_soft(targets):
            targets = target_probabilities(targets, logits.shape[1])
        else:
            targets = check_hard_targets(targets)
        weights = self._vector(self.class_weights, logits, "class_weights")
        return F.cross_entropy(logits.float(), targets, weight=weights, label_smoothing=self.label_smoothing)


@LOSSES.register(
    "soft_target_cross_entropy", aliases=("SoftTargetCrossEntropy", "soft_ce", "soft_cross_entropy")
)
class SoftTargetCrossEntropy(Loss):
    """timm's ``SoftTargetCrossEntropy``: ``mean_b sum_k -t[b, k] * log_softmax(x)[b, k]``.

    Hard labels are one-hot encoded, so on them it equals plain cross entropy.
    """

    default_name = "soft_ce"

    def __init__(self, weight: float = 1.0, name: str | None = None) -> None:
        super().__init__(weight=weight, name=name)

    def compute(self, outputs, targets: torch.Tensor) -> torch.Tensor:
        logits = logits_of(outputs)
        _check_pair(logits, targets)
        probs = target_probabilities(targets, logits.shape[1])
        return torch.sum(-probs * F.log_softmax(logits.float(), dim=-1), dim=-1).mean()


@LOSSES.register(
    "binary_cross_entropy",
    aliases=("bce", "BCEWithLogitsLoss", "binary_cross_entropy_with_logits", "BCELoss"),
)
class BinaryCrossEntropyLoss(_ClassLoss):
    """Per-class binary cross entropy, averaged over all ``B * K`` entries.

    Targets: multi-label / soft ``[B, K]`` in ``[0, 1]``, or class indices (one-hot encoded).
    ``pos_weight`` (one per class) weighs the positive term; ``with_logits: false`` takes probabilities.
    """

    default_name = "bce"

    def __init__(
        self,
        pos_weight: list[float] | None = None,
        with_logits: bool = True,
        num_classes: int | None = None,
        weight: float = 1.0,
        name: str | None = None,
    ) -> None:
        super().__init__(weight, name, num_classes)
        if pos_weight is not None and not with_logits:
            raise invalid("pos_weight", "pos_weight needs with_logits: true")
        self.with_logits = with_logits
        self.register_buffer("pos_weight", _class_vector(pos_weight, num_classes, "pos_weight"))

    def compute(self, outputs, targets: torch.Tensor) -> torch.Tensor:
        logits = logits_of(outputs)
        _check_pair(logits, targets)
        probs = target_probabilities(targets, logits.shape[1])
        pos_weight = self._vector(self.pos_weight, logits, "pos_weight")
        if self.with_logits:
            return F.binary_cross_entropy_with_logits(logits.float(), probs, pos_weight=pos_weight)
        with torch.autocast(logits.device.type, enabled=False):  # BCE on probabilities is autocast-unsafe
            return F.binary_cross_entropy(logits.float(), probs)


@LOSSES.register("focal", aliases=("FocalLoss", "focal_loss"))
class FocalLoss(_ClassLoss):
    """Focal loss (Lin et al.): down-weights well-classified examples by ``(1 - p) ** gamma``.

    ``mode: softmax`` (default): ``mean_b sum_k -t[b,k] * alpha_k * (1 - p[b,k]) ** gamma * log p[b,k]``
    with ``p = softmax(x)``; ``gamma = 0`` and no ``alpha`` is cross entropy. ``alpha`` is one number
    or one per class. ``mode: sigmoid``: torchvision's ``sigmoid_focal_loss`` on one-hot / multi-label
    targets, averaged over ``B * K`` (as MMPretrain's FocalLoss; ``alpha`` one number, e.g. 0.25).
    """

    default_name = "focal"

    def __init__(
        self,
        gamma: float = 2.0,
        alpha: float | list[float] | None = None,
        mode: Literal["softmax", "sigmoid"] = "softmax",
        num_classes: int | None = None,
        weight: float = 1.0,
        name: str | None = None,
    ) -> None:
        super().__init__(weight, name, num_classes)
        if not gamma >= 0:
            raise invalid("gamma", f"must be >= 0, got {gamma}")
        if mode not in ("softmax", "sigmoid"):
            raise invalid("mode", f"must be 'softmax' or 'sigmoid', got {mode!r}")
        if mode == "sigmoid" and isinstance(alpha, (list, tuple)):
            raise invalid("alpha", "mode 'sigmoid' takes one alpha (the positive-class weight), not a list")
        if isinstance(alpha, (int, float)) and not alpha >= 0:
            raise invalid("alpha", f"must be >= 0, got {alpha}")
        self.gamma = float(gamma)
        self.mode = mode
        self.alpha_scalar = float(alpha) if isinstance(alpha, (int, float)) else None
        vector = (
            _class_vector(list(alpha), num_classes, "alpha") if isinstance(alpha, (list, tuple)) else None
        )
        self.register_buffer("alpha", vector)

    def compute(self, outputs, targets: torch.Tensor) -> torch.Tensor:
        logits = logits_of(outputs).float()
        _check_pair(logits, targets)
        probs = target_probabilities(targets, logits.shape[1])
        if self.mode == "sigmoid":
            alpha = self.alpha_scalar if self.alpha_scalar is not None else -1.0
            from torchvision.ops import sigmoid_focal_loss

            return sigmoid_focal_loss(logits, probs, alpha=alpha, gamma=self.gamma, reduction="mean")
        log_p = F.log_softmax(logits, dim=-1)
        terms = -probs * (1.0 - log_p.exp()).pow(self.gamma) * log_p
        alpha = self._vector(self.alpha, logits, "alpha")
        if alpha is not None:
            terms = terms * alpha
        elif self.alpha_scalar is not None:
            terms = terms * self.alpha_scalar
        return terms.sum(dim=-1).mean()


@LOSSES.register("center", aliases=("CenterLoss", "center_loss"))
class CenterLoss(Loss):
    """Center loss (Wen et al., 2016): ``1/2 * mean_b ||f_b - c_{y_b}||^2`` with learnable class centers.

    Uses ``outputs["features"]`` (the vector the head receives; ``in_channels`` is its width, wired by the
    classifier). Soft targets give ``1/2 * mean_b sum_k t[b,k] * ||f_b - c_k||^2``. Usually added to a
    classification loss with a small ``weight`` (the paper: 0.003-0.01); the centers train with the model.
    """

    default_name = "center"

    def __init__(
        self, in_channels: int, num_classes: int, weight: float = 1.0, name: str | None = None
    ) -> None:
        super().__init__(weight=weight, name=name)
        if in_channels < 1 or num_classes < 1:
            raise invalid(
                "num_classes",
                f"in_channels and num_classes must be positive, got {in_channels}, {num_classes}",
            )
        self.in_channels = int(in_channels)
        self.num_classes = int(num_classes)
        self.centers = nn.Parameter(torch.randn(num_classes, in_channels))

    def compute(self, outputs, targets: torch.Tensor) -> torch.Tensor:
        if not isinstance(outputs, dict) or "features" not in outputs:
            raise ValueError("the center loss needs the model outputs dict with 'features'")
        features = outputs["features"].float()
        if features.dim() != 2 or features.shape[1] != self.in_channels:
            raise ValueError(
                f"center loss expects features [B, {self.in_channels}], got {tuple(features.shape)}"
            )
        if features.shape[0] != targets.shape[0]:
            raise ValueError(f"{features.shape[0]} feature vectors but {targets.shape[0]} targets")
        centers = self.centers.float()
        if not is_soft(targets):
            return 0.5 * (features - centers[check_hard_targets(targets)]).pow(2).sum(dim=1).mean()
        probs = target_probabilities(targets, self.num_classes)
        # sum_k t_k ||f - c_k||^2 = ||f||^2 sum_k t_k - 2 f . (sum_k t_k c_k) + sum_k t_k ||c_k||^2
        sq = (
            features.pow(2).sum(1) * probs.sum(1)
            - 2 * (features * (probs @ centers)).sum(1)
            + probs @ centers.pow(2).sum(1)
        )
        return 0.5 * sq.mean()
