"""Checkpoints: safetensors weights + a training-state file, written atomically, validated on resume.

Layout of a run directory::

    <work_dir>/checkpoints/epoch_0003.safetensors          weights after epoch 3 (+ metadata, see below)
    <work_dir>/checkpoints/epoch_0003.state.pt             training state of that checkpoint
    <work_dir>/checkpoints/epoch_0004_iter_000020.*        mid-epoch: 20 batches into epoch 4
    <work_dir>/best.safetensors                            weights of the best evaluation so far
    <work_dir>/last.safetensors                            weights at the end of training

Every ``.safetensors`` file is self-contained for inference: its metadata holds ``format``, ``config``
(the resolved run config as JSON, ``model.num_classes`` filled in), ``class_names`` (JSON), ``versions``,
``epoch``, ``step``, ``metrics`` and ``weights`` (``model`` or ``ema``: which weights the file holds).
The ``.state.pt`` file (``torch.save`` of tensors and plain containers only, read with
``weights_only=True``) holds the optimizer, scaler, scheduler, EMA, RNG states, position (epoch, batches
done, global step), the best-k list, and the sha256 of its ``.safetensors`` sibling. The weights are written
first, the state last: a checkpoint is complete when its state loads and the checksum matches, so
``--resume auto`` takes the newest complete one and warns about any damaged newer one.

Each file is written to a temporary file in the same folder, flushed, fsynced, renamed over the target
(``os.replace``) and the folder fsynced: a crash leaves either the old file or the new one.
"""

from __future__ import annotations

import copy
import json
import os
import re
import warnings
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
from torch import nn

from visionstack.core.io import atomic_write, read_weights, save_weights, sha256_of
from visionstack.errors import CheckpointError

FORMAT = "visionstack-checkpoint-1"
STATE_FORMAT = "visionstack-state-1"
WEIGHTS_SUFFIX = ".safetensors"
STATE_SUFFIX = ".state.pt"
_NAME = re.compile(r"^epoch_(\d+)(?:_iter_(\d+))?$")


# -- weights metadata -----------------------------------------------------------------------------------------
def weights_metadata(
    config: Mapping[str, Any] | None,
    class_names: list[str] | None,
    *,
    epoch: int = 0,
    step: int = 0,
    metrics: Mapping[str, float] | None = None,
    versions: Mapping[str, str] | None = None,
    weights: str = "model",
) -> dict[str, str]:
    """The string metadata stored in a weights file (everything inference needs besides the tensors)."""
    return {
        "format": FORMAT,
        "config": json.dumps(config or {}, default=str),
        "class_names": json.dumps(list(class_names) if class_names is not None else None),
        "versions": json.dumps(dict(versions or {})),
        "epoch": str(int(epoch)),
        "step": str(int(step)),
        "metrics": json.dumps({k: float(v) for k, v in (metrics or {}).items()}),
        "weights": weights,
    }


# -- checkpoint pairs ---------------------------------------------------------------------------------------
def checkpoint_name(epoch: int, batches_done: int = 0) -> str:
    """``epoch_0003`` (end of epoch 3, 1-based) or ``epoch_0004_iter_000020`` (20 batches into epoch 4)."""
    return f"epoch_{epoch:04d}" + (f"_iter_{batches_done:06d}" if batches_done else "")


def _order(stem: str) -> tuple[int, int] | None:
    match = _NAME.match(stem)
    if match is None:
        return None
    epoch, batches = int(match.group(1)), match.group(2)
    return (epoch, int(batches)) if batches is not None else (epoch + 1, 0)


def save_checkpoint(
    folder: str | os.PathLike[str],
    name: str,
    state_dict: Mapping[str, torch.Tensor],
    metadata: Mapping[str, str],
    state: Mapping[str, Any],
) -> Path:
    """Write ``<name>.safetensors`` then ``<name>.state.pt`` (with the weights' sha256); returns the weights path."""
    folder = Path(folder)
    weights = folder / f"{name}{WEIGHTS_SUFFIX}"
    save_weights(state_dict, weights, metadata)
    digest = sha256_of(weights)
    full = {**state, "format": STATE_FORMAT, "weights_file": weights.name, "weights_sha256": digest}
    atomic_write(folder / f"{name}{STATE_SUFFIX}", lambda tmp: torch.save(full, tmp))
    return weights


