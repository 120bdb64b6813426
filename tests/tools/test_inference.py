"""Image collection (files, folders, globs, list files) and batched prediction vs the model's own outputs."""

from __future__ import annotations

import json

import pytest
import torch
from torchvision.transforms import v2

from visionstack.data.decode import DecodeError, decode_image
from visionstack.errors import DataError
from visionstack.tools.predict import (
    collect_images,
    predict_paths,
    predictions_to_csv,
    predictions_to_json,
)


def test_collect_images_from_every_kind_of_input(image_root, tmp_path, monkeypatch) -> None:
    red = sorted((image_root / "red").glob("*.png"))
    everything = sorted(image_root.rglob("*.png"))
    (image_root / "notes.txt").write_text("not an image")  # ignored when scanning folders
    assert collect_images([image_root]) == everything
    assert collect_images([str(image_root / "red" / "*.png")]) == red
    assert collect_images([str(image_root / "**" / "*_0.png")]) == sorted(image_root.rglob("*_0.png"))
    listing = tmp_path / "list.txt"
    listing.write_text(
        f"# two images\n\nimages/red/{red[0].name}\n{red[1]}\n"
    )  # relative to the list's folder
    assert collect_images([f"@{listing}"]) == [tmp_path / "images" / "red" / red[0].name, red[1]]
    assert collect_images([red[2]], list_files=[listing])[0] == red[2]
    # each path once, in the order given
    assert collect_images([red[1], image_root / "red"]) == [red[1], red[0], *red[2:]]
    monkeypatch.chdir(tmp_path)
    assert collect_images(["images/red/red_0.png"])[0].name == "red_0.png"


@pytest.mark.parametrize(
    ("inputs", "message"),
    [
        (["missing.png"], "missing.png: no such file or folder"),
        (["nothing/*.png"], "matches no image file"),
        (["@absent.txt"], "list file not found"),
        ([], "no images given"),
    ],
)
def test_collect_images_errors(tmp_path, monkeypatch, inputs, message) -> None:
    monkeypatch.chdir(tmp_path)
    with pytest.raises(DataError, match=message):
        collect_images(inputs)


def test_list_file_with_missing_entry(tmp_path) -> None:
    listing = tmp_path / "l.txt"
    listing.write_text("gone.png\n")
    with pytest.raises(DataError, match=r"line 1: 'gone.png' is not a file"):
        collect_images([f"@{listing}"])


def _transform() -> v2.Compose:
    return v2.Compose(
        [
            v2.Resize((24, 24)),
            v2.ToImage(),
            v2.ToDtype(torch.float32, scale=True),
            v2.Normalize([0.5] * 3, [0.5] * 3),
        ]
    )


def test_predictions_match_softmax_topk_of_the_model(image_root, tiny_model) -> None:
    paths = collect_images([image_root])
    preds = predict_paths(
        tiny_model, paths, _transform(), ["b", "g", "r"], topk=2, batch_size=5, progress=False
    )
    images = torch.stack([_transform()(decode_image(p)) for p in paths])
    with torch.no_grad():
        probs = tiny_model(images).softmax(1)
    values, indices = probs.topk(2, dim=1)
    assert [p.path for p in preds] == [str(p) for p in paths]
    for i, p in enumerate(preds):
        assert p.classes == indices[i].tolist()
        assert p.names == [["b", "g", "r"][c] for c in p.classes]
        assert p.probs == pytest.approx(values[i].tolist(), abs=1e-6)
    rows = predictions_to_csv(preds).splitlines()
    assert rows[0] == "path,rank,class_index,class_name,probability" and len(rows) == 1 + 2 * len(paths)
    assert json.loads(predictions_to_json(preds))[0]["classes"] == preds[0].classes
    # topk larger than the number of classes gives every class
    assert (
        len(predict_paths(tiny_model, paths[:1], _transform(), None, topk=10, progress=False)[0].names) == 3
    )


@pytest.mark.parametrize("workers", [0, 1])
def test_bad_image_is_named(image_root, tiny_model, workers: int) -> None:
    bad = image_root / "red" / "broken.png"
    bad.write_bytes(b"not a png at all")
    paths = [image_root / "red" / "red_0.png", bad]
    with pytest.raises(DecodeError, match=r"broken.png: not an image"):  # also raised from a worker process
        predict_paths(tiny_model, paths, _transform(), num_workers=workers, progress=False)
