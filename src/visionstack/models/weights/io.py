"""Reading weights files: every common checkpoint format and nesting, safely.

A ``.safetensors`` file is read with safetensors; ``.pth .pt .bin .ckpt .pth.tar`` with
``torch.load(..., weights_only=True)`` (plain tensors and containers only: no code runs). Checkpoints nested
under ``state_dict`` / ``model`` / ``module`` / ``net`` / ``params`` are unwrapped; with ``use_ema`` the EMA copy
(``state_dict_ema``, ``model_ema``, ...) is taken.

Example::

    tensors = read_state_dict("resnet50-0676ba61.pth")   # {"conv1.weight": ..., ...}
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from visionstack.core.io import read_weights
from visionstack.errors import CheckpointError

__all__ = ["EMA_KEYS", "NESTED_KEYS", "TORCH_SUFFIXES", "read_state_dict", "unwrap_state_dict"]

TORCH_SUFFIXES = (".pth", ".pt", ".bin", ".ckpt", ".pth.tar")
NESTED_KEYS = ("state_dict", "model", "module", "net", "network", "params")
EMA_KEYS = ("state_dict_ema", "model_ema", "ema", "ema_state_dict")


def read_state_dict(path: str | Path, *, use_ema: bool = False) -> dict[str, Tensor]:
    """Tensors of a local weights file, unwrapped from common checkpoint nestings. Safe loading only."""
    path = Path(path).expanduser()
    if not path.is_file():
        raise CheckpointError(f"weights file not found: {path.resolve()}")
    name = path.name.lower()
    try:
        if name.endswith(".safetensors"):
            raw: Any = read_weights(path)[0]
        else:
            raw = torch.load(str(path), map_location="cpu", weights_only=True)
    except CheckpointError:
        raise
    except Exception as err:  # truncated, corrupt, or not a weights file
        hint = ""
        if "weights_only" in str(err) or "Unpickl" in type(err).__name__:
            hint = (
                " (only plain tensors and containers are accepted: weights are read with weights_only=True)"
            )
        raise CheckpointError(f"cannot read weights file {path}: {type(err).__name__}: {err}{hint}") from err
    return unwrap_state_dict(raw, source=str(path), use_ema=use_ema)


def unwrap_state_dict(obj: Any, *, source: str = "state dict", use_ema: bool = False) -> dict[str, Tensor]:
    """Descend through checkpoint nestings (``state_dict``, ``model``, ...) to the tensors.

    With ``use_ema`` the EMA copy (``state_dict_ema``, ``model_ema``, ...) is taken and must exist.
    """
    if use_ema:
        ema = next(
            (k for k in EMA_KEYS if isinstance(obj, Mapping) and isinstance(obj.get(k), Mapping)), None
        )
        if ema is None:
            keys = sorted(map(str, obj))[:10] if isinstance(obj, Mapping) else type(obj).__name__
            raise CheckpointError(
                f"{source}: use_ema is set but there are no EMA weights "
                f"(looked for {', '.join(EMA_KEYS)}; found {keys})"
            )
        obj = obj[ema]
    for _ in range(4):
        if not isinstance(obj, Mapping) or _all_tensors(obj):
            break
        inner = next((obj[k] for k in NESTED_KEYS if isinstance(obj.get(k), Mapping) and obj[k]), None)
        if inner is None:
            break
        obj = inner
    if not isinstance(obj, Mapping):
        raise CheckpointError(
            f"{source}: expected a state dict (a mapping of names to tensors), got {type(obj).__name__}"
        )
    tensors = {str(k): v for k, v in obj.items() if isinstance(v, Tensor)}
    if not tensors:
        raise CheckpointError(f"{source}: no tensors found; top-level keys are {sorted(map(str, obj))[:10]}")
    return tensors


def _all_tensors(obj: Mapping) -> bool:
    return all(isinstance(v, Tensor) for v in obj.values())
