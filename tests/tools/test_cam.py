"""Class activation maps: target layer, token reshaping, values in [0, 1] at the image's size."""

from __future__ import annotations

import sys

import numpy as np
import pytest
import torch
from PIL import Image
from torch import nn

from visionstack.errors import ConfigError, MissingDependencyError
from visionstack.models.features.layout import FeatureInfo
from visionstack.models.methods.classifier import ImageClassifier
from visionstack.tools.cam import (
    CAM_METHODS,
    CamExplainer,
    find_target_layer,
    make_reshape_transform,
    save_cams,
)


class Brightness(nn.Module):
    """One map: the pixel brightness (a fixed 1x1 conv), then a stride-4 average -- a backbone whose CAM is known."""

    def __init__(self) -> None:
        super().__init__()
        self.stage = nn.Sequential(nn.Conv2d(3, 1, 1, bias=False), nn.AvgPool2d(4))
        nn.init.constant_(self.stage[0].weight, 1.0 / 3)
        self.feature_info = [FeatureInfo(1, 4, "stage")]
        self.out_channels = [1]

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        return [self.stage(x)]


def _brightness_model() -> nn.Module:
    model = ImageClassifier(backbone=Brightness(), head={"type": "linear", "num_classes": 2})
    with torch.no_grad():  # class 0 = mean brightness, class 1 = minus it
        for p in model.head.parameters():
            if p.ndim == 2:
                p.copy_(torch.tensor([[1.0], [-1.0]]))
            else:
                p.zero_()
    return model.eval()


def test_gradcam_highlights_what_the_class_depends_on(tmp_path) -> None:
    model = _brightness_model()
    # a dark 48x32 (w x h) image with a bright patch in its top-left corner; the model sees it at 32x32
    pixels = np.full((32, 48, 3), -1.0, dtype=np.float32)
    pixels[2:10, 3:15] = 1.0
    images = torch.from_numpy(
        np.array(Image.fromarray(((pixels + 1) * 127.5).astype(np.uint8)).resize((32, 32)))
    )
    images = images.permute(2, 0, 1)[None].float() / 127.5 - 1
    explainer = CamExplainer(model, "gradcam")
    result = explainer(images, class_index=0)
    assert explainer.layer_path == "backbone output 0 (stage)"
    cam = result.cams[0]
    assert cam.shape == (32, 32) and cam.dtype == np.float32
    assert cam.min() >= 0.0 and cam.max() <= 1.0 and cam.max() > 0.99
    peak = np.unravel_index(cam.argmax(), cam.shape)
    assert peak[0] < 12 and peak[1] < 12  # the bright top-left patch
    assert cam[20:, 16:].max() < 0.05  # nothing in the dark bottom-right
    dark = explainer(images, class_index=1).cams[0]  # class 1 (minus brightness) highlights the dark area
    assert dark[:8, :8].mean() < 0.5 * dark[20:, 20:].mean()
    original = Image.fromarray(((pixels + 1) * 127.5).astype(np.uint8))
    [png] = save_cams([original], ["img"], result, tmp_path, "gradcam", save_array=True)
    with Image.open(png) as overlay:
        assert overlay.size == (48, 32) and overlay.mode == "RGB"
    full = np.load(tmp_path / "img_gradcam.npy")
    assert full.shape == (32, 48) and full.min() >= 0.0 and full.max() <= 1.0
    top_left = np.unravel_index(full.argmax(), full.shape)
    assert top_left[0] < 12 and top_left[1] < 18


@pytest.mark.parametrize("method", list(CAM_METHODS))
def test_every_method_gives_maps_in_unit_range(tiny_model, method: str) -> None:
    images = torch.randn(2, 3, 32, 40, generator=torch.Generator().manual_seed(0))
    result = CamExplainer(tiny_model, method)(images)
    assert result.cams.shape == (2, 32, 40)
    assert np.isfinite(result.cams).all() and result.cams.min() >= 0.0 and result.cams.max() <= 1.0
    with torch.no_grad():
        probs = tiny_model(images).softmax(1)
    assert result.classes == probs.argmax(1).tolist()
    assert result.probs == pytest.approx(probs.max(1).values.tolist(), abs=1e-6)


