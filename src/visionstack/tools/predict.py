"""Batched prediction on image files: collect paths, decode under the one policy, preprocess as in
evaluation, and report the top-k classes with their probabilities (softmax of the model's ``logits``).

Inputs (:func:`collect_images`): image files, folders (searched recursively for image extensions, sorted),
glob patterns (``"photos/**/*.jpg"``, recursive ``**`` allowed), and list files -- ``@list.txt`` or
``list_files=[...]`` -- with one path per line (blank lines and ``#`` comments skipped; relative paths are
taken relative to the list file's folder, else the current folder). Anything that matches nothing raises
:class:`~visionstack.errors.DataError` naming it.
"""

from __future__ import annotations

import csv
import glob
import io
import json
import os
from collections.abc import Callable, Iterable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn
from torch.utils.data import DataLoader, Dataset

from visionstack.data.decode import DecodeError, DecodePolicy, is_image_file
from visionstack.engine.precision import autocast
from visionstack.engine.run_log import count_progress
from visionstack.errors import DataError

_GLOB_CHARS = set("*?[")


def _read_list(list_file: str | os.PathLike[str]) -> list[Path]:
    path = Path(list_file)
    if not path.is_file():
        raise DataError(f"{path}: list file not found")
    out = []
    for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), start=1):
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        item = Path(line)
        if not item.is_absolute():
            beside = path.parent / item
            item = beside if beside.exists() or not item.exists() else item
        if not item.is_file():
            raise DataError(f"{path}, line {number}: {line!r} is not a file (looked at {item})")
        out.append(item)
    if not out:
        raise DataError(f"{path}: the list file names no image")
    return out


def _scan_folder(folder: Path) -> list[Path]:
    files = sorted(p for p in folder.rglob("*") if p.is_file() and is_image_file(p))
    if not files:
        raise DataError(f"{folder}: the folder holds no image files")
    return files


def collect_images(
    inputs: Iterable[str | os.PathLike[str]], list_files: Iterable[str | os.PathLike[str]] = ()
) -> list[Path]:
    """Image paths from files, folders, globs and list files (see the module docstring), in the order given,
    each path once."""
    found: list[Path] = []
    for item in inputs:
        text = str(item)
        if text.startswith("@"):
            found += _read_list(text[1:])
            continue
        path = Path(text)
        if path.is_dir():
            found += _scan_folder(path)
        elif path.is_file():
            found.append(path)
        elif _GLOB_CHARS & set(text):
            matches = sorted(Path(m) for m in glob.glob(text, recursive=True))
            matches = [m for m in matches if m.is_file() and is_image_file(m)]
            if not matches:
                raise DataError(f"{text}: the pattern matches no image file")
            found += matches
        else:
            raise DataError(f"{text}: no such file or folder")
    for list_file in list_files:
        found += _read_list(list_file)
    if not found:
        raise DataError("no images given: name files, folders, glob patterns or @list files")
    seen: set[str] = set()
    unique = []
    for p in found:
        key = os.path.abspath(p)
        if key not in seen:
            seen.add(key)
            unique.append(p)
    return unique


class ImageFiles(Dataset):
    """Decoded, preprocessed images of a list of paths; a bad file yields an ``error`` instead of raising,
    so that the main process can raise a :class:`DecodeError` naming it (also with worker processes)."""

    def __init__(
        self,
        paths: Sequence[str | os.PathLike[str]],
        transform: Callable[[Any], torch.Tensor],
        decode: DecodePolicy | None = None,
    ) -> None:
        self.paths = [str(p) for p in paths]
        self.transform = transform
        self.policy = decode or DecodePolicy()

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, index: int) -> dict[str, Any]:
        try:
            image = self.transform(self.policy.decode(self.paths[index]))
            return {"image": image, "index": index, "error": ""}
        except DecodeError as err:
            return {"image": None, "index": index, "error": err.reason}


def _collate(items: list[dict[str, Any]]) -> dict[str, Any]:
    bad = [(it["index"], it["error"]) for it in items if it["error"]]
    if bad:
        return {"bad": bad}
    return {
        "image": torch.stack([it["image"] for it in items]),
        "index": torch.tensor([it["index"] for it in items]),
    }


@dataclass
class Prediction:
    """Top-k classes of one image, best first."""

    path: str
    classes: list[int]
    names: list[str]
    probs: list[float]


def predict_probs(model: nn.Module, images: torch.Tensor, amp: str | None = None) -> torch.Tensor:
    """Class probabilities: softmax of ``model.predict_step(images)["logits"]`` (``model(images)`` for a
    plain module), under the mixed precision ``amp`` (see :mod:`visionstack.engine.precision`)."""
    step = getattr(model, "predict_step", None)
    with torch.no_grad(), autocast(images.device.type, amp):
        logits = step(images)["logits"] if callable(step) else model(images)
    return logits.float().softmax(dim=1)


