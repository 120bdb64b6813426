"""Files written whole or not at all, checksums, and the one safetensors save / read pair.

:func:`atomic_path` yields a temporary path beside the target (same suffix, so exporters that read the
extension still work); when the block succeeds the file is flushed, fsynced and renamed over the target, and
the folder is fsynced: a crash or an error leaves the old file (or none), never a half-written one.
:func:`atomic_write` is the same for a ``write(tmp_path)`` callable. :func:`save_weights` /
:func:`read_weights` write and read a safetensors file with string metadata.

torch and safetensors are imported inside the functions: importing this module stays light.

Example::

    from visionstack.core.io import atomic_write, read_weights, save_weights

    atomic_write("run/config.yaml", lambda tmp: tmp.write_text("a: 1\\n"))
    path = save_weights({"w": torch.zeros(2)}, "run/w.safetensors", {"format": "demo"})
    tensors, metadata = read_weights(path)
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import tempfile
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path
from typing import Any

from visionstack.errors import CheckpointError

__all__ = ["atomic_path", "atomic_write", "fsync_dir", "read_weights", "save_weights", "sha256_of"]


def fsync_dir(folder: str | os.PathLike[str]) -> None:
    """Flush a folder's entries (a rename into it) to disk, where the platform allows."""
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:  # platforms without directory handles
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike[str]) -> Iterator[Path]:
    """A temporary path beside ``path`` (same suffix) that replaces ``path`` if the block succeeds."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, name = tempfile.mkstemp(prefix=f".{path.stem}.", suffix=f".tmp{path.suffix}", dir=path.parent)
    os.close(fd)
    tmp = Path(name)
    try:
        yield tmp
        with open(tmp, "rb+") as fh:
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
    fsync_dir(path.parent)


def atomic_write(path: str | os.PathLike[str], write: Callable[[Path], Any]) -> Path:
    """Call ``write(tmp_path)``, then move the finished file to ``path`` (see :func:`atomic_path`)."""
    with atomic_path(path) as tmp:
        write(tmp)
    return Path(path)


def sha256_of(path: str | os.PathLike[str]) -> str:
    """The hex sha256 of a file's bytes."""
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def _plain_tensors(state: Mapping[str, Any]) -> dict[str, Any]:
    """CPU, contiguous tensors; shared storage (tied weights) and views into larger buffers are copied,
    which safetensors requires. Non-tensor entries are left out."""
    import torch

    out: dict[str, Any] = {}
    seen: set[int] = set()
    for name, value in state.items():
        if not isinstance(value, torch.Tensor):
            continue
        t = value.detach().to("cpu").contiguous()
        storage = t.untyped_storage()
        if t.numel() and (storage.data_ptr() in seen or storage.nbytes() != t.numel() * t.element_size()):
            t = t.clone()
        if t.numel():
            seen.add(t.untyped_storage().data_ptr())
        out[str(name)] = t
    return out


def save_weights(state: Any, path: str | os.PathLike[str], metadata: Mapping[str, str] | None = None) -> Path:
    """Write a module's ``state_dict()`` (or a mapping of tensors) to ``path`` as safetensors, atomically,
    with string ``metadata``; returns the path."""
    from safetensors.torch import save_file

    tensors = _plain_tensors(state.state_dict() if hasattr(state, "state_dict") else state)
    meta = {str(k): str(v) for k, v in (metadata or {}).items()} or None
    return atomic_write(path, lambda tmp: save_file(tensors, str(tmp), metadata=meta))


def read_weights(path: str | os.PathLike[str]) -> tuple[dict[str, Any], dict[str, str]]:
    """``(tensors, metadata)`` of a safetensors file; anything unreadable raises :class:`CheckpointError`
    naming the file."""
    from safetensors import safe_open

    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"{path}: weights file not found")
    try:
        with safe_open(str(path), framework="pt", device="cpu") as fh:
            meta = dict(fh.metadata() or {})
            tensors = {k: fh.get_tensor(k) for k in fh.keys()}  # noqa: SIM118 (safe_open has no __iter__)
    except Exception as err:
        raise CheckpointError(f"{path}: cannot read weights ({type(err).__name__}: {err})") from None
    return tensors, meta
