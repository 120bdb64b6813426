"""The Method contract, written once: every whole model (``ImageClassifier`` and each fine-grained method)
derives from :class:`Method`.

* ``forward(images) -> logits``: pure tensors (exportable, compilable);
* ``predict_step(images) -> {"logits": ..., "logits_<name>": ..., "embedding": ...}``: what evaluation
  scores (every ``logits*`` key) and retrieval reads;
* ``train_step(batch, optim) -> logs``: one training step on ``{"image", "label", "index"}``; the update goes
  through ``optim`` (an OptimWrapper: backward, AMP, accumulation, clipping). The default computes
  :meth:`Method.training_losses` under ``optim.autocast()`` and applies their sum with
  :meth:`Method.apply_losses`; methods with several updates per batch (PMG) write their own loop;
* ``extract(images, stage)``: one of ``stages``, from a single pass (:meth:`Method.stage_outputs`), so the
  backbone runs once whatever is asked.

Helpers methods share live here, so methods never import each other: :func:`resolve_num_classes`,
:func:`required`, :func:`build_losses`.

Example::

    @METHODS.register("my_method")
    class MyMethod(Method):
        stages = ("backbone", "logits")
        default_stage = "logits"

        def forward(self, images):
            return self.head(self.pool(self.backbone(images)))

        def stage_outputs(self, images):
            maps = self.backbone(images)
            return {"backbone": maps, "logits": self.head(self.pool(maps))}

        def training_losses(self, batch):
            return self.loss(self(batch["image"]), batch["label"])
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch
from torch import nn

from visionstack.core.build import build_part, current_path
from visionstack.core.registry import LOSSES
from visionstack.errors import ConfigError
from visionstack.models.parts.base import LossSet, total_loss

__all__ = ["Method", "PartCfg", "build_losses", "required", "resolve_num_classes"]

PartCfg = str | Mapping[str, Any] | nn.Module | None


class Method(nn.Module):
    """Base of every whole model (see the module docstring)."""

    stages: tuple[str, ...] = ("logits",)
    default_stage: str = "logits"
    num_classes: int

    def stage_outputs(self, images: torch.Tensor) -> dict[str, Any]:
        """Every stage of :attr:`stages` for ``images``, computed in one pass."""
        raise NotImplementedError(f"{type(self).__name__} does not describe its stages")

    @torch.no_grad()
    def extract(self, images: torch.Tensor, stage: str | None = None) -> Any:
        """The output of ``stage`` (default :attr:`default_stage`), one of :attr:`stages`."""
        stage = stage or self.default_stage
        if stage not in self.stages:
            raise ValueError(f"unknown stage {stage!r}; stages are {', '.join(self.stages)}")
        return self.stage_outputs(images)[stage]

    @torch.no_grad()
    def predict_step(self, images: torch.Tensor) -> dict[str, torch.Tensor]:
        """Predictions to score in evaluation: every ``logits*`` key is evaluated."""
        return {"logits": self(images)}

    def training_losses(self, batch: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """The ``loss*`` terms of one batch (the default :meth:`train_step` sums and applies them)."""
        raise NotImplementedError(f"{type(self).__name__} defines neither training_losses nor train_step")

    def train_step(self, batch: Mapping[str, torch.Tensor], optim: Any) -> dict[str, torch.Tensor]:
        """One optimization step on ``batch`` through ``optim`` (an OptimWrapper)."""
        with optim.autocast():
            losses = self.training_losses(batch)
        return self.apply_losses(losses, optim)

    @staticmethod
    def apply_losses(losses: dict[str, torch.Tensor], optim: Any) -> dict[str, torch.Tensor]:
        """Sum the ``loss*`` terms, update through ``optim``; the logs: ``loss`` and every term, detached."""
        total = total_loss(losses)
        optim.update(total)
        return {"loss": total.detach(), **{k: v.detach() for k, v in losses.items()}}


def required(value: Any, key: str, what: str = "this model") -> Any:
    """``value``, or a :class:`ConfigError` at ``key`` when it is null."""
    if value is None:
        raise ConfigError(current_path(key), f"{what} needs one; null is not allowed here")
    return value


def resolve_num_classes(head: PartCfg, num_classes: int | None) -> int:
    """Classes from the head config (or built head), else from the method's ``num_classes``."""
    value = head.get("num_classes") if isinstance(head, Mapping) else getattr(head, "num_classes", None)
    value = value or num_classes
    if value is None:
        raise ConfigError(
            current_path("num_classes"),
            "the number of classes is not set: give model.num_classes or model.head.num_classes "
            "(training fills it from the data set)",
        )
    return int(value)


def build_losses(cfg: Any, provided: Mapping[str, Any], key: str = "loss") -> LossSet | None:
    """One loss config, or a list of them, as a :class:`LossSet` (``None`` for ``null``)."""
    if cfg is None:
        return None
    items = cfg if isinstance(cfg, (list, tuple)) else [cfg]
    losses = []
    for i, item in enumerate(items):
        sub = f"{key}.{i}" if isinstance(cfg, (list, tuple)) else key
        losses.append(build_part(LOSSES, item, sub, provided))
    return LossSet(losses)
