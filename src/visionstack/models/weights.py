"""Pretrained weights from local files only: partial matching by name and shape, with a report.

A source is a file (``.safetensors`` via safetensors; ``.pth .pt .bin .ckpt`` via ``torch.load(...,
weights_only=True)``), an in-memory state dict, a torchvision weights tag (``IMAGENET1K_V2``, ``DEFAULT``)
read from the torch hub cache, or a timm pretrained tag read from the Hugging Face / torch hub cache.
Nothing ever touches the network: a missing file raises :class:`CheckpointError` saying which file to
place where.

Checkpoints nested under ``state_dict`` / ``model`` / ``module`` (``state_dict_ema`` / ``model_ema`` with
``use_ema=True``) are unwrapped; wrapper prefixes (``module.``, ``_orig_mod.``, ``backbone.``, ``model.``)
are stripped, or a module path added, whenever that makes more names match.
"""

from __future__ import annotations

import logging
import os
import sys
import tempfile
from collections import OrderedDict
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from visionstack.errors import CheckpointError

__all__ = [
    "WeightsReport",
    "align_keys",
    "load_weights",
    "read_state_dict",
    "resolve_weights",
    "save_weights",
]

logger = logging.getLogger(__name__)

TORCH_SUFFIXES = (".pth", ".pt", ".bin", ".ckpt", ".pth.tar")
WRAPPER_PREFIXES = ("module.", "_orig_mod.", "backbone.", "model.")
NESTED_KEYS = ("state_dict", "model", "module", "net", "network", "params")
EMA_KEYS = ("state_dict_ema", "model_ema", "ema", "ema_state_dict")
_SHOW = 5


@dataclass
class WeightsReport:
    """What a :func:`load_weights` call did. Names are the model's state-dict keys."""

    source: str
    loaded: list[str] = field(default_factory=list)
    missing: list[str] = field(default_factory=list)
    unexpected: list[str] = field(default_factory=list)
    shape_mismatched: list[str] = field(default_factory=list)
    shapes: dict[str, tuple[tuple[int, ...], tuple[int, ...]]] = field(default_factory=dict)
    adapted: list[str] = field(default_factory=list)
    key_map: str = ""
    #: tensors of the source that were not loaded (unexpected or of another shape), by aligned name
    unused: dict[str, Tensor] = field(default_factory=dict, repr=False)

    @property
    def ok(self) -> bool:
        """True when every model entry was loaded and every file entry was used."""
        return not (self.missing or self.unexpected or self.shape_mismatched)

    def __str__(self) -> str:
        lines = [
            f"weights {self.source}: loaded {len(self.loaded)}, missing {len(self.missing)}, "
            f"unexpected {len(self.unexpected)}, shape-mismatched {len(self.shape_mismatched)}"
        ]
        if self.key_map:
            lines.append(f"  keys mapped: {self.key_map}")
        if self.adapted:
            lines.append(f"  input conv adapted to the model's channels: {', '.join(self.adapted)}")
        for title, names in (
            ("missing (left as initialized)", self.missing),
            ("unexpected (in the file, not in the model)", self.unexpected),
        ):
            if names:
                lines.append(f"  {title}: {_first(names)}")
        if self.shape_mismatched:
            shown = [
                f"{n} model {list(self.shapes[n][0])} file {list(self.shapes[n][1])}"
                for n in self.shape_mismatched[:_SHOW]
            ]
            more = len(self.shape_mismatched) - _SHOW
            lines.append(
                "  shape-mismatched (not loaded): "
                + "; ".join(shown)
                + (f"; ... {more} more" if more > 0 else "")
            )
        return "\n".join(lines)


def _first(names: list[str]) -> str:
    more = len(names) - _SHOW
    return ", ".join(names[:_SHOW]) + (f", ... {more} more" if more > 0 else "")


# -- reading ----------------------------------------------------------------------------------------
def read_state_dict(path: str | Path, *, use_ema: bool = False) -> dict[str, Tensor]:
    """Tensors of a local weights file, unwrapped from common checkpoint nestings. Safe loading only."""
    path = Path(path).expanduser()
    if not path.is_file():
        raise CheckpointError(f"weights file not found: {path.resolve()}")
    name = path.name.lower()
    try:
        if name.endswith(".safetensors"):
            from safetensors.torch import load_file

            raw: Any = load_file(str(path), device="cpu")
        else:
            raw = torch.load(str(path), map_location="cpu", weights_only=True)
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


# -- torchvision and timm tags ----------------------------------------------------------------------
def _is_tag(source: str) -> bool:
    return not any(sep in source for sep in ("/", os.sep)) and not source.lower().endswith(
        (".safetensors", *TORCH_SUFFIXES)
    )


# -- matching ---------------------------------------------------------------------------------------
def _score(keys: Mapping[str, Any], target: Mapping[str, Any]) -> int:
    return sum(1 for k in keys if k in target)


