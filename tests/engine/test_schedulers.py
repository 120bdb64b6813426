"""Every schedule's learning-rate curve against values computed by hand, warmup included."""

from __future__ import annotations

import math

import pytest
import torch

from visionstack.engine.schedulers import build_scheduler
from visionstack.errors import ConfigError, UnknownNameError


def _optimizer(lrs=(0.1,)) -> torch.optim.Optimizer:
    groups = [{"params": [torch.nn.Parameter(torch.zeros(1))], "lr": lr, "initial_lr": lr} for lr in lrs]
    return torch.optim.SGD(groups, lr=lrs[0])


def _curve(
    cfg, spe: int, epochs: float, run_unit: str = "epoch", metrics=None, lrs=(0.1,)
) -> list[list[float]]:
    """Learning rates of each optimizer step (run as the Trainer does: step_update per step, step_epoch per epoch)."""
    opt = _optimizer(lrs)
    sched = build_scheduler(opt, cfg, spe, epochs, run_unit)
    out = []
    total = round(epochs * spe)
    for step in range(total):
        out.append(sched.lrs)
        sched.step_update(step + 1)
        if (step + 1) % spe == 0:
            e = (step + 1) // spe
            sched.step_epoch(e, metrics[e - 1] if metrics else None)
    return out


def _first(curve):
    return [lrs[0] for lrs in curve]


def test_cosine_per_epoch() -> None:
    lrs = _first(_curve({"type": "cosine"}, spe=5, epochs=10))
    expected = [0.05 * (1 + math.cos(math.pi * (s // 5) / 10)) for s in range(50)]
    assert lrs == pytest.approx(expected, abs=1e-12)


def test_cosine_per_step_with_linear_warmup() -> None:
    cfg = {"type": "cosine", "interval": "step", "warmup_steps": 5, "min_lr": 0.001}
    lrs = _first(_curve(cfg, spe=5, epochs=10))
    expected = [
        0.1 * (0.001 + 0.999 * s / 5)
        if s < 5
        else 0.001 + 0.099 * 0.5 * (1 + math.cos(math.pi * (s - 5) / 45))
        for s in range(50)
    ]
    assert lrs == pytest.approx(expected, abs=1e-12)


def test_constant_warmup_then_constant() -> None:
    cfg = {"type": "constant", "warmup_epochs": 1.5, "warmup": "constant", "warmup_factor": 0.01}
    lrs = _first(_curve(cfg, spe=4, epochs=3))
    assert lrs == pytest.approx([0.001] * 6 + [0.1] * 6)


def test_step_in_epochs_applied_per_step() -> None:
    lrs = _first(_curve({"type": "step", "step_size": 3, "gamma": 0.5, "interval": "step"}, spe=4, epochs=9))
    assert lrs == pytest.approx([0.1 * 0.5 ** (s // 12) for s in range(36)])


def test_multistep_per_epoch() -> None:
    lrs = _first(_curve({"type": "multistep", "milestones": [2, 5]}, spe=2, epochs=7))
    assert lrs == pytest.approx([0.1] * 4 + [0.01] * 6 + [0.001] * 4)


def test_poly_after_warmup_in_epochs() -> None:
    cfg = {"type": "poly", "power": 2.0, "min_lr": 0.01, "warmup_epochs": 2}
    lrs = _first(_curve(cfg, spe=3, epochs=10))
    expected = [0.1 * (0.001 + 0.999 * s / 6) for s in range(6)]
    expected += [0.01 + 0.09 * (1 - (s // 3 - 2) / 8) ** 2 for s in range(6, 30)]
    assert lrs == pytest.approx(expected, abs=1e-12)


def test_step_based_run_counts_in_steps() -> None:
    lrs = _first(
        _curve({"type": "multistep", "milestones": [3, 7], "gamma": 0.5}, spe=4, epochs=2.5, run_unit="step")
    )
    assert lrs == pytest.approx([0.1] * 3 + [0.05] * 4 + [0.025] * 3)


def test_group_multipliers_carry_through() -> None:
    curve = _curve({"type": "cosine", "interval": "step"}, spe=2, epochs=2, lrs=(0.1, 0.01))
    for step, (a, b) in enumerate(curve):
        assert b == pytest.approx(a / 10)
        assert a == pytest.approx(0.05 * (1 + math.cos(math.pi * step / 4)))


def test_plateau_reduces_after_patience() -> None:
    metrics = [{"val/top1": v} for v in (0.5, 0.6, 0.6, 0.6, 0.6, 0.6)]
    cfg = {"type": "plateau", "patience": 1, "factor": 0.5}
    lrs = _first(_curve(cfg, spe=1, epochs=6, metrics=metrics))
    # epoch 3 and 4 do not improve on 0.6: reduced after epoch 4; epochs 5, 6 (bad again) after epoch 6
    assert lrs == pytest.approx([0.1, 0.1, 0.1, 0.1, 0.05, 0.05])


def test_state_dict_resumes_the_curve() -> None:
    cfg = {"type": "plateau", "patience": 0, "factor": 0.5, "warmup_steps": 2}
    opt = _optimizer()
    sched = build_scheduler(opt, cfg, 2, 4)
    for step in range(1, 5):
        sched.step_update(step)
        if step % 2 == 0:  # epoch 1: 0.3 (best), epoch 2: 0.2 (worse: patience 0 -> halved)
            sched.step_epoch(step // 2, {"val/top1": 0.5 - step / 20})
    fresh = build_scheduler(_optimizer(), cfg, 2, 4)
    fresh.load_state_dict(sched.state_dict())
    assert fresh.lrs == sched.lrs == pytest.approx([0.05])
    fresh.step_epoch(3, {"val/top1": 0.1})
    assert fresh.lrs == pytest.approx([0.025])


def test_scheduler_config_errors() -> None:
    with pytest.raises(UnknownNameError, match="train.scheduler.type.*Did you mean: cosine"):
        build_scheduler(_optimizer(), {"type": "cosin"}, 2, 2)
    with pytest.raises(ConfigError, match="train.scheduler.interval"):
        build_scheduler(_optimizer(), {"type": "cosine", "interval": "batch"}, 2, 2)
    with pytest.raises(ConfigError, match="not both"):
        build_scheduler(_optimizer(), {"type": "cosine", "warmup_steps": 1, "warmup_epochs": 1}, 2, 2)
    with pytest.raises(ConfigError, match="schedules per step"):
        build_scheduler(_optimizer(), {"type": "cosine", "interval": "epoch"}, 2, 2, run_unit="step")
    with pytest.raises(ConfigError, match="train.scheduler.*step_size"):
        build_scheduler(_optimizer(), {"type": "step"}, 2, 2)
