"""Fixtures of the tool tests: tiny models and tiny generated image folders."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

CLASSES = ("blue", "green", "red")


def write_images(root: Path, per_class: int = 4, size: tuple[int, int] = (40, 28), seed: int = 0) -> Path:
    """``root/<color>/<k>.png``: noisy images dominated by one color channel (an easy 3-class problem).

    ``size`` is (width, height), not square, so that size mix-ups show.
    """
    rng = np.random.default_rng(seed)
    for c, name in enumerate(CLASSES):
        for k in range(per_class):
            pixels = rng.integers(0, 90, (size[1], size[0], 3))
            pixels[..., 2 - c] += 150
            (root / name).mkdir(parents=True, exist_ok=True)
            Image.fromarray(pixels.astype(np.uint8)).save(root / name / f"{name}_{k}.png")
    return root


@pytest.fixture
def image_root(tmp_path: Path) -> Path:
    return write_images(tmp_path / "images")


@pytest.fixture
def tiny_model() -> torch.nn.Module:
    from visionstack.models.build import build_model

    torch.manual_seed(0)
    return build_model({"backbone": "test_tiny", "num_classes": 3}).eval()
