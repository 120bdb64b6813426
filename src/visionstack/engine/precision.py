"""The one table of mixed-precision settings: what ``amp`` means in training, validation, ``eval``,
``predict`` and ``bench``.

``amp`` is ``null`` / ``false`` (full precision), ``bf16`` / ``bfloat16`` or ``fp16`` / ``float16`` / ``half``;
every spelling of a dtype gives the same ``torch.autocast``. fp16 training adds a GradScaler on CUDA
(:class:`visionstack.engine.optim_wrapper.OptimWrapper`).

Example::

    with autocast("cpu", "bfloat16"):
        logits = model(images)          # matmuls and convolutions in bfloat16
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import torch

from visionstack.errors import ConfigError

__all__ = ["AMP_CHOICES", "AMP_DTYPES", "amp_dtype", "autocast"]

AMP_DTYPES: dict[str, torch.dtype] = {
    "bf16": torch.bfloat16,
    "bfloat16": torch.bfloat16,
    "fp16": torch.float16,
    "float16": torch.float16,
    "half": torch.float16,
}
#: the spellings a command line accepts for ``--amp``
AMP_CHOICES: tuple[str, ...] = tuple(AMP_DTYPES)


def amp_dtype(amp: str | bool | torch.dtype | None, path: str = "train.amp") -> torch.dtype | None:
    """The autocast dtype of an ``amp`` setting (``None``: full precision; a dtype is returned as it is);
    anything else raises a :class:`ConfigError` at ``path`` listing the spellings."""
    if amp is None or amp is False:
        return None
    if isinstance(amp, torch.dtype):
        return amp
    if isinstance(amp, str) and amp.lower() in AMP_DTYPES:
        return AMP_DTYPES[amp.lower()]
    raise ConfigError(path, f"expected null or one of {', '.join(AMP_CHOICES)}, got {amp!r}")


@contextlib.contextmanager
def autocast(device_type: str, amp: str | bool | torch.dtype | None) -> Iterator[None]:
    """``torch.autocast`` for ``amp`` (a setting or a dtype) on ``device_type``; nothing without AMP."""
    dtype = amp_dtype(amp)
    if dtype is None:
        yield
        return
    with torch.autocast(device_type, dtype=dtype):
        yield
