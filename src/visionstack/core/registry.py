"""Closed registries of named parts: lookup by name only, never by import path.

Names match case- and separator-insensitively (``GlobalAvgPool`` == ``global_avg_pool`` ==
``global-avg-pool``). An unknown name raises :class:`UnknownNameError` that names the kind, suggests the
closest names and says how to list them. Registries fill lazily: the modules that register parts are
imported on the first lookup, so ``import visionstack`` stays light.
"""

from __future__ import annotations

import difflib
import fnmatch
import importlib
import re
from collections.abc import Callable, Iterable
from typing import Any, TypeVar

from visionstack.errors import UnknownNameError

T = TypeVar("T")
_SEPARATORS = re.compile(r"[\s_\-.]+")


def normalize(name: str) -> str:
    """The lookup key of a name: lower case, separators (``_ - . space``) removed."""
    return _SEPARATORS.sub("", str(name)).lower()


class Registry:
    """Names of one kind of part (backbone, head, ...) mapped to their builders (classes or functions).

    Everything enters through the :meth:`register` decorator (also applied to a library's classes:
    ``OPTIMIZERS.register("sgd")(torch.optim.SGD)``), or, for an open-ended family whose names are too many
    to register one by one (``timm/<model>``), through :meth:`register_family` on a resolver function.
    ``package`` is imported on the first lookup; its ``__init__`` imports the modules that register.
    """

    def __init__(self, kind: str, package: str | None = None) -> None:
        self.kind = kind
        self._package = package
        self._loaded = False
        self._entries: dict[str, tuple[str, Any]] = {}  # normalized -> (canonical name, builder)
        self._canonical: dict[str, Any] = {}  # canonical name -> builder
        self._aliases: dict[str, str] = {}  # alias -> canonical name
        self._exact: dict[str, tuple[str, Any]] = {}  # exact spelling -> (canonical name, builder)
        self._ambiguous: dict[str, list[str]] = {}  # normalized key -> names that differ only in separators
        self._resolvers: list[Callable[[str], Any]] = []
        self._listers: list[Callable[[], list[str]]] = []

    # -- registration -----------------------------------------------------------------------------
    def register(
        self, name: str | None = None, *, aliases: Iterable[str] = (), force: bool = False
    ) -> Callable[[T], T]:
        """Decorator that registers a class or function under ``name`` (default: its ``__name__``)."""

        def decorator(obj: T) -> T:
            self._add(name or obj.__name__, obj, aliases=aliases, force=force)
            return obj

        return decorator

    def register_family(self, names: Callable[[], Iterable[str]]) -> Callable[[T], T]:
        """Decorator for a resolver ``name -> builder | None`` of an open-ended family; ``names()`` lists the
        family for :meth:`list` and for did-you-mean suggestions."""

        def decorator(resolver: T) -> T:
            self._resolvers.append(resolver)  # type: ignore[arg-type]
            self._listers.append(lambda: list(names()))
            return resolver

        return decorator

    def _add(self, name: str, obj: Any, *, aliases: Iterable[str] = (), force: bool = False) -> None:
        """Register ``obj`` under ``name`` and ``aliases``; a name already taken raises unless ``force``."""
        for label in (name, *aliases):
            key = normalize(label)
            if not key:
                raise ValueError(f"empty {self.kind} name")
            taken = self._entries.get(key)
            if taken is not None and taken[1] is not obj and not force:
                if label != name or normalize(taken[0]) != key or taken[0] == name:
                    raise ValueError(f"{self.kind} name {label!r} is already registered for {taken[0]!r}")
                # two names that differ only in separators (regnet_x_1_6gf / regnet_x_16gf): exact spelling only
                self._ambiguous.setdefault(key, [taken[0]]).append(name)
            else:
                self._entries[key] = (name, obj)
            self._exact[label] = (name, obj)
        self._canonical[name] = obj
        for alias in aliases:
            self._aliases[alias] = name

    # -- lookup -----------------------------------------------------------------------------------
    def _load(self) -> None:
        if not self._loaded:
            self._loaded = True
            if self._package is not None:
                importlib.import_module(self._package)

    def __contains__(self, name: object) -> bool:
        try:
            self.get(str(name))
        except UnknownNameError:
            return False
        return True

    def canonical_name(self, name: str) -> str:
        """The registered name behind ``name`` or one of its aliases."""
        self._load()
        entry = self._lookup(name)
        if entry is not None:
            return entry[0]
        self.get(name)
        return name

    def _lookup(self, name: str) -> tuple[str, Any] | None:
        """The entry for ``name``: its exact spelling first, then the separator-insensitive key."""
        entry = self._exact.get(name)
        if entry is not None:
            return entry
        key = normalize(name)
        if key in self._ambiguous:
            raise UnknownNameError(
                "",
                f"{self.kind} name {name!r} is ambiguous; write one of "
                f"{', '.join(self._ambiguous[key])} exactly",
            )
        return self._entries.get(key)

    def get(self, name: str) -> Any:
        """The builder registered as ``name``; unknown names raise with suggestions."""
        self._load()
        if not isinstance(name, str):
            raise UnknownNameError("", f"a {self.kind} name must be a string, got {type(name).__name__}")
        entry = self._lookup(name)
        if entry is not None:
            return entry[1]
        for resolver in self._resolvers:
            obj = resolver(name)
            if obj is not None:
                return obj
        raise UnknownNameError("", self._unknown_message(name))

    def _unknown_message(self, name: str) -> str:
        names = self.names(include_dynamic=True)
        by_key: dict[str, str] = {}
        for n in names:
            by_key.setdefault(normalize(n), n)
        close = difflib.get_close_matches(normalize(name), list(by_key), n=5, cutoff=0.6)
        hint = f" Did you mean: {', '.join(by_key[c] for c in close)}?" if close else ""
        return (
            f"unknown {self.kind} {name!r}.{hint} {len(names)} {self.kind}s exist; list them with "
            f"`visionstack list {self.kind}` or `visionstack.list_models('*', kind='{self.kind}')`."
        )

    def names(self, include_aliases: bool = False, include_dynamic: bool = False) -> list[str]:
        """Registered names (sorted), optionally with aliases and resolver-provided names."""
        self._load()
        out = set(self._canonical)
        if include_aliases:
            out.update(self._aliases)
        if include_dynamic:
            for lister in self._listers:
                out.update(lister())
        return sorted(out)

    def list(self, pattern: str = "*", include_aliases: bool = False) -> list[str]:
        """Names matching a glob ``pattern`` (case-insensitive), dynamic families included."""
        names = self.names(include_aliases=include_aliases, include_dynamic=True)
        pat = pattern.lower()
        return [n for n in names if fnmatch.fnmatchcase(n.lower(), pat)]

    def aliases_of(self, name: str) -> list[str]:
        """Aliases registered for the canonical ``name``."""
        self._load()
        return sorted(a for a, c in self._aliases.items() if c == name)

    def __repr__(self) -> str:
        return f"Registry({self.kind!r}, {len(self._canonical)} entries)"


