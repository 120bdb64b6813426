"""The Backbone contract, written once: every backbone (torchvision, timm, visionstack's own) derives from
:class:`Backbone`.

* ``forward(images [B, C, H, W]) -> list[Tensor]``: one NCHW map per selected level, in level order
  (prefix tokens, where a backbone is asked for them, come after the maps);
* ``feature_info``: a :class:`FeatureInfo` (channels, reduction, module name) per returned map, and
  ``out_channels`` / ``reductions`` read from it;
* ``out_indices``: the selected level numbers, from :func:`resolve_out_indices` (negatives from the end;
  default every level with ``features_only``, else the last) through :meth:`Backbone.select_levels`;
* ``frozen_stages`` / ``norm_eval``: :meth:`Backbone.freeze` stops gradients of the modules that feed the
  first levels and :meth:`Backbone.train` keeps them (and, with ``norm_eval``, every BatchNorm) in eval mode.

:func:`bind_model_name` turns a backbone class whose first argument is a zoo model's name into a per-name
builder whose signature (and type hints) the config checker reads.

Example::

    class MyBackbone(Backbone):
        def __init__(self, features_only: bool = False, out_indices: list[int] | None = None) -> None:
            super().__init__()
            self.stages = nn.ModuleList(...)
            self.select_levels([FeatureInfo(64, 4, "stages.0"), ...], out_indices, features_only)

        def forward(self, x):
            ...
            return [maps[i] for i in self.out_indices]
"""

from __future__ import annotations

import functools
import inspect
import typing
from collections.abc import Callable, Iterable, Sequence
from typing import Any

from torch import nn

from visionstack.core.build import current_path
from visionstack.errors import ConfigError
from visionstack.models.features.layout import FeatureInfo

__all__ = ["Backbone", "bind_model_name", "resolve_out_indices"]


def resolve_out_indices(
    out_indices: int | Sequence[int] | None, num_levels: int, features_only: bool
) -> list[int]:
    """Turn user ``out_indices`` (negatives count from the end) into sorted, unique level numbers.

    ``None`` means every level with ``features_only`` (as in timm) and the last level otherwise.
    """
    if out_indices is None:
        return list(range(num_levels)) if features_only else [num_levels - 1]
    where = current_path("out_indices")
    if isinstance(out_indices, int):
        out_indices = [out_indices]
    if len(out_indices) == 0:
        raise ConfigError(where, "is empty: name at least one level (or leave it out)")
    resolved = []
    for i in out_indices:
        if not isinstance(i, int) or isinstance(i, bool):
            raise ConfigError(where, f"must hold integers, got {i!r}")
        if not -num_levels <= i < num_levels:
            raise ConfigError(
                where,
                f"entry {i} is out of range: this backbone has {num_levels} levels "
                f"(0..{num_levels - 1}, or -{num_levels}..-1)",
            )
        resolved.append(i % num_levels)
    if len(set(resolved)) != len(resolved):
        raise ConfigError(where, f"{list(out_indices)} names a level twice")
    return sorted(resolved)


class Backbone(nn.Module):
    """Base of every backbone (see the module docstring); subclasses implement ``forward`` and set
    ``feature_info`` / ``out_indices`` with :meth:`select_levels`."""

    feature_info: list[FeatureInfo]
    out_indices: list[int]
    frozen_stages: int = -1
    norm_eval: bool = False
    _frozen: tuple[nn.Module, ...] = ()

    @property
    def out_channels(self) -> list[int]:
        return [f.channels for f in self.feature_info]

    @property
    def reductions(self) -> list[int]:
        return [f.reduction for f in self.feature_info]

    def select_levels(
        self, levels: Sequence[FeatureInfo], out_indices: int | Sequence[int] | None, features_only: bool
    ) -> list[int]:
        """Choose the returned levels among ``levels``: sets ``out_indices`` and ``feature_info``."""
        self.out_indices = resolve_out_indices(out_indices, len(levels), features_only)
        self.feature_info = [levels[i] for i in self.out_indices]
        return self.out_indices

    def check_frozen_stages(self, frozen_stages: int, num_levels: int) -> int:
        """``frozen_stages`` if it is -1 (nothing frozen) or a level number, else a :class:`ConfigError`."""
        if isinstance(frozen_stages, bool) or not -1 <= frozen_stages < num_levels:
            raise ConfigError(
                current_path("frozen_stages"),
                f"must be in -1..{num_levels - 1} for {getattr(self, 'model_name', type(self).__name__)}, "
                f"got {frozen_stages!r}",
            )
        self.frozen_stages = int(frozen_stages)
        return self.frozen_stages

    def freeze(self, modules: Iterable[nn.Module], parameters: Iterable[nn.Parameter] = ()) -> None:
        """Stop the gradients of every parameter of ``modules`` (and of the loose ``parameters``, e.g. a
        class token on an enclosing module); the modules stay in eval mode while training (their
        BatchNorm statistics and dropout are fixed)."""
        modules = list(modules)
        for p in [*(p for m in modules for p in m.parameters()), *parameters]:
            p.requires_grad_(False)
        self._frozen = (*self._frozen, *modules)
        self.train(self.training)

    def train(self, mode: bool = True) -> Backbone:
        super().train(mode)
        if mode:
            for module in self._frozen:
                module.eval()
            if self.norm_eval:
                for m in self.modules():
                    if isinstance(m, nn.modules.batchnorm._BatchNorm):
                        m.eval()
        return self


def bind_model_name(cls: type, model_name: str, registered_name: str | None = None) -> Callable[..., Any]:
    """``functools.partial(cls, model_name)`` with ``cls``'s signature minus ``model_name``.

    Config validation (:func:`visionstack.core.build.check_part`) reads the signature and type hints, so
    unknown keys and wrongly typed values are reported before anything is built.
    """
    sig = inspect.signature(cls.__init__)
    params = [p for n, p in sig.parameters.items() if n not in ("self", "model_name")]
    hints = {
        k: v for k, v in typing.get_type_hints(cls.__init__, include_extras=True).items() if k != "model_name"
    }
    builder = functools.partial(cls, model_name)
    builder.__signature__ = sig.replace(parameters=params, return_annotation=cls)  # type: ignore[attr-defined]
    builder.__annotations__ = hints  # type: ignore[attr-defined]
    builder.__name__ = registered_name or model_name  # type: ignore[attr-defined]
    builder.__doc__ = cls.__doc__
    return builder
