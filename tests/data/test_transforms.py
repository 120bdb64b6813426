"""Transforms by name, presets and their sizes, and defaults from a backbone's pretrained config."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image
from torchvision.transforms import InterpolationMode, v2

from visionstack.core.registry import TRANSFORMS
from visionstack.data.transforms import (
    build_train_transforms,
    build_transforms,
    build_val_transforms,
    transforms_from_data_cfg,
)
from visionstack.errors import ConfigError, UnknownNameError


def image(w: int = 80, h: int = 60, value: int = 128) -> Image.Image:
    return Image.new("RGB", (w, h), (value, value, value))


def kinds(compose: v2.Compose) -> list[str]:
    return [type(t).__name__ for t in compose.transforms]


@pytest.mark.parametrize(
    "name",
    [
        "RandomResizedCrop",
        "Resize",
        "CenterCrop",
        "RandomCrop",
        "RandomHorizontalFlip",
        "ColorJitter",
        "Normalize",
        "ToImage",
        "ToDtype",
        "RandAugment",
        "TrivialAugmentWide",
        "AutoAugment",
        "RandomErasing",
        "RandomApply",
    ],
)
def test_torchvision_names_resolve(name: str) -> None:
    assert TRANSFORMS.get(name) is getattr(v2, name)


def test_separator_insensitive_names_and_no_lambda() -> None:
    assert TRANSFORMS.get("random_resized_crop") is v2.RandomResizedCrop
    assert "Lambda" not in TRANSFORMS.names()
    with pytest.raises(UnknownNameError):
        TRANSFORMS.get("Lambda")


def test_build_from_config_with_nested_lists_and_names() -> None:
    pipeline = build_transforms(
        [
            {"type": "RandomResizedCrop", "size": 24, "interpolation": "bicubic"},
            {"type": "RandomApply", "transforms": [{"type": "ColorJitter", "brightness": 0.3}], "p": 0.5},
            "ToImage",
            {"type": "ToDtype", "dtype": "float32", "scale": True},
        ]
    )
    assert kinds(pipeline) == ["RandomResizedCrop", "RandomApply", "ToImage", "ToDtype"]
    assert pipeline.transforms[0].interpolation == InterpolationMode.BICUBIC
    assert isinstance(pipeline.transforms[1].transforms[0], v2.ColorJitter)
    out = pipeline(image())
    assert out.shape == (3, 24, 24) and out.dtype == torch.float32 and 0 <= out.min() <= out.max() <= 1


def test_errors_name_the_key_path_and_closest_name() -> None:
    with pytest.raises(UnknownNameError) as info:
        build_transforms(
            [{"type": "ToImage"}, {"type": "RandomResizeCrop", "size": 3}], path="data.train_transforms"
        )
    message = str(info.value)
    assert "data.train_transforms.1.type" in message and "Did you mean: RandomResizedCrop" in message
    with pytest.raises(ConfigError, match=r"data.val_transforms.0.sze: unknown key. Did you mean 'size'"):
        build_transforms([{"type": "Resize", "sze": 3}], path="data.val_transforms")
    with pytest.raises(ConfigError, match=r"0.interpolation: unknown interpolation 'bicubik'.*'bicubic'"):
        build_transforms([{"type": "Resize", "size": 3, "interpolation": "bicubik"}])
    with pytest.raises(ConfigError, match=r"0.dtype: 'float33' is not a torch dtype"):
        build_transforms([{"type": "ToDtype", "dtype": "float33"}])
    with pytest.raises(ConfigError, match="expected a list"):
        build_transforms({"type": "Resize"})


def test_fgvc_preset_sizes() -> None:
    train = build_train_transforms(32, resize_size=40, preset="fgvc")
    assert kinds(train) == ["Resize", "RandomCrop", "RandomHorizontalFlip", "ToImage", "ToDtype", "Normalize"]
    assert list(train.transforms[0].size) == [40, 40] and train.transforms[1].size == (32, 32)
    val = build_val_transforms(32, resize_size=40, preset="fgvc")
    assert kinds(val) == ["Resize", "CenterCrop", "ToImage", "ToDtype", "Normalize"]
    for pipeline in (train, val):
        assert pipeline(image(90, 50)).shape == (3, 32, 32)
    assert list(build_val_transforms(448).transforms[0].size) == [550, 550]  # the FGVC 550 -> 448 default
    with pytest.raises(ConfigError, match="resize_size"):
        build_train_transforms(32, resize_size=30)


def test_imagenet_and_simple_presets() -> None:
    train = build_train_transforms(32, preset="imagenet")
    assert kinds(train)[:2] == ["RandomResizedCrop", "RandomHorizontalFlip"]
    assert train(image()).shape == (3, 32, 32)
    val = build_val_transforms(32, preset="imagenet", crop_pct=0.875)
    assert list(val.transforms[0].size) == [36]  # floor(32 / 0.875): shorter side
    assert val(image(80, 60)).shape == (3, 32, 32)
    rect = build_val_transforms([24, 40], preset="imagenet")
    assert rect(image()).shape == (3, 24, 40)
    simple = build_train_transforms(16, preset="simple")
    assert kinds(simple) == ["Resize", "ToImage", "ToDtype", "Normalize"]  # no flip: digits are not symmetric
    assert simple(image(8, 8)).shape == (3, 16, 16)
    with pytest.raises(ConfigError, match="unknown preset 'fgcv'.*Did you mean 'fgvc'"):
        build_train_transforms(32, preset="fgcv")


def test_normalization_values() -> None:
    out = build_val_transforms(8, mean=[0.5, 0.5, 0.5], std=[0.25, 0.25, 0.25], preset="simple")(
        image(8, 8, 200)
    )
    assert torch.allclose(out, torch.full((3, 8, 8), (200 / 255 - 0.5) / 0.25), atol=1e-6)


def test_from_data_cfg_presets_and_pretrained_defaults() -> None:
    fgvc = transforms_from_data_cfg({"image_size": 32, "resize_size": 40}, train=True)
    assert kinds(fgvc)[:2] == ["Resize", "RandomCrop"]  # resize_size given: fgvc preset by default
    pretrained = {
        "input_size": (3, 48, 48),
        "interpolation": "bicubic",
        "mean": (0.5, 0.4, 0.3),
        "std": (0.2, 0.2, 0.2),
        "crop_pct": 0.75,
    }
    val = transforms_from_data_cfg({}, train=False, pretrained_cfg=pretrained)
    assert kinds(val)[:2] == ["Resize", "CenterCrop"] and list(val.transforms[0].size) == [64]  # 48 / 0.75
    assert val.transforms[0].interpolation == InterpolationMode.BICUBIC
    assert val.transforms[-1].mean == [0.5, 0.4, 0.3] and val(image()).shape == (3, 48, 48)
    ours = transforms_from_data_cfg(
        {"image_size": 32, "mean": [0.1, 0.1, 0.1], "interpolation": "nearest"},
        train=False,
        pretrained_cfg=pretrained,
    )
    assert ours.transforms[-1].mean == [0.1, 0.1, 0.1] and ours.transforms[-1].std == [0.2, 0.2, 0.2]
    assert ours.transforms[0].interpolation == InterpolationMode.NEAREST
    assert ours(image()).shape == (3, 32, 32)
    with pytest.raises(ConfigError, match="data.image_size"):
        transforms_from_data_cfg({"image_size": -3}, train=True)


def test_from_data_cfg_explicit_lists() -> None:
    cfg = {
        "mean": [0.0, 0.0, 0.0],
        "std": [1.0, 1.0, 1.0],
        "train_transforms": [{"type": "Resize", "size": [10, 12]}],
        "transforms": {
            "train": [{"type": "CenterCrop", "size": 5}],
            "val": [{"type": "CenterCrop", "size": 6}],
        },
    }
    train = transforms_from_data_cfg(cfg, train=True)  # train_transforms wins; tensor conversion appended
    assert kinds(train) == ["Resize", "ToImage", "ToDtype", "Normalize"]
    out = train(image(30, 30, 51))
    assert out.shape == (3, 10, 12) and torch.allclose(out, torch.full_like(out, 0.2))
    assert transforms_from_data_cfg(cfg, train=False)(image()).shape == (3, 6, 6)
    complete = [{"type": "ToImage"}, {"type": "Resize", "size": 4}]
    assert kinds(transforms_from_data_cfg({"transforms": complete}, train=False)) == ["ToImage", "Resize"]
    with pytest.raises(ConfigError, match="data.transforms.test: unknown key"):
        transforms_from_data_cfg({"transforms": {"test": []}}, train=True)


def test_random_transforms_follow_torch_seed() -> None:
    pipeline = build_train_transforms(16, preset="imagenet")
    pixels = np.random.default_rng(0).integers(0, 256, (40, 40, 3), dtype=np.uint8)
    img = Image.fromarray(pixels)
    torch.manual_seed(3)
    a = pipeline(img)
    torch.manual_seed(3)
    assert torch.equal(a, pipeline(img))