BACKBONES = Registry("backbone", "visionstack.models.backbones")
ENCODERS = Registry("encoder", "visionstack.models.parts")
NECKS = Registry("neck", "visionstack.models.parts")
HEADS = Registry("head", "visionstack.models.parts")
LOSSES = Registry("loss", "visionstack.models.parts")
METHODS = Registry("method", "visionstack.models.methods")
DATASETS = Registry("dataset", "visionstack.data.datasets")
TRANSFORMS = Registry("transform", "visionstack.data.transforms")
SAMPLERS = Registry("sampler", "visionstack.data.sampling")
OPTIMIZERS = Registry("optimizer", "visionstack.engine.optim")
SCHEDULERS = Registry("scheduler", "visionstack.engine.schedulers")
METRICS = Registry("metric", "visionstack.engine.metrics")

REGISTRIES: dict[str, Registry] = {
    r.kind: r
    for r in (
        BACKBONES,
        ENCODERS,
        NECKS,
        HEADS,
        LOSSES,
        METHODS,
        DATASETS,
        TRANSFORMS,
        SAMPLERS,
        OPTIMIZERS,
        SCHEDULERS,
        METRICS,
    )
}


def registry_for(kind: str) -> Registry:
    """The registry of ``kind`` (``backbone``, ``head``, ...; plurals accepted)."""
    key = normalize(kind)
    for name, reg in REGISTRIES.items():
        if key in (name, name + "s", name + "es"):
            return reg
    raise UnknownNameError("", f"unknown kind {kind!r}; kinds are: {', '.join(REGISTRIES)}")


def register(kind: str, name: str | None = None, *, aliases: Iterable[str] = (), force: bool = False):
    """``vs.register("backbone", "my_net")(MyNet)``: register a user part from Python."""
    return registry_for(kind).register(name, aliases=aliases, force=force)


def list_models(pattern: str = "*", kind: str = "backbone", include_aliases: bool = False) -> list[str]:
    """Names of ``kind`` matching a glob pattern, e.g. ``list_models("resnet*")``."""
    return registry_for(kind).list(pattern, include_aliases=include_aliases)
