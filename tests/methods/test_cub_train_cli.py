"""`visionstack train configs/fgvc/cub200_pmg.yaml --set data.root=...` on a tiny fake CUB-200-2011 tree."""

from __future__ import annotations

import csv
import math
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from tests.methods.toy import fine_grained_set

CONFIGS = Path(__file__).resolve().parents[2] / "configs" / "fgvc"


def make_fake_cub(
    root: Path, num_classes: int = 4, train_per_class: int = 6, test_per_class: int = 2, size: int = 40
) -> Path:
    """A CUB_200_2011 folder: images/<class>/<name>.png plus the four index files."""
    base = root / "CUB_200_2011"
    per_class = train_per_class + test_per_class
    data = fine_grained_set(per_class, size=size, num_classes=num_classes, seed=3)
    images, labels = data["image"], data["label"]
    classes = [f"{c + 1:03d}.Bird_{c}" for c in range(num_classes)]
    lines: dict[str, list[str]] = {"images": [], "labels": [], "split": []}
    seen = [0] * num_classes
    for i in range(len(labels)):
        c = int(labels[i])
        name = f"{classes[c]}/{classes[c]}_{i:04d}.png"
        path = base / "images" / name
        path.parent.mkdir(parents=True, exist_ok=True)
        pixels = ((images[i].clamp(-1, 1) + 1) * 127.5).round().byte().permute(1, 2, 0).numpy()
        Image.fromarray(np.ascontiguousarray(pixels)).save(path)
        image_id = i + 1
        lines["images"].append(f"{image_id} {name}")
        lines["labels"].append(f"{image_id} {c + 1}")
        lines["split"].append(f"{image_id} {1 if seen[c] < train_per_class else 0}")
        seen[c] += 1
    (base / "images.txt").write_text("\n".join(lines["images"]) + "\n")
    (base / "image_class_labels.txt").write_text("\n".join(lines["labels"]) + "\n")
    (base / "train_test_split.txt").write_text("\n".join(lines["split"]) + "\n")
    (base / "classes.txt").write_text("".join(f"{c + 1} {n}\n" for c, n in enumerate(classes)))
    return base


def test_fake_cub_tree_loads_as_cub200(tmp_path: Path) -> None:
    from visionstack.core.registry import DATASETS

    base = make_fake_cub(tmp_path)
    train = DATASETS.get("cub200")(root=str(tmp_path), split="train")
    test = DATASETS.get("cub200")(root=str(base), split="test")
    assert len(train) == 24 and len(test) == 8


@pytest.mark.slow
def test_visionstack_train_pmg_config_on_fake_cub(tmp_path: Path) -> None:
    from visionstack.cli.main import main

    base = make_fake_cub(tmp_path)
    work_dir = tmp_path / "run"
    code = main(
        [
            "train",
            str(CONFIGS / "cub200_pmg.yaml"),
            "--no-progress",
            "--set",
            f"data.root={base}",
            "data.image_size=32",
            "data.resize_size=36",
            "data.batch_size=4",
            "data.num_workers=0",
            "train.epochs=2",
            "model.backbone={type: test_tiny, out_indices: [-3, -2, -1]}",
            "model.neck.mid_channels=8",
            "model.head.mid_channels=16",
            f"work_dir={work_dir}",
        ]
    )
    assert code == 0
    assert (work_dir / "config.yaml").is_file() and (work_dir / "last.safetensors").is_file()
    with open(work_dir / "metrics.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    assert [int(r["epoch"]) for r in rows] == [1, 2]
    # the four progressive steps are logged, and evaluation scores the combined and concatenated outputs
    for key in ("train/loss_step1", "train/loss_step4", "val/top1", "val/concat/top1"):
        assert all(math.isfinite(float(r[key])) for r in rows), key
    assert all(0.0 <= float(r["val/concat/top1"]) <= 1.0 for r in rows)


@pytest.mark.slow
def test_visionstack_train_pmg_v2_config_with_class_balanced_sampler(tmp_path: Path) -> None:
    from visionstack.cli.main import main

    base = make_fake_cub(tmp_path)  # 4 classes x 6 training images
    work_dir = tmp_path / "run"
    code = main(
        [
            "train",
            str(CONFIGS / "cub200_pmg_v2.yaml"),
            "--no-progress",
            "--set",
            f"data.root={base}",
            "data.image_size=32",
            "data.resize_size=36",
            "data.batch_size=4",  # the config's sampler: 2 classes x 2 images
            "data.num_workers=0",
            "train.epochs=2",
            "train.scheduler.milestones=[1]",
            "model.backbone={type: test_tiny_bc, out_indices: [-3, -2, -1]}",
            "model.neck.mid_channels=8",
            "model.head.mid_channels=16",
            f"work_dir={work_dir}",
        ]
    )
    assert code == 0
    with open(work_dir / "metrics.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    assert [int(r["epoch"]) for r in rows] == [1, 2]
    # the adaptive weight makes a batch's consistency term alpha_s x its cross entropy when the batch holds
    # same-class pairs and 0 otherwise: epoch means in that exact ratio mean every batch had pairs
    for step, alpha in ((1, 0.01), (2, 0.05), (3, 0.1)):
        for r in rows:
            ce, cc = float(r[f"train/loss_ce{step}"]), float(r[f"train/loss_cc{step}"])
            assert ce > 0 and cc == pytest.approx(alpha * ce, rel=1e-3), (step, r)
    assert all(0.0 <= float(r["val/top1"]) <= 1.0 for r in rows)
