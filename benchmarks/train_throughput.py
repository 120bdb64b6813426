"""Training overhead of visionstack against plain torchvision code, in one process, interleaved.

1. Training step: ``Trainer.step(batch)`` (the Trainer's per-batch path: ``model.train_step`` through the
   OptimWrapper -- autocast, backward, non-finite check, step -- then the scheduler and the on-device loss
   sums) against a hand-written loop on the torchvision model with the same architecture and weights, the
   same batch (already on the device) and the same optimizer (SGD, momentum 0.9, weight decay 1e-4 on every
   parameter: the run config sets ``no_decay: false``).
   Both sides alternate in blocks of ``--inner`` steps; the ratio of the median seconds per step is reported
   (goal: <= 1.03), next to "itself": the hand-written loop on a second copy of the model timed against the
   first in the same interleaving (the noise floor). Before timing, one step of each from the same weights is checked to give the same loss.
   With ``--profile``, a few steps of each side also run under ``torch.profiler`` and the operators per step
   are counted (all recorded operators, and top-level ``aten::`` calls), with the per-name differences.
2. Data pipeline: images/s of visionstack's train loader (decode policy, per-sample seeded augmentation,
   resumable sampler) against ``torchvision.datasets.ImageFolder`` + ``DataLoader`` on the same files with
   the same transform pipeline, batch size and workers (median of ``--data-repeats`` epochs each, alternating).

The script re-executes itself with ``MALLOC_MMAP_THRESHOLD_=16777216 MALLOC_TRIM_THRESHOLD_=1073741824``
unless they are set (glibc then keeps large buffers instead of returning them to the OS every step).
Timing helpers: ``benchmarks/_timing.py``.

    python benchmarks/train_throughput.py                                   # CPU, resnet18, batch 16 at 128 px
    python benchmarks/train_throughput.py --device cuda --amp bf16 --channels-last --model resnet50 --batch 64
    python benchmarks/train_throughput.py --profile --skip-data --batch 2 --size 32    # operator counts
"""

from __future__ import annotations

import argparse
import collections
import json
import platform
import tempfile
from collections.abc import Callable
from pathlib import Path

from _timing import ensure_malloc_env, time_against, time_interleaved, write_json


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--model", default="resnet18", help="a torchvision classification model")
    p.add_argument("--batch", type=int, default=16)
    p.add_argument("--size", type=int, default=128, help="training image size")
    p.add_argument("--classes", type=int, default=10)
    p.add_argument("--repeats", type=int, default=9, help="timed blocks per side (median reported)")
    p.add_argument("--inner", type=int, default=None, help="steps per timed block (default: cuda 10, cpu 2)")
    p.add_argument("--warmup", type=int, default=3, help="untimed blocks per side first")
    p.add_argument("--device", default="cpu")
    p.add_argument("--amp", choices=["bf16", "fp16"], default=None)
    p.add_argument("--channels-last", action="store_true")
    p.add_argument("--compile", action="store_true", help="torch.compile both models")
    p.add_argument("--threads", type=int, default=None, help="torch CPU threads")
    p.add_argument("--images", type=int, default=256, help="files in the data-pipeline comparison")
    p.add_argument("--workers", type=int, default=2, help="loader workers of both data pipelines")
    p.add_argument("--data-repeats", type=int, default=3)
    p.add_argument("--skip-data", action="store_true")
    p.add_argument("--skip-step", action="store_true")
    p.add_argument("--profile", action="store_true", help="count operators per step of both sides")
    p.add_argument("--profile-steps", type=int, default=4)
    p.add_argument("--json", default="benchmarks/results/train_throughput.json")
    return p.parse_args(argv)


def time_steps(
    ours: Callable, ref: Callable, control: Callable, args: argparse.Namespace
) -> dict[str, float]:
    """Median ms per step of ``ours`` and ``ref``, and ``itself`` (control / ref), interleaved."""
    inner = args.inner or (10 if args.device.startswith("cuda") else 2)
    return time_against(ours, ref, args.repeats, args.warmup, inner, args.device, control=control)


def write_images(root: Path, count: int, classes: int, size: int) -> Path:
    """``count`` random JPEGs (``size`` * 1.25 px, 3:4) in ``classes`` folders."""
    import numpy as np
    from PIL import Image

    rng = np.random.default_rng(0)
    for i in range(count):
        folder = root / f"class_{i % classes:02d}"
        folder.mkdir(parents=True, exist_ok=True)
        pixels = rng.integers(0, 255, (int(size * 1.25), int(size * 1.25 * 4 / 3), 3), dtype=np.uint8)
        Image.fromarray(pixels).save(folder / f"{i:05d}.jpg", quality=90)
    return root


