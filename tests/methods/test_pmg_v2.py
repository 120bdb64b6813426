"""PMG-V2: block descriptors, the category-consistency loss, and the block-convolution train step."""

from __future__ import annotations

import pytest
import torch

from tests.methods.toy import RecordingOptim, fine_grained_set
from visionstack.errors import ConfigError
from visionstack.models.build import build_model
from visionstack.models.methods.pmg_v2 import block_descriptor, category_consistency_loss, same_label_pairs


def _map() -> torch.Tensor:
    x = torch.empty(1, 3, 4, 4)
    x[0, 0] = torch.tensor([[1.0, 1, 2, 2], [1, 1, 2, 2], [3, 3, 4, 4], [3, 3, 4, 4]])
    x[0, 1] = torch.arange(16.0).reshape(4, 4)
    x[0, 2] = -1.0
    return x


def test_block_descriptor_equals_hand_computation() -> None:
    # 2x2 blocks: channel 0 averages 1, 2, 3, 4 -> max 4; channel 1 averages 2.5, 4.5, 10.5, 12.5 -> 12.5;
    # channel 2 -> -1. Min-max over channels: (4 + 1) / 13.5, 1, 0.
    out = block_descriptor(_map(), 2)
    assert torch.allclose(out, torch.tensor([[5 / 13.5, 1.0, 0.0]]), atol=1e-6)
    # one block: plain averages 2.5, 7.5, -1 -> (3.5 / 8.5, 1, 0)
    assert torch.allclose(block_descriptor(_map(), 1), torch.tensor([[3.5 / 8.5, 1.0, 0.0]]), atol=1e-6)


def test_consistency_loss_pairs_same_labels_only() -> None:
    i, j = same_label_pairs(torch.tensor([0, 1, 0, 2, 1, 0]))
    assert sorted(zip(i.tolist(), j.tolist())) == [(0, 2), (0, 5), (1, 4), (2, 5)]
    d = torch.tensor([[0.0, 1.0], [0.5, 0.5], [1.0, 1.0], [0.2, 0.9]])
    labels = torch.tensor([0, 1, 0, 2])
    # only (0, 2): ((0 - 1)^2 + (1 - 1)^2) / 2 = 0.5
    assert category_consistency_loss(d, labels).item() == pytest.approx(0.5)
    no_pairs = category_consistency_loss(d, torch.tensor([0, 1, 2, 3]))
    assert no_pairs.item() == 0.0
    with pytest.raises(ValueError, match="hard labels"):
        category_consistency_loss(d, torch.eye(4))


def test_consistency_loss_is_zero_for_identical_maps() -> None:
    torch.manual_seed(0)
    x = torch.randn(2, 6, 8, 8)
    maps = torch.cat([x, x])  # images 0 and 2, 1 and 3 have identical maps
    labels = torch.tensor([0, 1, 0, 1])
    for blocks in (1, 2, 4, 8):
        assert category_consistency_loss(block_descriptor(maps, blocks), labels).item() == 0.0
    other = torch.cat([x, torch.randn(2, 6, 8, 8)])
    assert category_consistency_loss(block_descriptor(other, 2), labels).item() > 0.0


def test_consistency_loss_on_pk_batches_equals_the_official_pairing() -> None:
    # With two images per class (the class_balanced sampler, K = 2) the pairs are exactly the official
    # code's (image, positive) pairs, and the loss is its MSELoss(f[:B], f[B:]) on the descriptors.
    torch.manual_seed(0)
    maps = torch.randn(8, 5, 8, 8)
    labels = torch.tensor([3, 1, 0, 2, 1, 3, 2, 0])  # classes 3, 1, 0, 2 twice each
    anchor, positive = torch.tensor([0, 1, 2, 3]), torch.tensor([5, 4, 7, 6])
    d = block_descriptor(maps, 4)
    official = torch.nn.functional.mse_loss(d[anchor], d[positive])
    assert category_consistency_loss(d, labels).item() == pytest.approx(official.item(), rel=1e-6)
    assert official.item() > 0
    # three of a class: the mean over its three pairs
    labels3 = torch.tensor([0, 0, 0, 1, 1, 2, 2, 3])
    pairs = [(0, 1), (0, 2), (1, 2), (3, 4), (5, 6)]
    by_hand = torch.stack([(d[i] - d[j]).pow(2).mean() for i, j in pairs]).mean()
    assert category_consistency_loss(d, labels3).item() == pytest.approx(by_hand.item(), rel=1e-6)


