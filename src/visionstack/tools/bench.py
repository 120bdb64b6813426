"""Forward latency and throughput of one model on random images: what ``visionstack bench`` runs.

Warm-up iterations (and, with ``compile``, the compilation) are not timed; each timed iteration is one
batch, synchronized on CUDA. The result has the median / mean / p90 / min latency per batch and the images
per second at the median.

Example::

    result = bench_model(vs.create_model("resnet50"), batch_size=32, input_size=224, amp="bf16")
    result["images_per_s"]
"""

from __future__ import annotations

import statistics
import time
from typing import Any

import torch
from torch import nn

from visionstack.engine.precision import autocast

__all__ = ["bench_model", "time_forward"]


def time_forward(
    model: nn.Module, images: torch.Tensor, iters: int, warmup: int, amp: str | None = None
) -> list[float]:
    """Seconds per forward pass of ``model(images)`` for ``iters`` timed iterations (under ``amp``)."""
    device_type = images.device.type
    sync = torch.cuda.synchronize if device_type == "cuda" else (lambda: None)
    times = []
    with torch.inference_mode(), autocast(device_type, amp):
        for i in range(warmup + iters):
            sync()
            start = time.perf_counter()
            model(images)
            sync()
            if i >= warmup:
                times.append(time.perf_counter() - start)
    return times


def bench_model(
    model: nn.Module,
    batch_size: int = 32,
    input_size: int = 224,
    device: str | torch.device = "cpu",
    amp: str | None = None,
    channels_last: bool = False,
    compile: bool = False,
    iters: int = 50,
    warmup: int = 10,
) -> dict[str, Any]:
    """Time ``model`` on a random batch; returns the settings and ``latency_ms`` / ``images_per_s``."""
    device = torch.device(device)
    model = model.to(device).eval()
    images = torch.randn(batch_size, 3, int(input_size), int(input_size), device=device)
    if channels_last:
        model = model.to(memory_format=torch.channels_last)
        images = images.contiguous(memory_format=torch.channels_last)
    if compile:
        model = torch.compile(model)
    times = time_forward(model, images, iters, max(warmup, 1 if compile else 0), amp)
    ordered = sorted(times)
    median = statistics.median(times)
    return {
        "device": str(device),
        "batch_size": batch_size,
        "input_size": int(input_size),
        "amp": amp,
        "channels_last": channels_last,
        "compile": compile,
        "iters": iters,
        "latency_ms": {
            "median": median * 1e3,
            "mean": statistics.fmean(times) * 1e3,
            "p90": ordered[min(len(ordered) - 1, int(0.9 * len(ordered)))] * 1e3,
            "min": ordered[0] * 1e3,
        },
        "images_per_s": batch_size / median,
        "torch": torch.__version__,
    }