def remove_checkpoint(weights: str | os.PathLike[str]) -> None:
    """Delete a checkpoint's state file (first: the pair stops counting as complete) and weights."""
    weights = Path(weights)
    weights.with_name(weights.name[: -len(WEIGHTS_SUFFIX)] + STATE_SUFFIX).unlink(missing_ok=True)
    weights.unlink(missing_ok=True)


def _state_path(weights: Path) -> Path:
    return weights.with_name(weights.name[: -len(WEIGHTS_SUFFIX)] + STATE_SUFFIX)


def _weights_path(path: Path) -> Path:
    if path.name.endswith(STATE_SUFFIX):
        return path.with_name(path.name[: -len(STATE_SUFFIX)] + WEIGHTS_SUFFIX)
    return path


def load_state(weights: str | os.PathLike[str], verify: bool = True) -> dict[str, Any]:
    """The training state beside ``weights`` (``weights_only=True``), checked against the weights' sha256."""
    weights = Path(weights)
    state_path = _state_path(weights)
    if not state_path.is_file():
        raise CheckpointError(f"{state_path}: training state not found (the checkpoint is incomplete)")
    try:
        state = torch.load(state_path, map_location="cpu", weights_only=True)
    except Exception as err:
        raise CheckpointError(f"{state_path}: cannot load ({type(err).__name__}: {err})") from None
    if not isinstance(state, dict) or state.get("format") != STATE_FORMAT:
        raise CheckpointError(f"{state_path}: not a visionstack training state")
    if verify:
        if not weights.is_file():
            raise CheckpointError(f"{weights}: weights file missing")
        if sha256_of(weights) != state.get("weights_sha256"):
            raise CheckpointError(
                f"{weights}: checksum mismatch (truncated or modified after it was written)"
            )
    return state


def resolve_checkpoint(path: str | os.PathLike[str]) -> Path:
    """A weights file from a ``.safetensors`` / ``.state.pt`` path or a run directory (its ``best``, then
    ``last``, then newest complete checkpoint)."""
    path = Path(path)
    if path.is_dir():
        for candidate in (path / f"best{WEIGHTS_SUFFIX}", path / f"last{WEIGHTS_SUFFIX}"):
            if candidate.is_file():
                return candidate
        found, _ = latest_checkpoint(path / "checkpoints" if (path / "checkpoints").is_dir() else path)
        if found is None:
            raise CheckpointError(f"{path}: no checkpoint in this folder")
        return found
    path = _weights_path(path)
    if not path.is_file():
        raise CheckpointError(f"{path}: checkpoint not found")
    return path


def load_checkpoint(path: str | os.PathLike[str], with_state: bool = True) -> dict[str, Any]:
    """Read a checkpoint: ``{"path", "state_dict", "config", "class_names", "epoch", "step", "metrics",
    "versions", "weights", "state"}`` (``state``: the training state, or ``None`` when there is none or
    ``with_state`` is false)."""
    weights = resolve_checkpoint(path)
    tensors, meta = read_weights(weights)
    if meta.get("format") != FORMAT:
        raise CheckpointError(
            f"{weights}: not a visionstack checkpoint (no '{FORMAT}' metadata); load plain weights with "
            "visionstack.load_weights or a backbone's `weights` option"
        )
    state = None
    if with_state and _state_path(weights).is_file():
        state = load_state(weights)
    return {
        "path": str(weights),
        "state_dict": tensors,
        "config": json.loads(meta.get("config", "{}")),
        "class_names": json.loads(meta.get("class_names", "null")),
        "epoch": int(meta.get("epoch", 0)),
        "step": int(meta.get("step", 0)),
        "metrics": json.loads(meta.get("metrics", "{}")),
        "versions": json.loads(meta.get("versions", "{}")),
        "weights": meta.get("weights", "model"),
        "state": state,
    }


