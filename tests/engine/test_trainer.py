"""The Trainer end to end on a tiny image folder: learning, NaN handling, resume, EMA, mixup, step runs."""

from __future__ import annotations

import json

import pytest
import torch
from safetensors import safe_open

from tests.engine.conftest import read_csv, run_config
from visionstack.engine.checkpoint.format import load_checkpoint, load_model_for_inference
from visionstack.engine.optim_wrapper import NonFiniteLossError
from visionstack.engine.trainer import Trainer
from visionstack.errors import ConfigError


def _weights(path) -> dict[str, torch.Tensor]:
    with safe_open(str(path), "pt") as fh:
        return {k: fh.get_tensor(k) for k in fh.keys()}  # noqa: SIM118


def test_loss_goes_down_and_the_model_learns(image_folder, tmp_path) -> None:
    cfg = run_config(image_folder, epochs=4)
    result = Trainer(cfg, work_dir=tmp_path).fit()
    rows = read_csv(tmp_path / "metrics.csv")
    losses = [float(r["train/loss"]) for r in rows]
    assert len(rows) == 4 and losses[-1] < 0.5 * losses[0], losses
    assert result["val/top1"] == pytest.approx(1.0) and float(rows[-1]["val/top1"]) == result["val/top1"]
    assert result["best"][1] in {f"epoch_000{e}" for e in range(1, 5)}
    model, saved_cfg, names = load_model_for_inference(tmp_path / "best.safetensors")
    assert names == ["class_0", "class_1", "class_2"] and saved_cfg["model"]["num_classes"] == 3
    assert (
        "data" in saved_cfg
        and json.loads((tmp_path / "versions.json").read_text())["torch"] == torch.__version__
    )


def test_nan_loss_stops_with_a_message_and_keeps_the_checkpoint(image_folder, tmp_path) -> None:
    cfg = run_config(image_folder, epochs=3)
    cfg["model"]["loss"] = {"type": "test_nan_at", "at": [9]}  # 6 batches per epoch: step 3 of epoch 2
    trainer = Trainer(cfg, work_dir=tmp_path)
    with pytest.raises(NonFiniteLossError, match=r"epoch 2, step 9.*last good checkpoint: .*epoch_0001"):
        trainer.fit()
    state = tmp_path / "checkpoints" / "epoch_0001.state.pt"
    assert sorted(p.name for p in (tmp_path / "checkpoints").iterdir()) == [
        "epoch_0001.safetensors",
        state.name,
    ]
    ckpt = load_checkpoint(state)
    assert ckpt["state"]["global_step"] == 6
    assert all(torch.isfinite(p).all() for p in trainer.model.parameters())  # the NaN update never happened


def test_nan_loss_skip_mode_goes_on(image_folder, tmp_path, capsys) -> None:
    cfg = run_config(image_folder, epochs=2, nonfinite="skip")
    cfg["model"]["loss"] = {"type": "test_nan_at", "at": [3, 4]}
    trainer = Trainer(cfg, work_dir=tmp_path)
    result = trainer.fit()
    assert trainer.optim.skipped == 2 and trainer.global_step == 12
    assert "skipped step 3: non-finite loss" in capsys.readouterr().out
    assert all(torch.isfinite(p).all() for p in trainer.model.parameters()) and result["val/loss"] < 5
    rows = read_csv(tmp_path / "metrics.csv")
    assert all(float(r["train/loss"]) == float(r["train/loss"]) for r in rows)  # NaN steps left out of means


def test_resume_from_a_mid_epoch_checkpoint_is_exact(image_folder, tmp_path) -> None:
    """In process: resume from a mid-epoch checkpoint of run A; the end weights equal A's bit for bit.
    Dropout (torch RNG), mixup (numpy RNG), random crops and flips (per-sample seeds) all draw randomness."""
    cfg = run_config(image_folder, epochs=2, mixup=0.4, checkpoint={"every_n_steps": 2, "keep_last": 50})
    cfg["model"]["head"] = {"type": "linear", "dropout": 0.3}
    cfg["data"].update(preset="fgvc", resize_size=18)
    Trainer(cfg, work_dir=tmp_path / "a").fit()
    mid = tmp_path / "a" / "checkpoints" / "epoch_0002_iter_000004.safetensors"
    resumed = Trainer(cfg, work_dir=tmp_path / "b", resume=str(mid))
    assert (resumed.epoch, resumed.batches_done, resumed.global_step) == (1, 4, 10)
    resumed.fit()
    a, b = _weights(tmp_path / "a" / "last.safetensors"), _weights(tmp_path / "b" / "last.safetensors")
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    # and not by accident: the run from scratch with another seed ends elsewhere
    other = run_config(image_folder, epochs=2, mixup=0.4, seed=1)
    other["model"]["head"] = {"type": "linear", "dropout": 0.3}
    other["data"].update(preset="fgvc", resize_size=18)
    Trainer(other, work_dir=tmp_path / "c").fit()
    c = _weights(tmp_path / "c" / "last.safetensors")
    assert not torch.equal(a["head.fc.weight"], c["head.fc.weight"])


