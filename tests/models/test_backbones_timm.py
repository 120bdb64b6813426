"""timm/<name> backbones: registry entry, maps equal to timm's own features_only, options, native path."""

from __future__ import annotations

from pathlib import Path

import pytest
import timm
import torch

from visionstack.core.build import build_part
from visionstack.core.io import save_weights
from visionstack.core.registry import BACKBONES, list_models
from visionstack.errors import ConfigError, UnknownNameError
from visionstack.models.backbones.timm import TimmBackbone
from visionstack.models.methods.classifier import ImageClassifier


def image(size: int = 64, channels: int = 3) -> torch.Tensor:
    return torch.randn(2, channels, size, size, generator=torch.Generator().manual_seed(0))


def timm_file(name: str, tmp_path: Path, **kwargs) -> tuple[torch.nn.Module, Path]:
    """A timm model with random weights (and BN statistics) saved to a safetensors file."""
    torch.manual_seed(0)
    model = timm.create_model(name, **kwargs).eval()
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, torch.nn.modules.batchnorm._BatchNorm):
                m.running_mean.uniform_(-0.1, 0.1)
                m.running_var.uniform_(0.5, 1.5)
    return model, save_weights(model, tmp_path / f"{name}.safetensors")


def test_registry_resolves_every_timm_name() -> None:
    builder = BACKBONES.get("timm/resnet18")
    assert builder.func is TimmBackbone and builder.args == ("resnet18",)
    assert "timm/resnet50.a1_in1k" in BACKBONES and BACKBONES.get("timm/ResNet18").args == ("resnet18",)
    names = list_models("timm/convnext_*")
    assert "timm/convnext_tiny" in names and len(names) > 10
    assert len(list_models("timm/*")) == len(timm.list_models())
    with pytest.raises(UnknownNameError, match="timm/resnet18"):
        BACKBONES.get("timm/resnet18x")


def test_config_keys_and_types_are_checked() -> None:
    with pytest.raises(ConfigError, match="bogus"):
        build_part(BACKBONES, {"type": "timm/resnet10t", "bogus": 1}, "backbone")
    with pytest.raises(ConfigError, match="backbone.features_only"):
        build_part(BACKBONES, {"type": "timm/resnet10t", "features_only": "yes"}, "backbone")
    with pytest.raises(ConfigError, match="no pretrained tag 'nope'"):
        build_part(BACKBONES, {"type": "timm/resnet10t.nope"}, "backbone")


@pytest.mark.parametrize(
    ("name", "kwargs"),
    [
        ("resnet10t", {}),
        ("convnext_atto", {}),
        ("efficientnet_b0", {}),
        ("swin_tiny_patch4_window7_224", {"img_size": 64}),  # timm returns NHWC for Swin
        ("vit_tiny_patch16_224", {"img_size": 64}),  # tokens -> grid, class token dropped
    ],
)
def test_maps_equal_timm_features_only(name: str, kwargs: dict, tmp_path: Path) -> None:
    _, path = timm_file(name, tmp_path, **kwargs)
    ref = timm.create_model(
        name, features_only=True, pretrained=True, pretrained_cfg_overlay={"file": str(path)}, **kwargs
    ).eval()
    indices = list(ref.feature_info.out_indices)  # timm's default levels (the last 3 blocks for a ViT)
    ours = TimmBackbone(name, out_indices=indices, weights=str(path), **kwargs)
    ours.eval()
    x = image()
    with torch.no_grad():
        expected, got = ref(x), ours(x)
    nhwc = str(getattr(ref, "output_fmt", "NCHW")).endswith("NHWC")
    assert [(f.channels, f.reduction, f.name) for f in ours.feature_info] == [
        (d["num_chs"], d["reduction"], d["module"]) for d in ref.feature_info.get_dicts()
    ]
    for e, g, info in zip(expected, got, ours.feature_info):
        e = e.permute(0, 3, 1, 2) if nhwc else e
        assert g.shape[1] == info.channels
        torch.testing.assert_close(g, e, rtol=1e-5, atol=1e-5)


def test_negative_out_indices_and_defaults() -> None:
    full = TimmBackbone("resnet10t", features_only=True)
    assert [f.reduction for f in full.feature_info] == [2, 4, 8, 16, 32]
    last_two = TimmBackbone("resnet10t", out_indices=[-1, -2])
    assert last_two.feature_info == full.feature_info[3:]
    outs = last_two.eval()(image())
    assert [tuple(o.shape) for o in outs] == [(2, 256, 4, 4), (2, 512, 2, 2)]
    assert TimmBackbone("resnet10t", out_indices=-3).feature_info == [full.feature_info[2]]
    with pytest.raises(ValueError, match="out of range"):
        TimmBackbone("resnet10t", out_indices=[5])
    classifier_mode = TimmBackbone("efficientnet_b0")  # the model's final features: conv_head, 1280 ch
    assert [(f.channels, f.reduction) for f in classifier_mode.feature_info] == [(1280, 32)]
    assert tuple(classifier_mode.eval()(image())[0].shape) == (2, 1280, 2, 2)


def test_pretrained_cfg_is_exposed() -> None:
    cfg = TimmBackbone("resnet50.a1_in1k", out_indices=[1]).pretrained_cfg
    assert cfg["input_size"] == (3, 224, 224) and cfg["crop_pct"] == 0.95
    assert cfg["interpolation"] == "bicubic" and cfg["mean"] == (0.485, 0.456, 0.406)
    vit = TimmBackbone("vit_tiny_patch16_224.augreg_in21k", img_size=96, in_chans=1, out_indices=[-1])
    assert vit.pretrained_cfg["input_size"] == (1, 96, 96) and vit.pretrained_cfg["mean"] == (0.5, 0.5, 0.5)


