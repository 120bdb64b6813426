"""The ``visionstack`` command: one module per verb under ``visionstack.cli``, imported only when used."""

from __future__ import annotations

import argparse
import importlib
import sys
import traceback
from collections.abc import Sequence

#: verb -> (module, one-line help). Each module has ``add_arguments(parser)`` and ``run(args) -> int``.
VERBS: dict[str, tuple[str, str]] = {
    "list": ("visionstack.cli.list_cmd", "list registered parts of a kind (backbone, head, ...)"),
    "info": ("visionstack.cli.info", "parameters, FLOPs, output shapes and feature_info of a model"),
    "config": ("visionstack.cli.config_cmd", "show the merged, resolved config"),
    "train": ("visionstack.cli.train", "train a model from a config"),
    "eval": ("visionstack.cli.eval", "evaluate a checkpoint"),
    "predict": ("visionstack.cli.predict", "predict classes of images with a checkpoint"),
    "export": ("visionstack.cli.export", "export a checkpoint to ONNX / torch.export / TorchScript"),
    "cam": ("visionstack.cli.cam", "class activation maps (Grad-CAM and friends)"),
    "verify": ("visionstack.cli.verify", "decode every image of a data config and report bad files"),
    "plot": ("visionstack.cli.plot", "redraw curves of a run from its CSV"),
    "bench": ("visionstack.cli.bench", "time a model's forward pass"),
}


def build_parser(verb: str | None = None) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="visionstack",
        description="Build, train, evaluate and deploy image-recognition models from one config.",
    )
    parser.add_argument("--version", action="version", version=_version())
    parser.add_argument(
        "--debug", action="store_true", help="print the full traceback of every error (also of config errors)"
    )
    parser.add_argument(
        "--plugins",
        action="append",
        default=[],
        metavar="FILE",
        help="Python file(s) that register user parts (the only way user code is loaded)",
    )
    sub = parser.add_subparsers(dest="verb", metavar="VERB")
    for name, (module, help_text) in VERBS.items():
        p = sub.add_parser(name, help=help_text, description=help_text)
        p.add_argument(
            "--plugins",
            action="append",
            default=argparse.SUPPRESS,
            metavar="FILE",
            help="Python file(s) that register user parts",
        )
        p.add_argument("--debug", action="store_true", default=argparse.SUPPRESS, help=argparse.SUPPRESS)
        if name == verb:  # only the chosen verb's module is imported
            importlib.import_module(module).add_arguments(p)
    return parser


def _version() -> str:
    from visionstack.core.version import __version__

    return f"visionstack {__version__}"


def load_plugins(paths: Sequence[str]) -> None:
    """Import user files that register parts. Explicit by design: config text never loads code."""
    import importlib.util
    from pathlib import Path

    for i, path in enumerate(paths):
        file = Path(path)
        if not file.is_file():
            raise SystemExit(f"visionstack: plugin file not found: {path}")
        spec = importlib.util.spec_from_file_location(f"visionstack_plugin_{i}_{file.stem}", file)
        module = importlib.util.module_from_spec(spec)
        sys.modules[spec.name] = module
        spec.loader.exec_module(module)


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    verb = next((a for a in argv if a in VERBS), None)
    parser = build_parser(verb)
    args = parser.parse_args(argv)
    if args.verb is None:
        parser.print_help()
        return 0
    load_plugins(args.plugins)
    from visionstack.errors import VisionStackError

    try:
        return int(importlib.import_module(VERBS[args.verb][0]).run(args) or 0)
    except VisionStackError as err:  # a mistake in the input: one line (with the config key path)
        if args.debug:
            traceback.print_exc()
        notes = "".join(f" ({note})" for note in getattr(err, "__notes__", ()))
        print(f"visionstack {args.verb}: error: {err}{notes}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    except Exception:  # a bug (ours, a library's or the user's own part): the whole traceback
        traceback.print_exc()
        print(
            f"visionstack {args.verb}: the error above is not a config or data mistake; "
            "the traceback shows where it happened",
            file=sys.stderr,
        )
        return 1


if __name__ == "__main__":
    raise SystemExit(main())
