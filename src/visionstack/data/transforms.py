"""Transforms by name (every public ``torchvision.transforms.v2`` transform) and the train / val presets.

Config form: a list of part configs, e.g. ``[{type: RandomResizedCrop, size: 224}, {type: RandomHorizontalFlip},
{type: ToImage}, {type: ToDtype, dtype: float32, scale: true}, {type: Normalize, mean: [...], std: [...]}]``.
Names match case- and separator-insensitively (``random_resized_crop``); ``interpolation`` takes a name
(``bilinear``, ``bicubic``, ...), ``dtype`` a torch dtype name; ``Compose`` / ``RandomApply`` /
``RandomChoice`` / ``RandomOrder`` take nested lists under ``transforms``. No import strings: only
registered names resolve (``Lambda`` is not exposed).

Presets (``preset`` in the ``data`` section):

- ``fgvc``: train ``Resize((r, r))`` -> ``RandomCrop(s)`` -> flip; val ``Resize((r, r))`` -> ``CenterCrop(s)``
  with ``r = resize_size`` (default ``round(s * 550 / 448)``: 550 for 448);
- ``imagenet``: train ``RandomResizedCrop(s)`` -> flip; val ``Resize(floor(s / crop_pct))`` -> ``CenterCrop(s)``
  (``resize_size`` overrides the val resize);
- ``simple``: ``Resize((s, s))`` for both, no flip (digits and other orientation-sensitive sets).

All end with ``ToImage`` -> ``ToDtype(float32, scale=True)`` -> ``Normalize(mean, std)``. Defaults for
``image_size``, ``mean``, ``std``, ``interpolation`` and ``crop_pct`` come from a backbone's timm-style
``pretrained_cfg`` when given; values in the ``data`` section win.
"""

from __future__ import annotations

import inspect
import math
from collections.abc import Mapping, Sequence
from typing import Any

import torch
from torchvision.transforms import InterpolationMode, v2

from visionstack.core.build import build_part, check_keys, closest, config_path
from visionstack.core.registry import TRANSFORMS
from visionstack.errors import ConfigError

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
PRESETS = ("fgvc", "imagenet", "simple")
_EXCLUDED = {"Transform", "Lambda"}  # the base class; Lambda would need code from config
_TENSOR_CONVERSIONS = (v2.ToImage, v2.PILToTensor, v2.ToTensor)
_INTERPOLATIONS = [m.value for m in InterpolationMode]


def _register_torchvision() -> None:
    for name in sorted(dir(v2)):
        obj = getattr(v2, name)
        if inspect.isclass(obj) and issubclass(obj, v2.Transform) and name not in _EXCLUDED:
            TRANSFORMS.register(name)(obj)  # re-adding the same class is a no-op


_register_torchvision()


def draws_torch_rng_only(transform: Any) -> bool:
    """Whether ``transform`` draws its randomness from torch's default generator alone.

    True for ``None`` and for transforms of ``torchvision.transforms.v2`` (their random parameters come from
    ``torch.rand`` / ``torch.randint`` / ``torch.empty().uniform_()``; none uses python's ``random`` or numpy),
    with containers (``Compose``, ``RandomApply``, ``RandomChoice``, ``RandomOrder``) checked member by member.
    False for anything else -- ``Lambda`` (user code), user-registered transforms, the older
    ``torchvision.transforms`` (whose ``RandomOrder`` / ``RandomChoice`` use python's ``random``), timm's.
    """
    if transform is None:
        return True
    if (
        not isinstance(transform, v2.Transform)
        or isinstance(transform, v2.Lambda)
        or not type(transform).__module__.startswith("torchvision.transforms.v2")
    ):
        return False
    members = getattr(transform, "transforms", None)
    return members is None or all(draws_torch_rng_only(t) for t in members)


def interpolation_mode(value: Any, path: str = "interpolation") -> InterpolationMode:
    """``"bilinear"`` / ``"bicubic"`` / ... or an :class:`InterpolationMode` -> :class:`InterpolationMode`."""
    if isinstance(value, InterpolationMode):
        return value
    if isinstance(value, str) and value.lower() in _INTERPOLATIONS:
        return InterpolationMode(value.lower())
    raise ConfigError(
        path,
        f"unknown interpolation {value!r}{closest(str(value).lower(), _INTERPOLATIONS)} "
        f"(one of {', '.join(_INTERPOLATIONS)})",
    )


