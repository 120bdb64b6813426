"""Every method learns a generated fine-grained task (a 3x3 coloured mark on noise) well above chance."""

from __future__ import annotations

from typing import Any

import pytest
import torch

from tests.methods.toy import accuracy, fine_grained_set, train
from visionstack.models.build import build_model

SMALL_NECK = {"type": "multi_scale_conv", "mid_channels": 16, "out_channels": 16}
SMALL_2FC = {"type": "classifier_2fc", "mid_channels": 32}
TINY = {"type": "test_tiny", "widths": [16, 32, 32]}

# name -> (model config, training steps, learning rate); four classes, chance is 25%
CASES: dict[str, tuple[dict[str, Any], int, float]] = {
    "baseline": ({"type": "baseline", "backbone": TINY}, 100, 0.01),
    "baseline_mixup_cutmix": (
        {"type": "baseline", "backbone": TINY, "mixup_alpha": 0.2, "cutmix_alpha": 1.0},
        100,
        0.01,
    ),
    "mcl": (
        {
            "type": "mcl",
            "backbone": TINY,
            "channels_per_class": 4,
            "head": SMALL_2FC,
            "mu": 1.0,
            "lambda_div": 1.0,
        },
        200,
        0.01,
    ),
    "pmg": (
        {
            "type": "pmg",
            "backbone": {**TINY, "out_indices": [0, 1, 2]},
            "neck": SMALL_NECK,
            "head": SMALL_2FC,
        },
        60,
        0.01,
    ),
    "recognizer": ({"type": "recognizer", "backbone": TINY}, 100, 0.01),
}


def _learns(cfg: dict[str, Any], steps: int, lr: float, paired: bool = False) -> float:
    train_set = fine_grained_set(256 if not paired else 128, size=32, seed=0)
    test_set = fine_grained_set(32, size=32, seed=1)
    torch.manual_seed(0)
    model = build_model({**cfg, "num_classes": 4})
    logs = train(model, train_set, steps, batch_size=16, lr=lr, paired=paired, images_per_class=4)
    assert all(torch.isfinite(v).all() for log in logs for v in log.values())
    if paired:  # every batch brings same-class pairs, so the consistency term is always active
        assert all(log[f"loss_cc{s}"] > 0 for log in logs for s in (1, 2, 3))
    return accuracy(model, test_set)


@pytest.mark.parametrize("name", list(CASES))
def test_short_training_beats_chance(name: str) -> None:
    cfg, steps, lr = CASES[name]
    assert _learns(cfg, steps, lr) >= 0.6


@pytest.mark.slow
def test_pmg_v2_short_training_beats_chance() -> None:
    cfg = {
        "type": "pmg_v2",
        "backbone": {"type": "test_tiny_bc", "out_indices": [-3, -2, -1], "widths": [16, 16, 32, 32, 32]},
        "neck": SMALL_NECK,
        "head": SMALL_2FC,
    }
    # batches from the class_balanced sampler (configs/fgvc/cub200_pmg_v2.yaml): 4 classes x 4 images
    assert _learns(cfg, 150, 0.02, paired=True) >= 0.6
