"""Level discovery (visionstack.models.discovery) and the multi-scale options of the torchvision backbones."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from visionstack.models.backbones.torchvision import build_torchvision_model
from visionstack.models.discovery import Level, discover_stages, from_nchw, modules_through, to_nchw
from visionstack.registry import BACKBONES


def backbone(name: str, **kwargs):
    return BACKBONES.get(name)(**kwargs)


# -- discovery on models built on the meta device (no compute) ------------------------------------
@pytest.mark.parametrize(
    ("name", "names", "reductions", "channels"),
    [
        (
            "resnet50",
            ["relu", "layer1", "layer2", "layer3", "layer4"],
            [2, 4, 8, 16, 32],
            [64, 256, 512, 1024, 2048],
        ),
        (
            "densenet121",
            [
                "features.relu0",
                "features.denseblock1",
                "features.denseblock2",
                "features.denseblock3",
                "features.norm5",
            ],
            [2, 4, 8, 16, 32],
            [64, 256, 512, 1024, 1024],
        ),
        (
            "inception_v3",
            ["Conv2d_2b_3x3", "Conv2d_4a_3x3", "Mixed_5d", "Mixed_6e", "Mixed_7c"],
            [2, 4, 8, 16, 32],
            [64, 192, 288, 768, 2048],
        ),
        (
            "convnext_tiny",
            ["features.1", "features.3", "features.5", "features.7"],
            [4, 8, 16, 32],
            [96, 192, 384, 768],
        ),
    ],
)
def test_discovered_levels(name, names, reductions, channels):
    found = discover_stages(build_torchvision_model(name, meta=True))
    assert [lv.name for lv in found.levels] == names
    assert [lv.reduction for lv in found.levels] == reductions
    assert [lv.channels for lv in found.levels] == channels


def test_layouts_swin_nhwc_and_vit_tokens():
    swin = discover_stages(build_torchvision_model("swin_t", meta=True))
    assert [lv.layout for lv in swin.levels] == ["NHWC", "NHWC", "NHWC", "NCHW"]
    assert swin.levels[-1].name == "permute"  # after the final norm, as the classifier reads it
    vit = discover_stages(build_torchvision_model("vit_b_16", meta=True))
    assert vit.fixed_size and vit.input_size == (224, 224)
    (level,) = vit.levels
    assert (level.name, level.layout, level.reduction, level.num_prefix_tokens, level.channels) == (
        "encoder",
        "NLC",
        16,
        1,
        768,
    )
    assert vit.input_conv == "conv_proj"


class TokenNet(nn.Module):
    """A toy token model: conv stem (2), patch conv (8), class + 2 register tokens, a Linear block."""

    def __init__(self) -> None:
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(3, 8, 3, 2, 1), nn.ReLU())
        self.patch = nn.Conv2d(8, 16, 4, 4)
        self.prefix = nn.Parameter(torch.zeros(1, 3, 16))
        self.block = nn.Linear(16, 16)
        self.pool = nn.AdaptiveAvgPool2d(1)

    def forward(self, x):
        x = self.patch(self.stem(x)).flatten(2).transpose(1, 2)
        x = torch.cat([self.prefix.expand(x.shape[0], -1, -1), x], 1)
        return self.block(x)[:, 0]


def test_discovery_of_a_custom_token_model_and_cache():
    net = TokenNet()
    found = discover_stages(net, cache_key="token-net-test")
    assert [(lv.name, lv.reduction, lv.layout) for lv in found.levels] == [
        ("stem", 2, "NCHW"),
        ("block", 8, "NLC"),
    ]
    assert found.levels[1].num_prefix_tokens == 3
    assert discover_stages(net, cache_key="token-net-test") is found
    assert set(modules_through(found, 0)) == {"stem.0", "stem.1", "stem"}
    # round trip: tokens -> NCHW map + prefix -> tokens
    tokens = torch.randn(2, 3 + 4 * 6, 16)
    fmap, prefix = to_nchw(tokens, found.levels[1], (32, 48))
    assert fmap.shape == (2, 16, 4, 6) and prefix.shape == (2, 3, 16)
    assert torch.equal(fmap[:, :, 1, 2], tokens[:, 3 + 1 * 6 + 2])
    assert torch.equal(from_nchw(fmap, prefix, found.levels[1]), tokens)


def test_nhwc_round_trip():
    level = Level("x", 5, 4, "NHWC")
    x = torch.randn(2, 3, 4, 5)
    fmap, prefix = to_nchw(x, level, (12, 16))
    assert fmap.shape == (2, 5, 3, 4) and prefix is None
    assert torch.equal(from_nchw(fmap, None, level), x)


def test_discovery_error_names_the_model():
    with pytest.raises(ValueError, match="could not discover feature levels of Linear"):
        discover_stages(nn.Linear(3, 3))


# -- backbone options -------------------------------------------------------------------------------
def _check_maps(b, outs, size):
    assert len(outs) == len(b.feature_info)
    reductions = [f.reduction for f in b.feature_info]
    assert reductions == sorted(reductions)
    for out, info in zip(outs, b.feature_info):
        assert out.ndim == 4 and out.shape[1] == info.channels
        for s in out.shape[2:]:
            assert size / (2 * info.reduction) <= s <= math.ceil(size / info.reduction) + 1


def test_features_only_all_levels_and_out_indices():
    b = backbone("resnet18", features_only=True).eval()
    x = torch.randn(2, 3, 64, 64)
    outs = b(x)
    _check_maps(b, outs, 64)
    assert b.out_channels == [64, 64, 128, 256, 512]
    neg = backbone("resnet18", out_indices=[-1, -3]).eval()
    assert neg.out_indices == [2, 4]
    assert [f.name for f in neg.feature_info] == ["layer2", "layer4"]
    neg.load_state_dict(b.state_dict(), strict=False)
    with torch.no_grad():
        got = neg(x)
    assert torch.equal(got[0], outs[2]) and torch.equal(got[1], outs[4])
    classifier_mode = backbone("resnet18")
    assert [f.name for f in classifier_mode.feature_info] == ["layer4"]
    with pytest.raises(ValueError, match="out of range"):
        backbone("resnet18", out_indices=[5])


def test_swin_maps_are_nchw():
    b = backbone("swin_t", features_only=True).eval()
    with torch.no_grad():
        outs = b(torch.randn(1, 3, 64, 64))
    _check_maps(b, outs, 64)
    assert [tuple(o.shape) for o in outs] == [(1, 96, 16, 16), (1, 192, 8, 8), (1, 384, 4, 4), (1, 768, 2, 2)]


def test_output_stride_by_dilation():
    b = backbone("resnet50", features_only=True, output_stride=8).eval()
    assert [f.reduction for f in b.feature_info] == [2, 4, 8, 8, 8]
    with torch.no_grad():
        outs = b(torch.randn(1, 3, 64, 64))
    assert [o.shape[-1] for o in outs] == [32, 16, 8, 8, 8]
    m = backbone("mobilenet_v3_large", output_stride=16).eval()
    assert m.feature_info[0].reduction == 16
    with pytest.raises(ValueError, match="not available for convnext_tiny"):
        backbone("convnext_tiny", output_stride=16)
    with pytest.raises(ValueError, match="BasicBlock"):
        backbone("resnet18", output_stride=8)


def test_frozen_stages_and_norm_eval():
    b = backbone("resnet18", features_only=True, frozen_stages=1)
    frozen = {n for n, p in b.named_parameters() if not p.requires_grad}
    assert "body.conv1.weight" in frozen and "body.layer1.1.conv2.weight" in frozen
    assert not any(n.startswith("body.layer2") for n in frozen)
    b.train()
    bn1, bn2 = b.body.get_submodule("layer1.0.bn1"), b.body.get_submodule("layer2.0.bn1")
    assert not bn1.training and bn2.training
    stats = bn1.running_mean.clone()
    b(torch.randn(2, 3, 32, 32))
    assert torch.equal(bn1.running_mean, stats)  # frozen BN does not update
    assert not torch.equal(bn2.running_mean, torch.zeros(128))  # trainable BN does

    n = backbone("resnet18", norm_eval=True).train()
    assert all(not m.training for m in n.modules() if isinstance(m, nn.BatchNorm2d))
    assert all(p.requires_grad for p in n.parameters())
    with pytest.raises(ValueError, match="frozen_stages must be in -1..4"):
        backbone("resnet18", frozen_stages=5)


def test_in_chans_one_adapts_the_first_conv():
    b = backbone("resnet18", in_chans=1, features_only=True).eval()
    assert b.body.conv1.in_channels == 1
    with torch.no_grad():
        outs = b(torch.randn(1, 1, 64, 64))
    _check_maps(b, outs, 64)
    v = backbone("vit_b_16", in_chans=1).eval()
    assert v.body.conv_proj.in_channels == 1


def test_return_prefix_tokens_for_vit():
    b = backbone("vit_b_16", return_prefix_tokens=True).eval()
    with torch.no_grad():
        fmap, cls = b(torch.randn(1, 3, 224, 224))
    assert fmap.shape == (1, 768, 14, 14) and cls.shape == (1, 1, 768)
