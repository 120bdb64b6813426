"""``visionstack train`` end to end on a tiny image folder: files written, resume, errors."""

from __future__ import annotations

import json

import pytest
import yaml

from tests.engine.conftest import read_csv, run_config, write_folder
from visionstack.cli.main import main


@pytest.fixture
def cfg_file(tmp_path):
    root = write_folder(tmp_path / "images", per_class=4)
    cfg = run_config(root, epochs=2, checkpoint={"keep_last": 1})
    path = tmp_path / "tiny.yaml"
    path.write_text(yaml.safe_dump(cfg))
    return path


def test_train_writes_a_complete_run_directory(cfg_file, tmp_path, capsys) -> None:
    work = tmp_path / "run"
    assert (
        main(["train", str(cfg_file), "--work-dir", str(work), "--set", "train.epochs=3", "eval.topk=[1]"])
        == 0
    )
    out = capsys.readouterr().out
    assert f"run directory: {work}" in out and "epoch 3/3" in out and "val/top1" in out
    names = {p.name for p in work.iterdir()}
    assert {
        "config.yaml",
        "versions.json",
        "metrics.csv",
        "train_log.csv",
        "curves.png",
        "tensorboard",
        "best.safetensors",
        "last.safetensors",
        "checkpoints",
    } <= names
    saved = yaml.safe_load((work / "config.yaml").read_text())
    assert (
        saved["train"]["epochs"] == 3
        and saved["model"]["num_classes"] == 3
        and saved["work_dir"] == str(work)
    )
    # keep_last 1: epoch 3; keep_best 1: the first epoch reaching the best val/top1 (later ties do not replace it)
    rows = read_csv(work / "metrics.csv")
    top = max(float(r["val/top1"]) for r in rows)
    best_epoch = min(int(r["epoch"]) for r in rows if float(r["val/top1"]) == top)
    kept = sorted({f"epoch_{best_epoch:04d}", "epoch_0003"})
    assert sorted(p.name for p in (work / "checkpoints").iterdir()) == [
        f"{n}.{s}" for n in kept for s in ("safetensors", "state.pt")
    ]
    assert len(rows) == 3
    assert json.loads((work / "versions.json").read_text())["visionstack"]


def test_train_resume_from_a_path_extends_the_run(cfg_file, tmp_path, capsys) -> None:
    work = tmp_path / "run"
    assert main(["train", str(cfg_file), "--work-dir", str(work)]) == 0
    ckpt = work / "checkpoints" / "epoch_0002.safetensors"
    assert (
        main(
            [
                "train",
                str(cfg_file),
                "--work-dir",
                str(work),
                "--resume",
                str(ckpt),
                "--set",
                "train.epochs=3",
            ]
        )
        == 0
    )
    assert "resumed from" in capsys.readouterr().out
    assert [r["epoch"] for r in read_csv(work / "metrics.csv")] == ["1", "2", "3"]


def test_train_errors_are_reported(cfg_file, tmp_path, capsys) -> None:
    assert main(["train", str(cfg_file), "--set", "train.epoch=3"]) == 2
    assert "train.epoch: unknown key. Did you mean 'epochs'?" in capsys.readouterr().err
    assert (
        main(
            [
                "train",
                str(cfg_file),
                "--work-dir",
                str(tmp_path / "w"),
                "--resume",
                str(tmp_path / "x.safetensors"),
            ]
        )
        == 2
    )
    assert "checkpoint not found" in capsys.readouterr().err
    with pytest.raises(SystemExit) as exit_info:
        main(["train", "--help"])
    assert exit_info.value.code == 0 and "--resume" in capsys.readouterr().out