def _dtype(value: Any, path: str) -> Any:
    if isinstance(value, str):
        dtype = getattr(torch, value.removeprefix("torch."), None)
        if not isinstance(dtype, torch.dtype):
            raise ConfigError(path, f"{value!r} is not a torch dtype name (e.g. float32, uint8)")
        return dtype
    return value


def _prepare(cfg: Any, path: str) -> Any:
    """Turn config values into what torchvision expects: names -> enums / dtypes, nested lists -> transforms."""
    if not isinstance(cfg, Mapping):
        return cfg
    out = dict(cfg)
    for key, value in cfg.items():
        sub = f"{path}.{key}"
        if key == "interpolation" and value is not None:
            out[key] = interpolation_mode(value, sub)
        elif key == "dtype":
            out[key] = _dtype(value, sub)
        elif key == "transforms" and isinstance(value, (list, tuple)):
            out[key] = list(build_transforms(value, path=sub).transforms)
    return out


def build_transforms(cfgs: Sequence[Any] | None, path: str = "transforms") -> v2.Compose:
    """A ``Compose`` of the transforms named in ``cfgs`` (part configs or names); errors name the key path."""
    if cfgs is None:
        return v2.Compose([])
    if not isinstance(cfgs, (list, tuple)):
        raise ConfigError(path, f"expected a list of transforms, got {type(cfgs).__name__} ({cfgs!r})")
    built = []
    with config_path(path):
        for i, cfg in enumerate(cfgs):
            if not isinstance(cfg, (Mapping, str)):
                raise ConfigError(f"{path}.{i}", f"expected a transform config or name, got {cfg!r}")
            built.append(build_part(TRANSFORMS, _prepare(cfg, f"{path}.{i}"), i))
    return v2.Compose(built)


def to_tensor_transforms(
    mean: Sequence[float] = IMAGENET_MEAN, std: Sequence[float] = IMAGENET_STD
) -> list[Any]:
    """``ToImage`` -> ``ToDtype(float32, scale=True)`` -> ``Normalize(mean, std)``."""
    return [v2.ToImage(), v2.ToDtype(torch.float32, scale=True), v2.Normalize(list(mean), list(std))]


def _size(value: Any, path: str) -> int | tuple[int, int]:
    if isinstance(value, int) and not isinstance(value, bool) and value > 0:
        return value
    if (
        isinstance(value, (list, tuple))
        and len(value) == 2
        and all(isinstance(v, int) and v > 0 for v in value)
    ):
        return (int(value[0]), int(value[1]))
    raise ConfigError(path, f"expected a positive int or [height, width], got {value!r}")


def _pair(size: int | tuple[int, int]) -> tuple[int, int]:
    return (size, size) if isinstance(size, int) else size


def _fgvc_resize(image_size: int | tuple[int, int], resize_size: Any) -> tuple[int, int]:
    h, w = _pair(image_size)
    rh, rw = (
        _pair(_size(resize_size, "resize_size"))
        if resize_size is not None
        else (round(h * 550 / 448), round(w * 550 / 448))
    )
    if rh < h or rw < w:
        raise ConfigError("resize_size", f"{resize_size!r} is smaller than image_size {image_size!r}")
    return rh, rw


def _check_preset(preset: str) -> str:
    if preset not in PRESETS:
        raise ConfigError(
            "preset", f"unknown preset {preset!r}{closest(preset, PRESETS)} (one of {', '.join(PRESETS)})"
        )
    return preset


def build_train_transforms(
    image_size: int | Sequence[int],
    resize_size: int | Sequence[int] | None = None,
    mean: Sequence[float] = IMAGENET_MEAN,
    std: Sequence[float] = IMAGENET_STD,
    preset: str = "fgvc",
    interpolation: str | InterpolationMode = "bilinear",
    hflip: float | None = None,
    scale: tuple[float, float] = (0.08, 1.0),
) -> v2.Compose:
    """Training pipeline of ``preset`` (see the module docstring); ``hflip`` defaults to 0.5 (0 for simple)."""
    size = _size(image_size, "image_size")
    mode = interpolation_mode(interpolation)
    preset = _check_preset(preset)
    if preset == "fgvc":
        steps: list[Any] = [
            v2.Resize(_fgvc_resize(size, resize_size), interpolation=mode),
            v2.RandomCrop(size),
        ]
    elif preset == "imagenet":
        steps = [v2.RandomResizedCrop(size, scale=tuple(scale), interpolation=mode)]
    else:
        steps = [v2.Resize(_pair(size), interpolation=mode)]
    flip = (0.0 if preset == "simple" else 0.5) if hflip is None else float(hflip)
    if flip > 0:
        steps.append(v2.RandomHorizontalFlip(flip))
    return v2.Compose(steps + to_tensor_transforms(mean, std))


