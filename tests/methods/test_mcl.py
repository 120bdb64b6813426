"""Mutual-channel loss: channel groups, the CWA mask, both components against hand computation."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from tests.methods.toy import RecordingOptim, fine_grained_set
from visionstack.errors import ConfigError
from visionstack.models.build import build_model
from visionstack.models.methods.mcl import ChannelGrouping, channel_groups, discriminality_logits, diversity


def test_channel_groups_split_evenly_with_the_remainder_last() -> None:
    assert channel_groups(600, 200) == [3] * 200
    assert channel_groups(2048, 200) == [10] * 152 + [11] * 48  # the official ResNet-50 grouping
    with pytest.raises(ValueError, match="channels_per_class"):
        channel_groups(3, 4)


def _toy_map() -> torch.Tensor:
    """B=1, C=5 channels: class 0 owns channels 0-1, class 1 owns 2-4; a 2x2 map."""
    return torch.tensor(
        [
            [
                [[1.0, 0.0], [0.0, 0.0]],
                [[0.0, 2.0], [0.0, 0.0]],
                [[0.0, 0.0], [3.0, 0.0]],
                [[0.0, 0.0], [3.0, 0.0]],
                [[1.0, 1.0], [1.0, 1.0]],
            ]
        ]
    )


def test_discriminality_equals_hand_computation() -> None:
    grouping = ChannelGrouping([2, 3])
    x = _toy_map()
    # no mask: class 0 -> max(ch0, ch1) = [[1, 2], [0, 0]] -> mean 0.75; class 1 -> [[1, 1], [3, 1]] -> 1.5
    assert torch.allclose(discriminality_logits(x, grouping, None), torch.tensor([[0.75, 1.5]]))
    # mask dropping channels 1 and 2: class 0 -> ch0 with ch1 zeroed -> [[1, 0], [0, 0]] -> 0.25;
    # class 1 -> max(0, ch3, ch4) = [[1, 1], [3, 1]] -> 1.5
    mask = torch.tensor([1.0, 0.0, 0.0, 1.0, 1.0])
    logits = discriminality_logits(x, grouping, mask)
    assert torch.allclose(logits, torch.tensor([[0.25, 1.5]]))
    label = torch.tensor([1])
    expected = -math.log(math.exp(1.5) / (math.exp(0.25) + math.exp(1.5)))
    assert F.cross_entropy(logits, label).item() == pytest.approx(expected, rel=1e-6)


def test_diversity_equals_hand_computation() -> None:
    grouping = ChannelGrouping([2, 3])
    x = _toy_map()

    def softmax(values: list[float]) -> list[float]:
        total = sum(math.exp(v) for v in values)
        return [math.exp(v) / total for v in values]

    s = [softmax(ch) for ch in ([1, 0, 0, 0], [0, 2, 0, 0], [0, 0, 3, 0], [0, 0, 3, 0], [1, 1, 1, 1])]
    class0 = sum(max(s[0][k], s[1][k]) for k in range(4)) / 2
    class1 = sum(max(s[2][k], s[3][k], s[4][k]) for k in range(4)) / 3
    assert diversity(x, grouping).item() == pytest.approx((class0 + class1) / 2, rel=1e-6)
    # the extremes: identical channels give 1/xi, channels peaking at disjoint positions approach 1
    same = torch.zeros(1, 2, 2, 2)
    same[0, :, 0, 0] = 50.0
    assert diversity(same, ChannelGrouping([2])).item() == pytest.approx(0.5, abs=1e-6)
    apart = torch.zeros(1, 2, 2, 2)
    apart[0, 0, 0, 0] = apart[0, 1, 1, 1] = 50.0
    assert diversity(apart, ChannelGrouping([2])).item() == pytest.approx(1.0, abs=1e-6)


def test_random_mask_drops_floor_of_ratio_per_group() -> None:
    grouping = ChannelGrouping([3] * 4 + [10, 11])
    torch.manual_seed(0)
    seen = set()
    for _ in range(20):
        mask = grouping.random_mask(0.5, torch.device("cpu"))
        groups = mask.split([3] * 4 + [10, 11])
        assert [int((g == 0).sum()) for g in groups] == [1, 1, 1, 1, 5, 5]
        seen.add(tuple(groups[0].tolist()))
    assert len(seen) == 3  # the dropped channel varies


def _mcl(**kwargs) -> torch.nn.Module:
    cfg = {
        "type": "mcl",
        "backbone": "test_tiny",
        "num_classes": 4,
        "channels_per_class": 3,
        "head": {"type": "classifier_2fc", "mid_channels": 16},
        **kwargs,
    }
    return build_model(cfg)


def test_train_step_losses_and_gradients() -> None:
    torch.manual_seed(0)
    model = _mcl(mu=2.0, lambda_div=3.0)
    batch = fine_grained_set(2, size=32)
    optim = RecordingOptim(model)
    torch.manual_seed(5)
    logs = model.train().train_step(batch, optim)
    assert set(logs) == {"loss", "loss_ce", "loss_mc_dis", "loss_mc_div"}
    assert all(torch.isfinite(v) for v in logs.values())
    assert torch.allclose(logs["loss"], logs["loss_ce"] + logs["loss_mc_dis"] + logs["loss_mc_div"])
    assert optim.missing() == [] and not optim.nonfinite
    # the MC terms are mu * L_dis and mu * lambda * (1 - D); outside training no CWA mask is drawn
    model.eval()
    x = model.channel_map(batch["image"])
    losses = model.mc_losses(x, batch["label"])
    assert torch.allclose(losses["loss_mc_div"], 2.0 * 3.0 * (1 - diversity(x, model.grouping)))
    no_mask = F.cross_entropy(discriminality_logits(x, model.grouping, None), batch["label"])
    assert torch.allclose(losses["loss_mc_dis"], 2.0 * no_mask)


def test_own_channels_grouping_and_predictions() -> None:
    model = build_model(
        {
            "type": "mcl",
            "backbone": {"type": "test_tiny", "widths": [8, 8, 10]},
            "num_classes": 4,
            "head": "linear",
        }
    ).eval()
    assert model.grouping.groups == [2, 2, 3, 3]
    assert model.map_neck is None
    out = model.predict_step(torch.randn(2, 3, 32, 32))
    assert set(out) == {"logits", "logits_channels"} and out["logits_channels"].shape == (2, 4)
    assert model.extract(torch.randn(2, 3, 32, 32), "channels").shape == (2, 10, 4, 4)


def test_configuration_errors() -> None:
    with pytest.raises(ConfigError, match=r"model\.channels_per_class.*cannot give"):
        build_model({"type": "mcl", "backbone": "test_tiny", "num_classes": 40})
    with pytest.raises(ConfigError, match=r"out_indices"):
        build_model(
            {"type": "mcl", "backbone": {"type": "test_tiny", "out_indices": [1, 2]}, "num_classes": 4}
        )
    with pytest.raises(ConfigError, match=r"model\.drop_ratio"):
        _mcl(drop_ratio=1.0)


@pytest.mark.slow
def test_vgg16_variant_projects_to_xi_channels_per_class() -> None:
    torch.manual_seed(0)
    model = build_model(
        {
            "type": "mcl",
            "backbone": {"type": "vgg16", "out_indices": [-1]},
            "num_classes": 4,
            "channels_per_class": 3,
            "mu": 1.5,
            "lambda_div": 13.3,
        }
    )
    assert model.grouping.groups == [3, 3, 3, 3]
    assert model.map_neck.block[0].out_channels == 12
    optim = RecordingOptim(model, lr=1e-3)
    logs = model.train().train_step(fine_grained_set(2, size=64), optim)
    assert all(torch.isfinite(v) for v in logs.values())
    assert optim.missing() == [] and not optim.nonfinite
