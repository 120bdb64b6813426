"""The dataset base class every visionstack dataset shares, and helpers to read annotation files.

A dataset is a list of ``(path, label)`` samples plus class names. Item ``i`` is
``{"image": transform(decoded RGB image), "label": LongTensor(), "index": i}``. Indexing with a pair
``(i, seed)`` (what :class:`visionstack.data.loader.ResumableSampler` yields) runs the transform under a
random state seeded by ``seed``, so augmentations depend only on (seed, epoch, index) -- not on the worker
that loads the sample or on how many samples came before.

Seeding costs a few microseconds per sample: torch's default generator is seeded directly (``manual_seed``
of the generator; ``torch.manual_seed`` also queues CUDA seeding and costs ~0.3 ms), python's ``random``
and numpy are seeded only when the transform may draw from them (anything beyond
``torchvision.transforms.v2``, which draws from torch alone), and the previous states are saved and
restored only in the main process (a loader worker's global RNG serves nothing but the samples, each of
which reseeds it).
"""

from __future__ import annotations

import contextlib
import contextvars
import os
import random
import warnings
from collections.abc import Callable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image
from torch.utils.data import Dataset, get_worker_info

from visionstack.core.build import current_path
from visionstack.data.decode import DecodePolicy, check_files
from visionstack.data.transforms import draws_torch_rng_only
from visionstack.errors import ConfigError, DataError

Sample = tuple[str, int]
_INDEX_ONLY: contextvars.ContextVar[bool] = contextvars.ContextVar("visionstack_index_only", default=False)


@contextlib.contextmanager
def index_only() -> Iterator[None]:
    """Build datasets without checking that their files exist or decode (``visionstack verify`` does that)."""
    token = _INDEX_ONLY.set(True)
    try:
        yield
    finally:
        _INDEX_ONLY.reset(token)


def _seed(seed: int, torch_only: bool) -> None:
    torch.default_generator.manual_seed(seed)
    if not torch_only:
        random.seed(seed)
        np.random.seed(seed % 2**32)


@contextlib.contextmanager
def seeded_rng(seed: int, torch_only: bool = False) -> Iterator[None]:
    """Run a block with torch's default CPU generator -- and, unless ``torch_only``, python's ``random`` and
    numpy's global state -- seeded by ``seed``.

    In the main process the previous states are restored afterwards (the block consumes nothing of the
    training process's randomness). In a DataLoader worker they are left as the block leaves them: nothing
    but samples draws from a worker's global RNG, and each seeded sample reseeds it first.
    """
    if get_worker_info() is not None:
        _seed(seed, torch_only)
        yield
        return
    generator = torch.default_generator
    torch_state = generator.get_state()
    py_state = None if torch_only else random.getstate()
    np_state = None if torch_only else np.random.get_state()
    _seed(seed, torch_only)
    try:
        yield
    finally:
        generator.set_state(torch_state)
        if not torch_only:
            random.setstate(py_state)
            np.random.set_state(np_state)


class ImageDataset(Dataset):
    """Samples ``(path, label)`` decoded by one :class:`DecodePolicy` and passed through ``transform``.

    Attributes: ``samples``, ``class_names``, ``num_classes``, ``targets``, ``bad_files`` (``(path, reason)``
    of files dropped under ``on_error: skip``; empty otherwise), ``root``, ``split``, ``transform`` (may be
    replaced at any time).

    ``torch_rng_only``: whether seeded items need only torch's generator seeded (true when the transform
    is built from ``torchvision.transforms.v2`` alone). A subclass whose :meth:`load_image` draws from
    python's ``random`` or numpy should return ``False``.
    """

    def __init__(
        self,
        samples: Sequence[Sample],
        class_names: Sequence[str],
        *,
        transform: Callable[[Image.Image], Any] | None = None,
        decode: DecodePolicy | Mapping[str, Any] | None = None,
        root: str | os.PathLike[str] | None = None,
        split: str | None = None,
    ) -> None:
        self.root = None if root is None else str(root)
        self.split = split
        self.transform = transform
        self.policy = DecodePolicy.from_cfg(decode)
        self.class_names = [str(c) for c in class_names]
        samples = [(str(p), int(y)) for p, y in samples]
        where = f"{type(self).__name__}(root={self.root!r}, split={split!r})"
        if not samples:
            raise DataError(f"{where}: no samples found")
        for path, label in samples:
            if not 0 <= label < len(self.class_names):
                raise DataError(f"{where}: label {label} of {path} is outside [0, {len(self.class_names)})")
        self.bad_files: list[tuple[str, str]] = []
        if _INDEX_ONLY.get():
            pass
        elif self.policy.on_error == "skip":
            samples = self._drop_bad(samples, where)
        else:
            missing = [p for p, _ in samples if not os.path.isfile(p)]
            if missing:
                raise DataError(
                    f"{where}: {len(missing)} of {len(samples)} listed image files do not exist, "
                    f"e.g. {missing[0]}" + (f", {missing[1]}" if len(missing) > 1 else "")
                )
        self.samples: list[Sample] = samples

    def _drop_bad(self, samples: list[Sample], where: str) -> list[Sample]:
        workers = min(8, os.cpu_count() or 1)
        self.bad_files = check_files([p for p, _ in samples], self.policy, workers=workers)
        if not self.bad_files:
            return samples
        bad = {p for p, _ in self.bad_files}
        kept = [s for s in samples if s[0] not in bad]
        listed = "; ".join(f"{p}: {r}" for p, r in self.bad_files[:5])
        warnings.warn(
            f"{where}: skipped {len(self.bad_files)} bad file(s) (decode.on_error=skip), listed in "
            f"dataset.bad_files: {listed}{' ...' if len(self.bad_files) > 5 else ''}",
            stacklevel=3,
        )
        if not kept:
            raise DataError(f"{where}: every file failed to decode, e.g. {listed}")
        return kept

    @property
    def transform(self) -> Callable[[Image.Image], Any] | None:
        return self._transform

    @transform.setter
    def transform(self, transform: Callable[[Image.Image], Any] | None) -> None:
        self._transform = transform
        self._torch_rng_only = draws_torch_rng_only(transform)

    @property
    def torch_rng_only(self) -> bool:
        return self._torch_rng_only

    # -- the dataset interface ------------------------------------------------------------------------
    def __len__(self) -> int:
        return len(self.samples)

    @property
    def num_classes(self) -> int:
        return len(self.class_names)

    @property
    def targets(self) -> list[int]:
        return [y for _, y in self.samples]

    @property
    def paths(self) -> list[str]:
        return [p for p, _ in self.samples]

    def load_image(self, index: int) -> Image.Image:
        """The decoded RGB image of sample ``index`` (no transform)."""
        return self.policy.decode(self.samples[index][0])

    def __getitem__(self, key: int | tuple[int, int]) -> dict[str, Any]:
        if isinstance(key, tuple):
            index, seed = key
            with seeded_rng(int(seed), torch_only=self.torch_rng_only):
                return self._item(int(index))
        return self._item(int(key))

    def _item(self, index: int) -> dict[str, Any]:
        if index < 0:
            index += len(self.samples)
        image: Any = self.load_image(index)
        if self.transform is not None:
            image = self.transform(image)
        return {
            "image": image,
            "label": torch.tensor(self.samples[index][1], dtype=torch.long),
            "index": index,
        }

    def __repr__(self) -> str:
        bad = f", bad_files={len(self.bad_files)}" if self.bad_files else ""
        return (
            f"{type(self).__name__}(root={self.root!r}, split={self.split!r}, samples={len(self)}, "
            f"classes={self.num_classes}{bad})"
        )