def build_val_transforms(
    image_size: int | Sequence[int],
    resize_size: int | Sequence[int] | None = None,
    mean: Sequence[float] = IMAGENET_MEAN,
    std: Sequence[float] = IMAGENET_STD,
    preset: str = "fgvc",
    interpolation: str | InterpolationMode = "bilinear",
    crop_pct: float = 0.875,
) -> v2.Compose:
    """Evaluation pipeline of ``preset``: deterministic resize and center crop."""
    size = _size(image_size, "image_size")
    mode = interpolation_mode(interpolation)
    preset = _check_preset(preset)
    if preset == "fgvc":
        steps = [v2.Resize(_fgvc_resize(size, resize_size), interpolation=mode), v2.CenterCrop(size)]
    elif preset == "imagenet":
        if resize_size is not None:
            resize: Any = _size(resize_size, "resize_size")
        elif isinstance(size, int):
            resize = math.floor(size / crop_pct)
        else:
            resize = tuple(math.floor(s / crop_pct) for s in size)
        steps = [v2.Resize(resize, interpolation=mode), v2.CenterCrop(size)]
    else:
        steps = [v2.Resize(_pair(size), interpolation=mode)]
    return v2.Compose(steps + to_tensor_transforms(mean, std))


_TRANSFORM_KEYS = ("train", "val")


def _explicit(data_cfg: Mapping[str, Any], train: bool) -> tuple[Any, str]:
    key = "train_transforms" if train else "val_transforms"
    if data_cfg.get(key) is not None:
        return data_cfg[key], f"data.{key}"
    shared = data_cfg.get("transforms")
    if isinstance(shared, Mapping):
        check_keys(shared, _TRANSFORM_KEYS, "data.transforms")
        role = "train" if train else "val"
        return shared.get(role), f"data.transforms.{role}"
    return shared, "data.transforms"


def transforms_from_data_cfg(
    data_cfg: Mapping[str, Any], train: bool, pretrained_cfg: Mapping[str, Any] | None = None
) -> v2.Compose:
    """The train or val pipeline of a ``data`` section.

    Explicit lists win: ``train_transforms`` / ``val_transforms``, else ``transforms`` (one list for both, or
    ``{train: [...], val: [...]}``); a list without ``ToImage`` / ``PILToTensor`` / ``ToTensor`` gets
    ``ToImage, ToDtype(float32, scale=True), Normalize(mean, std)`` appended. Otherwise the ``preset``
    (default ``fgvc`` when ``resize_size`` is set, else ``imagenet``) is built from ``image_size``,
    ``resize_size``, ``mean``, ``std``, ``interpolation``, with ``pretrained_cfg`` supplying the defaults.
    """
    pre = dict(pretrained_cfg or {})

    def pick(key: str, fallback: Any) -> Any:
        return data_cfg.get(key) if data_cfg.get(key) is not None else pre.get(key, fallback)

    mean = list(pick("mean", IMAGENET_MEAN))
    std = list(pick("std", IMAGENET_STD))
    explicit, path = _explicit(data_cfg, train)
    if explicit is not None:
        composed = build_transforms(explicit, path=path)
        if not any(isinstance(t, _TENSOR_CONVERSIONS) for t in composed.transforms):
            composed = v2.Compose(list(composed.transforms) + to_tensor_transforms(mean, std))
        return composed
    image_size = data_cfg.get("image_size")
    if image_size is None:
        input_size = pre.get("input_size")
        image_size = tuple(input_size[-2:]) if input_size else 224
        image_size = (
            image_size[0] if isinstance(image_size, tuple) and image_size[0] == image_size[1] else image_size
        )
    preset = data_cfg.get("preset") or ("fgvc" if data_cfg.get("resize_size") is not None else "imagenet")
    interpolation = interpolation_mode(pick("interpolation", "bilinear"), "data.interpolation")
    try:
        if train:
            return build_train_transforms(
                image_size, data_cfg.get("resize_size"), mean, std, preset, interpolation
            )
        return build_val_transforms(
            image_size,
            data_cfg.get("resize_size"),
            mean,
            std,
            preset,
            interpolation,
            crop_pct=float(pre.get("crop_pct", 0.875)),
        )
    except ConfigError as err:
        raise ConfigError(f"data.{err.path}", err.message) from None
