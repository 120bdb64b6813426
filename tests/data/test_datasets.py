"""Every dataset layout on tiny fake trees: samples, labels, class names, splits and error messages."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import scipy.io as sio
import torch
from PIL import Image

from tests.data.fakes import cub, image_folder, write_corrupt, write_image
from visionstack.core.registry import DATASETS
from visionstack.data.datasets import (
    CsvDataset,
    Cub200Dataset,
    DigitsDataset,
    FgvcAircraftDataset,
    ImageFolderDataset,
    ListFileDataset,
    StanfordCarsDataset,
    StanfordDogsDataset,
)
from visionstack.data.decode import DecodeError
from visionstack.data.transforms import build_val_transforms
from visionstack.errors import ConfigError, DataError


def rel(ds, root: Path) -> list[tuple[str, int]]:
    return [(Path(p).relative_to(root).as_posix(), y) for p, y in ds.samples]


def test_registry_names_and_aliases() -> None:
    assert set(DATASETS.names()) >= {
        "image_folder",
        "cub200",
        "stanford_cars",
        "fgvc_aircraft",
        "stanford_dogs",
        "list_file",
        "csv",
        "digits",
    }
    assert DATASETS.get("CUB_200_2011") is Cub200Dataset
    assert DATASETS.get("ImageFolder") is ImageFolderDataset


def test_image_folder(tmp_path: Path) -> None:
    image_folder(tmp_path / "train", {"dog": 2, "cat": 3})
    image_folder(tmp_path / "val", {"dog": 1})
    (tmp_path / "train" / "cat" / "readme.txt").write_text("not an image")
    ds = ImageFolderDataset(str(tmp_path), split="train")
    assert ds.class_names == ["cat", "dog"] and ds.num_classes == 2
    assert rel(ds, tmp_path / "train") == [
        ("cat/0.png", 0),
        ("cat/1.png", 0),
        ("cat/2.png", 0),
        ("dog/0.png", 1),
        ("dog/1.png", 1),
    ]
    assert ds.targets == [0, 0, 0, 1, 1]
    item = ds[3]
    assert item["index"] == 3 and item["label"].dtype == torch.long and int(item["label"]) == 1
    assert (
        isinstance(item["image"], Image.Image) and item["image"].getpixel((0, 0))[0] == 0
    )  # dog/0 was written first
    assert ds[0]["image"].getpixel((0, 0))[0] == 10  # cat/0: second class written, value 10 * 1 + 0
    # the val folder lacks "cat": without the class list "dog" would become 0
    assert ImageFolderDataset(str(tmp_path), split="val").targets == [0]
    val = ImageFolderDataset(
        str(tmp_path), split="val", classes=["cat", "dog"], transform=build_val_transforms(8, preset="simple")
    )
    assert val.targets == [1] and val[0]["image"].shape == (3, 8, 8)
    with pytest.raises(DataError, match="split folder .*valid does not exist.*Did you mean 'val'"):
        ImageFolderDataset(str(tmp_path), split="valid")
    with pytest.raises(DataError, match="does not exist"):
        ImageFolderDataset(str(tmp_path / "nowhere"))
    (tmp_path / "train" / "empty").mkdir()
    with pytest.raises(DataError, match="without images.*empty"):
        ImageFolderDataset(str(tmp_path), split="train")


def test_cub200(tmp_path: Path) -> None:
    base = cub(tmp_path)
    train = Cub200Dataset(str(tmp_path), "train")  # the parent of CUB_200_2011 works too
    test = Cub200Dataset(str(base), "test")
    assert train.class_names == ["001.Albatross", "002.Auklet", "003.Blackbird"]
    assert rel(train, base / "images") == [
        ("001.Albatross/img_1.jpg", 0),
        ("002.Auklet/img_3.jpg", 1),
        ("003.Blackbird/img_5.jpg", 2),
    ]
    assert [Path(p).name for p in test.paths] == ["img_2.jpg", "img_4.jpg", "img_6.jpg"]
    with pytest.raises(ConfigError, match="split: dataset 'cub200' has splits train, test; got 'val'"):
        Cub200Dataset(str(base), "val")
    labels = base / "image_class_labels.txt"
    labels.write_text(labels.read_text() + "7 1\n")
    with pytest.raises(DataError, match=r"image id 7 in .*image_class_labels.txt is not in .*images.txt"):
        Cub200Dataset(str(base), "train")
    labels.write_text("1 1\n2 1\n3 2\n4 2\n5 3\n")
    with pytest.raises(
        DataError, match=r"image id 6 of .*images.txt has no line in .*image_class_labels.txt"
    ):
        Cub200Dataset(str(base), "train")
    labels.write_text("1 1\n2 1\n3 2\n4 2\n5 3\n6 9\n")
    with pytest.raises(DataError, match=r"class id 9 of image id 6 .* is not in .*classes.txt"):
        Cub200Dataset(str(base), "train")
    labels.write_text("1 1\n1 1\n")
    with pytest.raises(DataError, match=r"image_class_labels.txt line 2: id 1 appears twice"):
        Cub200Dataset(str(base), "train")
    labels.write_text("1 1\n2 1\n3 2\n4 2\n5 3\n6 3\n")
    assert len(Cub200Dataset(str(base), "train")) == 3
    (base / "classes.txt").unlink()
    with pytest.raises(DataError, match=r"expected the class list .* at .*CUB_200_2011/classes.txt"):
        Cub200Dataset(str(base), "train")
    with pytest.raises(DataError, match="expected images.txt"):
        Cub200Dataset(str(tmp_path / "CUB_200_2011" / "images"), "train")


def aircraft_tree(root: Path) -> Path:
    data = root / "fgvc-aircraft-2013b" / "data"
    ids = {"train": ["0001", "0002"], "val": ["0003"], "trainval": ["0001", "0002", "0003"], "test": ["0004"]}
    variant = {"0001": "707-320", "0002": "A300B4", "0003": "A310", "0004": "707-320"}
    family = {"0001": "Boeing 707", "0002": "A300", "0003": "A310", "0004": "Boeing 707"}
    for i, image_id in enumerate(sorted(variant)):
        write_image(data / "images" / f"{image_id}.jpg", value=i, size=(10, 30))
    (data / "variants.txt").write_text("707-320\nA300B4\nA310\n")
    (data / "families.txt").write_text("A300\nA310\nBoeing 707\n")
    for split, members in ids.items():
        (data / f"images_variant_{split}.txt").write_text("".join(f"{m} {variant[m]}\n" for m in members))
        (data / f"images_family_{split}.txt").write_text("".join(f"{m} {family[m]}\n" for m in members))
    return data


def test_fgvc_aircraft(tmp_path: Path) -> None:
    data = aircraft_tree(tmp_path)
    train = FgvcAircraftDataset(str(tmp_path), "train")
    assert train.class_names == ["707-320", "A300B4", "A310"] and train.targets == [0, 1]
    assert FgvcAircraftDataset(str(data), "trainval").targets == [0, 1, 2]
    family = FgvcAircraftDataset(str(data.parent), "test", annotation_level="family")
    assert family.class_names == ["A300", "A310", "Boeing 707"] and family.targets == [2]  # name with a space
    assert FgvcAircraftDataset(str(data), "val", remove_banner=True)[0]["image"].size == (10, 10)
    with pytest.raises(ConfigError, match="annotation_level.*Did you mean 'family'"):
        FgvcAircraftDataset(str(data), "train", annotation_level="familly")
    with pytest.raises(DataError, match=r"expected images_manufacturer_train.txt"):
        FgvcAircraftDataset(str(data), "train", annotation_level="manufacturer")
    (data / "images_variant_test.txt").write_text("0004 707-320\n0001 A300B5\n")
    with pytest.raises(
        DataError, match=r"images_variant_test.txt line 2: class 'A300B5' .*Did you mean 'A300B4'"
    ):
        FgvcAircraftDataset(str(data), "test")


def _struct(records: list[dict]) -> np.ndarray:
    fields = list(records[0])
    out = np.zeros((1, len(records)), dtype=[(f, "O") for f in fields])
    for i, rec in enumerate(records):
        out[0, i] = tuple(np.array([[v]]) if isinstance(v, int) else np.array([v]) for v in rec.values())
    return out


def _cells(values: list[str]) -> np.ndarray:
    out = np.empty((len(values), 1), dtype=object)
    out[:, 0] = values
    return out


def test_stanford_cars_devkit_layout(tmp_path: Path) -> None:
    base = tmp_path / "stanford_cars"
    for i in range(3):
        write_image(base / "cars_train" / f"{i:05d}.jpg", value=i)
    write_image(base / "cars_test" / "00000.jpg")
    (base / "devkit").mkdir()
    sio.savemat(base / "devkit" / "cars_meta.mat", {"class_names": _cells(["Acura RL", "BMW M3"]).T})
    sio.savemat(
        base / "devkit" / "cars_train_annos.mat",
        {
            "annotations": _struct(
                [{"bbox_x1": 1, "class": c, "fname": f"{i:05d}.jpg"} for i, c in enumerate([2, 1, 2])]
            )
        },
    )
    sio.savemat(
        base / "cars_test_annos_withlabels.mat",
        {"annotations": _struct([{"class": 1, "fname": "00000.jpg"}])},
    )
    train = StanfordCarsDataset(str(tmp_path), "train")
    assert train.class_names == ["Acura RL", "BMW M3"]
    assert rel(train, base) == [
        ("cars_train/00000.jpg", 1),
        ("cars_train/00001.jpg", 0),
        ("cars_train/00002.jpg", 1),
    ]
    assert rel(StanfordCarsDataset(str(base), "test"), base) == [("cars_test/00000.jpg", 0)]
    sio.savemat(
        base / "cars_test_annos_withlabels.mat",
        {"annotations": _struct([{"class": 3, "fname": "00000.jpg"}])},
    )
    with pytest.raises(DataError, match=r"annotation 0 \(00000.jpg\): class 3 outside 1..2"):
        StanfordCarsDataset(str(base), "test")
    (base / "cars_test_annos_withlabels.mat").unlink()
    with pytest.raises(DataError, match=r"expected the test annotations at .*cars_test_annos_withlabels.mat"):
        StanfordCarsDataset(str(base), "test")


def test_stanford_cars_all_in_one_layout(tmp_path: Path) -> None:
    for i in range(3):
        write_image(tmp_path / "car_ims" / f"{i:06d}.jpg", value=i)
    sio.savemat(
        tmp_path / "cars_annos.mat",
        {
            "class_names": _cells(["A", "B"]).T,
            "annotations": _struct(
                [
                    {"relative_im_path": f"car_ims/{i:06d}.jpg", "class": c, "test": t}
                    for i, (c, t) in enumerate([(1, 0), (2, 1), (2, 0)])
                ]
            ),
        },
    )
    assert rel(StanfordCarsDataset(str(tmp_path), "train"), tmp_path) == [
        ("car_ims/000000.jpg", 0),
        ("car_ims/000002.jpg", 1),
    ]
    assert StanfordCarsDataset(str(tmp_path), "test").targets == [1]
    with pytest.raises(DataError, match="expected .*devkit.*or .*cars_annos.mat"):
        StanfordCarsDataset(str(tmp_path / "car_ims"), "train")


def test_stanford_dogs(tmp_path: Path) -> None:
    files = ["n001-Chihuahua/a.jpg", "n001-Chihuahua/b.jpg", "n002-Shih-Tzu/c.jpg"]
    for f in files:
        write_image(tmp_path / "Images" / f)
    (tmp_path / "lists").mkdir()
    sio.savemat(
        tmp_path / "lists" / "train_list.mat",
        {"file_list": _cells(files), "labels": np.array([[1], [1], [2]])},
    )
    sio.savemat(tmp_path / "test_list.mat", {"file_list": _cells(files[2:]), "labels": np.array([[2]])})
    train = StanfordDogsDataset(str(tmp_path), "train")
    assert train.class_names == ["Chihuahua", "Shih-Tzu"] and train.targets == [0, 0, 1]
    test = StanfordDogsDataset(str(tmp_path), "test")  # a single entry (scipy squeezes it to a scalar)
    assert rel(test, tmp_path) == [("Images/n002-Shih-Tzu/c.jpg", 1)]
    sio.savemat(tmp_path / "test_list.mat", {"file_list": _cells(files[2:]), "labels": np.array([[1]])})
    with pytest.raises(
        DataError, match=r"n002-Shih-Tzu/c.jpg has label 1, but the 1-th folder .* is n001-Chihuahua"
    ):
        StanfordDogsDataset(str(tmp_path), "test")


def test_list_file(tmp_path: Path) -> None:
    write_image(tmp_path / "imgs" / "a b.png")
    write_image(tmp_path / "imgs" / "c.png")
    (tmp_path / "train.txt").write_text("imgs/a b.png 1\n\nimgs/c.png 0\n")
    (tmp_path / "annotations.txt").write_text("daisy 0\nroses 1\n")
    ds = ListFileDataset(str(tmp_path), "train")
    assert ds.class_names == ["daisy", "roses"]
    assert rel(ds, tmp_path) == [("imgs/a b.png", 1), ("imgs/c.png", 0)]
    (tmp_path / "val.txt").write_text("imgs/c.png 2\n")
    assert ListFileDataset(str(tmp_path), "val", classes=["x", "y", "z"]).targets == [2]
    (tmp_path / "annotations.txt").unlink()
    assert ListFileDataset(str(tmp_path), "val").class_names == ["0", "1", "2"]
    (tmp_path / "bad.txt").write_text("imgs/c.png roses\n")
    with pytest.raises(DataError, match=r"bad.txt line 1: label 'roses' is not an integer"):
        ListFileDataset(str(tmp_path), ann_file="bad.txt")
    (tmp_path / "missing.txt").write_text("imgs/c.png 0\nimgs/gone.png 0\nimgs/also_gone.png 1\n")
    with pytest.raises(DataError, match=r"2 of 3 listed image files do not exist, e.g. .*gone.png"):
        ListFileDataset(str(tmp_path), ann_file="missing.txt")
    with pytest.raises(DataError, match=r"expected the test list .* at .*test.txt"):
        ListFileDataset(str(tmp_path), "test")


def test_csv(tmp_path: Path) -> None:
    for name in ("x.png", "y.png", "z.png"):
        write_image(tmp_path / name)
    (tmp_path / "train.csv").write_text("image,label\nx.png,tulip\ny.png,daisy\nz.png,tulip\n")
    ds = CsvDataset(str(tmp_path), "train")
    assert ds.class_names == ["daisy", "tulip"] and ds.targets == [1, 0, 1]
    assert CsvDataset(str(tmp_path), "train", classes=["tulip", "daisy"]).targets == [0, 1, 0]
    with pytest.raises(DataError, match=r"line 3: class 'daisy' is not in the class list"):
        CsvDataset(str(tmp_path), "train", classes=["tulip", "rose"])
    (tmp_path / "val.csv").write_text("file,target\nx.png,3\n")
    val = CsvDataset(str(tmp_path), "val", image_column="file", label_column="target")
    assert val.targets == [3] and val.num_classes == 4
    with pytest.raises(DataError, match=r"has no column 'image'.*header: file, target"):
        CsvDataset(str(tmp_path), "val")


def test_skip_policy_lists_bad_files_and_never_substitutes(tmp_path: Path) -> None:
    image_folder(tmp_path, {"a": 2, "b": 2})
    bad = write_corrupt(tmp_path / "a" / "9_bad.jpg")
    strict = ImageFolderDataset(str(tmp_path))
    assert len(strict) == 5
    with pytest.raises(DecodeError, match=r"9_bad.jpg"):
        strict[2]
    with pytest.warns(UserWarning, match=r"skipped 1 bad file.*9_bad.jpg"):
        lenient = ImageFolderDataset(str(tmp_path), decode={"on_error": "skip"})
    assert len(lenient) == 4 and str(bad) not in lenient.paths
    assert [p for p, _ in lenient.bad_files] == [str(bad)] and lenient.bad_files[0][1]
    assert lenient.targets == [0, 0, 1, 1]
    assert [lenient[i]["image"].getpixel((0, 0))[0] for i in range(4)] == [0, 1, 10, 11]  # each its own file


def test_digits_written_once_with_a_fixed_split(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from sklearn.datasets import load_digits

    monkeypatch.setenv("VISIONSTACK_CACHE", str(tmp_path))
    train, test = DigitsDataset("train"), DigitsDataset("test")
    folder = tmp_path / "digits"
    assert train.class_names == [str(d) for d in range(10)]
    assert (len(train), len(test)) == (1437, 360)
    pngs = sorted(folder.glob("images/*/*.png"))
    assert len(pngs) == 1797 and len(set(train.paths) | set(test.paths)) == 1797
    digits = load_digits()
    for ds in (train, test):
        for k in (0, 101, len(ds) - 1):
            number = int(Path(ds.paths[k]).stem)
            assert ds.targets[k] == digits.target[number]
            pixels = np.asarray(ds.load_image(k))[..., 0]
            assert np.array_equal(pixels, np.rint(digits.images[number] * 255 / 16))
    per_class = np.bincount(test.targets, minlength=10)
    assert (np.abs(per_class - np.bincount(digits.target) * 0.2) <= 1).all()  # stratified
    mtime = pngs[0].stat().st_mtime_ns
    again = DigitsDataset("train", root=str(tmp_path))
    assert again.samples == train.samples and pngs[0].stat().st_mtime_ns == mtime  # reused, not rewritten
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".digits-tmp")]


@pytest.mark.slow
def test_digits_two_processes_race(tmp_path: Path) -> None:
    code = "import sys; from visionstack.data.datasets import DigitsDataset; print(len(DigitsDataset('test', root=sys.argv[1])))"
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    procs = [
        subprocess.Popen(
            [sys.executable, "-c", code, str(tmp_path)],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            env=env,
        )
        for _ in range(2)
    ]
    outs = [p.communicate(timeout=300) for p in procs]
    assert [p.returncode for p in procs] == [0, 0], outs
    assert [o[0].strip() for o in outs] == ["360", "360"]
    assert len(list((tmp_path / "digits").glob("images/*/*.png"))) == 1797
    assert sorted(p.name for p in tmp_path.iterdir()) == ["digits"]  # the loser's copy is gone
