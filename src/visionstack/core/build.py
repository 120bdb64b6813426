"""Build parts from config dicts through their registries, checking arguments before anything is built.

A part config is a mapping with ``type`` (or just the type name as a string). Its other keys must be
parameters of the registered builder; required parameters must be given, simple annotated types are
checked. Arguments the parent part supplies (``in_channels``, ``num_classes``, ``backbone``) are
``provided`` and may be omitted; an explicit ``in_channels`` is checked against the wired value.

Only a config mistake is a :class:`ConfigError`: a part that rejects a value raises one itself at
``current_path(key)``. Any other exception raised while a part is built (a bug in a user's own head, an
error of torchvision or timm) keeps its type and traceback; the config key path of the part being built is
attached as a note.
"""

from __future__ import annotations

import contextlib
import contextvars
import copy
import dataclasses
import difflib
import inspect
import types
import typing
from collections.abc import Iterable, Iterator, Mapping, Sequence
from typing import Any

from visionstack.core.registry import BACKBONES, ENCODERS, HEADS, LOSSES, METHODS, NECKS, Registry
from visionstack.errors import ConfigError, UnknownNameError

#: Parameters of a method / classifier whose values are part configs of a kind.
PART_PARAMS: dict[str, Registry] = {
    "backbone": BACKBONES,
    "encoder": ENCODERS,
    "neck": NECKS,
    "head": HEADS,
    "loss": LOSSES,
    "losses": LOSSES,
    "aux_loss": LOSSES,
}
DEFAULT_MODEL_TYPE = "image_classifier"
_PATH: contextvars.ContextVar[str] = contextvars.ContextVar("visionstack_cfg_path", default="")


def join(*parts: str | int) -> str:
    return ".".join(str(p) for p in parts if p != "")


@contextlib.contextmanager
def config_path(key: str | int) -> Iterator[str]:
    """Nest the key path used in error messages: ``with config_path("head"): ...``."""
    path = join(_PATH.get(), key)
    token = _PATH.set(path)
    try:
        yield path
    finally:
        _PATH.reset(token)


def invalid(key: str, message: str) -> ConfigError:
    """A :class:`ConfigError` at ``key`` of the part being built (``invalid("dropout", "must be < 1")``
    raised inside a head's constructor reads ``model.head.dropout: must be < 1``)."""
    return ConfigError(current_path(key), message)


@contextlib.contextmanager
def root_path() -> Iterator[None]:
    """Start key paths afresh (``model`` of a whole model config, not nested in another part's path)."""
    token = _PATH.set("")
    try:
        yield
    finally:
        _PATH.reset(token)


def current_path(key: str | int = "") -> str:
    return join(_PATH.get(), key)


def closest(name: str, options: Iterable[str]) -> str:
    """`` Did you mean 'x'?`` for the closest option, or an empty string."""
    match = difflib.get_close_matches(str(name), [str(o) for o in options], n=1, cutoff=0.5)
    return f" Did you mean {match[0]!r}?" if match else ""


def check_keys(section: Mapping[str, Any], allowed: Iterable[str], path: str) -> None:
    """Raise for the first key of ``section`` not in ``allowed``, naming the closest valid key."""
    allowed = set(allowed)
    for key in section:
        if key not in allowed:
            sub = f"{path}.{key}" if path else str(key)
            raise ConfigError(
                sub, f"unknown key.{closest(key, allowed)} Valid keys: {', '.join(sorted(allowed))}"
            )


def _as_part_cfg(cfg: Any, path: str) -> dict[str, Any]:
    if isinstance(cfg, str):
        return {"type": cfg}
    if not isinstance(cfg, Mapping):
        raise ConfigError(path, f"expected a part config (a mapping with 'type', or a name), got {cfg!r}")
    if "type" not in cfg:
        raise ConfigError(join(path, "type"), "missing: every part needs a 'type'")
    return dict(cfg)


def _lookup(registry: Registry, name: Any, path: str) -> Any:
    try:
        return registry.get(name)
    except UnknownNameError as err:
        raise UnknownNameError(join(path, "type"), err.message) from None


