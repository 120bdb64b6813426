"""Checkpoint files: atomic writes, round trips with weights_only, validation, fallback, rotation, inference."""

from __future__ import annotations

import os
import random

import numpy as np
import pytest
import torch

from visionstack.core.io import atomic_write, save_weights
from visionstack.engine.checkpoint import format as ck
from visionstack.engine.checkpoint.policy import Checkpointer
from visionstack.engine.seeding import capture_rng, restore_rng
from visionstack.errors import CheckpointError
from visionstack.models.build import build_model

CFG = {"model": {"backbone": "test_tiny", "num_classes": 3}, "data": {"image_size": 16}}


def _model():
    torch.manual_seed(0)
    return build_model(CFG["model"])


def _save(folder, name, model, step=1, extra=None):
    meta = ck.weights_metadata(CFG, ["a", "b", "c"], epoch=1, step=step)
    state = {"global_step": step, "rng": [capture_rng()], **(extra or {})}
    return ck.save_checkpoint(folder, name, model.state_dict(), meta, state)


def test_atomic_write_keeps_the_old_file_when_the_rename_never_happens(tmp_path, monkeypatch) -> None:
    target = tmp_path / "weights.bin"
    atomic_write(target, lambda tmp: tmp.write_bytes(b"old"))

    def crash(src, dst):  # the process dies between writing the temporary file and the rename
        raise KeyboardInterrupt("killed")

    monkeypatch.setattr(os, "replace", crash)
    with pytest.raises(KeyboardInterrupt):
        atomic_write(target, lambda tmp: tmp.write_bytes(b"new and longer"))
    assert target.read_bytes() == b"old"
    assert [p.name for p in tmp_path.iterdir()] == ["weights.bin"]  # no temporary file left behind


def test_atomic_write_failure_while_writing(tmp_path) -> None:
    target = tmp_path / "f.txt"
    atomic_write(target, lambda tmp: tmp.write_text("v1"))

    def half(tmp):
        tmp.write_text("v2 partial")
        raise OSError("disk full")

    with pytest.raises(OSError, match="disk full"):
        atomic_write(target, half)
    assert target.read_text() == "v1" and len(list(tmp_path.iterdir())) == 1


def test_round_trip_with_weights_only(tmp_path) -> None:
    model = _model()
    opt = torch.optim.AdamW(model.parameters(), lr=0.1)
    model(torch.randn(2, 3, 16, 16)).sum().backward()
    opt.step()
    weights = _save(tmp_path, "epoch_0001", model, extra={"optim": opt.state_dict()})
    loaded = ck.load_checkpoint(weights)
    assert loaded["class_names"] == ["a", "b", "c"] and loaded["config"] == CFG and loaded["step"] == 1
    for key, value in model.state_dict().items():
        assert torch.equal(loaded["state_dict"][key], value)
    fresh = torch.optim.AdamW(_model().parameters(), lr=0.1)
    fresh.load_state_dict(loaded["state"]["optim"])
    assert torch.equal(fresh.state_dict()["state"][0]["exp_avg"], opt.state_dict()["state"][0]["exp_avg"])
    # the state file really loads under weights_only=True
    torch.load(tmp_path / "epoch_0001.state.pt", weights_only=True)


def test_rng_states_round_trip() -> None:
    random.seed(1), np.random.seed(2), torch.manual_seed(3)
    random.random(), np.random.randn(), torch.rand(1)
    state = capture_rng()
    expected = (random.random(), np.random.randn(), torch.rand(3))
    random.seed(9), np.random.seed(9), torch.manual_seed(9)
    restore_rng(state)
    got = (random.random(), np.random.randn(), torch.rand(3))
    assert got[0] == expected[0] and got[1] == expected[1] and torch.equal(got[2], expected[2])