def predict_paths(
    model: nn.Module,
    paths: Sequence[str | os.PathLike[str]],
    transform: Callable[[Any], torch.Tensor],
    class_names: Sequence[str] | None = None,
    topk: int = 5,
    batch_size: int = 32,
    device: str | torch.device = "cpu",
    num_workers: int = 0,
    decode: DecodePolicy | None = None,
    progress: bool = True,
    amp: str | None = None,
) -> list[Prediction]:
    """Top-``topk`` predictions for every path, in order; raises :class:`DecodeError` on the first bad file.

    ``amp``: mixed precision of the forward (``bf16``, ``fp16``, ...; default full precision).
    """
    if topk < 1:
        raise ValueError(f"topk must be >= 1, got {topk}")
    dataset = ImageFiles(paths, transform, decode)
    loader = DataLoader(dataset, batch_size=batch_size, num_workers=num_workers, collate_fn=_collate)
    model = model.to(device).eval()
    out: list[Prediction] = []
    bar = count_progress("predict", progress)
    with bar:
        task = bar.add_task("predict", total=len(dataset))
        for batch in loader:
            if "bad" in batch:
                index, reason = batch["bad"][0]
                raise DecodeError(dataset.paths[index], reason)
            probs = predict_probs(model, batch["image"].to(device), amp).cpu()
            k = min(topk, probs.shape[1])
            values, indices = probs.topk(k, dim=1)
            for i, vals, idx in zip(batch["index"].tolist(), values.tolist(), indices.tolist()):
                names = [
                    class_names[c] if class_names is not None and c < len(class_names) else str(c)
                    for c in idx
                ]
                out.append(Prediction(dataset.paths[i], idx, names, vals))
            bar.advance(task, len(batch["index"]))
    return out


def predictions_to_csv(predictions: Sequence[Prediction]) -> str:
    """``path, rank, class_index, class_name, probability`` -- one row per (image, rank)."""
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(["path", "rank", "class_index", "class_name", "probability"])
    for p in predictions:
        for rank, (c, name, prob) in enumerate(zip(p.classes, p.names, p.probs), start=1):
            writer.writerow([p.path, rank, c, name, f"{prob:.6f}"])
    return buffer.getvalue()


def predictions_to_json(predictions: Sequence[Prediction]) -> str:
    """A JSON list of ``{path, classes, names, probs}``."""
    return json.dumps([asdict(p) for p in predictions], indent=2) + "\n"


# -- what the tools need from a checkpoint ------------------------------------------------------------
def load_checkpoint_model(
    checkpoint: str | os.PathLike[str], device: str | torch.device = "cpu"
) -> tuple[nn.Module, dict[str, Any], list[str] | None]:
    """``(model in eval mode, config, class names)`` from a self-contained checkpoint (a weights file or a run
    directory); a missing or foreign file raises :class:`~visionstack.errors.CheckpointError` naming it."""
    from visionstack.engine.checkpoint.format import load_model_for_inference

    model, cfg, class_names = load_model_for_inference(checkpoint, device=device)
    return model.eval(), dict(cfg or {}), (list(class_names) if class_names else None)


def pretrained_cfg_of(model: nn.Module) -> dict[str, Any]:
    """The backbone's timm-style ``pretrained_cfg`` (input size, mean, std, crop_pct), or ``{}``."""
    return dict(getattr(getattr(model, "backbone", model), "pretrained_cfg", None) or {})


def input_size_of(
    cfg: dict[str, Any], model: nn.Module, override: int | None = None
) -> int | tuple[int, int]:
    """The model's input size: ``override``, else ``data.image_size``, else the backbone's pretrained input
    size, else 224."""
    if override:
        return int(override)
    size = (cfg.get("data") or {}).get("image_size")
    if size is None:
        size = tuple(pretrained_cfg_of(model).get("input_size", (3, 224, 224)))[-2:]
    if isinstance(size, (list, tuple)):
        return int(size[0]) if size[0] == size[1] else (int(size[0]), int(size[1]))
    return int(size)


def eval_transform(cfg: dict[str, Any], model: nn.Module) -> Callable[[Any], torch.Tensor]:
    """The evaluation pipeline of the config's ``data`` section (what validation used in training)."""
    from visionstack.data.transforms import transforms_from_data_cfg

    return transforms_from_data_cfg(
        cfg.get("data") or {}, train=False, pretrained_cfg=pretrained_cfg_of(model)
    )


def whole_image_transform(
    cfg: dict[str, Any], model: nn.Module, size: int | tuple[int, int] | None = None
) -> Callable[[Any], torch.Tensor]:
    """The whole image resized to the input size (no crop), normalized like evaluation: for maps (CAM)
    that must cover the full image."""
    from visionstack.data.transforms import transforms_from_data_cfg

    data = dict(cfg.get("data") or {})
    for key in ("transforms", "train_transforms", "val_transforms", "resize_size"):
        data.pop(key, None)
    data.update(preset="simple", image_size=size or input_size_of(cfg, model))
    return transforms_from_data_cfg(data, train=False, pretrained_cfg=pretrained_cfg_of(model))


def decode_policy_of(cfg: dict[str, Any]) -> DecodePolicy:
    """The decode policy of the config's ``data.decode`` (defaults otherwise)."""
    return DecodePolicy.from_cfg((cfg.get("data") or {}).get("decode"))
