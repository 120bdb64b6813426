"""Exceptions raised for bad user input. Every message says where the problem is and what would work."""

from __future__ import annotations


class VisionStackError(Exception):
    """Base class of every error visionstack raises on purpose."""


class ConfigError(VisionStackError, ValueError):
    """A configuration problem at a key path such as ``model.head.num_classes``."""

    def __init__(self, path: str, message: str) -> None:
        self.path = path
        self.message = message
        super().__init__(f"{path}: {message}" if path else message)


class UnknownNameError(ConfigError, KeyError):
    """A name that no registry of the given kind holds."""

    def __str__(self) -> str:  # KeyError would repr() the message
        return self.args[0] if self.args else ""


class CheckpointError(VisionStackError, RuntimeError):
    """A checkpoint or weights file that cannot be used, with what does not match."""


class DataError(VisionStackError, RuntimeError):
    """A data set or image that cannot be read, naming the file."""


class MissingDependencyError(VisionStackError, ImportError):
    """An optional dependency is not installed; the message names the ``pip install`` that provides it."""


def optional_import(module: str, extra: str, purpose: str):
    """Import ``module`` or raise :class:`MissingDependencyError` naming ``pip install 'visionstack[extra]'``."""
    import importlib

    try:
        return importlib.import_module(module)
    except ImportError as err:
        raise MissingDependencyError(
            f"{purpose} needs the optional package {module!r} ({err}); install it with: "
            f"pip install 'visionstack[{extra}]'"
        ) from None
