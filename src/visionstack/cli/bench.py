"""``visionstack bench CFG|NAME``: forward latency and throughput of one model on random images.

Warm-up iterations (and, with ``--compile``, the compilation) are not timed; each timed iteration is one
batch, synchronized on CUDA. Reports the median / mean / p90 latency per batch and images per second at
the median.
"""

from __future__ import annotations

import argparse
import json
import sys

from visionstack.cli.args import add_amp, add_model_target, amp_of


def add_arguments(parser: argparse.ArgumentParser) -> None:
    add_model_target(parser)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--device", default=None, help="cpu, cuda, cuda:1 ... (default: cuda when available)")
    add_amp(parser, "none")
    parser.add_argument("--channels-last", action="store_true", help="model and inputs in channels_last")
    parser.add_argument("--compile", action="store_true", help="torch.compile the model first")
    parser.add_argument("--iters", type=int, default=50, help="timed iterations (default 50)")
    parser.add_argument("--warmup", type=int, default=10, help="untimed iterations first (default 10)")
    parser.add_argument("--json", action="store_true", help="print the result as JSON")
    parser.add_argument(
        "--output", "-o", default=None, metavar="FILE", help="also write the JSON result here"
    )


def run(args: argparse.Namespace) -> int:
    from visionstack.engine.distributed import default_device
    from visionstack.errors import ConfigError
    from visionstack.tools.bench import bench_model
    from visionstack.tools.summary import build_target

    for flag in ("batch_size", "iters"):
        if getattr(args, flag) < 1:
            raise ConfigError(f"--{flag.replace('_', '-')}", f"must be >= 1, got {getattr(args, flag)}")
    model, size = build_target(
        args.target, args.overrides, args.num_classes, args.input_size, args.features_only
    )
    result = {
        "model": args.target,
        **bench_model(
            model,
            args.batch_size,
            size,
            default_device(args.device),
            amp_of(args),
            args.channels_last,
            args.compile,
            args.iters,
            args.warmup,
        ),
    }
    if args.output:
        from visionstack.core.io import atomic_write

        atomic_write(
            args.output, lambda tmp: tmp.write_text(json.dumps(result, indent=2) + "\n", encoding="utf-8")
        )
    if args.json:
        sys.stdout.write(json.dumps(result, indent=2) + "\n")
        return 0
    lat = result["latency_ms"]
    print(
        f"{args.target} on {result['device']} (batch {args.batch_size}, {size}x{size}, amp={result['amp']}, "
        f"channels_last={args.channels_last}, compile={args.compile})"
    )
    print(
        f"latency per batch: median {lat['median']:.2f} ms, mean {lat['mean']:.2f} ms, p90 {lat['p90']:.2f} ms"
    )
    print(f"throughput: {result['images_per_s']:.1f} images/s")
    return 0
