"""PMG-V2 block-convolution ResNets: equal to torchvision in eval, tile-wise stages in training."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from torch import nn
from torchvision.models import resnet50
from torchvision.models.feature_extraction import create_feature_extractor

from visionstack.core.build import build_part
from visionstack.core.io import save_weights
from visionstack.core.registry import BACKBONES
from visionstack.models.backbones.resnet_bc import (
    PMG_V2_BLOCKS,
    ResNet50BC,
    ResNet101BC,
    ResNetBC,
    merge_tiles,
    split_tiles,
)

LEVELS = ["relu", "layer1", "layer2", "layer3", "layer4"]


@pytest.fixture(scope="module")
def reference() -> nn.Module:
    """torchvision resnet50 with non-trivial BatchNorm statistics."""
    torch.manual_seed(0)
    model = resnet50()
    for m in model.modules():
        if isinstance(m, nn.BatchNorm2d):
            m.running_mean.uniform_(-0.2, 0.2)
            m.running_var.uniform_(0.5, 1.5)
            m.weight.data.uniform_(0.5, 1.5)
            m.bias.data.uniform_(-0.2, 0.2)
    return model.eval()


@pytest.fixture(scope="module")
def weights_file(reference: nn.Module, tmp_path_factory: pytest.TempPathFactory) -> Path:
    return save_weights(reference, tmp_path_factory.mktemp("w") / "resnet50.safetensors")


@pytest.fixture(scope="module")
def backbone(weights_file: Path) -> ResNetBC:
    return ResNet50BC(features_only=True, weights=str(weights_file), norm_eval=True)


def test_split_and_merge_tiles_order() -> None:
    x = torch.arange(2 * 3 * 8 * 8, dtype=torch.float32).reshape(2, 3, 8, 8)
    tiles = split_tiles(x, 2)
    assert tiles.shape == (8, 3, 4, 4)
    # tile-major stacking: tile (i, j) of every image, then the next tile
    for t, (i, j) in enumerate([(0, 0), (0, 1), (1, 0), (1, 1)]):
        for n in range(2):
            assert torch.equal(tiles[t * 2 + n], x[n, :, 4 * i : 4 * i + 4, 4 * j : 4 * j + 4])
    assert torch.equal(merge_tiles(tiles, 2), x)
    assert torch.equal(merge_tiles(split_tiles(x, 4), 4), x)
    assert split_tiles(x, 0) is x and merge_tiles(x, 1) is x
    with pytest.raises(ValueError, match="3x3"):
        split_tiles(x, 3)


def test_eval_equals_torchvision_resnet50(reference: nn.Module, backbone: ResNetBC) -> None:
    assert backbone.weights_report is not None
    assert len(backbone.weights_report.loaded) == len(reference.state_dict()) - 2
    assert sorted(backbone.weights_report.unexpected) == ["fc.bias", "fc.weight"]
    extractor = create_feature_extractor(reference, LEVELS)
    x = torch.randn(2, 3, 64, 64)
    backbone.eval()
    with torch.no_grad():
        expected = list(extractor(x).values())
        got = backbone(x, blocks=[2, 2, 2, 2])  # block counts are ignored in eval
    assert [f.name for f in backbone.feature_info] == LEVELS
    assert backbone.out_channels == [64, 256, 512, 1024, 2048]
    assert [f.reduction for f in backbone.feature_info] == [2, 4, 8, 16, 32]
    for e, g in zip(expected, got):
        torch.testing.assert_close(g, e, rtol=0, atol=0)


def test_training_runs_each_stage_on_each_tile(backbone: ResNetBC) -> None:
    """By hand: cut the map into tiles, run the stage on every tile on its own, stitch the results."""
    backbone.train()  # norm_eval=True: BatchNorm uses running statistics, so tiles are independent
    blocks = [2, 2, 0, 0]
    x = torch.randn(2, 3, 64, 64)

    def tile_by_tile(stage: nn.Module, fmap: torch.Tensor, b: int) -> torch.Tensor:
        if b <= 1:
            return stage(fmap)
        h, w = fmap.shape[-2] // b, fmap.shape[-1] // b
        rows = [
            torch.cat([stage(fmap[..., i * h : (i + 1) * h, j * w : (j + 1) * w]) for j in range(b)], dim=-1)
            for i in range(b)
        ]
        return torch.cat(rows, dim=-2)

    with torch.no_grad():
        with backbone.tiled(blocks):
            got = backbone(x)
        whole = backbone(x)
        fmap = backbone.relu(backbone.bn1(backbone.conv1(x)))
        expected = [fmap]
        fmap = backbone.maxpool(fmap)
        for name, b in zip(LEVELS[1:], blocks):
            fmap = tile_by_tile(getattr(backbone, name), fmap, b)
            expected.append(fmap)
    assert backbone.blocks == [0, 0, 0, 0]  # restored after the with block
    for e, g in zip(expected, got):
        torch.testing.assert_close(g, e, rtol=1e-5, atol=1e-5)
    assert not torch.allclose(got[1], whole[1], atol=1e-3)  # tiling really changes layer1's output
    torch.testing.assert_close(got[0], whole[0])  # the stem never sees tiles


def test_gradients_flow_through_tiles() -> None:
    torch.manual_seed(0)
    model = ResNet50BC(features_only=True, out_indices=[2, 3, 4], blocks=[4, 4, 2, 2]).train()
    x = torch.randn(2, 3, 64, 64, requires_grad=True)
    outs = model(x)
    assert [tuple(o.shape) for o in outs] == [(2, 512, 8, 8), (2, 1024, 4, 4), (2, 2048, 2, 2)]
    sum(o.square().mean() for o in outs).backward()
    assert x.grad is not None and x.grad.abs().sum() > 0
    for name, p in model.named_parameters():
        assert p.grad is not None and torch.isfinite(p.grad).all(), name


def test_pmg_v2_blocks_fit_448_inputs() -> None:
    sizes = [112, 112, 56, 28]  # maps entering layer1..layer4 at 448 px
    for blocks in PMG_V2_BLOCKS:
        assert all(b == 0 or s % b == 0 for s, b in zip(sizes, blocks))
        deepest = max(i for i, b in enumerate(blocks) if b)
        assert sizes[deepest] // blocks[deepest] == 14  # the deepest tiled stage sees 14 px tiles


def test_options_and_registry(weights_file: Path) -> None:
    assert BACKBONES.get("resnet50_bc") is ResNet50BC and BACKBONES.get("resnet101-bc") is ResNet101BC
    model = build_part(
        BACKBONES,
        {
            "type": "resnet50_bc",
            "out_indices": [-2, -1],
            "output_stride": 16,
            "frozen_stages": 1,
            "in_chans": 1,
            "weights": str(weights_file),
        },
    )
    assert [(f.name, f.channels, f.reduction) for f in model.feature_info] == [
        ("layer3", 1024, 16),
        ("layer4", 2048, 16),
    ]
    assert model.weights_report.adapted == ["conv1.weight"]
    model.train()
    frozen = {n for n, p in model.named_parameters() if not p.requires_grad}
    assert frozen == {n for n, _ in model.named_parameters() if n.startswith(("conv1.", "bn1.", "layer1."))}
    assert not model.layer1[0].bn1.training and model.layer2[0].bn1.training
    outs = model(torch.randn(2, 1, 64, 64))
    assert [tuple(o.shape) for o in outs] == [(2, 1024, 4, 4), (2, 2048, 4, 4)]
    classifier_default = ResNet50BC(out_indices=None)
    assert [f.name for f in classifier_default.feature_info] == ["layer4"]
    shallow = ResNet50BC(out_indices=[1])
    assert shallow.layer2 is None and shallow.layer4 is None  # unused stages are dropped
    with pytest.raises(ValueError, match="output_stride"):
        ResNet50BC(output_stride=4)
    with pytest.raises(ValueError, match="blocks"):
        ResNet50BC(blocks=[2, 2])
    assert [len(ResNet101BC(out_indices=[3]).layer3)] == [23]


def test_create_model_equals_torchvision_logits(reference: nn.Module, weights_file: Path) -> None:
    from visionstack import create_model

    model = create_model("resnet50_bc", num_classes=1000, weights=weights_file).eval()
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        torch.testing.assert_close(model(x), reference(x), rtol=0, atol=1e-5)
    other = create_model("resnet50_bc", num_classes=10, weights=weights_file)  # new classifier
    assert other.head.fc.weight.shape == (10, 2048)
