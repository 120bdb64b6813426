"""Losses against torch / timm / torchvision references and hand computations."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from timm.loss import SoftTargetCrossEntropy as TimmSoftTargetCE
from torchvision.ops import sigmoid_focal_loss

from visionstack.core.build import build_part
from visionstack.core.registry import LOSSES
from visionstack.errors import ConfigError
from visionstack.models.build import build_model
from visionstack.models.parts.base import LossSet, total_loss
from visionstack.models.parts.losses import (
    BinaryCrossEntropyLoss,
    CenterLoss,
    CrossEntropyLoss,
    FocalLoss,
    SoftTargetCrossEntropy,
)


@pytest.fixture
def batch(rng: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    return torch.randn(6, 4, generator=rng) * 2, torch.tensor([0, 1, 2, 3, 1, 0])


@pytest.mark.parametrize(
    ("name", "cls"),
    [
        ("cross_entropy", CrossEntropyLoss),
        ("CrossEntropyLoss", CrossEntropyLoss),
        ("ce", CrossEntropyLoss),
        ("soft_target_cross_entropy", SoftTargetCrossEntropy),
        ("SoftTargetCrossEntropy", SoftTargetCrossEntropy),
        ("binary_cross_entropy", BinaryCrossEntropyLoss),
        ("focal", FocalLoss),
        ("FocalLoss", FocalLoss),
        ("center", CenterLoss),
        ("CenterLoss", CenterLoss),
    ],
)
def test_names_resolve(name: str, cls: type) -> None:
    assert LOSSES.get(name) is cls


def hand_ce(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    log_p = logits.log_softmax(-1)
    return -log_p[torch.arange(len(targets)), targets].mean()


def test_cross_entropy_hard_soft_and_smoothing(batch) -> None:
    logits, y = batch
    out = CrossEntropyLoss()(logits, y)
    assert list(out) == ["loss_ce"]
    torch.testing.assert_close(out["loss_ce"], hand_ce(logits, y))
    eps = 0.1
    smooth = CrossEntropyLoss(label_smoothing=eps).compute(logits, y)
    torch.testing.assert_close(smooth, F.cross_entropy(logits, y, label_smoothing=eps))
    hand = (1 - eps) * hand_ce(logits, y) + eps * (-logits.log_softmax(-1).mean(-1)).mean()
    torch.testing.assert_close(smooth, hand)
    soft = torch.softmax(torch.randn(6, 4), -1)
    torch.testing.assert_close(
        CrossEntropyLoss().compute({"logits": logits}, soft),
        (-(soft * logits.log_softmax(-1)).sum(-1)).mean(),
    )


def test_cross_entropy_class_weights(batch) -> None:
    logits, y = batch
    w = [1.0, 2.0, 0.5, 3.0]
    loss = CrossEntropyLoss(class_weights=w, num_classes=4).compute(logits, y)
    wt = torch.tensor(w)
    nll = -logits.log_softmax(-1)[torch.arange(6), y]
    torch.testing.assert_close(loss, (wt[y] * nll).sum() / wt[y].sum())
    with pytest.raises(ValueError, match="4 entries but the model has 3 classes"):
        CrossEntropyLoss(class_weights=w, num_classes=3)
    with pytest.raises(ValueError, match="3 entries but the logits have 4"):
        CrossEntropyLoss(class_weights=[1.0, 1.0, 1.0]).compute(logits, y)
    with pytest.raises(ValueError, match="class indices"):
        CrossEntropyLoss().compute(logits, y.float())


def test_class_weights_length_is_checked_against_the_model() -> None:
    cfg = {"backbone": "test_tiny", "num_classes": 3, "loss": {"type": "ce", "class_weights": [1.0, 2.0]}}
    with pytest.raises(ConfigError, match="2 entries but the model has 3 classes") as info:
        build_model(cfg)
    assert info.value.path == "model.loss.class_weights"


def test_soft_target_cross_entropy_equals_timm_and_ce(batch) -> None:
    logits, y = batch
    soft = torch.softmax(torch.randn(6, 4), -1)
    torch.testing.assert_close(
        SoftTargetCrossEntropy().compute(logits, soft), TimmSoftTargetCE()(logits, soft)
    )
    torch.testing.assert_close(SoftTargetCrossEntropy().compute(logits, y), hand_ce(logits, y))
    assert list(SoftTargetCrossEntropy(weight=0.5, name="loss_mix")(logits, y)) == ["loss_mix"]


def test_binary_cross_entropy(batch) -> None:
    logits, y = batch
    onehot = F.one_hot(y, 4).float()
    p = torch.sigmoid(logits)
    hand = -(onehot * torch.log(p) + (1 - onehot) * torch.log(1 - p)).mean()
    torch.testing.assert_close(BinaryCrossEntropyLoss().compute(logits, y), hand)
    multi = (torch.rand(6, 4) > 0.5).float()
    pw = torch.tensor([1.0, 2.0, 3.0, 0.5])
    hand_pw = -(pw * multi * torch.log(p) + (1 - multi) * torch.log(1 - p)).mean()
    torch.testing.assert_close(BinaryCrossEntropyLoss(pos_weight=pw.tolist()).compute(logits, multi), hand_pw)
    probs_loss = BinaryCrossEntropyLoss(with_logits=False).compute(p, multi)
    torch.testing.assert_close(probs_loss, BinaryCrossEntropyLoss().compute(logits, multi))


def test_focal_gamma_zero_is_cross_entropy_and_hand_value(batch) -> None:
    logits, y = batch
    torch.testing.assert_close(FocalLoss(gamma=0.0).compute(logits, y), hand_ce(logits, y))
    p = logits.softmax(-1)[torch.arange(6), y]
    hand = (-((1 - p) ** 2) * torch.log(p)).mean()
    torch.testing.assert_close(FocalLoss(gamma=2.0).compute(logits, y), hand)
    alpha = torch.tensor([0.25, 0.5, 1.0, 2.0])
    torch.testing.assert_close(
        FocalLoss(gamma=2.0, alpha=alpha.tolist()).compute(logits, y),
        (-alpha[y] * (1 - p) ** 2 * torch.log(p)).mean(),
    )
    torch.testing.assert_close(
        FocalLoss(gamma=1.0, alpha=0.5).compute(logits, y), (-0.5 * (1 - p) * torch.log(p)).mean()
    )
    assert FocalLoss(gamma=2.0).compute(logits, y) < hand_ce(logits, y)  # easy examples down-weighted


def test_focal_sigmoid_mode_matches_torchvision(batch) -> None:
    logits, y = batch
    onehot = F.one_hot(y, 4).float()
    ref = sigmoid_focal_loss(logits, onehot, alpha=0.25, gamma=2.0, reduction="mean")
    torch.testing.assert_close(FocalLoss(mode="sigmoid", alpha=0.25).compute(logits, y), ref)
    with pytest.raises(ValueError, match="one alpha"):
        FocalLoss(mode="sigmoid", alpha=[0.1, 0.2])


def test_center_loss_is_half_mean_squared_distance(rng: torch.Generator) -> None:
    loss = CenterLoss(in_channels=3, num_classes=4)
    feats = torch.randn(5, 3, generator=rng)
    y = torch.tensor([0, 2, 2, 3, 0])
    c = loss.centers.detach()
    hand = sum(((feats[i] - c[y[i]]) ** 2).sum() for i in range(5)) / 5 / 2
    value = loss.compute({"logits": torch.zeros(5, 4), "features": feats}, y)
    torch.testing.assert_close(value, hand)
    value.backward()
    grad = loss.centers.grad
    assert torch.all(grad[1] == 0) and grad[[0, 2, 3]].abs().sum(1).gt(0).all()  # only present classes move
    torch.testing.assert_close(grad[2], -(feats[1] - c[2] + feats[2] - c[2]) / 5)
    # soft targets: expected squared distance; one-hot soft targets equal hard ones
    outputs = {"features": feats}
    torch.testing.assert_close(loss.compute(outputs, F.one_hot(y, 4).float()), hand)
    t = torch.softmax(torch.randn(5, 4, generator=rng), -1)
    d2 = ((feats[:, None, :] - c[None]) ** 2).sum(-1)
    torch.testing.assert_close(loss.compute(outputs, t), 0.5 * (t * d2).sum(1).mean())
    with pytest.raises(ValueError, match="'features'"):
        loss.compute(torch.zeros(5, 4), y)


def test_center_loss_in_channels_are_wired_to_the_feature_width() -> None:
    model = build_model(
        {
            "backbone": "test_tiny",
            "encoder": {"type": "bap", "num_attentions": 2},
            "loss": [{"type": "ce"}, {"type": "center", "weight": 0.01}],
            "num_classes": 3,
        }
    )
    center = model.loss[1]
    assert center.centers.shape == (3, 32) and center.in_channels == model.feature_channels


def test_weights_names_and_loss_sets(batch) -> None:
    logits, y = batch
    losses = LossSet(
        [
            CrossEntropyLoss(weight=0.5),
            FocalLoss(gamma=0.0, weight=2.0, name="loss_f"),
            CrossEntropyLoss(weight=1.5),
        ]
    )
    out = losses(logits, y)
    ce = hand_ce(logits, y)
    assert sorted(out) == ["loss_ce", "loss_f"]
    torch.testing.assert_close(out["loss_ce"], 2.0 * ce)  # same key: summed
    torch.testing.assert_close(out["loss_f"], 2.0 * ce)
    torch.testing.assert_close(total_loss(out), 4.0 * ce)


def test_build_from_config_with_wired_num_classes() -> None:
    loss = build_part(LOSSES, {"type": "focal", "alpha": [1.0, 1.0, 2.0]}, "loss", {"num_classes": 3})
    assert loss.num_classes == 3
    with pytest.raises(ConfigError, match="expected float") as info:
        build_part(LOSSES, {"type": "ce", "label_smoothing": "lots"}, "loss", {"num_classes": 3})
    assert info.value.path == "loss.label_smoothing"