def test_target_layer_choice_and_override(tiny_model) -> None:
    assert find_target_layer(tiny_model) == ("backbone output 0 (stages.2)", None)  # a tap on the last map
    assert find_target_layer(tiny_model, "backbone.stages.1")[0] == "backbone.stages.1"
    assert find_target_layer(tiny_model, "stages.0")[0] == "backbone.stages.0"  # relative to the backbone
    with pytest.raises(ConfigError, match=r"no module 'backbone\.stage\.9'.*Did you mean"):
        find_target_layer(tiny_model, "backbone.stage.9")
    tiny_model.backbone.unused = nn.Conv2d(3, 3, 1)
    with pytest.raises(ConfigError, match="backbone.unused is never called in the forward pass"):
        CamExplainer(tiny_model, "gradcam", "backbone.unused")(torch.zeros(1, 3, 16, 16))
    with CamExplainer(tiny_model) as explainer:
        explainer(torch.zeros(1, 3, 16, 16))
        assert len(tiny_model.backbone._forward_hooks) == 1  # the tap on the last map
    assert len(tiny_model.backbone._forward_hooks) == 0  # closing removes it
    with pytest.raises(ConfigError, match="class-index"):
        CamExplainer(tiny_model)(torch.zeros(1, 3, 16, 16), class_index=7)
    with pytest.raises(ConfigError, match="unknown CAM method 'gradcamm'"):
        CamExplainer(tiny_model, "gradcamm")


def test_token_and_channels_last_maps_become_nchw() -> None:
    class TokenBackbone(nn.Module):
        num_prefix_tokens = 1
        feature_info = [FeatureInfo(6, 16, "blocks.1")]

    model = nn.Module()
    model.backbone = TokenBackbone()
    reshape = make_reshape_transform(model, "blocks.1", lambda: (64, 32))  # a 4 x 2 grid of patches
    maps = torch.arange(2 * 6 * 4 * 2, dtype=torch.float32).reshape(2, 6, 4, 2)
    tokens = torch.cat([torch.full((2, 1, 6), -1.0), maps.flatten(2).transpose(1, 2)], dim=1)  # [B, 1 + 8, C]
    assert torch.equal(reshape(tokens), maps)
    assert torch.equal(reshape(maps.permute(0, 2, 3, 1)), maps)  # NHWC -> NCHW
    assert torch.equal(reshape(maps), maps)


@pytest.mark.parametrize(("encoder", "layer"), [("gap", "output 0"), ("native", "blocks.11.norm1")])
def test_vit_end_to_end(encoder: str, layer: str) -> None:
    from visionstack.models.build import build_model

    torch.manual_seed(0)
    backbone = {"type": "timm/vit_tiny_patch16_224", "img_size": 32}
    model = build_model({"backbone": backbone, "encoder": encoder, "num_classes": 3}).eval()
    explainer = CamExplainer(model, "gradcam")
    cams = explainer(torch.randn(1, 3, 32, 32)).cams
    # patch tokens pooled: the backbone's map; the class token read by the head: the last block's norm1
    assert layer in explainer.layer_path
    assert cams.shape == (1, 32, 32) and cams.min() >= 0.0 and cams.max() <= 1.0
    assert cams.max() > 0.99  # gradients reach the target: the map is not all zero


def test_missing_grad_cam_names_the_extra(tiny_model, monkeypatch) -> None:
    monkeypatch.setitem(sys.modules, "pytorch_grad_cam", None)
    with pytest.raises(MissingDependencyError, match=r"pip install 'visionstack\[cam\]'"):
        CamExplainer(tiny_model, "gradcam")
