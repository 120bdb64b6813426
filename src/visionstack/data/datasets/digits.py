"""The built-in demo set: scikit-learn's 1797 handwritten digits (8x8), written once as PNG files.

The cache folder is ``<cache>/digits`` with ``<cache>`` = ``root`` if given, else ``$VISIONSTACK_CACHE``,
else ``~/.cache/visionstack``. It holds ``images/<digit>/<n>.png`` (gray levels 0..16 scaled to 0..255,
rounded), ``train.txt`` / ``test.txt`` (``path label`` lines; a stratified 80/20 split with a fixed seed,
computed once and stored) and ``classes.txt``. The folder is written into a temporary sibling and renamed
into place, so concurrent processes (DDP ranks) never see a partial folder; the loser of the race
discards its copy.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import Callable
from pathlib import Path

import numpy as np
from PIL import Image

from visionstack.core.registry import DATASETS
from visionstack.data.datasets.base import ImageDataset, check_split, read_rows
from visionstack.errors import DataError

FORMAT_VERSION = "visionstack-digits-1"
SPLIT_SEED = 0
TEST_FRACTION = 0.2


def cache_root() -> Path:
    """``$VISIONSTACK_CACHE`` or ``~/.cache/visionstack``."""
    env = os.environ.get("VISIONSTACK_CACHE")
    return Path(env).expanduser() if env else Path.home() / ".cache" / "visionstack"


def _write(folder: Path) -> None:
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split

    digits = load_digits()
    images = np.rint(digits.images * (255.0 / 16.0)).astype(np.uint8)
    labels = digits.target.astype(int)
    rel = [f"images/{y}/{i:04d}.png" for i, y in enumerate(labels)]
    for path, image in zip(rel, images):
        (folder / path).parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(image, mode="L").save(folder / path)
    train, test = train_test_split(
        np.arange(len(labels)), test_size=TEST_FRACTION, stratify=labels, random_state=SPLIT_SEED
    )
    for name, idx in (("train", train), ("test", test)):
        lines = "".join(f"{rel[i]} {labels[i]}\n" for i in sorted(idx.tolist()))
        (folder / f"{name}.txt").write_text(lines, encoding="utf-8")
    (folder / "classes.txt").write_text("".join(f"{d}\n" for d in range(10)), encoding="utf-8")
    (folder / "VERSION").write_text(FORMAT_VERSION + "\n", encoding="utf-8")  # written last: marks complete


def ensure_digits(root: str | os.PathLike[str] | None = None) -> Path:
    """The digits cache folder, written on first use (atomically: temporary folder, then rename)."""
    folder = (Path(root).expanduser() if root is not None else cache_root()) / "digits"
    marker = folder / "VERSION"
    if marker.is_file() and marker.read_text("utf-8").strip() == FORMAT_VERSION:
        return folder
    if folder.exists() and any(folder.iterdir()):
        raise DataError(
            f"digits: {folder} exists but is not a complete digits cache ({marker} missing or "
            f"from another version); remove it to have it written again"
        )
    folder.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=".digits-tmp-", dir=folder.parent))
    try:
        _write(tmp)
        try:
            os.replace(tmp, folder)  # atomic; fails if another process already put a non-empty folder there
        except OSError:
            if not (marker.is_file() and marker.read_text("utf-8").strip() == FORMAT_VERSION):
                raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return folder


@DATASETS.register("digits", aliases=("sklearn_digits",))
class DigitsDataset(ImageDataset):
    """scikit-learn's handwritten digits as 8x8 grayscale PNGs; classes ``"0"``..``"9"``.

    Splits: ``train`` (1437 images), ``test`` (360), stratified, fixed. ``root``: the cache folder parent
    (see the module docstring).
    """

    def __init__(
        self,
        split: str,
        root: str | None = None,
        transform: Callable | None = None,
        decode: dict | None = None,
    ) -> None:
        check_split(split, ("train", "test"), "digits")
        folder = ensure_digits(root)
        rows = read_rows(folder / f"{split}.txt", 2, f"the {split} list", "digits", from_right=True)
        samples = [(str(folder / path), int(label)) for _, (path, label) in rows]
        names = [
            line.strip() for line in (folder / "classes.txt").read_text("utf-8").splitlines() if line.strip()
        ]
        super().__init__(samples, names, transform=transform, decode=decode, root=str(folder), split=split)
