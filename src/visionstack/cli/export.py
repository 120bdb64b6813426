"""``visionstack export CHECKPOINT --format onnx|torch-export|torchscript``: a deployable file, checked.

The export is reloaded (ONNX in onnxruntime) and compared with PyTorch on a batch of another size; the max
absolute difference is printed and must be within ``--atol``. Exit code 2 when it is not.
"""

from __future__ import annotations

import argparse


def add_arguments(parser: argparse.ArgumentParser) -> None:
    from visionstack.tools.export import FORMATS

    parser.add_argument("checkpoint", help="a checkpoint written by visionstack train")
    parser.add_argument("--format", choices=tuple(FORMATS), default="onnx")
    parser.add_argument(
        "--output",
        "-o",
        default=None,
        metavar="FILE",
        help="output file (default: the checkpoint's name with .onnx / .pt2 / .ts)",
    )
    parser.add_argument(
        "--input-size",
        type=int,
        default=None,
        help="square input size (default: data.image_size of the checkpoint's config)",
    )
    parser.add_argument("--opset", type=int, default=None, help="ONNX opset (default 18)")
    parser.add_argument(
        "--exporter",
        choices=("dynamo", "legacy"),
        default="dynamo",
        help="ONNX exporter: torch.export-based (default) or the legacy TorchScript-based one",
    )
    parser.add_argument("--atol", type=float, default=1e-4, help="largest allowed max abs difference (1e-4)")
    parser.add_argument("--no-check", action="store_true", help="skip reloading and comparing the export")


def run(args: argparse.Namespace) -> int:
    from visionstack.tools.export import default_path, export_model
    from visionstack.tools.predict import input_size_of, load_checkpoint_model

    model, cfg, _ = load_checkpoint_model(args.checkpoint, "cpu")
    size = input_size_of(cfg, model, args.input_size)
    output = args.output or default_path(args.checkpoint, args.format)
    result = export_model(
        model,
        output,
        args.format,
        input_size=size,
        opset=args.opset,
        atol=args.atol,
        check=not args.no_check,
        exporter=args.exporter,
    )
    print(f"wrote {result.path} ({args.format}, traced at {list(result.input_shape)}, dynamic batch)")
    if result.max_abs_diff is not None:
        print(
            f"max abs diff vs PyTorch on a batch of {result.check_shape[0]}: {result.max_abs_diff:.3g} "
            f"(atol {result.atol:g}): ok"
        )
    return 0