def _fits(state: Mapping[str, Tensor], target: Mapping[str, Tensor]) -> int:
    return sum(1 for k, v in state.items() if k in target and v.shape == target[k].shape)


def _strip(state: Mapping[str, Tensor], prefix: str) -> dict[str, Tensor]:
    return {(k[len(prefix) :] if k.startswith(prefix) else k): v for k, v in state.items()}


def _module_prefixes(target: Mapping[str, Any]) -> list[str]:
    """Module paths (one or two levels deep) under which the model's keys live: ``backbone.model.``."""
    out: set[str] = set()
    for key in target:
        parts = key.split(".")
        for depth in (1, 2):
            if len(parts) > depth:
                out.add(".".join(parts[:depth]) + ".")
    return sorted(out)


def align_keys(state: Mapping[str, Tensor], target: Mapping[str, Any]) -> tuple[dict[str, Tensor], str]:
    """Strip wrapper prefixes from ``state`` (or add a module path) when that makes more keys match.

    Up to three wrapper prefixes are tried in any order (``module._orig_mod.backbone.``); the shortest
    mapping with the most matching names wins.
    """
    best_state, best, steps = dict(state), _score(state, target), []
    frontier = [(best_state, steps)]
    for _ in range(3):
        nxt = []
        for cur, path in frontier:
            for prefix in WRAPPER_PREFIXES:
                if any(k.startswith(prefix) for k in cur):
                    cand = _strip(cur, prefix)
                    if len(cand) == len(cur):
                        nxt.append((cand, [*path, prefix]))
                        if (score := _score(cand, target)) > best:
                            best_state, best, steps = cand, score, [*path, prefix]
        frontier = nxt
    note = f"stripped '{''.join(steps)}'" if steps else ""
    if best < len(best_state):
        for prefix in _module_prefixes(target):
            cand = {prefix + k: v for k, v in best_state.items()}
            if (score := _score(cand, target)) > best:
                best_state, best, note = cand, score, ", ".join(filter(None, [note, f"added '{prefix}'"]))
    return best_state, note


def _input_conv_key(module: nn.Module, target: Mapping[str, Tensor], input_conv: str | None) -> str | None:
    if input_conv:
        return input_conv if input_conv.endswith(".weight") else input_conv + ".weight"
    cfg = getattr(module, "pretrained_cfg", None)
    first = cfg.get("first_conv") if isinstance(cfg, Mapping) else None
    if isinstance(first, str) and first + ".weight" in target:
        return first + ".weight"
    return next((k for k, v in target.items() if v.ndim == 4), None)


def _adaptable(want: tuple[int, ...], have: tuple[int, ...]) -> bool:
    """A 3-channel conv weight that differs from the model's only in input channels."""
    return (
        len(want) == 4
        and len(have) == 4
        and have[1] == 3
        and want[1] != 3
        and want[0] == have[0]
        and want[2:] == have[2:]
    )


def _adapt_input_conv(weight: Tensor, in_chans: int) -> Tensor:
    from timm.models import adapt_input_conv

    return adapt_input_conv(in_chans, weight.float()).to(weight.dtype)


def _timm_filter(module: nn.Module, state: dict[str, Tensor]) -> dict[str, Tensor]:
    """Apply the timm model family's ``checkpoint_filter_fn`` (original-format checkpoints, pos-embed resize)."""
    fn: Callable | None = getattr(sys.modules.get(type(module).__module__), "checkpoint_filter_fn", None)
    if fn is None:
        return state
    try:
        out = fn(dict(state), module)
    except Exception as err:  # a filter written for another layout: keep the file as it is
        logger.debug("timm checkpoint_filter_fn skipped: %s", err)
        return state
    return {k: v for k, v in out.items() if isinstance(v, Tensor)} if isinstance(out, Mapping) else state


