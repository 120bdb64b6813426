"""Backbones: every torchvision classifier (``torchvision.py``), every timm model (``timm.py``, as
``timm/<name>``) and visionstack's own (one file each, e.g. ``resnet_bc.py``).

The registry imports these modules on its first lookup; this package itself stays import-light.
:func:`bind_model_name` turns a backbone class whose first argument is the zoo model's name into a
per-name builder whose signature (and type hints) the config builder checks.
"""

from __future__ import annotations

import functools
import inspect
import typing
from collections.abc import Callable
from typing import Any

__all__ = ["bind_model_name"]


def bind_model_name(cls: type, model_name: str, registered_name: str | None = None) -> Callable[..., Any]:
    """``functools.partial(cls, model_name)`` with ``cls``'s signature minus ``model_name``.

    Config validation (``visionstack.models.builder.check_part``) reads the signature and type hints, so
    unknown keys and wrongly typed values are reported before anything is built.
    """
    sig = inspect.signature(cls.__init__)
    params = [p for n, p in sig.parameters.items() if n not in ("self", "model_name")]
    hints = {k: v for k, v in typing.get_type_hints(cls.__init__).items() if k != "model_name"}
    builder = functools.partial(cls, model_name)
    builder.__signature__ = sig.replace(parameters=params, return_annotation=cls)  # type: ignore[attr-defined]
    builder.__annotations__ = hints  # type: ignore[attr-defined]
    builder.__name__ = registered_name or model_name  # type: ignore[attr-defined]
    builder.__doc__ = cls.__doc__
    return builder
