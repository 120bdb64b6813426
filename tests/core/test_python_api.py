"""The top-level Python API end to end: train with ``vs.Trainer``, reload, predict files, export."""

from __future__ import annotations

import sys
from pathlib import Path

import torch

import visionstack as vs
from tests.engine.conftest import run_config, write_folder


def test_every_exported_name_resolves() -> None:
    for name in vs.__all__:
        assert getattr(vs, name) is not None, name
    assert sys.modules["visionstack.engine.trainer"].Trainer is vs.Trainer


def test_train_reload_predict_and_export_through_top_level_names(tmp_path: Path) -> None:
    root = write_folder(tmp_path / "images", per_class=6)
    cfg = run_config(root, epochs=4)
    result = vs.Trainer(cfg, work_dir=tmp_path / "run").fit()
    assert result["val/top1"] >= 0.9  # three tinted classes: learnable, chance is 1/3

    model, saved_cfg, class_names = vs.load_checkpoint_model(tmp_path / "run")
    assert class_names == ["class_0", "class_1", "class_2"]
    assert saved_cfg["model"]["backbone"] == "test_tiny"
    paths = sorted(root.glob("class_*/0.png"))
    from visionstack.tools.predict import eval_transform

    predictions = vs.predict_paths(
        model, paths, eval_transform(saved_cfg, model), class_names, progress=False
    )
    assert [p.names[0] for p in predictions] == [p.parent.name for p in paths]

    image = vs.decode_image(paths[0])
    assert image.mode == "RGB" and vs.DecodePolicy().decode(paths[0]).size == image.size
    dataset = vs.build_dataset(saved_cfg["data"], "val", transform=eval_transform(saved_cfg, model))
    batch = next(iter(vs.build_loader(dataset, batch_size=4)))
    assert batch["image"].shape == (4, 3, 16, 16)

    exported = vs.export_model(model, tmp_path / "model.pt2", "torch-export", input_size=16)
    assert exported.ok and exported.max_abs_diff is not None and exported.max_abs_diff < 1e-4
    with torch.no_grad():
        assert torch.isfinite(model(batch["image"])).all()
