"""Overhead of visionstack models over the raw zoo models they wrap: time ratios, same weights, one process.

For each model (default: resnet50, convnext_tiny, efficientnet_b0, vit_b_16) it times, interleaved and
taking the median of ``--repeats`` runs:

* forward:        ``vs.create_model(name, weights=f)``                 vs the torchvision model
* features_only:  ``vs.create_model(name, features_only=True, ...)``   vs torchvision
                  ``create_feature_extractor`` returning the same nodes
* timm forward / features_only (when the timm backbone is available): ``vs.create_model("timm/<name>")`` vs
  ``timm.create_model(<name>)`` and ``timm.create_model(<name>, features_only=True)``

Before timing, the visionstack model's outputs are checked against the reference (max abs difference).
A ratio of 1.00 means no overhead; the goal is <= 1.02. Each comparison also times the reference against
itself in the same interleaving ("itself", printed beside each ratio): how far from 1.00 noise alone goes,
to judge the goal against (``--no-control`` skips it; ``--repeats`` and ``--batch`` trade time for noise).

The script re-executes itself with ``MALLOC_MMAP_THRESHOLD_=16777216 MALLOC_TRIM_THRESHOLD_=1073741824``
unless they are set: glibc then keeps large activation buffers instead of returning them to the OS after
every forward, which otherwise adds page-fault noise (of several percent on CPU) to both sides.

    python benchmarks/backbone_overhead.py --batch 8                     # CPU
    python benchmarks/backbone_overhead.py --models resnet50 --batch 32 --repeats 41 --no-timm
    python benchmarks/backbone_overhead.py --device cuda --amp bf16 --channels-last --compile

Timing helpers: ``benchmarks/_timing.py``.
"""

from __future__ import annotations

import argparse
import copy
import platform
import tempfile
from collections.abc import Callable
from pathlib import Path

from _timing import ensure_malloc_env, time_against, write_json

MODELS = ("resnet50", "convnext_tiny", "efficientnet_b0", "vit_b_16")
TIMM_NAMES = {
    "resnet50": "resnet50",
    "convnext_tiny": "convnext_tiny",
    "efficientnet_b0": "efficientnet_b0",
    "vit_b_16": "vit_base_patch16_224",
}


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--models", nargs="+", default=list(MODELS))
    p.add_argument("--batch", type=int, default=8, help="images per forward")
    p.add_argument("--size", type=int, default=224)
    p.add_argument("--repeats", type=int, default=15, help="timed runs per side (median is reported)")
    p.add_argument("--warmup", type=int, default=3)
    p.add_argument(
        "--inner", type=int, default=None, help="forwards per timed sample (default: cuda 10, cpu 1)"
    )
    p.add_argument("--device", default="cpu")
    p.add_argument("--channels-last", action="store_true")
    p.add_argument("--amp", choices=["bf16", "fp16"], default=None)
    p.add_argument("--compile", action="store_true", help="torch.compile both sides")
    p.add_argument("--threads", type=int, default=None, help="torch CPU threads")
    p.add_argument("--no-timm", action="store_true", help="skip the timm comparisons")
    p.add_argument(
        "--no-control",
        action="store_true",
        help="skip timing each reference against itself (the noise floor)",
    )
    p.add_argument("--json", default="benchmarks/results/backbone_overhead.json")
    return p.parse_args(argv)


def time_models(ours, ref, x, args: argparse.Namespace) -> dict[str, float]:
    """Median ms of the forward of ``ours`` and ``ref`` on ``x``, interleaved, and ``itself``: a copy of
    ``ref`` against ``ref`` (unless ``--no-control``)."""
    inner = args.inner or (10 if args.device.startswith("cuda") else 1)
    control = None if args.no_control else _runner(_prepare(copy.deepcopy(ref), args), x, args)
    run_ours, run_ref = _runner(_prepare(ours, args), x, args), _runner(_prepare(ref, args), x, args)
    return time_against(run_ours, run_ref, args.repeats, args.warmup, inner, args.device, control=control)


def _prepare(model, args):
    import torch

    model = model.eval()
    if args.channels_last:
        model = model.to(memory_format=torch.channels_last)
    return torch.compile(model) if args.compile else model


def _runner(model, x, args) -> Callable:
    import torch

    def run():
        with torch.inference_mode():
            if args.amp:
                dtype = torch.bfloat16 if args.amp == "bf16" else torch.float16
                with torch.autocast(device_type=args.device.split(":")[0], dtype=dtype):
                    return model(x)
            return model(x)

    return run


def _max_diff(a, b) -> float:

    a = a if isinstance(a, (list, tuple)) else [a]
    b = b if isinstance(b, (list, tuple)) else [b]
    return max(float((u.float() - v.float()).abs().max()) for u, v in zip(a, b))


def bench_torchvision(name: str, x, args, tmp: Path) -> list[dict]:
    import torch
    import torchvision
    from torchvision.models.feature_extraction import create_feature_extractor

    import visionstack as vs
    from visionstack.core.io import save_weights
    from visionstack.models.features.layout import to_nchw

    ref = torchvision.models.get_model(name).eval()
    path = save_weights(ref, tmp / f"{name}.safetensors")
    ours = vs.create_model(name, weights=path).eval().to(args.device)
    feats = vs.create_model(name, features_only=True, weights=path).eval().to(args.device)
    nodes = {f.name: str(i) for i, f in enumerate(feats.feature_info)}
    ref = ref.to(args.device)
    ref_feats = create_feature_extractor(ref, nodes).eval()
    with torch.inference_mode():
        diff = _max_diff(ours(x), ref(x))
        raw = list(ref_feats(x).values())  # the model's own layouts (Swin: NHWC, ViT: tokens)
        want = [to_nchw(r, level, x.shape[-2:])[0] for r, level in zip(raw, feats.levels)]
        fdiff = _max_diff(feats(x), want)
    rows = []
    xa = x.to(memory_format=torch.channels_last) if args.channels_last else x
    for kind, a, b, d in (("forward", ours, ref, diff), ("features_only", feats, ref_feats, fdiff)):
        result = time_models(a, b, xa, args)
        rows.append({"model": name, "against": "torchvision", "kind": kind, "max_abs_diff": d, **result})
    return rows


