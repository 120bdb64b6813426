"""``visionstack bench CFG|NAME``: forward latency and throughput of one model on random images.

Warm-up iterations (and, with ``--compile``, the compilation) are not timed; each timed iteration is one
batch, synchronized on CUDA. Reports the median / mean / p90 latency per batch and images per second at
the median.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path
from typing import Any

from visionstack.cli.args import add_overrides


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "target", help="a run config (YAML/JSON) or a model name (e.g. resnet50, timm/convnext_tiny)"
    )
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument(
        "--input-size",
        type=int,
        default=None,
        help="square input size (default: data.image_size, the backbone's pretrained size, or 224)",
    )
    parser.add_argument("--num-classes", type=int, default=None, help="classes when the config does not say")
    add_overrides(parser)
    parser.add_argument("--features-only", action="store_true", help="for a model name: the bare backbone")
    parser.add_argument("--device", default=None, help="cpu, cuda, cuda:1 ... (default: cuda when available)")
    parser.add_argument("--amp", choices=("bf16", "fp16"), default=None, help="autocast dtype")
    parser.add_argument("--channels-last", action="store_true", help="model and inputs in channels_last")
    parser.add_argument("--compile", action="store_true", help="torch.compile the model first")
    parser.add_argument("--iters", type=int, default=50, help="timed iterations (default 50)")
    parser.add_argument("--warmup", type=int, default=10, help="untimed iterations first (default 10)")
    parser.add_argument("--json", action="store_true", help="print the result as JSON")
    parser.add_argument(
        "--output", "-o", default=None, metavar="FILE", help="also write the JSON result here"
    )


def benchmark(model: Any, images: Any, iters: int, warmup: int, amp: str | None = None) -> list[float]:
    """Seconds per forward pass of ``model(images)`` for ``iters`` timed iterations."""
    import torch

    device_type = images.device.type
    dtype = {"bf16": torch.bfloat16, "fp16": torch.float16}.get(amp or "")
    sync = torch.cuda.synchronize if device_type == "cuda" else (lambda: None)
    times = []
    with torch.inference_mode(), torch.autocast(device_type, dtype=dtype, enabled=dtype is not None):
        for i in range(warmup + iters):
            sync()
            start = time.perf_counter()
            model(images)
            sync()
            if i >= warmup:
                times.append(time.perf_counter() - start)
    return times


def run(args: argparse.Namespace) -> int:
    import torch

    from visionstack.cli.info import build_target
    from visionstack.engine.distributed import default_device
    from visionstack.errors import ConfigError

    for flag in ("batch_size", "iters"):
        if getattr(args, flag) < 1:
            raise ConfigError(f"--{flag.replace('_', '-')}", f"must be >= 1, got {getattr(args, flag)}")
    model, size = build_target(args)
    backbone = getattr(model, "backbone", model)
    if size is None:
        size = tuple((getattr(backbone, "pretrained_cfg", None) or {}).get("input_size", (3, 224, 224)))[-1]
    device = torch.device(default_device(args.device))
    model = model.to(device).eval()
    images = torch.randn(args.batch_size, 3, int(size), int(size), device=device)
    if args.channels_last:
        model = model.to(memory_format=torch.channels_last)
        images = images.contiguous(memory_format=torch.channels_last)
    if args.compile:
        model = torch.compile(model)
    times = benchmark(model, images, args.iters, max(args.warmup, 1 if args.compile else 0), args.amp)
    ordered = sorted(times)
    median = statistics.median(times)
    result = {
        "model": args.target,
        "device": str(device),
        "batch_size": args.batch_size,
        "input_size": int(size),
        "amp": args.amp,
        "channels_last": args.channels_last,
        "compile": args.compile,
        "iters": args.iters,
        "latency_ms": {
            "median": median * 1e3,
            "mean": statistics.fmean(times) * 1e3,
            "p90": ordered[min(len(ordered) - 1, int(0.9 * len(ordered)))] * 1e3,
            "min": ordered[0] * 1e3,
        },
        "images_per_s": args.batch_size / median,
        "torch": torch.__version__,
    }
    if args.output:
        Path(args.output).write_text(json.dumps(result, indent=2) + "\n", encoding="utf-8")
    if args.json:
        sys.stdout.write(json.dumps(result, indent=2) + "\n")
        return 0
    lat = result["latency_ms"]
    print(
        f"{args.target} on {device} (batch {args.batch_size}, {size}x{size}, amp={args.amp}, "
        f"channels_last={args.channels_last}, compile={args.compile})"
    )
    print(
        f"latency per batch: median {lat['median']:.2f} ms, mean {lat['mean']:.2f} ms, p90 {lat['p90']:.2f} ms"
    )
    print(f"throughput: {result['images_per_s']:.1f} images/s")
    return 0
