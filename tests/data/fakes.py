"""Tiny fake dataset trees for the data tests (a few 8x8 images each)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image


def write_image(path: Path, value: int = 128, size: tuple[int, int] = (8, 8)) -> Path:
    """A flat-colored RGB image whose red channel is ``value`` (so files can be told apart)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", size, (value, 255 - value, 7)).save(path)
    return path


def write_corrupt(path: Path) -> Path:
    """A JPEG cut in half (truncated)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    pixels = np.random.default_rng(0).integers(0, 256, (32, 32, 3), dtype=np.uint8)
    Image.fromarray(pixels).save(path, format="JPEG", quality=90)
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    return path


def image_folder(root: Path, classes: dict[str, int]) -> Path:
    """``root/<class>/<k>.png`` with ``classes[name]`` images per class."""
    for c, (name, count) in enumerate(classes.items()):
        for k in range(count):
            write_image(root / name / f"{k}.png", value=10 * c + k)
    return root


def cub(parent: Path) -> Path:
    """CUB_200_2011 with 3 classes x 2 images; ids 1..6; images 1, 3, 5 train."""
    base = parent / "CUB_200_2011"
    names = ["001.Albatross", "002.Auklet", "003.Blackbird"]
    (base / "images").mkdir(parents=True)
    images, labels, split = [], [], []
    for image_id in range(1, 7):
        cls = (image_id - 1) // 2 + 1
        rel = f"{names[cls - 1]}/img_{image_id}.jpg"
        write_image(base / "images" / rel, value=image_id)
        images.append(f"{image_id} {rel}")
        labels.append(f"{image_id} {cls}")
        split.append(f"{image_id} {image_id % 2}")
    (base / "images.txt").write_text("\n".join(images) + "\n")
    (base / "image_class_labels.txt").write_text("\n".join(labels) + "\n")
    (base / "train_test_split.txt").write_text("\n".join(split) + "\n")
    (base / "classes.txt").write_text("".join(f"{i + 1} {n}\n" for i, n in enumerate(names)))
    return base
