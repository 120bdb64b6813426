"""The tool verbs end to end on a tiny trained checkpoint: eval, predict, export, cam, plot, bench."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from PIL import Image

from tests.tools.conftest import CLASSES, write_images
from visionstack.cli.main import main
from visionstack.core.io import save_weights
from visionstack.data.decode import decode_image
from visionstack.engine.checkpoint.format import load_model_for_inference, weights_metadata
from visionstack.tools.predict import collect_images, eval_transform


def _cfg(root: Path) -> dict:
    return {
        "model": {"type": "image_classifier", "backbone": "test_tiny"},  # num_classes from the data
        "data": {
            "root": str(root),
            "train": {"type": "image_folder"},
            "val": {"type": "image_folder"},
            "image_size": 32,
            "resize_size": 36,
            "batch_size": 4,
            "num_workers": 0,
        },
        "train": {
            "epochs": 2,
            "optimizer": {"type": "sgd", "lr": 0.2, "momentum": 0.9},
            "seed": 0,
            "progress": False,
            "device": "cpu",
        },
        "eval": {"topk": [1, 2]},
    }


@pytest.fixture(scope="module")
def run(tmp_path_factory) -> dict:
    """A tiny run trained by the Trainer: a run directory with ``best.safetensors``, CSV logs and curves."""
    from visionstack.core.config import load_config
    from visionstack.engine.trainer import Trainer

    base = tmp_path_factory.mktemp("run")
    root = write_images(base / "images")
    cfg = _cfg(root)
    Trainer(load_config(cfg), work_dir=base / "run").fit()
    (base / "cfg.yaml").write_text(yaml.safe_dump(cfg))
    ckpt = base / "run" / "best.safetensors"
    return {"base": base, "root": root, "cfg": cfg, "ckpt": ckpt, "names": list(CLASSES)}


def _logits(run: dict, paths: list[Path], flip: bool = False) -> torch.Tensor:
    model, cfg, _ = load_model_for_inference(run["ckpt"])
    images = torch.stack([eval_transform(cfg, model)(decode_image(p)) for p in paths])
    with torch.no_grad():
        logits = model(images)
        return (logits + model(images.flip(-1))) / 2 if flip else logits


def _confusion(run: dict, flip: bool = False) -> np.ndarray:
    paths = collect_images([run["root"]])  # image_folder order: classes sorted, files sorted
    labels = [CLASSES.index(p.parent.name) for p in paths]
    preds = _logits(run, paths, flip).argmax(1).tolist()
    confusion = np.zeros((3, 3), dtype=int)
    for y, p in zip(labels, preds):
        confusion[y, p] += 1
    return confusion


# -- eval -----------------------------------------------------------------------------------------------
@pytest.mark.parametrize("tta", [None, "flip"])
def test_eval_equals_counts_from_the_model(run, tmp_path, capsys, tta) -> None:
    out = tmp_path / "eval"
    argv = ["eval", "--checkpoint", str(run["ckpt"]), "--out", str(out)] + (["--tta", tta] if tta else [])
    assert main(argv) == 0
    assert "top-1 accuracy" in capsys.readouterr().out
    metrics = json.loads((out / "metrics.json").read_text())
    confusion = _confusion(run, flip=tta == "flip")
    assert metrics["confusion_matrix"] == confusion.tolist()
    assert metrics["top1"] == pytest.approx(np.trace(confusion) / confusion.sum())
    assert metrics["micro"]["f1"] == pytest.approx(metrics["top1"])
    recall = np.diag(confusion) / confusion.sum(1)
    assert metrics["macro"]["recall"] == pytest.approx(recall.mean())
    assert metrics["tta"] == tta and "top2" in metrics
    rows = list(csv.DictReader((out / "per_class.csv").open()))
    assert [r["name"] for r in rows] == list(CLASSES)
    assert [float(r["accuracy"]) for r in rows] == pytest.approx(recall.tolist(), abs=1e-6)
    with Image.open(out / "confusion_matrix.png") as png:
        assert png.format == "PNG"
    if tta is None:
        assert 6 <= np.trace(confusion) < 12  # trained two epochs: better than chance, some mistakes


def test_eval_with_config_file_and_overrides(run, tmp_path) -> None:
    out = tmp_path / "e"
    argv = [
        "eval",
        str(run["base"] / "cfg.yaml"),
        "--checkpoint",
        str(run["ckpt"].parent),
        "--out",
        str(out),
        "--set",
        "data.val_batch_size=5",
        "--tta",
        "five_crop",
    ]
    assert main(argv) == 0
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["num_samples"] == 12 and metrics["tta"] == "five_crop"


# -- predict --------------------------------------------------------------------------------------------
def test_predict_matches_softmax_topk(run, tmp_path) -> None:
    out = tmp_path / "preds.json"
    argv = [
        "predict",
        str(run["ckpt"]),
        str(run["root"] / "red"),
        str(run["root"] / "blue" / "*.png"),
        "--topk",
        "2",
        "--format",
        "json",
        "--batch-size",
        "3",
        "--output",
        str(out),
    ]
    assert main(argv) == 0
    preds = json.loads(out.read_text())
    paths = sorted((run["root"] / "red").glob("*.png")) + sorted((run["root"] / "blue").glob("*.png"))
    assert [p["path"] for p in preds] == [str(p) for p in paths]
    values, indices = _logits(run, paths).softmax(1).topk(2, dim=1)
    for pred, v, i in zip(preds, values, indices):
        assert pred["classes"] == i.tolist() and pred["names"] == [CLASSES[c] for c in i.tolist()]
        assert pred["probs"] == pytest.approx(v.tolist(), abs=1e-6)


def test_predict_table_and_csv(run, capsys) -> None:
    assert main(["predict", str(run["ckpt"]), str(run["root"] / "green" / "green_0.png")]) == 0
    assert "green_0.png" in capsys.readouterr().out
    assert (
        main(["predict", str(run["ckpt"]), str(run["root"] / "green"), "--format", "csv", "--topk", "1"]) == 0
    )
    lines = capsys.readouterr().out.strip().splitlines()
    assert lines[0].startswith("path,rank") and len(lines) == 5


# -- export ---------------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("fmt", "name"), [("onnx", "m.onnx"), ("torch-export", "m.pt2"), ("torchscript", "m.ts")]
)
def test_export_verb(run, tmp_path, capsys, fmt, name) -> None:
    from visionstack.tools.export import load_runner

    out = tmp_path / name
    assert main(["export", str(run["ckpt"]), "--format", fmt, "--output", str(out)]) == 0
    assert "max abs diff" in capsys.readouterr().out
    model, _, _ = load_model_for_inference(run["ckpt"])
    images = torch.randn(4, 3, 32, 32, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        assert torch.allclose(load_runner(out, fmt)(images), model(images), atol=1e-4)


# -- cam ------------------------------------------------------------------------------------------------
def test_cam_verb_writes_overlays_of_the_image_size(run, tmp_path) -> None:
    out = tmp_path / "cams"
    argv = [
        "cam",
        str(run["ckpt"]),
        str(run["root"] / "red"),
        "--method",
        "gradcam",
        "--out",
        str(out),
        "--save-array",
        "--class-index",
        "2",
    ]
    assert main(argv) == 0
    for source in sorted((run["root"] / "red").glob("*.png")):
        with Image.open(source) as original, Image.open(out / f"{source.stem}_gradcam.png") as overlay:
            assert overlay.size == original.size == (40, 28)
        cam = np.load(out / f"{source.stem}_gradcam.npy")
        assert cam.shape == (28, 40) and cam.dtype == np.float32
        assert cam.min() >= 0.0 and cam.max() <= 1.0


# -- plot -----------------------------------------------------------------------------------------------
def test_plot_redraws_the_training_curves(run, tmp_path) -> None:
    import shutil

    run_dir = tmp_path / "copy"
    shutil.copytree(run["ckpt"].parent, run_dir)
    drawn = (run_dir / "curves.png").read_bytes()  # what training drew
    (run_dir / "curves.png").unlink()
    assert main(["plot", str(run_dir)]) == 0
    assert (run_dir / "curves.png").read_bytes() == drawn  # the same figure, redrawn from the CSV files
    assert main(["plot", str(run_dir), "--out", str(tmp_path / "again.png")]) == 0
    with Image.open(tmp_path / "again.png") as png:
        assert png.format == "PNG"


# -- bench ----------------------------------------------------------------------------------------------
def test_bench_json(run, tmp_path, capsys) -> None:
    argv = [
        "bench",
        str(run["base"] / "cfg.yaml"),
        "--batch-size",
        "2",
        "--iters",
        "3",
        "--warmup",
        "1",
        "--json",
        "--output",
        str(tmp_path / "b.json"),
    ]
    assert main(argv) == 0
    result = json.loads(capsys.readouterr().out)
    assert result["input_size"] == 32 and result["batch_size"] == 2 and result["iters"] == 3
    assert result["latency_ms"]["min"] <= result["latency_ms"]["median"] <= result["latency_ms"]["p90"]
    assert result["images_per_s"] == pytest.approx(2 / (result["latency_ms"]["median"] / 1e3))
    assert json.loads((tmp_path / "b.json").read_text()) == result


# -- clear errors: exit code 2 and a message naming the problem -------------------------------------------
@pytest.fixture(scope="module")
def foreign(run) -> dict:
    """Checkpoints whose weights do not fit the model their stored config describes."""
    import copy

    state = load_model_for_inference(run["ckpt"])[0].state_dict()
    cfg_model = {**run["cfg"]["model"], "num_classes": 3}
    out = {}
    for name, backbone in (
        ("shapes", {"type": "test_tiny", "widths": [4, 6, 8]}),  # same keys, other shapes
        ("keys", {"type": "test_tiny", "widths": [8, 12, 16, 16]}),
    ):  # an extra stage
        cfg = copy.deepcopy(run["cfg"])
        cfg["model"] = {**cfg_model, "backbone": backbone}
        out[name] = run["base"] / f"{name}.safetensors"
        save_weights(state, out[name], weights_metadata(cfg, run["names"]))
    out["not_image"] = run["base"] / "notes.png"
    out["not_image"].write_text("this is text, not a PNG")
    return out


def _verbs(ckpt: str, image: str) -> list[list[str]]:
    return [["eval", "--checkpoint", ckpt], ["predict", ckpt, image], ["export", ckpt], ["cam", ckpt, image]]


def _fails(argv: list[str], capsys, *needles: str) -> None:
    assert main(argv) == 2, argv
    err = capsys.readouterr().err
    assert f"visionstack {argv[0]}: error:" in err
    for needle in needles:
        assert needle in err, (argv, err)


def test_missing_checkpoint(run, tmp_path, capsys) -> None:
    image = str(run["root"] / "red" / "red_0.png")
    for argv in _verbs(str(tmp_path / "gone.safetensors"), image):
        _fails(argv, capsys, "gone.safetensors", "not found")


def test_a_non_checkpoint_file(run, capsys) -> None:
    image = str(run["root"] / "red" / "red_0.png")
    for argv in _verbs(image, image):  # an image where the checkpoint belongs
        _fails(argv, capsys, "red_0.png", "cannot read weights")


def test_missing_and_non_image_inputs(run, foreign, tmp_path, capsys) -> None:
    ckpt = str(run["ckpt"])
    for verb in ("predict", "cam"):
        _fails([verb, ckpt, str(tmp_path / "nope.jpg")], capsys, "nope.jpg", "no such file")
        _fails([verb, ckpt, str(foreign["not_image"])], capsys, "notes.png", "not an image")


@pytest.mark.parametrize("kind", ["shapes", "keys"])
def test_checkpoint_from_another_model(run, foreign, capsys, kind) -> None:
    image = str(run["root"] / "red" / "red_0.png")
    for argv in _verbs(str(foreign[kind]), image):
        _fails(argv, capsys, f"{kind}.safetensors", "do not match")


def test_other_tool_errors(run, tmp_path, capsys) -> None:
    _fails(["plot", str(tmp_path / "no_run")], capsys, "no_run", "not found")
    (tmp_path / "metrics.csv").write_text("epoch,val/top1\n1,abc\n")
    _fails(["plot", str(tmp_path)], capsys, "metrics.csv, line 2", "'abc' is not a number")
    _fails(["bench", str(tmp_path / "none.yaml")], capsys, "none.yaml", "not found")
    _fails(
        ["export", str(run["ckpt"]), "--format", "torch-export", "-o", str(tmp_path / "m.onnx")],
        capsys,
        ".pt2",
    )
    for name in ("blue", "green"):  # a split whose classes differ from the checkpoint's is refused
        (tmp_path / "two" / name).mkdir(parents=True)
        Image.new("RGB", (8, 8)).save(tmp_path / "two" / name / "a.png")
    _fails(
        ["eval", "--checkpoint", str(run["ckpt"]), "--set", f"data.root={tmp_path / 'two'}"],
        capsys,
        "classes do not match",
        "2 vs 3 classes",
    )
