"""torchvision backbones: registration, config validation, weights, native parts, training, FPN adapter."""

from __future__ import annotations

import copy
import subprocess
import sys

import pytest
import torch
import torchvision
from torch import nn

import visionstack as vs
from visionstack.core.build import build_part
from visionstack.core.registry import BACKBONES
from visionstack.engine.optim_wrapper import OptimWrapper
from visionstack.errors import CheckpointError, ConfigError, UnknownNameError
from visionstack.models.backbones.torchvision import TorchvisionBackbone, torchvision_names
from visionstack.models.integrations.detection import BackboneWithFPN, FeatureDict, backbone_with_fpn
from visionstack.models.parts.native import NativeGraphHead, NativePath


def test_import_is_lazy_and_parts_do_not_load_torchvision():
    code = (
        "import sys, visionstack as vs; vs.ENCODERS.get('native'); vs.HEADS.get('native');"
        "print('torchvision' in sys.modules)"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"


def test_every_classification_model_is_registered_with_fgvclib_aliases():
    names = torchvision_names()
    assert len(names) >= 80 and {"squeezenet1_0", "googlenet", "inception_v3", "vit_b_16"} <= set(names)
    assert set(names) <= set(BACKBONES.names())
    assert BACKBONES.canonical_name("vit16") == "vit_b_16"
    assert BACKBONES.canonical_name("swint") == "swin_t"
    assert BACKBONES.canonical_name("ResNet50") == "resnet50"
    assert "vit16" in vs.list_models("vit*", include_aliases=True)


def test_names_differing_only_in_separators_need_exact_spelling():
    assert BACKBONES.canonical_name("regnet_x_1_6gf") == "regnet_x_1_6gf"
    assert BACKBONES.canonical_name("regnet_x_16gf") == "regnet_x_16gf"
    with pytest.raises(UnknownNameError, match="ambiguous.*regnet_x_16gf"):
        BACKBONES.get("RegNet-X-16GF")


def test_config_keys_and_types_are_checked():
    with pytest.raises(ConfigError, match="out_indice"):
        build_part(BACKBONES, {"type": "resnet18", "out_indice": [1]}, "backbone")
    with pytest.raises(ConfigError, match="backbone.frozen_stages"):
        build_part(BACKBONES, {"type": "resnet18", "frozen_stages": "1"}, "backbone")
    b = build_part(
        BACKBONES, {"type": "resnet18", "out_indices": [-1], "model_kwargs": {"zero_init_residual": True}}
    )
    assert isinstance(b, TorchvisionBackbone)


def test_config_built_classifier_with_native_parts():
    model = vs.build_model({"backbone": "resnet18", "encoder": "native", "head": "native", "num_classes": 5})
    assert model.encoder.out_channels == 512 and model.head.fc.out_features == 5
    with torch.no_grad():
        assert model.eval()(torch.randn(2, 3, 32, 32)).shape == (2, 5)


def test_weights_tag_from_local_hub_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("TORCH_HOME", str(tmp_path))
    with pytest.raises(CheckpointError, match="resnet18-f37072fd.pth"):
        vs.create_model("resnet18", weights="IMAGENET1K_V1")
    torch.manual_seed(0)
    ref = torchvision.models.resnet18().eval()
    cache = tmp_path / "hub" / "checkpoints"
    cache.mkdir(parents=True)
    torch.save(ref.state_dict(), cache / "resnet18-f37072fd.pth")
    model = vs.create_model("resnet18", weights="IMAGENET1K_V1").eval()
    x = torch.randn(1, 3, 32, 32)
    with torch.no_grad():
        assert (model(x) - ref(x)).abs().max() <= 1e-5


def test_pretrained_cfg_and_factory_modes():
    model = vs.create_model("resnet50")
    assert model.pretrained_cfg["input_size"] == (3, 224, 224)
    assert model.pretrained_cfg["mean"] == pytest.approx((0.485, 0.456, 0.406))
    assert model.num_classes == 1000 and isinstance(model.backbone, NativePath)
    backbone = vs.create_model("resnet18", features_only=True, out_indices=(2, 3))
    assert isinstance(backbone, TorchvisionBackbone) and backbone.out_channels == [128, 256]
    pooled = vs.create_model("resnet18", num_classes=4, out_indices=[-2, -1])  # gap + linear on two maps
    assert pooled.head.fc.in_features == 256 + 512
    with pytest.raises(ValueError, match="native path needs the last level alone"):
        vs.create_model("resnet18", out_indices=[3, 4], encoder="native", num_classes=4)


def test_squeezenet_keeps_its_conv_classifier():
    model = vs.create_model("squeezenet1_1", num_classes=10).eval()
    assert isinstance(model.head, NativeGraphHead)
    with torch.no_grad():
        x = torch.randn(2, 3, 64, 64)
        assert model(x).shape == (2, 10)
        assert model.extract(x, stage="pre_logits").shape[:2] == (2, 512)


def test_train_step_mode_switches_and_deepcopy():
    torch.manual_seed(0)
    model = vs.create_model("resnet18", num_classes=3)
    optim = OptimWrapper(torch.optim.SGD(model.parameters(), lr=0.1))
    batch = {"image": torch.randn(4, 3, 32, 32), "label": torch.tensor([0, 1, 2, 0])}
    before = model.head.fc.weight.clone()
    model.train()
    logs = model.train_step(batch, optim)
    assert torch.isfinite(logs["loss"]) and not torch.equal(model.head.fc.weight, before)
    model.eval()
    with torch.no_grad():
        a = model(batch["image"])
        copied = copy.deepcopy(model)  # what EMA does; the copy keeps eval mode
        assert not any(m.training for m in copied.modules())
        assert torch.equal(copied(batch["image"]), a)
        assert (a[0] - a[1]).abs().max() > 1e-3
    model.train()
    with torch.no_grad():  # train mode: batch statistics in BatchNorm again
        assert not torch.allclose(model(batch["image"]), a)


def test_fpn_and_faster_rcnn_adapter():
    from torchvision.models.detection import FasterRCNN
    from torchvision.ops import FeaturePyramidNetwork

    backbone = vs.create_model("resnet18", features_only=True, out_indices=[1, 2, 3, 4])
    feats = FeatureDict(backbone).eval()
    assert feats.out_channels == [64, 128, 256, 512]
    fpn = FeaturePyramidNetwork(feats.out_channels, 32).eval()
    with torch.no_grad():
        maps = fpn(feats(torch.randn(1, 3, 64, 64)))
    assert list(maps) == ["0", "1", "2", "3"]
    assert [tuple(m.shape) for m in maps.values()] == [
        (1, 32, 16, 16),
        (1, 32, 8, 8),
        (1, 32, 4, 4),
        (1, 32, 2, 2),
    ]

    with_fpn = backbone_with_fpn("resnet18", out_channels=32)
    assert isinstance(with_fpn, BackboneWithFPN) and with_fpn.out_channels == 32
    detector = FasterRCNN(with_fpn, num_classes=3, min_size=64, max_size=64).eval()
    with torch.no_grad():
        (det,) = detector([torch.rand(3, 64, 64)])
    assert set(det) == {"boxes", "labels", "scores"} and det["boxes"].shape[1] == 4
    with pytest.raises(ValueError, match="2 names for 4 feature maps"):
        FeatureDict(backbone, names=["a", "b"])


def test_non_zoo_backbone_has_no_native_path():
    class Plain(nn.Module):
        out_channels = [4]

    with pytest.raises(ConfigError, match="has no native path"):
        vs.build_model({"backbone": "test_tiny", "encoder": "native", "num_classes": 2})
    assert not isinstance(Plain(), NativePath)


def test_hooks_inside_stages_fire_as_in_torchvision():
    model = vs.create_model("resnet18").eval()
    seen = []
    model.backbone.body.layer4[-1].register_forward_hook(lambda m, i, o: seen.append(tuple(o.shape)))
    with torch.no_grad():
        model(torch.randn(1, 3, 64, 64))
    assert seen == [(1, 512, 2, 2)]  # what Grad-CAM needs


def test_vit_block_levels_equal_torchvision_token_maps(tmp_path):
    """Every ViT block is a level (tokens as NCHW grids, class token dropped); the last level is the
    encoder output (last block + final norm), and the classifier still gives torchvision's logits."""
    torch.manual_seed(0)
    small = {"image_size": 64}  # patch 16 at 64 px: a 4 x 4 grid
    ref = torchvision.models.vit_b_16(**small).eval()
    with torch.no_grad():
        ref.heads.head.weight.normal_()  # torchvision zero-initializes it
    path = tmp_path / "vit.pth"
    torch.save(ref.state_dict(), path)
    seen: list[torch.Tensor] = []
    for module in [*ref.encoder.layers, ref.encoder]:
        module.register_forward_hook(lambda m, i, o: seen.append(o))
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        want_logits = ref(x)

    b = vs.create_model("vit_b_16", features_only=True, weights=path, model_kwargs=small).eval()
    blocks = [f"encoder.layers.encoder_layer_{i}" for i in range(11)]
    assert [f.name for f in b.feature_info] == [*blocks, "encoder"]
    assert [(f.reduction, f.channels) for f in b.feature_info] == [(16, 768)] * 12
    with torch.no_grad():
        got = b(x)
    wanted = [*seen[:11], seen[12]]  # blocks 0..10, then the encoder output (block 11 + final norm)
    for g, w in zip(got, wanted, strict=True):
        assert torch.equal(g, w[:, 1:].transpose(1, 2).reshape(2, 768, 4, 4))
    last = vs.create_model("vit_b_16", out_indices=-1, features_only=True, model_kwargs=small)
    assert [f.name for f in last.feature_info] == ["encoder"]
    model = vs.create_model("vit_b_16", weights=path, model_kwargs=small).eval()
    assert model.backbone.feature_info == b.feature_info[-1:]
    with torch.no_grad():
        got_logits = model(x)
    assert (got_logits - want_logits).abs().max().item() <= 1e-5
    assert (want_logits[0] - want_logits[1]).abs().max() > 1e-3
