"""Generic layouts: a folder per class (``image_folder``), ``path label`` lists (``list_file``), CSV tables."""

from __future__ import annotations

import csv
import os
from collections.abc import Callable, Sequence
from pathlib import Path

from visionstack.core.build import closest
from visionstack.core.registry import DATASETS
from visionstack.data.datasets.base import ImageDataset, existing_root, read_rows, require_file
from visionstack.data.decode import IMAGE_EXTENSIONS, is_image_file
from visionstack.errors import DataError


def scan_class_folders(
    folder: Path, extensions: Sequence[str], classes: Sequence[str] | None, dataset: str
) -> tuple[list[tuple[str, int]], list[str]]:
    """Samples of ``folder/<class>/**/<image>`` (sorted) and the class names (sorted folder names).

    ``classes`` fixes the class list and its order (e.g. a validation folder missing a class); a folder
    not in it raises.
    """
    found = sorted(d.name for d in folder.iterdir() if d.is_dir() and not d.name.startswith("."))
    if not found:
        loose = [p.name for p in folder.iterdir() if is_image_file(p, extensions)][:3]
        hint = f" (it holds images directly, e.g. {', '.join(loose)})" if loose else ""
        raise DataError(f"{dataset}: expected one subfolder per class in {folder}, found none{hint}")
    names = list(classes) if classes is not None else found
    unknown = [d for d in found if d not in names]
    if unknown:
        raise DataError(
            f"{dataset}: folder {folder / unknown[0]} is not one of the given classes"
            f"{closest(unknown[0], names)}"
        )
    index = {name: i for i, name in enumerate(names)}
    samples: list[tuple[str, int]] = []
    empty = []
    for name in found:
        files = []
        for dirpath, dirnames, filenames in os.walk(folder / name, followlinks=True):
            dirnames[:] = sorted(d for d in dirnames if not d.startswith("."))
            files.extend(
                os.path.join(dirpath, f)
                for f in filenames
                if not f.startswith(".") and is_image_file(f, extensions)
            )
        if not files:
            empty.append(name)
        samples.extend((f, index[name]) for f in sorted(files))
    if empty:
        raise DataError(
            f"{dataset}: class folder(s) without images ({', '.join(extensions)}) in {folder}: "
            f"{', '.join(empty[:5])}"
        )
    return samples, names


@DATASETS.register("image_folder", aliases=("ImageFolder", "folder"))
class ImageFolderDataset(ImageDataset):
    """``root[/split]/<class name>/**/<image>``: one class per subfolder, classes sorted by name.

    ``split``: a subfolder of ``root`` (``train``, ``val``...) or ``None`` for ``root`` itself.
    ``extensions``: file endings taken as images. ``classes``: the class list (default: the folders).
    """

    def __init__(
        self,
        root: str,
        split: str | None = None,
        extensions: list[str] | None = None,
        classes: list[str] | None = None,
        transform: Callable | None = None,
        decode: dict | None = None,
    ) -> None:
        base = existing_root(root, "image_folder")
        folder = base / split if split else base
        if not folder.is_dir():
            subs = sorted(d.name for d in base.iterdir() if d.is_dir())
            raise DataError(
                f"image_folder: split folder {folder} does not exist{closest(split, subs)} "
                f"(subfolders of {base}: {', '.join(subs[:10]) or 'none'})"
            )
        samples, names = scan_class_folders(
            folder, tuple(extensions or IMAGE_EXTENSIONS), classes, "image_folder"
        )
        super().__init__(samples, names, transform=transform, decode=decode, root=root, split=split)


def read_class_file(path: Path, dataset: str) -> list[str]:
    """Class names from a file with ``name`` or ``name index`` lines (Awesome-Backbones annotations.txt)."""
    rows = [
        line.strip()
        for line in require_file(path, "a class names file", dataset).read_text("utf-8").splitlines()
    ]
    rows = [r for r in rows if r]
    parts = [r.rsplit(None, 1) for r in rows]
    if parts and all(len(p) == 2 and p[1].lstrip("-").isdigit() for p in parts):
        by_index = {int(i): name for name, i in parts}
        if sorted(by_index) != list(range(len(parts))):
            raise DataError(f"{dataset}: {path}: class indices must be 0..{len(parts) - 1}, each once")
        return [by_index[i] for i in range(len(parts))]
    return rows