def test_damaged_checkpoints_are_detected(tmp_path) -> None:
    model = _model()
    weights = _save(tmp_path, "epoch_0001", model)
    ck.load_state(weights)
    data = weights.read_bytes()
    weights.write_bytes(data[: len(data) // 2])  # truncated weights
    with pytest.raises(CheckpointError, match="checksum mismatch"):
        ck.load_state(weights)
    weights = _save(tmp_path, "epoch_0002", model)
    state = tmp_path / "epoch_0002.state.pt"
    state.write_bytes(state.read_bytes()[:100])  # truncated state
    with pytest.raises(CheckpointError, match="cannot load"):
        ck.load_state(weights)
    (tmp_path / "epoch_0002.state.pt").unlink()
    with pytest.raises(CheckpointError, match="incomplete"):
        ck.load_state(weights)


def test_latest_checkpoint_falls_back_past_a_truncated_newest(tmp_path) -> None:
    model = _model()
    _save(tmp_path, ck.checkpoint_name(1), model, step=4)
    mid = _save(tmp_path, ck.checkpoint_name(2, 2), model, step=6)
    newest = _save(tmp_path, ck.checkpoint_name(2), model, step=8)
    assert ck.find_checkpoints(tmp_path)[:2] == [newest, mid]
    assert ck.latest_checkpoint(tmp_path) == (newest, [])
    newest.write_bytes(newest.read_bytes()[:-10])
    with pytest.warns(UserWarning, match="skipping damaged checkpoint epoch_0002.safetensors"):
        found, problems = ck.latest_checkpoint(tmp_path)
    assert found == mid and len(problems) == 1


def test_load_model_for_inference_reproduces_outputs(tmp_path) -> None:
    model = _model().eval()
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.1 * torch.randn_like(p))
    weights = _save(tmp_path, "epoch_0003", model)
    x = torch.randn(2, 3, 16, 16)
    for path in (weights, tmp_path / "epoch_0003.state.pt"):
        rebuilt, cfg, names = ck.load_model_for_inference(path)
        assert not rebuilt.training and cfg == CFG and names == ["a", "b", "c"]
        torch.testing.assert_close(rebuilt(x), model(x), rtol=0, atol=0)
    with pytest.raises(CheckpointError, match="not found"):
        ck.load_model_for_inference(tmp_path / "nope.safetensors")


def test_pretrained_weight_sources_are_ignored_when_rebuilding(tmp_path) -> None:
    model = _model()
    cfg = {"model": {"backbone": {"type": "test_tiny"}, "num_classes": 3}}
    meta = ck.weights_metadata(cfg, None)
    meta["config"] = meta["config"].replace(
        '"type": "test_tiny"', '"type": "test_tiny", "weights": "gone.pth"'
    )
    save_weights(model.state_dict(), tmp_path / "w.safetensors", meta)
    rebuilt, _, _ = ck.load_model_for_inference(tmp_path / "w.safetensors")
    assert torch.equal(rebuilt.head.fc.weight, model.head.fc.weight)


def test_plain_safetensors_is_refused_with_a_hint(tmp_path) -> None:
    save_weights({"w": torch.zeros(2)}, tmp_path / "plain.safetensors", {})
    with pytest.raises(CheckpointError, match="not a visionstack checkpoint"):
        ck.load_checkpoint(tmp_path / "plain.safetensors")


def test_checkpointer_keeps_last_and_best(tmp_path) -> None:
    model = _model()
    keeper = Checkpointer(tmp_path, {"keep_last": 2, "keep_best": 1, "metric": "val/top1"})
    scores = [0.5, 0.9, 0.6, 0.7]
    for epoch, score in enumerate(scores, start=1):
        name = ck.checkpoint_name(epoch)
        keeper.consider(name, {"val/top1": score})
        keeper.save(name, model.state_dict(), ck.weights_metadata(CFG, None, epoch=epoch), {"rng": []})
    names = sorted(p.name for p in keeper.folder.iterdir())
    assert names == [f"epoch_000{e}.{s}" for e in (2, 3, 4) for s in ("safetensors", "state.pt")]
    assert keeper.best == [[0.9, "epoch_0002"]]
    low = Checkpointer(tmp_path / "b", {"metric": "val/loss"})
    assert low.mode == "min" and low.consider("x", {"val/loss": 1.0}) and low.consider("y", {"val/loss": 0.5})
    assert not low.consider("z", {"val/loss": 0.7})


def test_weights_of_another_model_are_refused(tmp_path) -> None:
    model = _model()
    state = dict(model.state_dict())
    state["head.fc.weight"] = torch.zeros(5, 16)
    save_weights(state, tmp_path / "shapes.safetensors", ck.weights_metadata(CFG, None))
    with pytest.raises(
        CheckpointError,
        match=r"do not match.*shapes \(file vs model\).*head.fc.weight \(5, 16\) vs \(3, 16\)",
    ):
        ck.load_model_for_inference(tmp_path / "shapes.safetensors")
    state = {k: v for k, v in model.state_dict().items() if k != "head.fc.bias"}
    save_weights(
        {**state, "extra": torch.zeros(1)}, tmp_path / "keys.safetensors", ck.weights_metadata(CFG, None)
    )
    with pytest.raises(CheckpointError, match=r"missing \['head.fc.bias'\]; unexpected \['extra'\]"):
        ck.load_model_for_inference(tmp_path / "keys.safetensors")
