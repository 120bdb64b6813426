"""Run configs: safe YAML / JSON / dict, ``_base_`` inheritance, ``--set`` overrides, validation.

Never evaluates config text: YAML is read with ``safe_load`` and every ``type`` resolves through its
kind's registry. Every problem raises :class:`ConfigError` with the full key path.
"""

from __future__ import annotations

import copy
import json
import re
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

import yaml

from visionstack.core.schema import validate_config
from visionstack.errors import ConfigError


class ConfigSafeLoader(yaml.SafeLoader):
    """``yaml.SafeLoader`` that also reads ``1e-3`` as a float (YAML 1.2), as users write learning rates."""


ConfigSafeLoader.add_implicit_resolver(
    "tag:yaml.org,2002:float",
    re.compile(
        r"""^(?:[-+]?(?:[0-9][0-9_]*)\.[0-9_]*(?:[eE][-+]?[0-9]+)?
        |[-+]?(?:[0-9][0-9_]*)(?:[eE][-+]?[0-9]+)
        |\.[0-9_]+(?:[eE][-+][0-9]+)?
        |[-+]?\.(?:inf|Inf|INF)
        |\.(?:nan|NaN|NAN))$""",
        re.X,
    ),
    list("-+0123456789."),
)


def safe_load(text: str) -> Any:
    """Parse YAML text without ever constructing Python objects."""
    return yaml.load(text, Loader=ConfigSafeLoader)


BASE_KEY = "_base_"
DELETE_KEY = "_delete_"


def _load_file(path: Path) -> dict[str, Any]:
    if not path.is_file():
        raise ConfigError(str(path), "config file not found")
    text = path.read_text(encoding="utf-8")
    try:
        data = json.loads(text) if path.suffix == ".json" else safe_load(text)
    except (yaml.YAMLError, json.JSONDecodeError) as err:
        raise ConfigError(
            str(path), f"not valid {'JSON' if path.suffix == '.json' else 'YAML'}: {err}"
        ) from None
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise ConfigError(
            str(path), f"a config must be a mapping at the top level, got {type(data).__name__}"
        )
    return data


def merge(base: Mapping[str, Any], child: Mapping[str, Any], path: str = "") -> dict[str, Any]:
    """Recursive merge: ``child`` wins; a child mapping with ``_delete_: true`` replaces the base subtree."""
    out = copy.deepcopy(dict(base))
    for key, value in child.items():
        sub = f"{path}.{key}" if path else str(key)
        if isinstance(value, Mapping):
            value = dict(value)
            delete = value.pop(DELETE_KEY, False)
            if not isinstance(delete, bool):
                raise ConfigError(f"{sub}.{DELETE_KEY}", f"expected true or false, got {delete!r}")
            if not delete and isinstance(out.get(key), Mapping):
                out[key] = merge(out[key], value, sub)
                continue
            out[key] = _strip_delete(value, sub)
        else:
            out[key] = copy.deepcopy(value)
    return out


def _strip_delete(value: Any, path: str) -> Any:
    if isinstance(value, Mapping):
        return {k: _strip_delete(v, f"{path}.{k}") for k, v in value.items() if k != DELETE_KEY}
    if isinstance(value, list):
        return [_strip_delete(v, f"{path}.{i}") for i, v in enumerate(value)]
    return value


def _resolve(data: dict[str, Any], origin: Path | None, stack: tuple[Path, ...]) -> dict[str, Any]:
    bases = data.pop(BASE_KEY, None)
    if bases is None:
        return _strip_delete(data, "")
    if isinstance(bases, str):
        bases = [bases]
    if not isinstance(bases, list) or not all(isinstance(b, str) for b in bases):
        raise ConfigError(BASE_KEY, f"expected a path or a list of paths, got {bases!r}")
    merged: dict[str, Any] = {}
    for i, base in enumerate(bases):
        base_path = Path(base)
        if not base_path.is_absolute():
            base_path = (origin.parent if origin else Path.cwd()) / base_path
        base_path = base_path.resolve()
        if base_path in stack:
            chain = " -> ".join(str(p) for p in (*stack, base_path))
            raise ConfigError(f"{BASE_KEY}.{i}", f"cyclic _base_ inheritance: {chain}")
        if not base_path.is_file():
            raise ConfigError(f"{BASE_KEY}.{i}", f"base config {base!r} not found (looked at {base_path})")
        merged = merge(merged, _resolve(_load_file(base_path), base_path, (*stack, base_path)))
    return merge(merged, data)


