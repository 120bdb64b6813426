"""Level discovery (visionstack.models.features.discovery) and the multi-scale options of the torchvision backbones."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from visionstack.core.registry import BACKBONES
from visionstack.models.backbones.torchvision import build_torchvision_model
from visionstack.models.features.discovery import discover_stages, modules_through
from visionstack.models.features.layout import Level, from_nchw, to_nchw


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
    # one level per transformer block; the last one is the encoder (last block + final norm)
    blocks = [f"encoder.layers.encoder_layer_{i}" for i in range(11)]
    assert [lv.name for lv in vit.levels] == [*blocks, "encoder"]
    for level in vit.levels:
        assert (level.layout, level.reduction, level.num_prefix_tokens, level.channels) == ("NLC", 16, 1, 768)
    assert vit.input_conv == "conv_proj"
    assert "encoder" not in vit.units and "encoder.layers.encoder_layer_11" in vit.units


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


class BlockTokenNet(nn.Module):
    """A toy transformer: patch conv (4), class token, three shape-keeping blocks, a final norm."""

    def __init__(self, blocks: int = 3) -> None:
        super().__init__()
        self.patch = nn.Conv2d(3, 16, 4, 4)
        self.cls = nn.Parameter(torch.zeros(1, 1, 16))
        self.blocks = nn.Sequential(*(nn.Linear(16, 16) for _ in range(blocks)))
        self.norm = nn.LayerNorm(16)
        self.head = nn.Linear(16, 5)

    def forward(self, x):
        x = self.patch(x).flatten(2).transpose(1, 2)
        x = torch.cat([self.cls.expand(x.shape[0], -1, -1), x], 1)
        return self.head(self.norm(self.blocks(x))[:, 0])


def test_token_blocks_are_levels_and_the_last_is_the_deepest_level():
    found = discover_stages(BlockTokenNet())
    assert [(lv.name, lv.reduction, lv.layout) for lv in found.levels] == [
        ("blocks.0", 4, "NLC"),
        ("blocks.1", 4, "NLC"),
        ("norm", 4, "NLC"),  # block 2 and the final norm: what the classifier reads
    ]
    assert found.units == ("patch", "blocks.0", "blocks.1", "blocks.2", "norm", "head")
    # a single block is no sequence: one level
    assert [lv.name for lv in discover_stages(BlockTokenNet(blocks=1)).levels] == ["norm"]


def test_cnn_stages_of_equal_blocks_stay_one_level():
    # ConvNeXt's last stage is three shape-keeping CNBlocks: maps, not tokens, so still one level
    found = discover_stages(build_torchvision_model("convnext_tiny", meta=True))
    assert found.levels[-1].name == "features.7" and len(found.levels) == 4


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


def _reference_weights(name: str) -> dict[str, torch.Tensor]:
    from tests.models.test_equivalence import reference

    return {f"body.{k}": v for k, v in reference(name).state_dict().items()}


@pytest.mark.parametrize(
    ("name", "output_stride"),
    [("resnet18", 16), ("resnet18", 8), ("convnext_tiny", 8), ("vgg11_bn", 16), ("resnet50", 16)],
)
def test_generic_dilation_keeps_the_maps(name, output_stride):
    """Dilated maps sampled every ``reduction / output_stride`` pixels equal the undilated model's maps
    (BasicBlock convs, ConvNeXt's kernel-2 downsampling convs, VGG's 2x2 max pools; ResNet-50 through
    torchvision's own replace_stride_with_dilation)."""
    weights = _reference_weights(name)
    base = backbone(name, features_only=True).eval()
    dilated = backbone(name, features_only=True, output_stride=output_stride).eval()
    for model in (base, dilated):
        assert not model.load_state_dict(weights, strict=False).missing_keys
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        want, got = base(x), dilated(x)
    capped = [min(f.reduction, output_stride) for f in base.feature_info]
    assert [f.reduction for f in dilated.feature_info] == capped
    assert [f.name for f in dilated.feature_info] == [f.name for f in base.feature_info]
    for w, g, info, r in zip(want, got, base.feature_info, capped):
        assert g.shape[-2:] == (64 // r, 64 // r)
        step = info.reduction // r
        torch.testing.assert_close(g[..., ::step, ::step], w, rtol=1e-5, atol=1e-4, msg=info.name)
    assert capped[-1] == output_stride and got[-1].shape != want[-1].shape


def test_dilation_with_squeeze_excitation_stays_finite():
    # SE pools the whole (now larger) map, so the maps change: check sizes and values only
    b = backbone("efficientnet_b0", features_only=True, output_stride=16).eval()
    b.load_state_dict(_reference_weights("efficientnet_b0"), strict=False)
    with torch.no_grad():
        outs = b(torch.randn(2, 3, 64, 64))
    assert [f.reduction for f in b.feature_info] == [2, 4, 8, 16, 16]
    assert [o.shape[-1] for o in outs] == [32, 16, 8, 4, 4]
    assert all(torch.isfinite(o).all() for o in outs)
    classifier = BACKBONES.get("resnet18")(output_stride=16)  # the native path follows the dilated body
    assert classifier.feature_info[0].reduction == 16 and classifier.num_classes == 1000


@pytest.mark.parametrize(
    ("name", "output_stride", "reason"),
    [
        ("swin_t", 16, "ShiftedWindowAttention\\): has position-dependent parameters"),
        ("densenet121", 8, "transition3.pool \\(AvgPool2d\\): AvgPool2d has no dilation"),
        ("alexnet", 16, "features.12 \\(MaxPool2d\\): its padding does not keep size / stride"),
        ("vit_b_16", 8, "conv_proj \\(Conv2d\\): downsamples from 1 to 16 in one step"),
    ],
)
def test_output_stride_refused_with_the_reason(name, output_stride, reason):
    with pytest.raises(
        ValueError, match=f"output_stride={output_stride} is not available for {name}: .*{reason}"
    ):
        backbone(name, output_stride=output_stride)


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
    with pytest.raises(ValueError, match="frozen_stages: must be in -1..4"):
        backbone("resnet18", frozen_stages=5)


def test_frozen_stages_of_a_vit_count_blocks():
    v = backbone("vit_b_16", features_only=True, frozen_stages=1, model_kwargs={"image_size": 32}).train()
    frozen = {n for n, p in v.named_parameters() if not p.requires_grad}
    for name in ("class_token", "encoder.pos_embedding", "conv_proj.weight"):
        assert f"body.{name}" in frozen
    assert any(n.startswith("body.encoder.layers.encoder_layer_1.") for n in frozen)
    assert not any(n.startswith(("body.encoder.layers.encoder_layer_2.", "body.encoder.ln")) for n in frozen)
    assert v.body.training and v.body.encoder.training  # enclosing modules keep their mode
    assert not v.body.encoder.layers.encoder_layer_1.training


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
    b = backbone("vit_b_16", out_indices=[0, 5], return_prefix_tokens=True).eval()
    with torch.no_grad():
        outs = b(torch.randn(1, 3, 224, 224))
    assert [tuple(o.shape) for o in outs] == [(1, 768, 14, 14)] * 2 + [(1, 1, 768)] * 2
