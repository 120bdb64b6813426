"""Matching a file's tensor names to a model's: wrapper prefixes, other libraries' filters, input convs.

:func:`align_keys` strips wrapper prefixes (``module.``, ``_orig_mod.``, ``backbone.``, ``model.``, up to three
in any order) or adds a module path of the model, whichever makes the most names match.
:func:`timm_filter` applies a timm model family's own ``checkpoint_filter_fn`` (original-format checkpoints,
position-embedding resizing). :func:`adapt_input_conv` turns a 3-channel first conv into the model's input
channels, as timm does.
"""

from __future__ import annotations

import logging
import sys
from collections.abc import Callable, Mapping
from typing import Any

from torch import Tensor, nn

__all__ = [
    "WRAPPER_PREFIXES",
    "adapt_input_conv",
    "adaptable",
    "align_keys",
    "fits",
    "input_conv_key",
    "timm_filter",
]

logger = logging.getLogger(__name__)

WRAPPER_PREFIXES = ("module.", "_orig_mod.", "backbone.", "model.")


def _score(keys: Mapping[str, Any], target: Mapping[str, Any]) -> int:
    return sum(1 for k in keys if k in target)


def fits(state: Mapping[str, Tensor], target: Mapping[str, Tensor]) -> int:
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


def input_conv_key(module: nn.Module, target: Mapping[str, Tensor], input_conv: str | None) -> str | None:
    """The state-dict name of the model's first conv weight: ``input_conv``, timm's ``first_conv``, or the
    first 4-d tensor."""
    if input_conv:
        return input_conv if input_conv.endswith(".weight") else input_conv + ".weight"
    cfg = getattr(module, "pretrained_cfg", None)
    first = cfg.get("first_conv") if isinstance(cfg, Mapping) else None
    if isinstance(first, str) and first + ".weight" in target:
        return first + ".weight"
    return next((k for k, v in target.items() if v.ndim == 4), None)


def adaptable(want: tuple[int, ...], have: tuple[int, ...]) -> bool:
    """A 3-channel conv weight that differs from the model's only in input channels."""
    return (
        len(want) == 4
        and len(have) == 4
        and have[1] == 3
        and want[1] != 3
        and want[0] == have[0]
        and want[2:] == have[2:]
    )


def adapt_input_conv(weight: Tensor, in_chans: int) -> Tensor:
    """A 3-channel first-conv weight for ``in_chans`` input channels (timm's rule)."""
    from timm.models import adapt_input_conv as timm_adapt

    return timm_adapt(in_chans, weight.float()).to(weight.dtype)


def timm_filter(module: nn.Module, state: dict[str, Tensor]) -> dict[str, Tensor]:
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
