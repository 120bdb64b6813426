"""Decode every image of a data config (or of a folder) with the decode policy and list the bad files:
what ``visionstack verify`` runs.

Example::

    files, policy = files_to_verify("configs/fgvc/cub200_pmg.yaml", ["data.root=data/CUB_200_2011"])
    bad = verify_files(files, policy)      # [(split, path, reason), ...]
"""

from __future__ import annotations

import os
from collections.abc import Callable, Mapping, Sequence
from typing import Any

from visionstack.core.config import load_config
from visionstack.data.datasets import index_only
from visionstack.data.decode import DecodePolicy, check_files, is_image_file
from visionstack.data.loader import SPLITS, build_dataset
from visionstack.errors import ConfigError, DataError

__all__ = ["files_to_verify", "folder_files", "verify_files"]


def folder_files(folder: str | os.PathLike[str]) -> list[str]:
    """Image files under ``folder`` (recursively, hidden entries skipped), sorted."""
    files = []
    for dirpath, dirnames, filenames in os.walk(folder, followlinks=True):
        dirnames[:] = sorted(d for d in dirnames if not d.startswith("."))
        files.extend(
            os.path.join(dirpath, f) for f in sorted(filenames) if not f.startswith(".") and is_image_file(f)
        )
    return files


def files_to_verify(
    target: str | os.PathLike[str], overrides: Sequence[str] = (), split: str = "all"
) -> tuple[dict[str, list[str]], dict[str, Any]]:
    """``({split: paths}, decode policy config)`` of a folder or of the datasets of a config's ``data``
    section (``split``: one of train / val / test, or ``all`` configured ones)."""
    if os.path.isdir(target):
        files = folder_files(target)
        if not files:
            raise DataError(f"{target}: no image files found")
        return {"folder": files}, {}
    cfg = load_config(target, overrides)
    data = cfg.get("data")
    if not isinstance(data, Mapping):
        raise ConfigError("data", f"{target} has no `data` section to verify")
    policy = {**(data.get("decode") or {}), "on_error": "raise"}  # report bad files, never drop them here
    DecodePolicy.from_cfg(policy)
    splits = [s for s in SPLITS if data.get(s) is not None] if split == "all" else [split]
    if not splits:
        raise ConfigError("data", "no dataset configured under data.train / data.val / data.test")
    with index_only():  # missing files are reported with the rest, not raised while listing
        files = {s: build_dataset(data, s, transform=None, decode=policy).paths for s in splits}
    return files, policy


def verify_files(
    files: Mapping[str, Sequence[str]],
    policy: Mapping[str, Any] | None = None,
    workers: int = 4,
    progress: Callable[[str, int, int], None] | None = None,
) -> list[tuple[str, str, str]]:
    """Decode every file; ``(split, path, reason)`` of each one that fails. ``progress(split, done, total)``
    is called as files finish."""
    decode_policy = DecodePolicy.from_cfg(dict(policy or {}))
    bad: list[tuple[str, str, str]] = []
    for split, paths in files.items():
        report = None if progress is None else (lambda n, s=split, t=len(paths): progress(s, n, t))
        found = check_files(list(paths), decode_policy, workers=max(1, workers), progress=report)
        bad.extend((split, path, reason) for path, reason in found)
    return bad
