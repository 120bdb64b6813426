"""configs/fgvc/*.yaml: each builds with only num_classes and image size overridden, trains one step.

The fast tests swap the config's ResNet-50 for a tiny backbone with the same levels; the slow ones keep
the config's backbone (without its ImageNet weights, which are not downloaded) at 64 px.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from tests.methods.toy import RecordingOptim, fine_grained_set
from visionstack.core.config import load_config
from visionstack.core.registry import BACKBONES
from visionstack.engine.optim import build_optim_wrapper
from visionstack.engine.schedulers import build_scheduler
from visionstack.models.build import build_model

CONFIGS = Path(__file__).resolve().parents[2] / "configs" / "fgvc"
# config -> (tiny stand-in backbone, extra logits keys of predict_step)
CASES = {
    "cub200_baseline": ("{type: test_tiny}", set()),
    "cub200_mcl": ("{type: test_tiny}", {"logits_channels"}),
    "cub200_pmg": ("{type: test_tiny, out_indices: [-3, -2, -1]}", {"logits_concat"}),
    "cub200_pmg_v2": ("{type: test_tiny_bc, out_indices: [-3, -2, -1]}", set()),
    "cub200_recognizer": ("{type: test_tiny}", {"embedding"}),
}


def _one_step(model: torch.nn.Module, size: int, paired: bool) -> None:
    batch = fine_grained_set(2, size=size, pairs=paired)
    optim = RecordingOptim(model, lr=1e-3)
    logs = model.train().train_step(batch, optim)
    assert "loss" in logs and all(torch.isfinite(v).all() for v in logs.values())
    assert optim.updates >= 1 and not optim.nonfinite
    assert optim.missing() == [], f"no gradient reached {optim.missing()}"


def test_every_method_has_a_config() -> None:
    assert sorted(p.stem for p in CONFIGS.glob("cub200_*.yaml")) == sorted(CASES)


@pytest.mark.parametrize("name", list(CASES))
def test_config_builds_and_trains_one_step(name: str) -> None:
    backbone, extra_keys = CASES[name]
    cfg = load_config(
        CONFIGS / f"{name}.yaml",
        overrides=[
            "model.num_classes=4",
            "data.image_size=32",
            "data.resize_size=36",
            f"model.backbone={backbone}",
        ],
    )
    assert cfg["data"]["train"]["type"] == "cub200" and cfg["train"]["epochs"] > 0
    torch.manual_seed(0)
    model = build_model(cfg["model"])
    # the recipe's optimizer (per-part learning rates) and schedule build for this model
    optim = build_optim_wrapper(model, cfg["train"])
    lrs = {g["name"].split("/")[0]: g["lr"] for g in optim.optimizer.param_groups}
    base = cfg["train"]["optimizer"]["lr"]
    assert lrs["backbone"] == pytest.approx(0.1 * base) and max(lrs.values()) == pytest.approx(base)
    build_scheduler(
        optim.optimizer, cfg["train"]["scheduler"], steps_per_epoch=10, total_epochs=cfg["train"]["epochs"]
    )
    _one_step(model, 32, paired=name == "cub200_pmg_v2")
    out = model.eval().predict_step(torch.randn(2, 3, 32, 32))
    assert set(out) == {"logits", *extra_keys} and out["logits"].shape == (2, 4)


@pytest.mark.slow
@pytest.mark.parametrize("name", list(CASES))
def test_config_with_its_own_backbone(name: str) -> None:
    cfg = load_config(
        CONFIGS / f"{name}.yaml", overrides=["model.num_classes=4", "data.image_size=64"], validate=False
    )
    backbone = dict(cfg["model"]["backbone"])
    if backbone["type"] not in BACKBONES:
        pytest.skip(f"backbone {backbone['type']} is not registered yet")
    backbone.pop("weights", None)  # ImageNet weights are not downloaded in tests
    torch.manual_seed(0)
    model = build_model({**cfg["model"], "backbone": backbone})
    _one_step(model, 64, paired=name == "cub200_pmg_v2")
    assert model.eval().predict_step(torch.randn(2, 3, 64, 64))["logits"].shape == (2, 4)