# -- helpers shared by the dataset readers -------------------------------------------------------------
def check_split(split: str, allowed: Sequence[str], dataset: str) -> str:
    """``split`` if it is one of ``allowed``; a :class:`ConfigError` at ``<path>.split`` otherwise."""
    if split not in allowed:
        raise ConfigError(
            current_path("split"), f"dataset {dataset!r} has splits {', '.join(allowed)}; got {split!r}"
        )
    return split


def existing_root(root: str | os.PathLike[str], dataset: str) -> Path:
    """``root`` as a Path; a :class:`DataError` if it is not a folder."""
    path = Path(root).expanduser()
    if not path.is_dir():
        raise DataError(
            f"{dataset}: root folder {path} does not exist"
            if not path.exists()
            else f"{dataset}: root {path} is not a folder"
        )
    return path


def find_base(root: str | os.PathLike[str], marker: str, subfolders: Sequence[str], dataset: str) -> Path:
    """The folder holding ``marker`` (a file or folder): ``root`` itself or one of ``root/<subfolder>``."""
    base = existing_root(root, dataset)
    for candidate in (base, *(base / s for s in subfolders)):
        if (candidate / marker).exists():
            return candidate
    where = ", ".join(str(c / marker) for c in (base, *(base / s for s in subfolders)))
    found = sorted(p.name for p in base.iterdir())[:12]
    raise DataError(
        f"{dataset}: expected {marker} at {where}; {base} contains: {', '.join(found) or 'nothing'}"
    )


def require_file(path: Path, what: str, dataset: str) -> Path:
    """``path`` if it is a file; otherwise a :class:`DataError` saying what was expected where."""
    if not path.is_file():
        raise DataError(f"{dataset}: expected {what} at {path}, but it does not exist")
    return path


def read_rows(
    path: Path, columns: int, what: str, dataset: str, from_right: bool = False
) -> list[tuple[int, list[str]]]:
    """Non-empty lines of a whitespace-separated file as ``(line number, fields)``.

    The last field takes the rest of the line (names with spaces), or with ``from_right`` the first field
    does (paths with spaces); fewer than ``columns`` fields raise.
    """
    require_file(path, what, dataset)
    rows = []
    with open(path, encoding="utf-8") as fh:
        for lineno, line in enumerate(fh, start=1):
            line = line.strip()
            if not line:
                continue
            fields = line.rsplit(None, columns - 1) if from_right else line.split(None, columns - 1)
            if len(fields) < columns:
                raise DataError(f"{dataset}: {path} line {lineno}: expected {columns} fields, got {line!r}")
            rows.append((lineno, fields))
    return rows


def unique_map(rows: list[tuple[int, list[str]]], path: Path, dataset: str) -> dict[str, str]:
    """``{first field: second field}`` of two-column rows; a repeated key raises naming the line."""
    out: dict[str, str] = {}
    for lineno, (key, value) in rows:
        if key in out:
            raise DataError(f"{dataset}: {path} line {lineno}: id {key} appears twice")
        out[key] = value
    return out


def load_mat(path: Path, what: str, dataset: str) -> dict[str, Any]:
    """A MATLAB file read with scipy (``squeeze_me=True``)."""
    require_file(path, what, dataset)
    from scipy.io import loadmat

    try:
        return loadmat(str(path), squeeze_me=True)
    except Exception as err:
        raise DataError(f"{dataset}: cannot read {path} ({what}): {type(err).__name__}: {err}") from None
