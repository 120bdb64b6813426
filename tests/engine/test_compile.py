"""``train.compile: true`` on CPU: the compiled parts train to the same weights as eager ones."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from tests.engine.conftest import run_config
from visionstack.engine.trainer import Trainer


@pytest.mark.slow
def test_compiled_training_matches_eager(image_folder: Path, tmp_path: Path) -> None:
    weights = {}
    for compiled in (False, True):
        cfg = run_config(image_folder, epochs=1, max_steps_per_epoch=3, compile=compiled)
        cfg["eval"]["interval"] = 100  # no evaluation: the comparison is about training
        trainer = Trainer(cfg, work_dir=tmp_path / f"compile_{compiled}", device="cpu")
        trainer.fit()
        weights[compiled] = {k: v.detach().clone() for k, v in trainer.model.state_dict().items()}
        if compiled:
            assert any(
                hasattr(child, "_compiled_call_impl") and child._compiled_call_impl is not None
                for child in trainer.model.children()
            )
    torch._dynamo.reset()
    assert weights[True].keys() == weights[False].keys()
    for key, eager in weights[False].items():
        torch.testing.assert_close(weights[True][key], eager, rtol=1e-4, atol=1e-5, msg=key)