def test_resume_auto_falls_back_past_a_truncated_checkpoint(image_folder, tmp_path) -> None:
    cfg = run_config(image_folder, epochs=2)
    Trainer(cfg, work_dir=tmp_path).fit()
    newest = tmp_path / "checkpoints" / "epoch_0002.safetensors"
    newest.write_bytes(newest.read_bytes()[:-64])
    cfg["train"]["epochs"] = 3
    with pytest.warns(UserWarning, match="skipping damaged checkpoint epoch_0002.safetensors.*checksum"):
        trainer = Trainer(cfg, work_dir=tmp_path, resume="auto")
    assert trainer.resumed_from.name == "epoch_0001.safetensors" and trainer.global_step == 6
    trainer.fit()
    assert trainer.global_step == 18
    rows = read_csv(tmp_path / "metrics.csv")
    assert [r["epoch"] for r in rows] == ["1", "2", "3"]  # epoch 2 logged once: the rerun replaced it


def test_resume_auto_without_checkpoints_starts_fresh(image_folder, tmp_path, capsys) -> None:
    trainer = Trainer(run_config(image_folder, epochs=1), work_dir=tmp_path, resume="auto")
    assert trainer.resumed_from is None and trainer.global_step == 0
    assert "starting from scratch" in capsys.readouterr().out


def test_ema_is_evaluated_and_can_pick_the_best(image_folder, tmp_path) -> None:
    cfg = run_config(image_folder, epochs=2, ema={"decay": 0.5}, checkpoint={"metric": "val_ema/top1"})
    result = Trainer(cfg, work_dir=tmp_path).fit()
    assert {"val_ema/top1", "val_ema/top2", "val/top1"} <= set(result)
    ckpt = load_checkpoint(tmp_path / "best.safetensors", with_state=False)
    assert ckpt["weights"] == "ema"
    state = load_checkpoint(tmp_path / "checkpoints" / "epoch_0002.safetensors")["state"]
    assert state["ema"] is not None
    ema_weights = state["ema"]["module"]
    if ckpt["epoch"] == 2:
        assert torch.equal(ckpt["state_dict"]["head.fc.weight"], ema_weights["head.fc.weight"])


def test_step_based_run_with_accumulation_and_warmup(image_folder, tmp_path) -> None:
    cfg = run_config(image_folder, steps=8, grad_accum=2, scheduler={"type": "cosine", "warmup_steps": 2})
    cfg["train"].pop("epochs")
    trainer = Trainer(cfg, work_dir=tmp_path)
    assert trainer.epochs == 2 and trainer.scheduler.interval == "step"
    trainer.fit()
    assert trainer.global_step == 8 and trainer.scheduler.step_count == 4 and trainer.optim.micro_step == 8
    assert trainer.scheduler.lrs[0] == pytest.approx(
        0.05 * 0.5 * (1 + torch.cos(torch.tensor(torch.pi * 2 / 2)).item())
    )


def test_num_classes_come_from_the_data_and_must_agree(image_folder, tmp_path) -> None:
    cfg = run_config(image_folder, epochs=1)
    cfg["model"]["num_classes"] = 5
    with pytest.raises(ConfigError, match="model.num_classes: is 5 but the training set has 3 classes"):
        Trainer(cfg, work_dir=tmp_path)
    cfg = run_config(image_folder, epochs=1, optimizer={"type": "sgd", "lr": 0.1, "lr_mult": {"neck": 0.1}})
    with pytest.raises(ConfigError, match="lr_mult.neck"):
        Trainer(cfg, work_dir=tmp_path)


def _evaluated_steps(trainer: Trainer, work_dir) -> tuple[list[int], list[int]]:
    trainer.fit()
    rows = read_csv(work_dir / "metrics.csv")
    return [int(r["step"]) for r in rows], [int(r["step"]) for r in rows if r.get("val/top1")]


def test_eval_interval_counts_steps_in_a_step_run(image_folder, tmp_path) -> None:
    cfg = run_config(image_folder, steps=10)  # 6 batches per epoch: epochs end at steps 6 and 10
    cfg["train"].pop("epochs")
    cfg["eval"]["interval"] = 4
    trainer = Trainer(cfg, work_dir=tmp_path / "a")
    rows, evaluated = _evaluated_steps(trainer, tmp_path / "a")
    assert rows == [4, 6, 8, 10] and evaluated == [4, 8, 10]  # the last step always evaluates
    assert trainer.checkpointer.best[0][1] in {
        "epoch_0001_iter_000004",
        "epoch_0002_iter_000002",
        "epoch_0002",
    }
    cfg["eval"]["interval"] = {"epochs": 1}  # the explicit unit: after every epoch, as in an epoch run
    assert _evaluated_steps(Trainer(cfg, work_dir=tmp_path / "b"), tmp_path / "b") == ([6, 10], [6, 10])
    del cfg["eval"]["interval"]  # the default: after every pass over the data, not after every step
    assert _evaluated_steps(Trainer(cfg, work_dir=tmp_path / "c"), tmp_path / "c") == ([6, 10], [6, 10])


def test_eval_interval_by_steps_in_an_epoch_run(image_folder, tmp_path) -> None:
    cfg = run_config(image_folder, epochs=2)
    cfg["eval"]["interval"] = {"steps": 4}
    rows, evaluated = _evaluated_steps(Trainer(cfg, work_dir=tmp_path / "a"), tmp_path / "a")
    assert rows == [4, 6, 8, 12] and evaluated == [4, 8, 12]
    cfg["eval"]["interval"] = 2  # a number counts epochs here
    assert _evaluated_steps(Trainer(cfg, work_dir=tmp_path / "b"), tmp_path / "b") == ([6, 12], [12])
    for bad in ({"hours": 1}, {"steps": 0}, 0):
        cfg["eval"]["interval"] = bad
        with pytest.raises(ConfigError, match=r"eval\.interval"):
            Trainer(cfg, work_dir=tmp_path / "c")