def run_config(root: Path, args: argparse.Namespace) -> dict:
    return {
        "model": {"backbone": args.model, "encoder": "gap", "head": "linear", "loss": "cross_entropy"},
        "data": {
            "root": str(root),
            "train": {"type": "image_folder"},
            "image_size": args.size,
            "preset": "imagenet",
            "batch_size": args.batch,
            "num_workers": args.workers,
        },
        "train": {
            "epochs": 1,
            "optimizer": {
                "type": "sgd",
                "lr": 0.01,
                "momentum": 0.9,
                "weight_decay": 1e-4,
                "no_decay": False,
            },
            "scheduler": {"type": "cosine", "interval": "step"},
            "amp": args.amp,
            "channels_last": args.channels_last,
            "device": args.device,
            "progress": False,
        },
    }


def plain_step(model, images, labels, args: argparse.Namespace) -> Callable:
    """The hand-written training step of ``model`` (its own SGD and, for fp16, GradScaler)."""
    import torch
    import torch.nn.functional as F

    device_type = args.device.split(":")[0]
    dtype = {"bf16": torch.bfloat16, "fp16": torch.float16}.get(args.amp)
    opt = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9, weight_decay=1e-4)
    scaler = torch.amp.GradScaler(device_type, enabled=dtype is torch.float16)

    def step() -> torch.Tensor:
        with torch.autocast(device_type, dtype=dtype, enabled=dtype is not None):
            loss = F.cross_entropy(model(images), labels)
        scaler.scale(loss).backward()
        scaler.step(opt)
        scaler.update()
        opt.zero_grad(set_to_none=True)
        return loss

    return step


def build_steps(root: Path, args: argparse.Namespace, work: Path) -> tuple[Callable, Callable, Callable]:
    """``(visionstack step, reference step, control)`` on the same batch, from the same weights; the control
    is the reference step on a second copy of the torchvision model (the noise floor)."""
    import copy

    import torch
    import torchvision

    from visionstack.engine.metrics import RunningSums
    from visionstack.engine.trainer import Trainer

    trainer = Trainer(run_config(root, args), work_dir=work / "run")
    trainer.logger.enabled = False
    model = trainer.model.train()
    ref = torchvision.models.get_model(args.model, num_classes=args.classes)
    ours_params = [p for _, p in model.named_parameters()]
    ref_params = [p for _, p in ref.named_parameters()]
    if [p.shape for p in ours_params] != [p.shape for p in ref_params]:
        raise SystemExit(f"{args.model}: visionstack and torchvision parameters do not line up")
    with torch.no_grad():
        for a, b in zip(ref_params, ours_params):
            a.copy_(b)
        for a, b in zip(ref.buffers(), model.buffers()):
            a.copy_(b)
    ref = ref.to(args.device).train()
    memory = torch.channels_last if args.channels_last else torch.contiguous_format
    ref = ref.to(memory_format=memory)
    ref_copy = copy.deepcopy(ref)
    g = torch.Generator().manual_seed(0)
    images = torch.randn(args.batch, 3, args.size, args.size, generator=g).to(args.device)
    images = images.contiguous(memory_format=memory)
    labels = torch.randint(0, args.classes, (args.batch,), generator=g).to(args.device)
    batch = {"image": images, "label": labels, "index": torch.arange(args.batch)}
    if args.compile:
        for child in model.children():
            child.compile()
        ref.compile()
        ref_copy.compile()
    sums = RunningSums()
    return (
        lambda: trainer.step(batch, sums)["loss"],
        plain_step(ref, images, labels, args),
        plain_step(ref_copy, images, labels, args),
    )


def bench_step(root: Path, args: argparse.Namespace, work: Path) -> dict:
    ours, ref, control = build_steps(root, args, work)
    first_ours, first_ref = float(ours()), float(ref().detach())
    control()
    out = {"first_loss_ours": first_ours, "first_loss_ref": first_ref}
    if args.profile:
        out["ops_per_step"] = count_ops(ours, ref, args)
    return {**out, **time_steps(ours, ref, control, args)}


