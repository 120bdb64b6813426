"""Pretrained weights from local files only: partial matching by name and shape, with a report.

A source is a file (read by :mod:`visionstack.models.weights.io`), an in-memory state dict, a torchvision
weights tag (``IMAGENET1K_V2``, ``DEFAULT``) read from the torch hub cache, or a timm pretrained tag read from
the Hugging Face / torch hub cache (:mod:`visionstack.models.weights.tags`). Nothing ever touches the
network: a missing file raises :class:`CheckpointError` saying which file to place where. Names are matched
by :mod:`visionstack.models.weights.mapping`.

Example::

    report = load_weights(model, "resnet50.safetensors")
    print(report)        # weights resnet50.safetensors: loaded 320, missing 0, unexpected 2, ...
"""

from __future__ import annotations

import logging
import os
from collections import OrderedDict
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from torch import Tensor, nn

from visionstack.errors import CheckpointError
from visionstack.models.weights.io import TORCH_SUFFIXES, read_state_dict, unwrap_state_dict
from visionstack.models.weights.mapping import (
    adapt_input_conv,
    adaptable,
    align_keys,
    fits,
    input_conv_key,
    timm_filter,
)

__all__ = [
    "WeightsReport",
    "load_weights",
    "resolve_weights",
]

logger = logging.getLogger(__name__)

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


# -- torchvision and timm tags ----------------------------------------------------------------------
def _is_tag(source: str) -> bool:
    return not any(sep in source for sep in ("/", os.sep)) and not source.lower().endswith(
        (".safetensors", *TORCH_SUFFIXES)
    )


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
        filtered = timm_filter(module, state)
        if fits(filtered, target) > fits(state, target):
            state = filtered
    state, key_map = align_keys(state, target)
    report = WeightsReport(source=label, key_map=key_map)
    conv_key = input_conv_key(module, target, input_conv)
    to_load: dict[str, Tensor] = {}
    for key, value in state.items():
        want = tuple(target[key].shape) if key in target else None
        if want is not None and key == conv_key and adaptable(want, tuple(value.shape)):
            value = adapt_input_conv(value, want[1])
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
        from visionstack.models.weights import tags as pretrained_tags

        if family == "torchvision" or (family is None and text.split(".")[-1].isupper()):
            return pretrained_tags.torchvision_state(arch, text)
        if family == "timm":
            return pretrained_tags.timm_state(arch, text)
    raise CheckpointError(f"weights file not found: {path.resolve()}")


def _log_report(report: WeightsReport) -> None:
    logger.log(logging.INFO if report.ok else logging.WARNING, "%s", report)
