"""Fine-grained benchmarks in their published layouts: CUB-200-2011, FGVC-Aircraft, Stanford Cars, Dogs.

``root`` may be the dataset folder itself or its parent holding the folder under its usual name
(``CUB_200_2011``, ``fgvc-aircraft-2013b``, ``stanford_cars``, ``stanford_dogs``). Every id read from one
annotation file is checked against the others; a mismatch raises naming the file and the id.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from visionstack.core.build import closest, current_path
from visionstack.core.registry import DATASETS
from visionstack.data.datasets.base import (
    ImageDataset,
    check_split,
    existing_root,
    find_base,
    load_mat,
    read_rows,
    require_file,
    unique_map,
)
from visionstack.errors import ConfigError, DataError


def _id_key(value: str) -> tuple[int, str]:
    return (int(value), value) if value.isdigit() else (1 << 62, value)


@DATASETS.register("cub200", aliases=("cub", "cub_200_2011", "CUB200"))
class Cub200Dataset(ImageDataset):
    """CUB-200-2011: ``images.txt`` (``id path``), ``image_class_labels.txt`` (``id class_id``),
    ``train_test_split.txt`` (``id 1|0``, 1 = train), ``classes.txt`` (``class_id name``), ``images/``.

    Splits: ``train``, ``test``. Class names are the ``classes.txt`` names (e.g. ``001.Black_footed_Albatross``)
    in class-id order.
    """

    def __init__(
        self, root: str, split: str, transform: Callable | None = None, decode: dict | None = None
    ) -> None:
        check_split(split, ("train", "test"), "cub200")
        base = find_base(root, "images.txt", ("CUB_200_2011",), "cub200")

        def table(name: str, what: str) -> dict[str, str]:
            return unique_map(read_rows(base / name, 2, what, "cub200"), base / name, "cub200")

        images = table("images.txt", "the image list (`id path` lines)")
        labels = table("image_class_labels.txt", "the image labels (`id class_id` lines)")
        flags = table("train_test_split.txt", "the split file (`id is_train` lines)")
        classes = table("classes.txt", "the class list (`class_id name` lines)")
        for name, other in (("image_class_labels.txt", labels), ("train_test_split.txt", flags)):
            for image_id in images:
                if image_id not in other:
                    raise DataError(
                        f"cub200: image id {image_id} of {base / 'images.txt'} has no line in {base / name}"
                    )
            for image_id in other:
                if image_id not in images:
                    raise DataError(
                        f"cub200: image id {image_id} in {base / name} is not in {base / 'images.txt'}"
                    )
        class_ids = sorted(classes, key=_id_key)
        class_index = {c: i for i, c in enumerate(class_ids)}
        want = "1" if split == "train" else "0"
        samples = []
        for image_id in sorted(images, key=_id_key):
            if labels[image_id] not in class_index:
                raise DataError(
                    f"cub200: class id {labels[image_id]} of image id {image_id} in "
                    f"{base / 'image_class_labels.txt'} is not in {base / 'classes.txt'}"
                )
            if flags[image_id] not in ("0", "1"):
                raise DataError(
                    f"cub200: {base / 'train_test_split.txt'}: image id {image_id} has flag "
                    f"{flags[image_id]!r}, expected 1 (train) or 0 (test)"
                )
            if flags[image_id] == want:
                samples.append((str(base / "images" / images[image_id]), class_index[labels[image_id]]))
        super().__init__(
            samples,
            [classes[c] for c in class_ids],
            transform=transform,
            decode=decode,
            root=root,
            split=split,
        )


_AIRCRAFT_CLASS_FILES = {
    "variant": "variants.txt",
    "family": "families.txt",
    "manufacturer": "manufacturers.txt",
}


@DATASETS.register("fgvc_aircraft", aliases=("aircraft", "FGVCAircraft"))
class FgvcAircraftDataset(ImageDataset):
    """FGVC-Aircraft 2013b: ``data/images/<id>.jpg``, ``data/images_<level>_<split>.txt`` (``id name``) and
    ``data/variants.txt`` / ``families.txt`` / ``manufacturers.txt`` (class names, one per line).

    ``root``: ``fgvc-aircraft-2013b``, its ``data`` folder, or their parent. Splits: ``train``, ``val``,
    ``trainval``, ``test``. ``annotation_level``: ``variant`` (100), ``family`` (70), ``manufacturer`` (30).
    ``remove_banner``: crop the 20-pixel copyright banner at the bottom of every image.
    """

    BANNER_HEIGHT = 20

    def __init__(
        self,
        root: str,
        split: str,
        annotation_level: str = "variant",
        remove_banner: bool = False,
        transform: Callable | None = None,
        decode: dict | None = None,
    ) -> None:
        check_split(split, ("train", "val", "trainval", "test"), "fgvc_aircraft")
        if annotation_level not in _AIRCRAFT_CLASS_FILES:
            raise ConfigError(
                current_path("annotation_level"),
                f"expected one of {', '.join(_AIRCRAFT_CLASS_FILES)}, got {annotation_level!r}"
                f"{closest(annotation_level, _AIRCRAFT_CLASS_FILES)}",
            )
        list_name = f"images_{annotation_level}_{split}.txt"
        base = find_base(root, list_name, ("data", "fgvc-aircraft-2013b/data"), "fgvc_aircraft")
        class_file = require_file(
            base / _AIRCRAFT_CLASS_FILES[annotation_level], "the class names", "fgvc_aircraft"
        )
        names = [line.strip() for line in class_file.read_text("utf-8").splitlines() if line.strip()]
        index = {n: i for i, n in enumerate(names)}
        samples = []
        for lineno, (image_id, name) in read_rows(base / list_name, 2, f"the {split} list", "fgvc_aircraft"):
            if name not in index:
                raise DataError(
                    f"fgvc_aircraft: {base / list_name} line {lineno}: class {name!r} of image id "
                    f"{image_id} is not in {class_file}{closest(name, names)}"
                )
            samples.append((str(base / "images" / f"{image_id}.jpg"), index[name]))
        self.remove_banner = remove_banner
        super().__init__(samples, names, transform=transform, decode=decode, root=root, split=split)

    def load_image(self, index: int) -> Image.Image:
        image = super().load_image(index)
        if self.remove_banner:
            image = image.crop((0, 0, image.width, max(1, image.height - self.BANNER_HEIGHT)))
        return image


def _records(mat: dict[str, Any], key: str, path: Path, dataset: str) -> np.ndarray:
    if key not in mat:
        found = ", ".join(k for k in mat if not k.startswith("__"))
        raise DataError(f"{dataset}: {path} has no variable {key!r} (it has: {found})")
    return np.atleast_1d(mat[key])


@DATASETS.register("stanford_cars", aliases=("cars", "StanfordCars", "cars196"))
class StanfordCarsDataset(ImageDataset):
    """Stanford Cars (196 classes), either layout:

    - devkit (as torchvision's ``StanfordCars``): ``devkit/cars_meta.mat`` (``class_names``),
      ``devkit/cars_train_annos.mat`` + ``cars_train/``, ``cars_test_annos_withlabels.mat`` (in the root or
      ``devkit/``) + ``cars_test/``; annotation fields ``fname`` and ``class`` (1-based);
    - all-in-one: ``cars_annos.mat`` (``annotations`` with ``relative_im_path``, ``class``, ``test``;
      ``class_names``) + ``car_ims/``.

    Splits: ``train``, ``test``.
    """

    def __init__(
        self, root: str, split: str, transform: Callable | None = None, decode: dict | None = None
    ) -> None:
        check_split(split, ("train", "test"), "stanford_cars")
        top = existing_root(root, "stanford_cars")
        candidates = [top, top / "stanford_cars", top / "stanford-cars"]
        devkit = next((c for c in candidates if (c / "devkit").is_dir()), None)
        allinone = next((c for c in candidates if (c / "cars_annos.mat").is_file()), None)
        if devkit is not None:
            samples, names = self._devkit(devkit, split)
        elif allinone is not None:
            samples, names = self._allinone(allinone, split)
        else:
            raise DataError(
                f"stanford_cars: expected {top / 'devkit'} (devkit layout) or "
                f"{top / 'cars_annos.mat'} (all-in-one layout), also looked in {candidates[1]}"
            )
        super().__init__(samples, names, transform=transform, decode=decode, root=root, split=split)

    @staticmethod
    def _labels(annotations: np.ndarray, path: Path, num_classes: int, field: str) -> list[tuple[str, int]]:
        out = []
        for k, ann in enumerate(annotations):
            label = int(ann["class"])
            if not 1 <= label <= num_classes:
                raise DataError(
                    f"stanford_cars: {path} annotation {k} ({ann[field]}): class {label} "
                    f"outside 1..{num_classes} (the class_names list)"
                )
            out.append((str(ann[field]), label - 1))
        return out

    def _devkit(self, base: Path, split: str) -> tuple[list[tuple[str, int]], list[str]]:
        meta_path = base / "devkit" / "cars_meta.mat"
        names = [
            str(n)
            for n in _records(
                load_mat(meta_path, "the class names", "stanford_cars"),
                "class_names",
                meta_path,
                "stanford_cars",
            )
        ]
        if split == "train":
            ann_path, folder = base / "devkit" / "cars_train_annos.mat", base / "cars_train"
        else:
            ann_path = next(
                (
                    p
                    for p in (
                        base / "cars_test_annos_withlabels.mat",
                        base / "devkit" / "cars_test_annos_withlabels.mat",
                    )
                    if p.is_file()
                ),
                base / "cars_test_annos_withlabels.mat",
            )
            folder = base / "cars_test"
        annotations = _records(
            load_mat(ann_path, f"the {split} annotations", "stanford_cars"),
            "annotations",
            ann_path,
            "stanford_cars",
        )
        rows = self._labels(annotations, ann_path, len(names), "fname")
        return [(str(folder / fname), y) for fname, y in rows], names

    def _allinone(self, base: Path, split: str) -> tuple[list[tuple[str, int]], list[str]]:
        path = base / "cars_annos.mat"
        mat = load_mat(path, "the annotations", "stanford_cars")
        names = [str(n) for n in _records(mat, "class_names", path, "stanford_cars")]
        annotations = _records(mat, "annotations", path, "stanford_cars")
        want = 1 if split == "test" else 0
        keep = annotations[[int(a["test"]) == want for a in annotations]]
        rows = self._labels(keep, path, len(names), "relative_im_path")
        return [(str(base / rel), y) for rel, y in rows], names


@DATASETS.register("stanford_dogs", aliases=("dogs", "StanfordDogs"))
class StanfordDogsDataset(ImageDataset):
    """Stanford Dogs (120 classes): ``Images/<wnid>-<name>/<file>.jpg`` and ``train_list.mat`` /
    ``test_list.mat`` (``file_list`` relative to ``Images/``, ``labels`` 1-based), in the root or ``lists/``.

    Class ``k`` is the ``k``-th ``Images/`` subfolder in sorted order, named without its WordNet id
    (``n02085620-Chihuahua`` -> ``Chihuahua``); each label is checked against its file's folder.
    Splits: ``train``, ``test``.
    """

    def __init__(
        self, root: str, split: str, transform: Callable | None = None, decode: dict | None = None
    ) -> None:
        check_split(split, ("train", "test"), "stanford_dogs")
        base = find_base(root, "Images", ("stanford_dogs", "StanfordDogs"), "stanford_dogs")
        name = f"{split}_list.mat"
        mat_path = next((p for p in (base / name, base / "lists" / name) if p.is_file()), base / name)
        mat = load_mat(mat_path, f"the {split} list", "stanford_dogs")
        files = _records(mat, "file_list", mat_path, "stanford_dogs")
        labels = _records(mat, "labels", mat_path, "stanford_dogs")
        if len(files) != len(labels):
            raise DataError(f"stanford_dogs: {mat_path}: {len(files)} files but {len(labels)} labels")
        folders = sorted(d.name for d in (base / "Images").iterdir() if d.is_dir())
        samples = []
        for file, label in zip(files, labels):
            file, label = str(file), int(label)
            folder = file.replace("\\", "/").split("/")[0]
            if not 1 <= label <= len(folders) or folders[label - 1] != folder:
                expected = folders[label - 1] if 1 <= label <= len(folders) else "none"
                raise DataError(
                    f"stanford_dogs: {mat_path}: {file} has label {label}, but the {label}-th "
                    f"folder of {base / 'Images'} is {expected} (sorted, {len(folders)} folders)"
                )
            samples.append((str(base / "Images" / file), label - 1))
        names = [f.split("-", 1)[1] if "-" in f else f for f in folders]
        super().__init__(samples, names, transform=transform, decode=decode, root=root, split=split)