def load_weights(
    module: nn.Module,
    source: str | Path | Mapping[str, Tensor],
    *,
    strict: bool = False,
    arch: str | None = None,
    family: str | None = None,
    use_ema: bool = False,
    input_conv: str | None = None,
    log: bool = True,
) -> WeightsReport:
    """Load ``source`` into ``module`` by name and shape; return (and log) a :class:`WeightsReport`.

    Args:
        module: the model to fill; entries it has but the source lacks stay as initialized.
        source: a file path, a state dict, a torchvision tag (``IMAGENET1K_V2``, ``DEFAULT``; needs
            ``family="torchvision"`` and ``arch`` = builder name) or a timm tag (``a1_in1k``, ``DEFAULT``;
            needs ``family="timm"`` and ``arch`` = timm model name).
        strict: raise :class:`CheckpointError` (loading nothing) if anything is missing, unexpected or
            of another shape.
        use_ema: take ``state_dict_ema`` / ``model_ema`` from a training checkpoint instead of the weights.
        input_conv: state-dict name of the first conv; a 3-channel file weight is adapted to the model's
            input channels there (as timm does). Default: timm's ``first_conv`` or the first 4-d weight.
        log: log the report (INFO when everything matched, WARNING otherwise).
    """
    state, label = resolve_weights(source, arch=arch, family=family, use_ema=use_ema)
    target = module.state_dict()
    if family == "timm" or hasattr(module, "pretrained_cfg"):
        filtered = _timm_filter(module, state)
        if _fits(filtered, target) > _fits(state, target):
            state = filtered
    state, key_map = align_keys(state, target)
    report = WeightsReport(source=label, key_map=key_map)
    conv_key = _input_conv_key(module, target, input_conv)
    to_load: dict[str, Tensor] = {}
    for key, value in state.items():
        want = tuple(target[key].shape) if key in target else None
        if want is not None and key == conv_key and _adaptable(want, tuple(value.shape)):
            value = _adapt_input_conv(value, want[1])
            report.adapted.append(key)
        if want is None:
            report.unexpected.append(key)
        elif want != tuple(value.shape):
            report.shape_mismatched.append(key)
            report.shapes[key] = (want, tuple(value.shape))
        else:
            to_load[key] = value
            report.loaded.append(key)
            continue
        report.unused[key] = value
    report.missing = [k for k in target if k not in state and not k.endswith("num_batches_tracked")]
    if strict and not report.ok:
        raise CheckpointError(f"strict loading failed for {type(module).__name__}:\n{report}")
    if to_load:
        module.load_state_dict(_with_versions(to_load, target), strict=False)
    if log:
        _log_report(report)
    return report


def _with_versions(state: dict[str, Tensor], target: Mapping[str, Tensor]) -> Mapping[str, Tensor]:
    """``state`` carrying the model's own state-dict versions (``_metadata``).

    Modules that upgrade older layouts in ``_load_from_state_dict`` read a version from there (MNASNet
    refuses to load without one; BatchNorm adds ``num_batches_tracked`` to version-1 dicts). The entries
    kept here were matched to the model by name and shape, so they are read as the model's own layout.
    """
    metadata = getattr(target, "_metadata", None)
    if metadata is None:
        return state
    out: OrderedDict[str, Tensor] = OrderedDict(state)
    out._metadata = metadata  # type: ignore[attr-defined]
    return out


def resolve_weights(
    source: Any, *, arch: str | None = None, family: str | None = None, use_ema: bool = False
) -> tuple[dict[str, Tensor], str]:
    """The tensors named by ``source`` (see :func:`load_weights`) and a label saying where they came from."""
    if isinstance(source, Mapping):
        return unwrap_state_dict(source, use_ema=use_ema), "<state dict>"
    if not isinstance(source, (str, Path)):
        raise CheckpointError(
            f"weights must be a file path, a state dict or a tag, got {type(source).__name__}"
        )
    path = Path(source).expanduser()
    if path.is_file():
        return read_state_dict(path, use_ema=use_ema), str(path)
    text = str(source)
    if _is_tag(text):
        from visionstack.models import pretrained_tags

        if family == "torchvision" or (family is None and text.split(".")[-1].isupper()):
            return pretrained_tags.torchvision_state(arch, text)
        if family == "timm":
            return pretrained_tags.timm_state(arch, text)
    raise CheckpointError(f"weights file not found: {path.resolve()}")


def _log_report(report: WeightsReport) -> None:
    logger.log(logging.INFO if report.ok else logging.WARNING, "%s", report)


# -- saving -----------------------------------------------------------------------------------------
def save_weights(
    module_or_state: nn.Module | Mapping[str, Tensor],
    path: str | Path,
    metadata: Mapping[str, str] | None = None,
) -> Path:
    """Write tensors as safetensors atomically (temporary file, fsync, rename); shared tensors are copied."""
    state = module_or_state.state_dict() if isinstance(module_or_state, nn.Module) else module_or_state
    from safetensors.torch import save_file

    seen: set[int] = set()
    tensors: dict[str, Tensor] = {}
    for key, value in state.items():
        if not isinstance(value, Tensor):
            continue
        t = value.detach().to("cpu").contiguous()
        storage = t.untyped_storage()
        if storage.data_ptr() in seen or storage.nbytes() != t.numel() * t.element_size():
            t = t.clone()  # tied weights or a view into a larger buffer: safetensors stores plain copies
        seen.add(t.untyped_storage().data_ptr())
        tensors[key] = t
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    try:
        save_file(tensors, tmp, metadata=dict(metadata) if metadata else None)
        with open(tmp, "rb+") as fh:
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    try:
        dir_fd = os.open(path.parent, os.O_RDONLY)
    except OSError:  # pragma: no cover - platforms without directory fds
        return path
    try:
        os.fsync(dir_fd)
    finally:
        os.close(dir_fd)
    return path
