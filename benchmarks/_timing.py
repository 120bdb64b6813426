"""What the benchmark scripts share: the malloc settings, interleaved median timing, JSON output.

Timing is interleaved: every repeat runs each candidate once (a block of ``inner`` calls), in an order that
rotates from repeat to repeat, so slow drifts of the machine (other processes, clocks, caches) fall on every
candidate alike; the median over repeats is reported. Timing the reference against a second, identical
instance of itself the same way (:func:`time_against`'s ``control``) shows how far from 1.00 noise alone
moves a ratio. (A separate instance, not the same one twice: run back to back, the same model would find
its weights still in the CPU caches.)
"""

from __future__ import annotations

import json
import os
import statistics
import sys
import time
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

#: glibc keeps large buffers instead of returning them to the OS after every step (less page-fault noise)
MALLOC_ENV = {"MALLOC_MMAP_THRESHOLD_": "16777216", "MALLOC_TRIM_THRESHOLD_": "1073741824"}


def ensure_malloc_env() -> None:
    """Re-execute the running script with :data:`MALLOC_ENV` unless it is already set."""
    if any(os.environ.get(k) != v for k, v in MALLOC_ENV.items()):
        os.execve(sys.executable, [sys.executable, *sys.argv], {**os.environ, **MALLOC_ENV})


def sync(device: str) -> None:
    """Wait for queued accelerator work (a no-op on CPU)."""
    if device.startswith("cuda"):
        import torch

        torch.cuda.synchronize()


def time_interleaved(
    fns: Mapping[str, Callable[[], Any]],
    repeats: int,
    warmup: int = 1,
    inner: int = 1,
    device: str = "cpu",
) -> dict[str, float]:
    """Median seconds per call of each function of ``fns``, interleaved (see the module docstring).

    ``warmup`` untimed blocks of each come first.
    """
    names = list(fns)
    for _ in range(warmup):
        for name in names:
            for _ in range(inner):
                fns[name]()
    sync(device)
    times: dict[str, list[float]] = {name: [] for name in names}
    for i in range(repeats):
        shift = i % len(names)
        for name in names[shift:] + names[:shift]:
            sync(device)
            start = time.perf_counter()
            for _ in range(inner):
                fns[name]()
            sync(device)
            times[name].append((time.perf_counter() - start) / inner)
    return {name: statistics.median(values) for name, values in times.items()}


def time_against(
    ours: Callable[[], Any],
    ref: Callable[[], Any],
    repeats: int,
    warmup: int = 1,
    inner: int = 1,
    device: str = "cpu",
    control: Callable[[], Any] | None = None,
) -> dict[str, float]:
    """``{"ours_ms", "ref_ms", "ratio"}`` (ours / ref) and, given ``control`` (a second instance of the
    reference: same code, same weights), ``"itself"``: control / ref timed in the same interleaving, the
    noise floor of ``ratio``."""
    fns = {"ours": ours, "ref": ref}
    if control is not None:
        fns["ref_again"] = control
    median = time_interleaved(fns, repeats, warmup, inner, device)
    out = {
        "ours_ms": 1e3 * median["ours"],
        "ref_ms": 1e3 * median["ref"],
        "ratio": median["ours"] / median["ref"],
    }
    if control is not None:
        out["itself"] = median["ref_again"] / median["ref"]
    return out


def write_json(path: str | os.PathLike[str] | None, payload: Any) -> Path | None:
    """Write ``payload`` as indented JSON to ``path`` (folders created); ``None``: nothing written."""
    if not path:
        return None
    out = Path(path)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(payload, indent=2) + "\n")
    return out
