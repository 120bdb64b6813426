"""SIGKILL mid-epoch, ``--resume auto``, and the final weights equal an uninterrupted run's bit for bit."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors import safe_open

from tests.engine.conftest import read_csv, run_config

ROOT = Path(__file__).resolve().parents[2]
PARTS = Path(__file__).with_name("parts.py")


def train(cfg_path: Path, work_dir: Path, *extra: str, kill_at: int = 0) -> subprocess.CompletedProcess:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "CI": "true", "VS_KILL_AT": str(kill_at)}
    cmd = [
        sys.executable,
        "-m",
        "visionstack",
        "--plugins",
        str(PARTS),
        "train",
        str(cfg_path),
        "--work-dir",
        str(work_dir),
        *extra,
    ]
    return subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=120)


def weights(path: Path) -> dict[str, torch.Tensor]:
    with safe_open(str(path), "pt") as fh:
        return {k: fh.get_tensor(k) for k in fh.keys()}  # noqa: SIM118


def epoch_rows(work_dir: Path) -> list[dict[str, str]]:
    return [{k: v for k, v in r.items() if k != "time"} for r in read_csv(work_dir / "metrics.csv")]


@pytest.mark.slow
def test_sigkill_mid_epoch_then_resume_auto_is_bit_exact(image_folder, tmp_path) -> None:
    cfg = run_config(
        image_folder,
        epochs=3,
        mixup=0.4,
        checkpoint={"every_n_steps": 2, "keep_last": 3},
        scheduler={"type": "cosine", "interval": "step", "warmup_steps": 3},
    )
    cfg["model"] = {"backbone": "test_tiny_killable", "head": {"type": "linear", "dropout": 0.3}}
    cfg["data"].update(preset="fgvc", resize_size=18)  # random crops and flips
    cfg_path = tmp_path / "cfg.json"
    cfg_path.write_text(json.dumps(cfg))

    whole = train(cfg_path, tmp_path / "whole")
    assert whole.returncode == 0, whole.stderr

    # 6 batches per epoch: the 11th training forward is batch 5 of epoch 2, after the checkpoint of step 10
    killed = train(cfg_path, tmp_path / "killed", kill_at=11)
    assert killed.returncode == -signal.SIGKILL, killed.stderr
    ckpts = tmp_path / "killed" / "checkpoints"
    assert (ckpts / "epoch_0002_iter_000004.state.pt").is_file()
    assert not (tmp_path / "killed" / "last.safetensors").exists()

    resumed = train(cfg_path, tmp_path / "killed", "--resume", "auto")
    assert resumed.returncode == 0, resumed.stderr
    assert "resumed from" in resumed.stdout and "epoch_0002_iter_000004" in resumed.stdout
    assert "(epoch 2, 4 batches done, step 10)" in resumed.stdout

    a, b = weights(tmp_path / "whole" / "last.safetensors"), weights(tmp_path / "killed" / "last.safetensors")
    assert a.keys() == b.keys()
    different = [k for k in a if not torch.equal(a[k], b[k])]
    assert not different, different
    assert epoch_rows(tmp_path / "whole") == epoch_rows(
        tmp_path / "killed"
    )  # same losses and metrics, once each
