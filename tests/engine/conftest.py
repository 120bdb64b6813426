"""Fixtures of the engine tests: a tiny learnable image folder and run configs over it."""

from __future__ import annotations

import copy
import csv
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from PIL import Image

import tests.engine.parts  # noqa: F401  (registers the test parts)

COLORS = ((220, 40, 40), (40, 200, 40), (40, 40, 220))


def write_folder(root: Path, per_class: int = 8, size: int = 12, seed: int = 0) -> Path:
    """``root/<c>/<k>.png``: noisy images tinted by class (red / green / blue): learnable in a few steps."""
    rng = np.random.default_rng(seed)
    for c, color in enumerate(COLORS):
        (root / f"class_{c}").mkdir(parents=True, exist_ok=True)
        for k in range(per_class):
            pixels = np.clip(rng.normal(color, 40, (size, size, 3)), 0, 255).astype(np.uint8)
            Image.fromarray(pixels).save(root / f"class_{c}" / f"{k}.png")
    return root


def run_config(root: Path, **train: Any) -> dict[str, Any]:
    """A run config over the folder at ``root``: test_tiny backbone, SGD, 16 px, batch 4, no progress bar."""
    cfg = {
        "model": {"backbone": "test_tiny", "head": {"type": "linear"}},
        "data": {
            "root": str(root),
            "train": {"type": "image_folder"},
            "val": {"type": "image_folder"},
            "image_size": 16,
            "preset": "simple",
            "batch_size": 4,
            "num_workers": 0,
        },
        "train": {
            "epochs": 2,
            "optimizer": {"type": "sgd", "lr": 0.05, "momentum": 0.9},
            "seed": 0,
            "progress": False,
            "log_interval": 2,
            "deterministic": True,
        },
        "eval": {"interval": 1, "topk": [1, 2]},
    }
    for key, value in train.items():
        cfg["train"][key] = copy.deepcopy(value)
    return cfg


@pytest.fixture(scope="session")
def image_folder(tmp_path_factory) -> Path:
    return write_folder(tmp_path_factory.mktemp("engine") / "images")


def read_csv(path: Path) -> list[dict[str, str]]:
    """Rows of a CSV file as dicts."""
    with open(path, newline="", encoding="utf-8") as fh:
        return list(csv.DictReader(fh))