def test_vit_prefix_tokens_dropped_or_returned() -> None:
    kwargs = {"img_size": 64, "out_indices": [-2, -1]}
    plain = TimmBackbone("vit_tiny_patch16_224", **kwargs).eval()
    with_prefix = TimmBackbone("vit_tiny_patch16_224", return_prefix_tokens=True, **kwargs).eval()
    with_prefix.load_state_dict(plain.state_dict())
    x = image()
    with torch.no_grad():
        maps, outs = plain(x), with_prefix(x)
        tokens = plain.model.forward_intermediates(
            x, indices=[10, 11], output_fmt="NLC", intermediates_only=True, return_prefix_tokens=True
        )
    assert [tuple(m.shape) for m in maps] == [(2, 192, 4, 4)] * 2
    assert len(outs) == 4 and [tuple(t.shape) for t in outs[2:]] == [(2, 1, 192)] * 2
    for m, o, (spatial, cls), p in zip(maps, outs[:2], tokens, outs[2:]):
        torch.testing.assert_close(o, m)
        torch.testing.assert_close(p, cls)  # the class token
        torch.testing.assert_close(m.flatten(2).transpose(1, 2), spatial)  # row-major grid
    assert not torch.allclose(p, spatial[:, :1])


def test_frozen_stages_norm_eval_output_stride_in_chans(tmp_path: Path) -> None:
    _, path = timm_file("resnet10t", tmp_path)
    model = TimmBackbone(
        "resnet10t",
        features_only=True,
        frozen_stages=1,
        norm_eval=True,
        output_stride=16,
        in_chans=1,
        weights=str(path),
    ).train()
    frozen = {n for n, p in model.named_parameters() if not p.requires_grad}
    prefixes = ("model.conv1.", "model.bn1.", "model.layer1.")
    assert frozen == {n for n, _ in model.named_parameters() if n.startswith(prefixes)} and frozen
    assert not any(m.training for m in model.modules() if isinstance(m, torch.nn.BatchNorm2d))
    assert model.weights_report.adapted == ["conv1.0.weight"]
    assert [f.reduction for f in model.feature_info] == [2, 4, 8, 16, 16]
    outs = model(image(channels=1))
    assert [o.shape[-1] for o in outs] == [32, 16, 8, 4, 4]
    with pytest.raises(ValueError, match="frozen_stages"):
        TimmBackbone("resnet10t", frozen_stages=7)


@pytest.mark.parametrize(
    ("name", "kwargs"),
    [
        ("resnet10t", {}),
        ("convnext_atto", {}),  # head norm in the pre-logits path
        ("mobilenetv3_small_050", {}),  # hidden conv_head in the pre-logits path
        ("vit_tiny_patch16_224", {"img_size": 64}),  # class-token pooling
        ("swin_tiny_patch4_window7_224", {"img_size": 64}),  # NHWC features
        ("levit_128s", {"img_size": 64}),  # BN + Linear classifiers, two averaged heads
    ],
)
def test_create_model_equals_timm(name: str, kwargs: dict, tmp_path: Path) -> None:
    from visionstack import create_model

    reference, path = timm_file(name, tmp_path, num_classes=7, **kwargs)
    model = create_model(f"timm/{name}", num_classes=7, weights=path, **kwargs).eval()
    x = image()
    with torch.no_grad():
        torch.testing.assert_close(model(x), reference(x), rtol=0, atol=1e-5)
    assert sum(p.numel() for p in model.parameters()) == sum(p.numel() for p in reference.parameters())
    assert model.pretrained_cfg["mean"] == reference.pretrained_cfg["mean"]


def test_native_parts_compose_by_hand(tmp_path: Path) -> None:
    reference, path = timm_file("vit_tiny_patch16_224", tmp_path, num_classes=7, img_size=64)
    backbone = TimmBackbone("vit_tiny_patch16_224", weights=str(path), img_size=64)
    encoder, head = backbone.native_encoder(), backbone.native_head(7)
    assert (encoder.in_channels, encoder.out_channels, head.in_channels, head.num_classes) == (
        192,
        192,
        192,
        7,
    )
    model = ImageClassifier(backbone=backbone, encoder=encoder, head=head, loss=None).eval()
    x = image()
    with torch.no_grad():
        maps = backbone(x)
        torch.testing.assert_close(model(x), reference(x), rtol=0, atol=1e-5)
    assert [tuple(t.shape) for t in maps] == [(2, 192, 4, 4), (2, 1, 192)]  # map, then the class token
    fresh = backbone.native_head(5)  # another class count: a new classifier, not the file's
    assert fresh.classifiers[0].weight.shape == (5, 192)
    with pytest.raises(ValueError, match="final features"):
        TimmBackbone("resnet10t", out_indices=[-1]).native_encoder()


def test_vit_weights_at_another_size_resample_pos_embed(tmp_path: Path) -> None:
    """timm's checkpoint filter runs on timm weights: a 224-px ViT file fills a 64-px ViT."""
    from timm.layers import resample_abs_pos_embed

    reference, path = timm_file("vit_tiny_patch16_224", tmp_path)
    backbone = TimmBackbone("vit_tiny_patch16_224", img_size=64, weights=str(path))
    report = backbone.weights_report
    assert not report.shape_mismatched and "pos_embed" in report.loaded
    expected = resample_abs_pos_embed(reference.pos_embed, (4, 4), num_prefix_tokens=1)
    torch.testing.assert_close(backbone.model.pos_embed, expected)