def count_ops(ours: Callable, ref: Callable, args: argparse.Namespace) -> dict:
    """Operators per step of each side under ``torch.profiler`` (CPU activity): every recorded operator
    (nested ones included), top-level ``aten::`` calls, and the per-name differences (ours - ref)."""
    from torch.profiler import ProfilerActivity, profile

    steps = args.profile_steps
    counts: dict[str, collections.Counter] = {}
    out: dict = {}
    for name, fn in (("ours", ours), ("ref", ref)):
        for _ in range(2):
            fn()
        with profile(activities=[ProfilerActivity.CPU]) as prof:
            for _ in range(steps):
                fn()
        events = list(prof.events())
        counts[name] = collections.Counter(e.name for e in events)
        top = [e for e in events if e.name.startswith("aten::") and not _under_aten(e)]
        out[name] = {"all": len(events) / steps, "top_level_aten": len(top) / steps}
    names = set(counts["ours"]) | set(counts["ref"])
    diff = {n: (counts["ours"][n] - counts["ref"][n]) / steps for n in names}
    out["difference"] = dict(sorted(((n, d) for n, d in diff.items() if d), key=lambda nd: -abs(nd[1])))
    return out


def _under_aten(event) -> bool:
    parent = event.cpu_parent
    while parent is not None:
        if parent.name.startswith("aten::"):
            return True
        parent = parent.cpu_parent
    return False


def bench_data(root: Path, args: argparse.Namespace) -> dict:
    import torch
    from torchvision.datasets import ImageFolder

    from visionstack.data.loader import loader_from_data_cfg
    from visionstack.data.transforms import transforms_from_data_cfg

    data_cfg = run_config(root, args)["data"]
    _, ours = loader_from_data_cfg(data_cfg, "train", seed=0)
    transform = transforms_from_data_cfg(data_cfg, train=True)
    ref = torch.utils.data.DataLoader(
        ImageFolder(str(root), transform=transform),
        batch_size=args.batch,
        shuffle=True,
        num_workers=args.workers,
    )

    def epoch(loader) -> Callable[[], int]:
        def run() -> int:
            count = 0
            for batch in loader:
                count += len(batch["image"] if isinstance(batch, dict) else batch[0])
            if count != args.images:
                raise SystemExit(f"a data-pipeline epoch gave {count} images, expected {args.images}")
            return count

        return run

    seconds = time_interleaved(
        {"ours": epoch(ours), "ref": epoch(ref)},
        args.data_repeats,
        warmup=1,  # warmup: page cache, workers
    )
    ours_ips, ref_ips = args.images / seconds["ours"], args.images / seconds["ref"]
    return {"ours_images_per_s": ours_ips, "ref_images_per_s": ref_ips, "ratio": ref_ips / ours_ips}


def main(argv: list[str] | None = None) -> int:
    ensure_malloc_env()
    args = parse_args(argv)
    import torch

    if args.threads:
        torch.set_num_threads(args.threads)
    out: dict = {
        "config": vars(args),
        "env": {
            "torch": torch.__version__,
            "python": platform.python_version(),
            "threads": torch.get_num_threads(),
            "device_name": torch.cuda.get_device_name()
            if args.device.startswith("cuda")
            else platform.processor(),
        },
    }
    with tempfile.TemporaryDirectory() as tmp:
        root = write_images(Path(tmp) / "images", args.images, args.classes, args.size)
        if not args.skip_step:
            out["train_step"] = bench_step(root, args, Path(tmp))
            step = out["train_step"]
            print(
                f"train step  {args.model} batch {args.batch} @ {args.size}px on {args.device}: "
                f"visionstack {step['ours_ms']:.2f} ms, torchvision loop {step['ref_ms']:.2f} ms, "
                f"ratio {step['ratio']:.3f} (goal <= 1.03; loop vs itself {step['itself']:.3f})"
            )
            if "ops_per_step" in step:
                ops = step["ops_per_step"]
                print(
                    f"ops / step  visionstack {ops['ours']['all']:.0f} ({ops['ours']['top_level_aten']:.0f} top-level "
                    f"aten), loop {ops['ref']['all']:.0f} ({ops['ref']['top_level_aten']:.0f}); differences: "
                    + ", ".join(f"{n} {d:+g}" for n, d in ops["difference"].items())
                )
        if not args.skip_data:
            out["data"] = bench_data(root, args)
            print(
                f"data        {args.images} JPEGs, {args.workers} workers: visionstack "
                f"{out['data']['ours_images_per_s']:.0f} img/s, ImageFolder+DataLoader "
                f"{out['data']['ref_images_per_s']:.0f} img/s (time ratio {out['data']['ratio']:.3f})"
            )
    print(json.dumps(out, indent=2))
    write_json(args.json, out)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
