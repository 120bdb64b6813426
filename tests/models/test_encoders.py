"""Encoders against hand computations: global pools, FGVCLib window pools, GeM, bilinear attention pooling."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from visionstack.core.build import build_part
from visionstack.core.registry import ENCODERS
from visionstack.errors import ConfigError
from visionstack.models.build import build_model
from visionstack.models.parts.encoders import (
    AvgPooling2d,
    BilinearAttentionPool,
    GeneralizedMeanPool,
    GlobalAvgPool,
    GlobalMaxPool,
    MaxPooling2d,
)


@pytest.mark.parametrize(
    ("name", "cls"),
    [
        (n, GlobalAvgPool)
        for n in (
            "gap",
            "global_avg_pool",
            "GlobalAvgPool",
            "global_avg_pooling",
            "GlobalAveragePooling",
            "avg",
            "global-avg-pool",
        )
    ]
    + [(n, GlobalMaxPool) for n in ("gmp", "global_max_pool", "global_max_pooling", "GlobalMaxPooling")]
    + [
        ("max_pooling_2d", MaxPooling2d),
        ("avg_pooling_2d", AvgPooling2d),
        ("gem", GeneralizedMeanPool),
        ("GeneralizedMeanPooling", GeneralizedMeanPool),
        ("bilinear_attention_pooling", BilinearAttentionPool),
        ("BAP", BilinearAttentionPool),
    ],
)
def test_names_and_aliases_resolve(name: str, cls: type) -> None:
    assert ENCODERS.get(name) is cls


def test_global_pools_equal_mean_and_max(rng: torch.Generator) -> None:
    x = torch.randn(2, 5, 4, 3, generator=rng)
    torch.testing.assert_close(GlobalAvgPool(5)(x), x.reshape(2, 5, -1).mean(-1))
    torch.testing.assert_close(GlobalMaxPool(5)(x), x.reshape(2, 5, -1).max(-1).values)
    assert GlobalAvgPool(5)(x).shape == (2, 5) and GlobalAvgPool(5).out_channels == 5


def test_list_of_maps_gives_list_of_vectors(rng: torch.Generator) -> None:
    maps = [torch.randn(2, 4, 8, 8, generator=rng), torch.randn(2, 6, 4, 4, generator=rng)]
    enc = GlobalAvgPool([4, 6])
    out = enc(maps)
    assert enc.out_channels == [4, 6] and [o.shape for o in out] == [(2, 4), (2, 6)]
    torch.testing.assert_close(out[1], maps[1].mean(dim=(2, 3)))


def test_vectors_are_rejected_with_a_hint() -> None:
    with pytest.raises(ValueError, match="encoder: null"):
        GlobalAvgPool(4)(torch.zeros(2, 4))


@pytest.mark.parametrize(("cls", "ref"), [(MaxPooling2d, nn.MaxPool2d), (AvgPooling2d, nn.AvgPool2d)])
def test_window_pools_match_torch_and_declare_the_flattened_width(cls, ref, rng: torch.Generator) -> None:
    x = torch.randn(2, 4, 7, 7, generator=rng)
    enc = cls(4, kernel_size=3, stride=2, map_size=7)
    assert enc.pooled_size == (3, 3) and enc.out_channels == 4 * 3 * 3  # (7 - 3) // 2 + 1 = 3
    torch.testing.assert_close(enc(x), ref(3, 2)(x).flatten(1))
    # FGVCLib usage: the kernel spans the map, so the pooled map is 1x1 and no map_size is needed
    whole = cls(4, kernel_size=7, stride=7)
    assert whole.out_channels == 4
    torch.testing.assert_close(whole(x), ref(7, 7)(x).flatten(1))
    # rectangular maps and padding
    rect = cls(4, kernel_size=[2, 3], stride=[2, 1], padding=1, map_size=[6, 5])
    y = torch.randn(1, 4, 6, 5, generator=rng)
    expected = ref((2, 3), (2, 1), 1)(y)
    assert rect.out_channels == 4 * expected.shape[2] * expected.shape[3]
    torch.testing.assert_close(rect(y), expected.flatten(1))


def test_window_pool_without_kernel_is_global(rng: torch.Generator) -> None:
    x = torch.randn(2, 3, 5, 5, generator=rng)
    torch.testing.assert_close(MaxPooling2d(3)(x), x.amax(dim=(2, 3)))
    torch.testing.assert_close(AvgPooling2d(3)(x), x.mean(dim=(2, 3)))


def test_window_pool_size_mismatch_is_a_clear_error() -> None:
    with pytest.raises(ValueError, match=r"set map_size: \[8, 8\]"):
        MaxPooling2d(4, kernel_size=2, stride=2)(torch.zeros(1, 4, 8, 8))
    with pytest.raises(ValueError, match=r"map_size is \[7, 7\] but the map is \[8, 8\]"):
        MaxPooling2d(4, kernel_size=2, stride=2, map_size=7)(torch.zeros(1, 4, 8, 8))
    with pytest.raises(ValueError, match="larger than map_size"):
        AvgPooling2d(4, kernel_size=9, map_size=7)
    with pytest.raises(ValueError, match="need a kernel_size"):
        AvgPooling2d(4, stride=2)


def test_window_pool_in_a_model_wires_the_head_width() -> None:
    cfg = {
        "backbone": {"type": "test_tiny"},
        "encoder": {"type": "max_pooling_2d", "kernel_size": 2, "stride": 2, "map_size": 4},
        "num_classes": 3,
    }
    model = build_model(cfg)  # 32 px / 8 = 4x4 map -> 2x2 cells of 16 channels
    assert model.head.in_channels == 16 * 4
    assert model(torch.randn(2, 3, 32, 32)).shape == (2, 3)


def test_gem_p1_is_average_and_large_p_approaches_max(rng: torch.Generator) -> None:
    x = torch.rand(2, 3, 4, 4, generator=rng) + 0.1
    torch.testing.assert_close(GeneralizedMeanPool(3, p=1.0)(x), x.mean(dim=(2, 3)))
    big = GeneralizedMeanPool(3, p=200.0)(x.double())
    torch.testing.assert_close(big, x.double().amax(dim=(2, 3)), rtol=0.02, atol=0)
    assert (big <= x.double().amax(dim=(2, 3)) + 1e-9).all()


def test_gem_hand_value_and_learnable_p() -> None:
    x = torch.tensor([[[[1.0, 2.0], [3.0, 4.0]]]])
    gem = GeneralizedMeanPool(1, p=3.0)
    expected = ((1 + 8 + 27 + 64) / 4) ** (1 / 3)
    assert gem(x).item() == pytest.approx(expected, rel=1e-5)
    gem(x).sum().backward()
    assert gem.p.grad is not None and torch.isfinite(gem.p.grad).all() and gem.p.grad.abs() > 0
    fixed = GeneralizedMeanPool(1, p=3.0, learn_p=False)
    assert list(fixed.parameters()) == [] and fixed(x).item() == pytest.approx(expected, rel=1e-5)
    # negatives are clamped to eps before the power
    assert GeneralizedMeanPool(1, p=2.0, eps=1e-6)(-torch.ones(1, 1, 2, 2)).item() == pytest.approx(1e-6)
    with pytest.raises(ValueError, match="p: must be"):
        GeneralizedMeanPool(1, p=0.0)


def test_bap_equals_hand_einsum(rng: torch.Generator) -> None:
    torch.manual_seed(0)
    x = torch.randn(2, 6, 5, 4, generator=rng)
    bap = BilinearAttentionPool(6, num_attentions=3, scale=2.0).eval()
    assert bap.out_channels == 18
    out, att = bap.forward_with_attention(x)
    conv, bn = bap.attentions[0][0], bap.attentions[0][1]
    hand_att = torch.relu(bn(nn.functional.conv2d(x, conv.weight)))
    torch.testing.assert_close(att, hand_att)
    matrix = torch.zeros(2, 3, 6)
    for b in range(2):
        for m in range(3):
            for c in range(6):
                matrix[b, m, c] = (hand_att[b, m] * x[b, c]).mean()
    flat = matrix.reshape(2, -1)
    flat = torch.sign(flat) * torch.sqrt(flat.abs() + 1e-12)
    expected = 2.0 * flat / flat.norm(dim=1, keepdim=True)
    torch.testing.assert_close(out, expected)
    torch.testing.assert_close(bap(x), expected)
    assert torch.allclose(out.norm(dim=1), torch.full((2,), 2.0))


def test_bap_max_pool_mode_and_levels(rng: torch.Generator) -> None:
    x = torch.randn(1, 2, 3, 3, generator=rng)
    bap = BilinearAttentionPool(2, num_attentions=2, pool="max").eval()
    att = bap.attention_maps(x)
    raw = torch.stack([torch.stack([(att[0, m] * x[0, c]).max() for c in range(2)]) for m in range(2)])
    raw = raw.reshape(1, -1)
    raw = torch.sign(raw) * torch.sqrt(raw.abs() + 1e-12)
    torch.testing.assert_close(bap(x), raw / raw.norm())
    multi = BilinearAttentionPool([2, 4], num_attentions=3)
    outs = multi([torch.randn(2, 2, 4, 4, generator=rng), torch.randn(2, 4, 2, 2, generator=rng)])
    assert multi.out_channels == [6, 12] and [o.shape for o in outs] == [(2, 6), (2, 12)]


def test_explicit_in_channels_still_works_and_is_checked() -> None:
    enc = build_part(ENCODERS, {"type": "gem", "in_channels": 16}, "encoder", {"in_channels": 16})
    assert enc.out_channels == 16
    cfg = {"backbone": {"type": "test_tiny"}, "encoder": {"type": "bap", "in_channels": 8}, "num_classes": 2}
    with pytest.raises(ConfigError, match="previous part outputs 16") as info:
        build_model(cfg)
    assert info.value.path == "model.encoder.in_channels"