def _pmg_v2(**kwargs) -> torch.nn.Module:
    cfg = {
        "type": "pmg_v2",
        "backbone": {"type": "test_tiny_bc", "out_indices": [-3, -2, -1]},
        "neck": {"type": "multi_scale_conv", "mid_channels": 8, "out_channels": 8},
        "head": {"type": "classifier_2fc", "mid_channels": 16},
        "num_classes": 4,
        **kwargs,
    }
    return build_model(cfg)


def test_train_step_runs_each_block_step_and_reaches_every_parameter() -> None:
    torch.manual_seed(0)
    model = _pmg_v2()
    batch = fine_grained_set(4, size=32, pairs=True)
    calls: list[list[int]] = []
    forward = model.backbone.forward
    model.backbone.forward = lambda x, blocks=None: (calls.append(list(blocks or [])), forward(x, blocks))[1]
    optim = RecordingOptim(model)
    logs = model.train().train_step(batch, optim)
    assert calls == [[8, 8, 0, 0], [4, 4, 4, 0], [2, 2, 2, 2]]
    assert optim.updates == 3
    assert set(logs) == {"loss", *(f"loss_{k}{s}" for k in ("ce", "cc") for s in (1, 2, 3))}
    assert all(torch.isfinite(v) for v in logs.values())
    assert optim.missing() == [] and not optim.nonfinite
    # the adaptive weight makes the consistency term alpha_s times the step's cross entropy
    for step, alpha in enumerate((0.01, 0.05, 0.1), start=1):
        assert logs[f"loss_cc{step}"].item() == pytest.approx(alpha * logs[f"loss_ce{step}"].item(), rel=1e-4)


def test_train_step_consistency_is_zero_when_pairs_are_identical_images() -> None:
    torch.manual_seed(0)
    model = _pmg_v2(adaptive_weight=False)
    half = fine_grained_set(1, size=32)
    batch = {k: torch.cat([v, v]) for k, v in half.items()}  # each image appears twice, same label
    logs = model.train().train_step(batch, RecordingOptim(model))
    assert [logs[f"loss_cc{s}"].item() for s in (1, 2, 3)] == [0.0, 0.0, 0.0]
    assert all(logs[f"loss_ce{s}"].item() > 0 for s in (1, 2, 3))


def test_prediction_is_the_sum_of_level_classifiers_on_whole_maps() -> None:
    torch.manual_seed(0)
    model = _pmg_v2().eval()
    images = torch.randn(2, 3, 32, 32)
    logits = model.level_logits(model.level_features(model.backbone(images)))
    assert torch.allclose(model.predict_step(images)["logits"], logits[0] + logits[1] + logits[2], atol=1e-6)
    assert [t.shape for t in model.extract(images, "encoder")] == [(2, 8)] * 3


def test_configuration_errors() -> None:
    with pytest.raises(ConfigError, match=r"model\.backbone.*block-convolution"):
        build_model(
            {"type": "pmg_v2", "backbone": {"type": "test_tiny", "out_indices": [0, 1, 2]}, "num_classes": 4}
        )
    with pytest.raises(ConfigError, match=r"model\.consistency_weights.*one entry per trained level"):
        _pmg_v2(consistency_weights=[0.1, 0.1])
    with pytest.raises(ConfigError, match=r"model\.blocks.*set it explicitly"):
        _pmg_v2(
            backbone={"type": "test_tiny_bc", "out_indices": [-2, -1]},
            consistency_blocks=[2, 1],
            consistency_weights=[0.1, 0.1],
        )