def find_checkpoints(folder: str | os.PathLike[str]) -> list[Path]:
    """Weights files of resumable checkpoints in ``folder``, newest first (by position in training)."""
    folder = Path(folder)
    if not folder.is_dir():
        return []
    found = []
    for path in folder.glob(f"epoch_*{WEIGHTS_SUFFIX}"):
        key = _order(path.name[: -len(WEIGHTS_SUFFIX)])
        if key is not None:
            found.append((key, path))
    for path in folder.glob(f"epoch_*{STATE_SUFFIX}"):  # a state whose weights went missing still counts
        weights = _weights_path(path)
        key = _order(weights.name[: -len(WEIGHTS_SUFFIX)])
        if key is not None and not weights.exists():
            found.append((key, weights))
    return [p for _, p in sorted(found, key=lambda kp: kp[0], reverse=True)]


def latest_checkpoint(folder: str | os.PathLike[str]) -> tuple[Path | None, list[str]]:
    """The newest checkpoint in ``folder`` whose state loads and whose weights match their checksum, and a
    message for every newer one that does not (also issued as warnings)."""
    problems = []
    for weights in find_checkpoints(folder):
        try:
            load_state(weights)
        except CheckpointError as err:
            message = f"skipping damaged checkpoint {weights.name}: {err}"
            warnings.warn(message, stacklevel=2)
            problems.append(message)
            continue
        return weights, problems
    return None, problems


# -- inference -----------------------------------------------------------------------------------------------
def _without_pretrained(cfg: Any) -> Any:
    """A model config with every part's pretrained ``weights`` source removed (the checkpoint has them)."""
    if isinstance(cfg, Mapping):
        return {
            k: _without_pretrained(v)
            for k, v in cfg.items()
            if not (k == "weights" and "type" in cfg and isinstance(v, str))
        }
    if isinstance(cfg, list):
        return [_without_pretrained(v) for v in cfg]
    return cfg


def build_model_from_checkpoint(ckpt: Mapping[str, Any]) -> nn.Module:
    """The model described by a loaded checkpoint's config, with its weights loaded strictly."""
    from visionstack.models.build import build_model

    cfg = ckpt.get("config") or {}
    if "model" not in cfg:
        raise CheckpointError(f"{ckpt.get('path')}: the checkpoint has no model config")
    model = build_model(_without_pretrained(copy.deepcopy(cfg["model"])))
    expected, tensors = model.state_dict(), ckpt["state_dict"]
    missing = [k for k in expected if k not in tensors]
    unexpected = [k for k in tensors if k not in expected]
    shapes = [
        f"{k} {tuple(tensors[k].shape)} vs {tuple(v.shape)}"
        for k, v in expected.items()
        if k in tensors and tensors[k].shape != v.shape
    ]
    if missing or unexpected or shapes:
        problems = [
            f"{label} {items[:5]}{' ...' if len(items) > 5 else ''}"
            for label, items in (
                ("missing", missing),
                ("unexpected", unexpected),
                ("shapes (file vs model)", shapes),
            )
            if items
        ]
        raise CheckpointError(
            f"{ckpt.get('path')}: weights do not match the model built from its config: "
            + "; ".join(problems)
        )
    model.load_state_dict(tensors)
    return model


def load_model_for_inference(
    path: str | os.PathLike[str], device: str | torch.device = "cpu"
) -> tuple[nn.Module, dict[str, Any], list[str] | None]:
    """``(model in eval mode on device, run config, class names)`` from a checkpoint's weights file, a
    ``.state.pt`` path or a run directory. The config's ``model`` section rebuilds the model (pretrained
    ``weights`` sources are ignored); its ``data`` section gives the evaluation transforms."""
    ckpt = load_checkpoint(path, with_state=False)
    model = build_model_from_checkpoint(ckpt)
    return model.to(device).eval(), ckpt["config"], ckpt["class_names"]