def _signature(builder: Any) -> inspect.Signature | None:
    target = builder.__init__ if inspect.isclass(builder) else builder
    try:
        sig = inspect.signature(target)
    except (TypeError, ValueError):
        return None
    params = list(sig.parameters.values())
    if inspect.isclass(builder) and params and params[0].name == "self":
        sig = sig.replace(parameters=params[1:])
    return sig


@dataclasses.dataclass(frozen=True)
class Range:
    """A bound on a number, used inside ``typing.Annotated`` (``Annotated[int, Range(1)]``): config checks
    (part signatures and the run-config schema) refuse values outside it before anything is built."""

    min: float | None = None
    max: float | None = None
    max_open: bool = False  # ``max`` itself is excluded

    def accepts(self, value: Any) -> bool:
        if not isinstance(value, (int, float)) or isinstance(value, bool) or value != value:  # NaN
            return False
        if self.min is not None and value < self.min:
            return False
        return self.max is None or (value < self.max if self.max_open else value <= self.max)

    def __str__(self) -> str:
        low = f">= {self.min:g}" if self.min is not None else ""
        high = f"{'<' if self.max_open else '<='} {self.max:g}" if self.max is not None else ""
        return " and ".join(x for x in (low, high) if x)


#: common bounded types for part signatures and the run-config schema
PositiveInt = typing.Annotated[int, Range(min=1)]
NonNegativeInt = typing.Annotated[int, Range(min=0)]
NonNegativeFloat = typing.Annotated[float, Range(min=0)]
Fraction = typing.Annotated[float, Range(min=0, max=1)]


def _hints(builder: Any) -> dict[str, Any]:
    target = builder.__init__ if inspect.isclass(builder) else builder
    try:
        return typing.get_type_hints(target, include_extras=True)
    except Exception:  # unresolvable annotations: skip type checks rather than fail
        return {}


def matches_hint(value: Any, hint: Any) -> bool:
    """Whether a config value fits a simple annotation; unknown annotations accept anything."""
    if hint is Any or hint is inspect.Parameter.empty:
        return True
    origin = typing.get_origin(hint)
    args = typing.get_args(hint)
    if origin is typing.Annotated:
        return matches_hint(value, args[0]) and all(
            m.accepts(value) for m in hint.__metadata__ if isinstance(m, Range)
        )
    if origin in (typing.Union, types.UnionType):
        return any(matches_hint(value, a) for a in args)
    if origin is typing.Literal:
        return value in args
    if hint is type(None):
        return value is None
    if hint is bool:
        return isinstance(value, bool)
    if hint is int:
        return isinstance(value, int) and not isinstance(value, bool)
    if hint is float:
        return isinstance(value, (int, float)) and not isinstance(value, bool)
    if hint is str:
        return isinstance(value, str)
    base = origin or hint
    if base in (list, tuple, Sequence, typing.Sequence) or base is typing.List:  # noqa: UP006
        if not isinstance(value, (list, tuple)):
            return False
        inner = [a for a in args if a is not Ellipsis]
        return not inner or len(set(inner)) != 1 or all(matches_hint(v, inner[0]) for v in value)
    if base in (dict, Mapping, typing.Mapping):
        return isinstance(value, Mapping)
    return True


def describe_hint(hint: Any) -> str:
    """A type hint as a user reads it: ``one of 'a', 'b'`` for a Literal, ``int | None`` for a union,
    ``int >= 1`` for a bounded number."""
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if origin is typing.Annotated:
        bounds = " and ".join(str(m) for m in hint.__metadata__ if isinstance(m, Range))
        return f"{describe_hint(args[0])} {bounds}".strip()
    if origin is typing.Literal:
        return "one of " + ", ".join(repr(a) for a in args)
    if origin in (typing.Union, types.UnionType):
        return " | ".join(describe_hint(a) for a in args)
    if origin is not None and args:
        name = getattr(origin, "__name__", str(origin))
        return f"{name}[{', '.join(describe_hint(a) for a in args)}]"
    if hint is type(None):
        return "None"
    return getattr(hint, "__name__", None) or str(hint).replace("typing.", "")


