"""``visionstack cam CHECKPOINT IMAGE... --method gradcam``: class activation map overlays as PNG.

Each overlay has the size of its input image: the whole image is resized to the model's input size (no
crop), the CAM computed there and resized back. See :mod:`visionstack.tools.cam` for the target layer.
"""

from __future__ import annotations

import argparse
from pathlib import Path


def add_arguments(parser: argparse.ArgumentParser) -> None:
    from visionstack.tools.cam import CAM_METHODS

    parser.add_argument("checkpoint", help="a checkpoint written by visionstack train")
    parser.add_argument(
        "images", nargs="+", metavar="IMAGE", help="image files, folders, glob patterns, or @list.txt"
    )
    parser.add_argument("--method", choices=tuple(CAM_METHODS), default="gradcam")
    parser.add_argument(
        "--target-layer",
        default=None,
        metavar="PATH",
        help="module path in the model (default: the backbone's last stage)",
    )
    parser.add_argument(
        "--class-index",
        type=int,
        default=None,
        metavar="K",
        help="class to explain (default: each image's predicted class)",
    )
    parser.add_argument("--out", default="cam", metavar="DIR", help="output folder (default ./cam)")
    parser.add_argument(
        "--input-size", type=int, default=None, help="model input size (default: data.image_size)"
    )
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--device", default=None, help="cpu, cuda ... (default: cuda when available)")
    parser.add_argument("--save-array", action="store_true", help="also save each CAM as .npy at image size")


def _unique_names(paths: list[Path]) -> list[str]:
    """File stems, made unique with a counter where two images share one."""
    seen: dict[str, int] = {}
    names = []
    for p in paths:
        n = seen.get(p.stem, 0)
        seen[p.stem] = n + 1
        names.append(p.stem if n == 0 else f"{p.stem}_{n}")
    return names


def run(args: argparse.Namespace) -> int:
    import torch
    from rich.console import Console
    from rich.table import Table

    from visionstack.engine.distributed import default_device
    from visionstack.tools.cam import CamExplainer, save_cams
    from visionstack.tools.predict import (
        collect_images,
        decode_policy_of,
        load_checkpoint_model,
        whole_image_transform,
    )

    paths = collect_images(args.images)
    device = default_device(args.device)
    model, cfg, class_names = load_checkpoint_model(args.checkpoint, device)
    explainer = CamExplainer(model, args.method, args.target_layer)
    transform = whole_image_transform(cfg, model, args.input_size)
    policy = decode_policy_of(cfg)
    names = _unique_names(paths)
    table = Table()
    for column in ("image", "class", "probability", "overlay"):
        table.add_column(column, overflow="fold")
    with explainer:
        for start in range(0, len(paths), max(1, args.batch_size)):
            chunk = paths[start : start + args.batch_size]
            images = [policy.decode(p) for p in chunk]
            result = explainer(torch.stack([transform(im) for im in images]), args.class_index)
            written = save_cams(
                images, names[start : start + len(chunk)], result, args.out, args.method, args.save_array
            )
            for path, c, prob, out in zip(chunk, result.classes, result.probs, written):
                label = class_names[c] if class_names and c < len(class_names) else str(c)
                table.add_row(str(path), label, f"{prob:.3f}", str(out))
    table.title = f"{args.method} at {explainer.layer_path}"
    Console().print(table)
    return 0
