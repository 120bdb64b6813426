"""EMA update math, the run logger's files, top-k metrics and the method-agnostic Evaluator."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from tests.engine.conftest import read_csv
from visionstack.engine.ema import ModelEma, build_ema
from visionstack.engine.evaluation import Evaluator
from visionstack.engine.metrics import ClassificationMetrics
from visionstack.engine.run_log import RunLogger
from visionstack.errors import ConfigError


def test_ema_update_math() -> None:
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(3, 2), nn.BatchNorm1d(2))
    ema = ModelEma(model, decay=0.9)
    start = {k: v.clone() for k, v in model.state_dict().items()}
    ema.update(model, step=1)  # first update: a copy (decay 0)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(1.0)
    model(torch.randn(4, 3))  # moves the BN running stats too
    ema.update(model, step=2)
    for key, value in model.state_dict().items():
        got = ema.module.state_dict()[key]
        if value.is_floating_point():
            torch.testing.assert_close(got, 0.9 * start[key] + 0.1 * value)
        else:
            assert torch.equal(got, value)  # integer buffers are copied
    assert ema.decay_at(1) == 0.0 and ema.decay_at(10) == 0.9


def test_ema_warmup_and_state() -> None:
    model = nn.Linear(2, 2)
    ema = build_ema(model, {"decay": 0.999, "warmup": True, "warmup_power": 0.75})
    assert ema.decay_at(11) == pytest.approx(1 - (1 + 10) ** -0.75)
    assert ema.decay_at(10**9) == 0.999
    copy = build_ema(nn.Linear(2, 2), True)
    copy.load_state_dict(ema.state_dict())
    assert torch.equal(copy.module.weight, ema.module.weight)
    assert build_ema(model, None) is None
    with pytest.raises(ConfigError, match="train.ema.decy"):
        build_ema(model, {"decy": 0.9})


def test_logger_writes_csv_tensorboard_and_png(tmp_path) -> None:
    logger = RunLogger(tmp_path)
    for step in (2, 4):
        logger.log_step(step, 1, {"loss": 1.0 / step, "lr": 0.1, "ips": 100.0})
    logger.log_epoch(1, 4, {"lr": 0.1, "train/loss": 0.4, "val/top1": 0.5})
    logger.log_step(6, 2, {"loss": 0.1, "lr": 0.05, "ips": 100.0})
    logger.log_epoch(2, 8, {"lr": 0.05, "train/loss": 0.2, "val/top1": 0.75})
    logger.close()
    rows = read_csv(tmp_path / "metrics.csv")
    assert [(r["epoch"], r["val/top1"]) for r in rows] == [("1", "0.5"), ("2", "0.75")]
    steps = read_csv(tmp_path / "train_log.csv")
    assert [float(r["loss"]) for r in steps] == [0.5, 0.25, 0.1]
    assert (tmp_path / "curves.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    events = EventAccumulator(str(tmp_path / "tensorboard"))
    events.Reload()
    assert [e.value for e in events.Scalars("val/top1")] == [0.5, 0.75]
    assert [e.step for e in events.Scalars("step/loss")] == [2, 4, 6]
    assert [e.value for e in events.Scalars("train/loss")] == pytest.approx([0.4, 0.2])
    # resuming at step 4 drops what came after it
    RunLogger(tmp_path, resume_step=4, tensorboard=False).close()
    assert len(read_csv(tmp_path / "metrics.csv")) == 1
    assert len(read_csv(tmp_path / "train_log.csv")) == 2


def test_classification_metrics_by_hand() -> None:
    logits = torch.tensor([[3.0, 2.0, 1.0], [1.0, 3.0, 2.0], [1.0, 2.0, 3.0], [3.0, 1.0, 2.0]])
    labels = torch.tensor([1, 1, 0, 2])  # top-1 right: #2; top-2 right: #1, #2, #4
    metrics = ClassificationMetrics(3, topk=(1, 2, 5))
    metrics.update(logits[:2], labels[:2])
    metrics.update(logits[2:], labels[2:])
    out = metrics.compute()
    assert set(out) == {"top1", "top2", "loss"}
    assert out["top1"] == pytest.approx(0.25) and out["top2"] == pytest.approx(0.75)
    assert out["loss"] == pytest.approx(float(nn.functional.cross_entropy(logits, labels)))


class _TwoHeads(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.bn = nn.BatchNorm1d(3)

    def predict_step(self, images):
        assert not self.training
        x = images.flatten(1)[:, :3]
        return {"logits": x, "logits_rolled": x.roll(1, dims=1), "embedding": x}


def test_evaluator_scores_every_logits_key_and_restores_mode() -> None:
    images = torch.zeros(4, 3, 1, 1)
    images[:, :, 0, 0] = torch.tensor([[1.0, 0, 0], [0, 1, 0], [0, 0, 1], [1, 0, 0]])
    labels = torch.tensor([0, 1, 2, 1])
    loader = [{"image": images[:3], "label": labels[:3]}, {"image": images[3:], "label": labels[3:]}]
    model = _TwoHeads().train()
    out = Evaluator(loader, 3, topk=(1,)).run(model)
    assert model.training
    assert out["top1"] == pytest.approx(0.75)  # argmax 0, 1, 2, 0: the last one is wrong
    assert out["rolled/top1"] == pytest.approx(0.25)  # argmax 1, 2, 0, 1: only the last one is right
    assert set(out) == {"top1", "loss", "rolled/top1", "rolled/loss"}
