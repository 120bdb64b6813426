"""Weights named by a tag instead of a path, found in the local caches only (nothing is downloaded).

* torchvision: ``IMAGENET1K_V2`` / ``DEFAULT`` of a builder (``resnet50``) -> the file torchvision itself
  would cache, ``<torch hub dir>/checkpoints/<file of the enum's url>``.
* timm: ``a1_in1k`` / ``DEFAULT`` of a model (``resnet50``) -> ``<torch hub dir>/checkpoints/timm/
  <model>.<tag>.safetensors`` (the documented drop-in place), the Hugging Face cache, or timm's url cache.

A missing file raises :class:`CheckpointError` naming the file and the folder to place it in.
"""

from __future__ import annotations

import os
import re
from pathlib import Path
from urllib.parse import urlparse

import torch
from torch import Tensor

from visionstack.errors import CheckpointError
from visionstack.models.weights.io import read_state_dict

__all__ = ["timm_state", "timm_weights_candidates", "torchvision_state", "torchvision_weights_file"]

TAG_WORDS = ("DEFAULT", "PRETRAINED", "TIMM")
_DENSENET_KEY = re.compile(
    r"^(.*denselayer\d+\.(?:norm|relu|conv))\.([12]\.(?:weight|bias|running_mean|running_var|num_batches_tracked))$"
)


def torchvision_weights_file(arch: str, tag: str) -> Path:
    """Where torchvision keeps the file of ``<arch>`` weights ``tag`` (the file may not exist)."""
    from torchvision.models import get_model_weights

    try:
        enum = get_model_weights(arch)
    except (ValueError, KeyError) as err:
        raise CheckpointError(f"torchvision has no weights for model {arch!r}: {err}") from None
    key = tag.split(".")[-1].upper()
    try:
        member = enum[key]
    except KeyError:
        raise CheckpointError(
            f"{arch}: unknown torchvision weights {tag!r}; known: {', '.join(dict.fromkeys(['DEFAULT', *enum.__members__]))}"
        ) from None
    filename = os.path.basename(urlparse(member.url).path)
    return Path(torch.hub.get_dir()) / "checkpoints" / filename


def torchvision_state(arch: str | None, tag: str) -> tuple[dict[str, Tensor], str]:
    """The tensors of torchvision weights ``tag`` of builder ``arch`` from the hub cache, and a label."""
    if not arch:
        raise CheckpointError(f"weights {tag!r} look like a torchvision tag but no architecture was given")
    file = torchvision_weights_file(arch, tag)
    if not file.is_file():
        raise CheckpointError(
            f"torchvision weights {arch} {tag} are not in the local cache (nothing is downloaded): "
            f"place the file {file.name} in {file.parent} (or set TORCH_HOME), or pass its path as weights"
        )
    state = read_state_dict(file)
    if arch.startswith("densenet"):  # torchvision's DenseNet files say 'norm.1' where the model has 'norm1'
        state = {_DENSENET_KEY.sub(r"\1\2", k): v for k, v in state.items()}
    return state, f"{file} (torchvision {arch} {tag})"


def timm_weights_candidates(model_tag: str) -> tuple[list[Path], Path, str]:
    """Local places for a timm ``arch.tag``: (existing files, the drop-in path, the HF repo to fetch from)."""
    import timm

    try:
        cfg = timm.models.get_pretrained_cfg(model_tag)
    except RuntimeError:  # an unknown tag
        cfg = None
    if cfg is None:
        raise CheckpointError(
            f"timm has no pretrained weights named {model_tag!r}; list them with "
            f"timm.list_pretrained({model_tag.split('.')[0] + '*'!r})"
        )
    found: list[Path] = []
    drop_in = Path(torch.hub.get_dir()) / "checkpoints" / "timm" / f"{model_tag}.safetensors"
    if drop_in.is_file():
        found.append(drop_in)
    if cfg.file and Path(cfg.file).is_file():
        found.append(Path(cfg.file))
    if cfg.hf_hub_id:
        try:
            from huggingface_hub import try_to_load_from_cache
        except ImportError:  # pragma: no cover - timm depends on huggingface_hub
            try_to_load_from_cache = None
        names = [cfg.hf_hub_filename] if cfg.hf_hub_filename else ["model.safetensors", "pytorch_model.bin"]
        for fname in names if try_to_load_from_cache else []:
            hit = try_to_load_from_cache(cfg.hf_hub_id.split("@")[0], fname)
            if isinstance(hit, str) and Path(hit).is_file():
                found.append(Path(hit))
    if cfg.url:
        cached = Path(torch.hub.get_dir()) / "checkpoints" / os.path.basename(urlparse(cfg.url).path)
        if cached.is_file():
            found.append(cached)
    return found, drop_in, cfg.hf_hub_id or cfg.url or ""


def timm_state(arch: str | None, tag: str) -> tuple[dict[str, Tensor], str]:
    """The tensors of timm weights ``tag`` (or the default tag) of model ``arch`` from a local cache."""
    if not arch:
        raise CheckpointError(f"weights {tag!r} look like a timm tag but no architecture was given")
    import timm

    base, _, arch_tag = arch.partition(".")
    if tag.upper() in TAG_WORDS:
        model_tag = arch if arch_tag else (timm.list_pretrained(base) or [base])[0]
    else:
        model_tag = f"{base}.{tag}"
    found, drop_in, remote = timm_weights_candidates(model_tag)
    if not found:
        raise CheckpointError(
            f"timm weights {model_tag} are not in the local cache (nothing is downloaded): download them "
            f"from {remote or 'the timm model hub'} and place the file at {drop_in}, or pass its path as weights"
        )
    return read_state_dict(found[0]), f"{found[0]} (timm {model_tag})"
