"""Exponential moving average of a model's weights (timm's ``ModelEmaV3``), evaluated beside the model.

``train.ema`` config: ``null`` (off), ``true`` (defaults) or ``{decay: 0.9998, warmup: false,
warmup_power: 0.667, update_after_step: 0}``. After every optimizer step ``t`` (1-based),
``ema = d * ema + (1 - d) * model`` for every floating-point parameter and buffer (other buffers are
copied), with ``d = decay``, or with warmup ``d = min(decay, 1 - (1 + t') ** -warmup_power)``; ``t' = t -
update_after_step - 1`` and ``d = 0`` (a plain copy) while ``t' <= 0``.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch
from torch import nn

from visionstack.errors import ConfigError

_KEYS = ("decay", "warmup", "warmup_power", "update_after_step")


class ModelEma:
    """The EMA copy of ``model`` (kept in float32 when the model is in a lower precision)."""

    def __init__(
        self,
        model: nn.Module,
        decay: float = 0.9998,
        warmup: bool = False,
        warmup_power: float = 2 / 3,
        update_after_step: int = 0,
    ) -> None:
        from timm.utils import ModelEmaV3

        if not 0.0 <= decay < 1.0:
            raise ValueError(f"decay must be in [0, 1), got {decay}")
        self.ema = ModelEmaV3(
            model,
            decay=float(decay),
            use_warmup=bool(warmup),
            warmup_power=float(warmup_power),
            update_after_step=int(update_after_step),
        )
        self.ema.module.requires_grad_(False)

    @property
    def module(self) -> nn.Module:
        """The averaged model (always in eval mode)."""
        return self.ema.module

    def decay_at(self, step: int) -> float:
        """The decay used by the update after optimizer step ``step`` (1-based)."""
        return float(self.ema.get_decay(step))

    @torch.no_grad()
    def update(self, model: nn.Module, step: int) -> None:
        """Average in ``model``'s current weights after optimizer step ``step`` (1-based)."""
        self.ema.update(model, step=step)

    def state_dict(self) -> dict[str, Any]:
        return {"module": self.ema.module.state_dict(), "rounding_rng": self.ema._sr_generator.get_state()}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        self.ema.module.load_state_dict(state["module"])
        if state.get("rounding_rng") is not None:
            self.ema._sr_generator.set_state(state["rounding_rng"])


def build_ema(model: nn.Module, cfg: Any, path: str = "train.ema") -> ModelEma | None:
    """A :class:`ModelEma` from ``train.ema`` (``None`` / ``false``: no EMA)."""
    if cfg is None or cfg is False:
        return None
    if cfg is True:
        cfg = {}
    if not isinstance(cfg, Mapping):
        raise ConfigError(path, f"expected null, true or a mapping with {', '.join(_KEYS)}; got {cfg!r}")
    for key in cfg:
        if key not in _KEYS:
            raise ConfigError(f"{path}.{key}", f"unknown key; valid keys: {', '.join(_KEYS)}")
    try:
        return ModelEma(model, **dict(cfg))
    except (TypeError, ValueError) as err:
        raise ConfigError(path, str(err)) from None