def parse_override(text: str) -> tuple[list[str], Any]:
    """``a.b.0.c=value`` -> (["a", "b", "0", "c"], value parsed as a YAML scalar or flow collection)."""
    if not isinstance(text, str) or "=" not in text:
        raise ConfigError("--set", f"override {text!r} must look like key.path=value")
    key, raw = text.split("=", 1)
    key = key.strip()
    parts = key.split(".")
    if not key or any(not p.strip() for p in parts):
        raise ConfigError("--set", f"override {text!r} has an empty key segment")
    try:
        value = safe_load(raw) if raw.strip() else ""
    except yaml.YAMLError as err:
        raise ConfigError(key, f"override value {raw!r} is not valid YAML: {err}") from None
    return parts, value


def set_by_path(cfg: dict[str, Any], parts: list[str], value: Any) -> None:
    """Set ``cfg[a][b][0][c] = value``, creating mappings on the way; list indices must exist."""
    node: Any = cfg
    for depth, part in enumerate(parts[:-1]):
        path = ".".join(parts[: depth + 1])
        if isinstance(node, list):
            node = node[_list_index(node, part, path)]
        elif isinstance(node, dict):
            if part not in node or node[part] is None:
                node[part] = {}
            node = node[part]
        else:
            raise ConfigError(path, f"cannot set a key inside a {type(node).__name__} value")
        if not isinstance(node, (dict, list)):
            raise ConfigError(path, f"is a {type(node).__name__} ({node!r}), not a mapping or list")
    last = parts[-1]
    if isinstance(node, list):
        node[_list_index(node, last, ".".join(parts))] = value
    else:
        node[last] = value


def _list_index(node: list, part: str, path: str) -> int:
    try:
        index = int(part)
    except ValueError:
        raise ConfigError(path, f"{part!r} is not a list index (the list has {len(node)} items)") from None
    if not -len(node) <= index < len(node):
        raise ConfigError(path, f"index {index} is out of range for a list of {len(node)} items")
    return index


def apply_overrides(cfg: dict[str, Any], overrides: Iterable[str]) -> dict[str, Any]:
    """Return a copy of ``cfg`` with ``key.path=value`` overrides applied in order."""
    out = copy.deepcopy(cfg)
    for text in overrides or ():
        parts, value = parse_override(text)
        set_by_path(out, parts, value)
    return out


def load_config(
    source: str | Path | Mapping[str, Any], overrides: Iterable[str] = (), validate: bool = True
) -> dict[str, Any]:
    """Load a run config from a YAML/JSON file or a dict, resolve ``_base_``, apply overrides, validate.

    The returned dict records its origin under ``_source_`` when loaded from a file.
    """
    if isinstance(source, Mapping):
        cfg = _resolve(copy.deepcopy(dict(source)), None, ())
        origin = None
    else:
        path = Path(source).resolve()
        cfg = _resolve(_load_file(path), path, (path,))
        origin = str(path)
    cfg = apply_overrides(cfg, overrides)
    if validate:
        validate_config(cfg)
    if origin:
        cfg.setdefault("_source_", origin)
    return cfg


def dump_config(cfg: Mapping[str, Any]) -> str:
    """The config as YAML text (keys in insertion order)."""
    return yaml.safe_dump(_plain(cfg), sort_keys=False, default_flow_style=None, width=110)


def _plain(value: Any) -> Any:
    if isinstance(value, Mapping):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    if isinstance(value, Path):
        return str(value)
    return value
