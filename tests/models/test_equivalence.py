"""create_model(name, weights=<file saved from the torchvision model>) gives torchvision's own logits.

The reference models are randomly initialized (BatchNorm statistics randomized too, so normalization is
not an identity), saved as safetensors or as a .pth training checkpoint, and loaded by file path.
"""

from __future__ import annotations

import warnings

import pytest
import torch
import torchvision
from torchvision.models.feature_extraction import create_feature_extractor

import visionstack as vs
from visionstack.core.io import save_weights

TOL = 1e-5


def reference(name: str, seed: int = 0, size: int = 64, **kwargs) -> torch.nn.Module:
    """A randomly initialized torchvision model whose outputs depend on the input.

    BatchNorm statistics are calibrated on random images (with fresh-init statistics, deep nets such as
    MobileNetV3 give nearly the same logits for every image, which would make equality meaningless) and
    zero-initialized classifiers (ViT) get random weights.
    """
    torch.manual_seed(seed)
    with warnings.catch_warnings():  # GoogLeNet / Inception: "default weight initialization will change"
        warnings.simplefilter("ignore", FutureWarning)
        model = torchvision.models.get_model(name, **kwargs)
    norms = [m for m in model.modules() if isinstance(m, torch.nn.modules.batchnorm._BatchNorm)]
    with torch.no_grad():
        for p in model.parameters():
            if p.dim() > 1 and not p.any():
                torch.nn.init.normal_(p, std=0.02)
        if norms:
            for m in norms:
                m.reset_running_stats()
                m.momentum = None  # cumulative average over the calibration batch
            model.train()(torch.randn(4, 3, size, size))
            for m in norms:
                m.momentum = 0.1
    return model.eval()


def save(model: torch.nn.Module, path, fmt: str):
    if fmt == "safetensors":
        return save_weights(model, path.with_suffix(".safetensors"))
    state = model.state_dict()
    if fmt == "ddp_checkpoint":  # a training checkpoint: nested, with DDP's "module." prefix
        state = {"epoch": 3, "state_dict": {f"module.{k}": v for k, v in state.items()}}
    out = path.with_suffix(".pth")
    torch.save(state, out)
    return out


@pytest.mark.parametrize(
    ("name", "size", "fmt"),
    [
        ("resnet50", 64, "ddp_checkpoint"),
        ("convnext_tiny", 64, "safetensors"),
        ("efficientnet_b0", 64, "pth"),
        pytest.param("vit_b_16", 224, "safetensors", marks=pytest.mark.slow),
        ("swin_t", 64, "pth"),
        ("mobilenet_v3_small", 64, "safetensors"),
    ],
)
def test_logits_equal_torchvision(tmp_path, name, size, fmt):
    ref = reference(name, size=size)
    path = save(ref, tmp_path / name, fmt)
    model = vs.create_model(name, weights=path).eval()
    assert model.backbone.weights_report.ok, str(model.backbone.weights_report)
    x = torch.randn(2, 3, size, size)
    with torch.no_grad():
        want, got = ref(x), model(x)
    assert got.shape == want.shape == (2, 1000)
    assert (got - want).abs().max().item() <= TOL
    assert (want[0] - want[1]).abs().max() > 0.05  # the logits depend on the image


def test_mobilenet_v3_native_encoder_keeps_the_hidden_layer(tmp_path):
    ref = reference("mobilenet_v3_small")
    model = vs.create_model("mobilenet_v3_small", weights=save(ref, tmp_path / "m", "safetensors")).eval()
    assert model.encoder.out_channels == 1024  # avgpool -> Linear(576, 1024) -> Hardswish -> Dropout
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        hidden = ref.classifier[:-1](torch.flatten(ref.avgpool(ref.features(x)), 1))
        assert torch.allclose(model.extract(x, stage="pre_logits"), hidden, atol=TOL)


def test_features_equal_create_feature_extractor(tmp_path):
    ref = reference("resnet50")
    path = save(ref, tmp_path / "r50", "safetensors")
    backbone = vs.create_model("resnet50", features_only=True, weights=path).eval()
    nodes = {f.name: f.name for f in backbone.feature_info}
    extractor = create_feature_extractor(ref, nodes).eval()
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        got, want = backbone(x), extractor(x)
    assert len(got) == 5
    for g, (name, w) in zip(got, want.items()):
        assert torch.equal(g, w), name


def test_in_chans_one_equals_the_rgb_model_on_a_grey_image(tmp_path):
    ref = reference("resnet18")
    model = vs.create_model("resnet18", in_chans=1, weights=save(ref, tmp_path / "r18", "pth")).eval()
    grey = torch.randn(2, 1, 64, 64)
    with torch.no_grad():
        want, got = ref(grey.expand(-1, 3, -1, -1)), model(grey)
    assert (got - want).abs().max().item() <= 1e-4  # summed kernel == the RGB kernel on equal channels


def test_other_class_count_takes_the_files_classifier(tmp_path):
    torch.manual_seed(1)
    ref = torchvision.models.resnet18(num_classes=10).eval()
    model = vs.create_model(
        "resnet18", num_classes=10, weights=save(ref, tmp_path / "r10", "safetensors")
    ).eval()
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        assert (model(x) - ref(x)).abs().max().item() <= TOL
    fresh = vs.create_model("resnet18", num_classes=7)
    assert fresh.head.fc.out_features == 7 and fresh.num_classes == 7


@pytest.mark.parametrize("fmt", ["safetensors", "pth"])
def test_versioned_state_dict_loads_mnasnet(tmp_path, fmt):
    """MNASNet reads its state-dict version in ``_load_from_state_dict``; files carry none (safetensors)
    or lose it when unwrapped, so the loader must supply the model's own."""
    ref = reference("mnasnet0_5", num_classes=10)
    model = vs.create_model("mnasnet0_5", num_classes=10, weights=save(ref, tmp_path / "mn", fmt)).eval()
    report = model.backbone.weights_report
    assert not report.missing and not report.unexpected, str(report)
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        want, got = ref(x), model(x)
    assert got.shape == want.shape == (2, 10)
    assert (got - want).abs().max().item() <= TOL
    assert (want[0] - want[1]).abs().max() > 1e-3