def resolve_classes(
    classes: list[str] | str | None,
    base: Path,
    labels: Sequence[int],
    dataset: str,
    default_files: Sequence[str],
) -> list[str]:
    """Class names: a list, a file relative to ``base``, a default file if present, or ``"0".."K-1"``."""
    if isinstance(classes, list):
        return [str(c) for c in classes]
    if isinstance(classes, str):
        return read_class_file(resolve_path(base, classes), dataset)
    for name in default_files:
        if (base / name).is_file():
            return read_class_file(base / name, dataset)
    return [str(i) for i in range(max(labels) + 1)] if labels else []


def resolve_path(base: Path, path: str) -> Path:
    """``path`` if absolute, else ``base / path``."""
    p = Path(path).expanduser()
    return p if p.is_absolute() else base / p


@DATASETS.register("list_file", aliases=("ListFile", "txt", "annotation_file"))
class ListFileDataset(ImageDataset):
    """``path label`` lines (Awesome-Backbones ``train.txt`` format); paths relative to ``root``.

    ``ann_file``: the list file, relative to ``root`` (default ``{split}.txt``). ``classes``: a list, or a
    file with ``name`` or ``name index`` lines (default: ``classes.txt`` / ``annotations.txt`` next to the
    list when present, else ``"0".."K-1"``). Labels are integers; paths may contain spaces.
    """

    def __init__(
        self,
        root: str,
        split: str = "train",
        ann_file: str | None = None,
        classes: list[str] | str | None = None,
        transform: Callable | None = None,
        decode: dict | None = None,
    ) -> None:
        base = existing_root(root, "list_file")
        list_path = resolve_path(base, ann_file or f"{split}.txt")
        rows = read_rows(list_path, 2, f"the {split} list (`path label` lines)", "list_file", from_right=True)
        samples = []
        for lineno, (path, label) in rows:
            try:
                samples.append((str(resolve_path(base, path)), int(label)))
            except ValueError:
                raise DataError(
                    f"list_file: {list_path} line {lineno}: label {label!r} is not an integer"
                ) from None
        names = resolve_classes(
            classes,
            list_path.parent,
            [y for _, y in samples],
            "list_file",
            ("classes.txt", "annotations.txt"),
        )
        super().__init__(samples, names, transform=transform, decode=decode, root=root, split=split)


@DATASETS.register("csv", aliases=("csv_file", "CSVDataset"))
class CsvDataset(ImageDataset):
    """A CSV table with a header: ``image,label`` (column names configurable); paths relative to ``root``.

    Labels are integers, or class names (then ``classes`` fixes the order; default: sorted unique names).
    """

    def __init__(
        self,
        root: str,
        split: str = "train",
        csv_file: str | None = None,
        image_column: str = "image",
        label_column: str = "label",
        classes: list[str] | str | None = None,
        transform: Callable | None = None,
        decode: dict | None = None,
    ) -> None:
        base = existing_root(root, "csv")
        table = require_file(resolve_path(base, csv_file or f"{split}.csv"), f"the {split} table", "csv")
        rows = _read_csv(table, image_column, label_column)
        labels = [label for _, _, label in rows]
        samples: list[tuple[str, int]]
        if all(label.lstrip("-").isdigit() for label in labels):
            samples = [(str(resolve_path(base, p)), int(y)) for _, p, y in rows]
            names = resolve_classes(classes, table.parent, [y for _, y in samples], "csv", ())
        else:
            names = (
                resolve_classes(classes, table.parent, [], "csv", ())
                if classes is not None
                else sorted(set(labels))
            )
            index = {n: i for i, n in enumerate(names)}
            samples = []
            for lineno, path, label in rows:
                if label not in index:
                    raise DataError(
                        f"csv: {table} line {lineno}: class {label!r} is not in the class list"
                        f"{closest(label, names)}"
                    )
                samples.append((str(resolve_path(base, path)), index[label]))
        super().__init__(samples, names, transform=transform, decode=decode, root=root, split=split)


def _read_csv(table: Path, image_column: str, label_column: str) -> list[tuple[int, str, str]]:
    with open(table, newline="", encoding="utf-8") as fh:
        reader = csv.DictReader(fh)
        header = reader.fieldnames or []
        for column in (image_column, label_column):
            if column not in header:
                raise DataError(
                    f"csv: {table} has no column {column!r}{closest(column, header)} "
                    f"(header: {', '.join(header) or 'empty'})"
                )
        rows = []
        for row in reader:
            image, label = (row.get(image_column) or "").strip(), (row.get(label_column) or "").strip()
            if not image and not label:
                continue
            if not image or not label:
                raise DataError(
                    f"csv: {table} line {reader.line_num}: empty {image_column!r} or {label_column!r}"
                )
            rows.append((reader.line_num, image, label))
    return rows
