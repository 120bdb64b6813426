"""Two gloo ranks under torchrun vs one process with the same global batch: same weights, one set of files."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from tests.engine.conftest import read_csv, run_config, write_folder
from tests.engine.test_resume_kill import PARTS, ROOT, weights

#: float32 all-reduce sums per-rank gradients in another order than one process: rounding-level differences
ATOL, RTOL = 1e-6, 1e-5


def launch(cmd: list[str], cfg_path: Path, work_dir: Path) -> subprocess.CompletedProcess:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "CI": "true"}
    full = [
        *cmd,
        "-m",
        "visionstack",
        "--plugins",
        str(PARTS),
        "train",
        str(cfg_path),
        "--work-dir",
        str(work_dir),
    ]
    return subprocess.run(full, cwd=ROOT, env=env, capture_output=True, text=True, timeout=180)


@pytest.mark.slow
def test_two_gloo_ranks_match_one_process(image_folder, tmp_path) -> None:
    val_root = write_folder(tmp_path / "val", per_class=3, seed=5)
    (val_root / "class_2" / "2.png").unlink()  # 8 val images: 4 + 4 on two ranks
    (val_root / "class_2" / "1.png").unlink()  # 7: uneven shards (4 + 3), no padding may be counted
    cfg = run_config(
        image_folder, epochs=2, optimizer={"type": "sgd", "lr": 0.05, "momentum": 0.9, "weight_decay": 1e-4}
    )
    cfg["model"] = {"backbone": "test_tiny_nobn", "head": "linear"}
    cfg["data"]["val"] = {"type": "image_folder", "root": str(val_root)}
    one, two = dict(cfg), json.loads(json.dumps(cfg))
    one["data"] = {**cfg["data"], "batch_size": 8}  # 24 images: 3 steps per epoch
    two["data"]["batch_size"] = 4  # per rank: the same global batch of 8
    (tmp_path / "one.json").write_text(json.dumps(one))
    (tmp_path / "two.json").write_text(json.dumps(two))

    single = launch([sys.executable], tmp_path / "one.json", tmp_path / "one")
    assert single.returncode == 0, single.stderr
    ddp = launch(
        [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2"],
        tmp_path / "two.json",
        tmp_path / "two",
    )
    assert ddp.returncode == 0, ddp.stderr + ddp.stdout

    a, b = weights(tmp_path / "one" / "last.safetensors"), weights(tmp_path / "two" / "last.safetensors")
    for key in a:
        torch.testing.assert_close(b[key], a[key], atol=ATOL, rtol=RTOL)
    assert not torch.equal(
        a["head.fc.weight"],
        weights(tmp_path / "one" / "checkpoints" / "epoch_0001.safetensors")["head.fc.weight"],
    )  # it trained
    rows = {name: read_csv(tmp_path / name / "metrics.csv") for name in ("one", "two")}
    assert len(rows["two"]) == 2  # one row per epoch: only rank 0 writes
    for r1, r2 in zip(rows["one"], rows["two"]):
        assert r1["step"] == r2["step"] == str(3 * int(r1["epoch"]))
        for key in ("val/top1", "val/top2", "val/loss"):  # reduced over 7 samples on both sides
            assert float(r2[key]) == pytest.approx(float(r1[key]), abs=1e-5)
    steps = [r["step"] for r in read_csv(tmp_path / "two" / "train_log.csv")]
    assert steps == sorted(set(steps), key=int)
    assert len(list((tmp_path / "two" / "tensorboard").iterdir())) == 1
    assert sorted(p.name for p in (tmp_path / "two").iterdir()) == sorted(
        p.name for p in (tmp_path / "one").iterdir()
    )
    assert ddp.stdout.count("done:") == 1 and ddp.stdout.count("epoch 2/2") == 1
