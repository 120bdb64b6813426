"""Necks: PMG multi-scale conv, FPN, HRNet scale fusion, MMPretrain global average pooling neck."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torchvision.ops import FeaturePyramidNetwork

from visionstack.core.registry import NECKS
from visionstack.errors import ConfigError
from visionstack.models.build import build_model
from visionstack.models.parts.base import total_channels
from visionstack.models.parts.necks import FPN, GlobalAveragePoolingNeck, HRFuseScales, MultiScaleConv


def pyramid(rng: torch.Generator, widths=(4, 6, 8), size: int = 8, batch: int = 2) -> list[torch.Tensor]:
    return [torch.randn(batch, c, size // 2**i, size // 2**i, generator=rng) for i, c in enumerate(widths)]


@pytest.mark.parametrize(
    ("name", "cls"),
    [
        ("multi_scale_conv", MultiScaleConv),
        ("MultiScaleConv", MultiScaleConv),
        ("fpn", FPN),
        ("hr_fuse_scales", HRFuseScales),
        ("HRFuseScales", HRFuseScales),
        ("global_average_pooling", GlobalAveragePoolingNeck),
        ("GlobalAveragePooling", GlobalAveragePoolingNeck),
    ],
)
def test_names_resolve_and_necks_consume_maps(name: str, cls: type) -> None:
    assert NECKS.get(name) is cls and cls.consumes == "maps"


def _basic_conv_eval(block, x: torch.Tensor, padding: int) -> torch.Tensor:
    conv, bn = block[0], block[1]
    y = F.conv2d(x, conv.weight, padding=padding)
    y = (y - bn.running_mean[None, :, None, None]) / torch.sqrt(bn.running_var[None, :, None, None] + bn.eps)
    return torch.relu(y * bn.weight[None, :, None, None] + bn.bias[None, :, None, None])


def test_multi_scale_conv_is_pmg_blocks(rng: torch.Generator) -> None:
    maps = pyramid(rng)
    neck = MultiScaleConv([4, 6, 8], mid_channels=5, out_channels=[3, 7, 2])
    assert neck.out_channels == [3, 7, 2]
    for block in neck.blocks:
        assert block[0][0].kernel_size == (1, 1) and block[1][0].kernel_size == (3, 3)
        assert block[0][0].bias is None and block[0][1].momentum == 0.01
    # give the BatchNorms non-trivial statistics, then compare eval outputs with a hand computation
    neck.train()
    neck(maps)
    neck.eval()
    out = neck(maps)
    for block, x, y in zip(neck.blocks, maps, out):
        torch.testing.assert_close(y, _basic_conv_eval(block[1], _basic_conv_eval(block[0], x, 0), 1))
    assert [o.shape for o in out] == [(2, 3, 8, 8), (2, 7, 4, 4), (2, 2, 2, 2)]


def test_multi_scale_conv_defaults_follow_pmg() -> None:
    neck = MultiScaleConv([512, 1024, 2048])
    assert neck.out_channels == [1024, 1024, 1024]  # PMG: num_ftrs // 2
    assert all(block[0][0].out_channels == 512 for block in neck.blocks)
    with pytest.raises(ValueError, match="2 entries but the neck receives 3 maps"):
        MultiScaleConv([4, 6, 8], mid_channels=[4, 4])


def test_fpn_matches_torchvision_and_shapes(rng: torch.Generator) -> None:
    maps = pyramid(rng)
    neck = FPN([4, 6, 8])
    assert neck.out_channels == [256, 256, 256]
    ref = FeaturePyramidNetwork([4, 6, 8], 256)
    ref.load_state_dict(neck.fpn.state_dict())
    expected = list(ref({str(i): m for i, m in enumerate(maps)}).values())
    out = neck(maps)
    for y, e, m in zip(out, expected, maps):
        torch.testing.assert_close(y, e)
        assert y.shape == (2, 256, *m.shape[2:])
    extra = FPN([4, 6, 8], out_channels=16, extra_blocks="max_pool", norm="bn")
    out = extra(maps)
    assert extra.out_channels == [16] * 4 and [o.shape[-1] for o in out] == [8, 4, 2, 1]
    # the coarsest output is the lateral 1x1 then 3x3 of the coarsest input (nothing above it)
    inner, layer = neck.fpn.inner_blocks[-1], neck.fpn.layer_blocks[-1]
    torch.testing.assert_close(neck(maps)[-1], layer(inner(maps[-1])))


def test_hr_fuse_scales_fuses_into_one_map(rng: torch.Generator) -> None:
    maps = pyramid(rng, widths=(4, 8, 16), size=8)
    neck = HRFuseScales([4, 8, 16], out_channels=12, mid_channels=[8, 16, 32]).eval()
    out = neck(maps)
    assert neck.out_channels == 12 and out.shape == (2, 12, 2, 2)
    inc, down = neck.increase_layers, neck.downsample_layers
    hand = down[1](down[0](inc[0](maps[0])) + inc[1](maps[1])) + inc[2](maps[2])
    torch.testing.assert_close(out, neck.final_layer(hand))
    default = HRFuseScales([18, 36, 72, 144])  # HRNet-W18 widths -> MMPretrain's 128..1024, then 2048
    assert [m.conv3.out_channels for m in default.increase_layers] == [128, 256, 512, 1024]
    assert default.out_channels == 2048
    with pytest.raises(ValueError, match="multiples of 4"):
        HRFuseScales([4, 8], mid_channels=[6, 8])
    with pytest.raises(ValueError, match="built for 3 maps, got 2"):
        neck(maps[:2])
    with pytest.raises(ValueError, match="half the size"):
        neck([maps[0], maps[1], maps[1].repeat(1, 2, 1, 1)])


def test_global_average_pooling_neck_needs_no_encoder(rng: torch.Generator) -> None:
    maps = pyramid(rng)
    out = GlobalAveragePoolingNeck([4, 6, 8])(maps)
    for o, m in zip(out, maps):
        torch.testing.assert_close(o, m.mean(dim=(2, 3)))
    cfg = {
        "backbone": {"type": "test_tiny", "out_indices": [1, 2]},
        "neck": "GlobalAveragePooling",
        "num_classes": 3,
    }
    model = build_model(cfg)  # default encoder is skipped after a pooling neck
    assert model.encoder is None and model.head.in_channels == 12 + 16
    x = torch.randn(2, 3, 16, 16, generator=rng)
    feats = model.backbone(x)
    expected = torch.cat([f.mean(dim=(2, 3)) for f in feats], dim=1)
    torch.testing.assert_close(model.forward_features(x), expected)
    assert build_model({**cfg, "encoder": None}).encoder is None
    with pytest.raises(ConfigError, match="already pools") as info:
        build_model({**cfg, "encoder": "gem"})
    assert info.value.path == "model.encoder"


@pytest.mark.parametrize("neck", ["multi_scale_conv", "fpn", "hr_fuse_scales"])
def test_map_necks_wire_in_and_out_channels(neck: str) -> None:
    model = build_model(
        {
            "backbone": {"type": "test_tiny", "out_indices": [0, 1, 2]},
            "neck": {"type": neck},
            "num_classes": 3,
        }
    )
    assert model.map_neck.in_channels == [8, 12, 16]
    assert model.head.in_channels == total_channels(model.map_neck.out_channels)
    assert model(torch.randn(2, 3, 16, 16)).shape == (2, 3)
    explicit = build_model(
        {
            "backbone": {"type": "test_tiny", "out_indices": [0, 1, 2]},
            "neck": {"type": neck, "in_channels": [8, 12, 16]},
            "num_classes": 3,
        }
    )
    assert explicit.map_neck.in_channels == [8, 12, 16]
