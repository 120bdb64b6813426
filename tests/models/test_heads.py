"""Heads against hand computations: linear, FGVCLib 2fc / drop-1fc, stacked linear, MLP, cosine."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from visionstack.core.build import build_part
from visionstack.core.registry import HEADS
from visionstack.errors import ConfigError
from visionstack.models.build import build_model
from visionstack.models.parts.heads import (
    ACTIVATIONS,
    CosineHead,
    DropLinearHead,
    LinearHead,
    MLPHead,
    StackedLinearHead,
    TwoLayerHead,
)


@pytest.mark.parametrize(
    ("name", "cls"),
    [
        ("linear", LinearHead),
        ("LinearClsHead", LinearHead),
        ("classifier_1fc", LinearHead),
        ("fc", LinearHead),
        ("classifier_2fc", TwoLayerHead),
        ("classifier_drop_1fc", DropLinearHead),
        ("stacked_linear", StackedLinearHead),
        ("StackedLinearClsHead", StackedLinearHead),
        ("mlp", MLPHead),
        ("cosine", CosineHead),
    ],
)
def test_names_resolve(name: str, cls: type) -> None:
    assert HEADS.get(name) is cls


def test_linear_head_and_dropout(rng: torch.Generator) -> None:
    x = torch.randn(4, 6, generator=rng)
    head = LinearHead(6, 3, dropout=0.5)
    head.eval()
    torch.testing.assert_close(head(x), x @ head.fc.weight.T + head.fc.bias)
    torch.testing.assert_close(head.pre_logits(x), x)
    head.train()
    torch.manual_seed(0)
    assert not torch.allclose(head(x), x @ head.fc.weight.T + head.fc.bias)  # dropout active in training
    drop = DropLinearHead(6, 3)
    assert isinstance(drop.dropout, nn.Dropout) and drop.dropout.p == 0.5
    assert isinstance(LinearHead(6, 3).dropout, nn.Identity)
    with pytest.raises(ValueError, match="dropout"):
        LinearHead(6, 3, dropout=1.0)


def _bn_eval(bn: nn.BatchNorm1d, x: torch.Tensor) -> torch.Tensor:
    return (x - bn.running_mean) / torch.sqrt(bn.running_var + bn.eps) * bn.weight + bn.bias


def test_classifier_2fc_is_bn_linear_bn_relu_linear(rng: torch.Generator) -> None:
    head = TwoLayerHead(6, 3, mid_channels=5)
    head.train()
    head(torch.randn(8, 6, generator=rng) * 3 + 1)  # non-trivial running statistics
    head.eval()
    x = torch.randn(4, 6, generator=rng)
    bn1, fc1, bn2 = head.features[0], head.features[1], head.features[2]
    hidden = torch.relu(_bn_eval(bn2, fc1(_bn_eval(bn1, x))))
    torch.testing.assert_close(head.pre_logits(x), hidden)
    torch.testing.assert_close(head(x), head.fc(hidden))
    assert TwoLayerHead(6, 3).fc.in_features == 512  # PMG / FGVCLib hid_dim


@pytest.mark.parametrize(("activation", "fn"), [("elu", F.elu), ("gelu", F.gelu), ("relu", torch.relu)])
def test_classifier_2fc_activation_option(activation: str, fn, rng: torch.Generator) -> None:
    head = TwoLayerHead(6, 3, mid_channels=5, activation=activation)
    head.train()
    head(torch.randn(8, 6, generator=rng) * 3 + 1)
    head.eval()
    x = torch.randn(4, 6, generator=rng)
    bn1, fc1, bn2 = head.features[0], head.features[1], head.features[2]
    pre = _bn_eval(bn2, fc1(_bn_eval(bn1, x)))
    assert (pre < 0).any()  # the activations differ only on negative inputs
    torch.testing.assert_close(head.pre_logits(x), fn(pre))
    torch.testing.assert_close(head(x), head.fc(fn(pre)))
    assert isinstance(TwoLayerHead(6, 3).features[3], nn.ReLU)  # the default is unchanged (FGVCLib)
    for name, cls in ACTIVATIONS.items():
        assert isinstance(TwoLayerHead(6, 3, activation=name).features[3], cls)


def test_classifier_2fc_activation_is_validated_with_the_options() -> None:
    cfg = {"backbone": "test_tiny", "num_classes": 3, "head": {"type": "classifier_2fc", "activation": "elu"}}
    assert isinstance(build_model(cfg).head.features[3], nn.ELU)
    cfg["head"]["activation"] = "Leaky-ReLU"  # names match case- and separator-insensitively
    assert isinstance(build_model(cfg).head.features[3], nn.LeakyReLU)
    cfg["head"]["activation"] = "selu_"
    options = "relu, gelu, silu, elu, leaky_relu, hardswish, mish, tanh, sigmoid"
    with pytest.raises(ConfigError, match=f"unknown activation 'selu_'; choose one of {options}$") as info:
        build_model(cfg)
    assert info.value.path == "model.head.activation"
    with pytest.raises(ValueError, match="unknown activation 'swishy'; choose one of relu, gelu, silu, elu"):
        TwoLayerHead(6, 3, activation="swishy")


def test_stacked_linear_blocks(rng: torch.Generator) -> None:
    head = StackedLinearHead(6, 3, mid_channels=[5, 4], activation="gelu", norm="ln", dropout=0.1).eval()
    x = torch.randn(2, 6, generator=rng)
    l1, n1, l2, n2 = head.layers[0], head.layers[1], head.layers[4], head.layers[5]
    hidden = F.gelu(n2(l2(F.gelu(n1(l1(x))))))
    torch.testing.assert_close(head.pre_logits(x), hidden)
    torch.testing.assert_close(head(x), head.fc(hidden))
    for name, cls in ACTIVATIONS.items():
        layers = StackedLinearHead(6, 3, mid_channels=[4], activation=name).layers
        assert isinstance(layers[1], cls)
    with pytest.raises(ValueError, match="unknown activation"):
        StackedLinearHead(6, 3, mid_channels=[4], activation="swishy")
    with pytest.raises(ValueError, match="non-empty"):
        StackedLinearHead(6, 3, mid_channels=[])


def test_stacked_linear_config_validation_names_the_path() -> None:
    cfg = {
        "backbone": "test_tiny",
        "num_classes": 3,
        "head": {"type": "stacked_linear", "mid_channels": [8], "activation": "swishy"},
    }
    with pytest.raises(ConfigError, match="unknown activation 'swishy'; choose one of relu, gelu") as info:
        build_model(cfg)
    assert info.value.path == "model.head.activation"
    cfg["head"] = {"type": "stacked_linear"}
    with pytest.raises(ConfigError, match="missing") as info:
        build_model(cfg)
    assert info.value.path == "model.head.mid_channels"


def test_mlp_defaults_to_one_hidden_layer_of_input_width(rng: torch.Generator) -> None:
    head = MLPHead(6, 3).eval()
    x = torch.randn(2, 6, generator=rng)
    assert head.mid_channels == [6] and isinstance(head.layers[1], nn.GELU)
    torch.testing.assert_close(head(x), head.fc(F.gelu(head.layers[0](x))))
    assert MLPHead(6, 3, hidden_channels=[7, 5]).fc.in_features == 5


def test_cosine_logits_are_scaled_cosines(rng: torch.Generator) -> None:
    head = CosineHead(5, 3, scale=10.0)
    x = torch.randn(4, 5, generator=rng)
    w = head.weight.detach()
    expected = torch.empty(4, 3)
    for i in range(4):
        for k in range(3):
            cos = torch.dot(x[i], w[k]) / (x[i].norm() * w[k].norm())
            expected[i, k] = 10.0 * cos
    torch.testing.assert_close(head(x), expected)
    # the angle form: scale * cos(theta) with theta from arccos
    theta = math.acos(float(expected[0, 0] / 10.0))
    assert head(x)[0, 0].item() == pytest.approx(10.0 * math.cos(theta), rel=1e-5)
    emb = head.pre_logits(x)
    torch.testing.assert_close(emb.norm(dim=1), torch.ones(4))
    torch.testing.assert_close(head.embed(x), emb)
    torch.testing.assert_close(head(3.0 * x), head(x))  # invariant to feature scale
    assert list(dict(head.named_parameters())) == ["weight"]


def test_cosine_learnable_scale_and_bias(rng: torch.Generator) -> None:
    head = CosineHead(5, 3, scale=4.0, learn_scale=True, bias=True)
    with torch.no_grad():
        head.bias.copy_(torch.tensor([1.0, -1.0, 0.5]))
    x = torch.randn(2, 5, generator=rng)
    torch.testing.assert_close(head(x), 4.0 * head.cosine(x) + head.bias)
    head(x).sum().backward()
    assert head.scale.grad is not None and head.bias.grad is not None
    torch.testing.assert_close(head.scale.grad, head.cosine(x).sum().detach())
    with pytest.raises(ValueError, match="scale"):
        CosineHead(5, 3, scale=0.0)


def test_cosine_embeddings_through_the_model() -> None:
    model = build_model(
        {"backbone": "test_tiny", "head": {"type": "cosine", "learn_scale": True}, "num_classes": 4}
    )
    images = torch.randn(2, 3, 16, 16)
    emb = model.extract(images, stage="pre_logits")
    torch.testing.assert_close(emb.norm(dim=1), torch.ones(2))
    assert model(images).shape == (2, 4)


@pytest.mark.parametrize("name", ["linear", "classifier_2fc", "classifier_drop_1fc", "mlp", "cosine"])
def test_pre_logits_feeds_the_last_layer_and_in_channels_are_wired(name: str, rng: torch.Generator) -> None:
    head = build_part(HEADS, {"type": name}, "head", {"in_channels": 6, "num_classes": 3}).eval()
    assert head.in_channels == 6 and head.num_classes == 3
    x = torch.randn(2, 6, generator=rng)
    if name != "cosine":
        torch.testing.assert_close(head(x), head.fc(head.pre_logits(x)))
    explicit = build_part(
        HEADS, {"type": name, "in_channels": 6}, "head", {"in_channels": 6, "num_classes": 3}
    )
    assert explicit.in_channels == 6
    with pytest.raises(ConfigError, match="previous part outputs 6"):
        build_part(HEADS, {"type": name, "in_channels": 7}, "head", {"in_channels": 6, "num_classes": 3})
