"""Test-time augmentation: flip and multi-crop views averaged exactly as defined."""

from __future__ import annotations

import pytest
import torch
from PIL import Image
from torch import nn
from torchvision.transforms import v2

from visionstack.errors import ConfigError
from visionstack.tools.tta import TTAModel, tta_transform


class Asymmetric(nn.Module):
    """Logits that change under a horizontal flip and differ per crop (a fixed linear map of the pixels)."""

    def __init__(self, size: int = 8) -> None:
        super().__init__()
        self.fc = nn.Linear(3 * size * size, 4)
        torch.manual_seed(0)
        nn.init.normal_(self.fc.weight)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.fc(images.flatten(1))

    def predict_step(self, images: torch.Tensor) -> dict[str, torch.Tensor]:
        logits = self(images)
        return {"logits": logits, "logits_half": logits / 2, "embedding": images.flatten(1)[:, :5]}


def _pipeline(crop: int = 8) -> v2.Compose:
    return v2.Compose(
        [
            v2.Resize((12, 12)),
            v2.CenterCrop(crop),
            v2.ToImage(),
            v2.ToDtype(torch.float32, scale=True),
            v2.Normalize([0.5] * 3, [0.25] * 3),
        ]
    )


def _image() -> Image.Image:
    g = torch.Generator().manual_seed(1)
    return Image.fromarray(torch.randint(0, 256, (20, 16, 3), generator=g, dtype=torch.uint8).numpy())


def test_flip_averages_image_and_mirror() -> None:
    model = Asymmetric()
    images = torch.randn(3, 3, 8, 8)
    expected = (model(images) + model(images.flip(-1))) / 2
    out = TTAModel(model, "flip").predict_step(images)
    assert torch.allclose(out["logits"], expected, atol=1e-6)
    assert torch.allclose(out["logits_half"], expected / 2, atol=1e-6)
    assert not torch.allclose(expected, model(images), atol=1e-3)  # the flip really changes the logits
    assert torch.allclose(TTAModel(model, "flip")(images), expected, atol=1e-6)


@pytest.mark.parametrize(("mode", "n"), [("five_crop", 5), ("ten_crop", 10)])
def test_multi_crop_views_and_average(mode: str, n: int) -> None:
    plain, tta = _pipeline(), tta_transform(_pipeline(), mode)
    image = _image()
    views = tta(image)
    assert views.shape == (n, 3, 8, 8)
    center = plain(image)
    assert torch.equal(views[4], center)  # FiveCrop order: 4 corners, then the center
    if n == 10:
        assert torch.equal(views[9], center.flip(-1))  # then the mirrored five
    batch = torch.stack([views, tta(image.transpose(Image.Transpose.FLIP_TOP_BOTTOM))])  # [2, n, 3, 8, 8]
    model = Asymmetric()
    out = TTAModel(model, mode).predict_step(batch)
    expected = torch.stack([model(b).mean(0) for b in batch])
    assert torch.allclose(out["logits"], expected, atol=1e-6)
    assert out["embedding"].shape == (2, 5)


def test_errors() -> None:
    no_crop = v2.Compose([v2.Resize((8, 8)), v2.ToImage()])
    with pytest.raises(ConfigError, match="needs a CenterCrop"):
        tta_transform(no_crop, "five_crop")
    assert tta_transform(no_crop, "flip") is no_crop
    with pytest.raises(ConfigError, match="ten_crop"):
        tta_transform(no_crop, "ten_crops")