def check_part(registry: Registry, cfg: Any, path: str, provided: Sequence[str] = ()) -> dict[str, Any]:
    """Validate a part config without building it; returns the normalized config."""
    cfg = _as_part_cfg(cfg, path)
    builder = _lookup(registry, cfg["type"], path)
    sig = _signature(builder)
    if sig is None:
        return cfg
    params = sig.parameters
    var_kw = any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params.values())
    named = [n for n, p in params.items() if p.kind not in (p.VAR_KEYWORD, p.VAR_POSITIONAL)]
    kwargs = {k: v for k, v in cfg.items() if k != "type"}
    if not var_kw:
        check_keys(kwargs, named, path)
    missing = [
        n
        for n, p in params.items()
        if p.default is p.empty
        and p.kind not in (p.VAR_KEYWORD, p.VAR_POSITIONAL)
        and n not in kwargs
        and n not in provided
    ]
    if missing:
        raise ConfigError(
            join(path, missing[0]), f"required argument of {registry.kind} {cfg['type']!r} is missing"
        )
    hints = _hints(builder)
    for key, value in kwargs.items():
        sub = join(path, key)
        if key in PART_PARAMS and value is not None:
            _check_nested(PART_PARAMS[key], value, sub, builder)
            continue
        hint = hints.get(key)
        if hint is not None and not matches_hint(value, hint):
            raise ConfigError(sub, f"expected {describe_hint(hint)}, got {type(value).__name__} ({value!r})")
    return cfg


def _check_nested(registry: Registry, value: Any, path: str, parent: Any) -> None:
    provided = getattr(parent, "provides", {}).get(registry.kind, ("in_channels", "num_classes", "backbone"))
    if isinstance(value, (list, tuple)):
        for i, item in enumerate(value):
            check_part(registry, item, join(path, i), provided)
    elif isinstance(value, (Mapping, str)) or not hasattr(value, "forward"):
        check_part(registry, value, path, provided)


def validate_model_config(cfg: Any, path: str = "model") -> dict[str, Any]:
    """Check a model config (a classifier or a method) and all its parts; nothing is built."""
    if isinstance(cfg, Mapping) and "type" not in cfg:
        cfg = {"type": DEFAULT_MODEL_TYPE, **cfg}
    return check_part(METHODS, cfg, path, provided=("num_classes",))


def build_part(
    registry: Registry, cfg: Any, key: str | int = "", provided: Mapping[str, Any] | None = None
) -> Any:
    """Build a part from its config. ``provided`` values fill parameters the config left out.

    A provided ``in_channels`` that the config also sets must agree with it.
    """
    if cfg is None:
        return None
    if hasattr(cfg, "forward") and not isinstance(cfg, Mapping):
        return cfg  # an already-built module
    with config_path(key) as path:
        provided = dict(provided or {})
        cfg = check_part(registry, copy.deepcopy(cfg), path, tuple(provided))
        builder = _lookup(registry, cfg["type"], path)
        kwargs = {k: v for k, v in cfg.items() if k != "type"}
        sig = _signature(builder)
        accepts_any = sig is None or any(p.kind is p.VAR_KEYWORD for p in sig.parameters.values())
        for name, value in provided.items():
            if name in kwargs:
                if (
                    name == "in_channels"
                    and value is not None
                    and _channels(kwargs[name]) != _channels(value)
                ):
                    raise ConfigError(
                        join(path, name),
                        f"is {kwargs[name]!r} but the previous part outputs {value!r} channels; "
                        "leave it out to wire it automatically",
                    )
                continue
            if accepts_any and name not in (sig.parameters if sig else {}):
                continue
            if sig is not None and name in sig.parameters:
                kwargs[name] = value
        try:
            return builder(**kwargs)
        except ConfigError:
            raise
        except Exception as err:  # a bug or a library's own error: its type and traceback stay
            if not getattr(err, "_visionstack_path", None):  # the innermost part names itself
                err._visionstack_path = path  # type: ignore[attr-defined]
                err.add_note(
                    f"while building {registry.kind} {cfg['type']!r} at config key {path or 'model'}"
                )
            raise


def _channels(value: Any) -> Any:
    return list(value) if isinstance(value, (list, tuple)) else value