def bench_timm(name: str, x, args, tmp: Path) -> list[dict]:
    import timm
    import torch

    import visionstack as vs
    from visionstack.core.io import save_weights

    timm_name = TIMM_NAMES.get(name)
    if timm_name is None:
        return []
    ref = timm.create_model(timm_name, pretrained=False).eval()
    path = save_weights(ref, tmp / f"timm_{timm_name}.safetensors")
    ours = vs.create_model(f"timm/{timm_name}", weights=path).eval().to(args.device)
    ref = ref.to(args.device)
    # timm's feature model loads the same file through its own pretrained path (offline: a local file)
    overlay = {"file": str(path)}
    ref_feats = timm.create_model(
        timm_name, features_only=True, pretrained=True, pretrained_cfg_overlay=overlay
    )
    ref_feats = ref_feats.eval().to(args.device)
    levels = tuple(range(-len(ref_feats.feature_info.out_indices), 0))  # the same (last n) levels as timm's
    feats = vs.create_model(f"timm/{timm_name}", features_only=True, out_indices=levels, weights=path)
    feats = feats.eval().to(args.device)
    with torch.inference_mode():
        diff = _max_diff(ours(x), ref(x))
        fdiff = _max_diff(feats(x), list(ref_feats(x)))
    rows = []
    for kind, a, b, d in (("forward", ours, ref, diff), ("features_only", feats, ref_feats, fdiff)):
        xa = x.to(memory_format=torch.channels_last) if args.channels_last else x
        result = time_models(a, b, xa, args)
        rows.append(
            {"model": f"timm/{timm_name}", "against": "timm", "kind": kind, "max_abs_diff": d, **result}
        )
    return rows


def _timm_available() -> bool:
    try:
        import visionstack.models.backbones.timm  # noqa: F401
    except Exception as err:  # H2's backbone not there (yet) or broken: skip cleanly
        print(f"[timm comparisons skipped: {type(err).__name__}: {err}]")
        return False
    return True


def main(argv: list[str] | None = None) -> int:
    ensure_malloc_env()
    args = parse_args(argv)
    import torch

    if args.threads:
        torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    x = torch.randn(args.batch, 3, args.size, args.size, device=args.device)
    rows: list[dict] = []
    with_timm = not args.no_timm and _timm_available()
    with tempfile.TemporaryDirectory() as tmp:
        for name in args.models:
            rows += bench_torchvision(name, x, args, Path(tmp))
            if with_timm:
                rows += bench_timm(name, x, args, Path(tmp))
            _print_rows([r for r in rows if r["model"] in (name, f"timm/{TIMM_NAMES.get(name)}")])
    print("\n" + table(rows, args))
    env = {
        "torch": torch.__version__,
        "device": args.device,
        "threads": torch.get_num_threads(),
        "batch": args.batch,
        "size": args.size,
        "repeats": args.repeats,
        "amp": args.amp,
        "channels_last": args.channels_last,
        "compile": args.compile,
        "python": platform.python_version(),
        "machine": platform.machine(),
        "gpu": torch.cuda.get_device_name() if args.device.startswith("cuda") else None,
    }
    out = write_json(args.json, {"env": env, "results": rows})
    if out is not None:
        print(f"wrote {out}")
    return 0


def _print_rows(rows: list[dict]) -> None:
    for r in rows:
        itself = f"  itself {r['itself']:.3f}" if "itself" in r else ""
        print(
            f"  {r['model']:26s} {r['kind']:14s} ours {r['ours_ms']:8.2f} ms  ref {r['ref_ms']:8.2f} ms  "
            f"ratio {r['ratio']:.3f}{itself}  max|diff| {r['max_abs_diff']:.1e}",
            flush=True,
        )


def table(rows: list[dict], args: argparse.Namespace) -> str:
    flags = [f"batch {args.batch}", f"{args.size}px", args.device]
    flags += [
        f
        for f, on in (
            ("channels_last", args.channels_last),
            (f"amp {args.amp}", args.amp),
            ("compile", args.compile),
        )
        if on
    ]
    lines = [
        f"visionstack / reference time ratio ({', '.join(flags)}); itself: the reference against itself",
        f"{'model':28s} {'against':12s} {'forward':>9s} {'itself':>8s} {'features':>9s} {'itself':>8s}",
    ]
    by_model: dict[tuple[str, str], dict[str, dict]] = {}
    for r in rows:
        by_model.setdefault((r["model"], r["against"]), {})[r["kind"]] = r
    nan = float("nan")
    for (model, against), kinds in by_model.items():
        cells = []
        for kind in ("forward", "features_only"):
            r = kinds.get(kind, {})
            cells.append(f"{r.get('ratio', nan):9.3f} {r.get('itself', nan):8.3f}")
        lines.append(f"{model:28s} {against:12s} {' '.join(cells)}")
    return "\n".join(lines)


if __name__ == "__main__":
    raise SystemExit(main())
