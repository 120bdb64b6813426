"""Export a model to ONNX, ``torch.export`` (``.pt2``) or TorchScript, then check the export numerically.

Every format keeps the batch dimension dynamic. After writing, the file is loaded back (ONNX through
onnxruntime) and run on a batch of a *different* size than the one used for tracing; the largest absolute
difference from the PyTorch model is reported and must be ``<= atol`` (default ``1e-4``).

ONNX uses the ``torch.export``-based exporter (``dynamo=True``, the default of torch >= 2.9; verified on
ResNet, ConvNeXt and ViT with torch 2.14) or, on request, the legacy TorchScript-based one, which handles
some Python control flow that ``torch.export`` rejects. onnx / onnxruntime / onnxscript come with
``pip install 'visionstack[export]'``.
"""

from __future__ import annotations

import contextlib
import io
import os
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import torch
from torch import nn

from visionstack.core.io import atomic_path
from visionstack.errors import VisionStackError, optional_import

ExportFormat = Literal["onnx", "torch-export", "torchscript"]
FORMATS: dict[str, str] = {"onnx": ".onnx", "torch-export": ".pt2", "torchscript": ".ts"}
DEFAULT_OPSET = 18
_EXTERNAL_DATA_BYTES = 1_800_000_000  # ONNX protobufs are limited to 2 GB; larger weights go to a side file


class ExportError(VisionStackError, RuntimeError):
    """The model could not be exported, or the export does not reproduce the model's outputs."""


@dataclass
class ExportResult:
    """What :func:`export_model` wrote and how close the reloaded export is to PyTorch."""

    path: Path
    format: str
    input_shape: tuple[int, ...]
    check_shape: tuple[int, ...]
    max_abs_diff: float | None
    atol: float

    @property
    def ok(self) -> bool:
        return self.max_abs_diff is not None and self.max_abs_diff <= self.atol


def default_path(checkpoint: str | os.PathLike[str], fmt: str) -> Path:
    """``run/best.safetensors`` -> ``run/best.onnx`` (``.pt2``, ``.ts``)."""
    return Path(checkpoint).with_suffix(FORMATS[fmt])


def _check_format(fmt: str) -> str:
    if fmt not in FORMATS:
        raise ExportError(f"unknown export format {fmt!r}; choose one of {', '.join(FORMATS)}")
    return fmt


def _param_bytes(model: nn.Module) -> int:
    return sum(t.numel() * t.element_size() for t in (*model.parameters(), *model.buffers()))


def export_onnx(
    model: nn.Module,
    path: str | os.PathLike[str],
    sample: torch.Tensor,
    opset: int | None = None,
    exporter: Literal["dynamo", "legacy"] = "dynamo",
) -> Path:
    """Write ``model`` as ONNX with input ``images`` and output ``logits``, both with a dynamic batch."""
    optional_import("onnx", "export", "ONNX export")
    if exporter == "dynamo":
        optional_import("onnxscript", "export", "ONNX export (dynamo exporter)")
    path = Path(path)
    opset = opset or DEFAULT_OPSET
    external = _param_bytes(model) > _EXTERNAL_DATA_BYTES
    try:
        with (
            atomic_path(path) if not external else contextlib.nullcontext(path) as target,
            contextlib.redirect_stdout(io.StringIO()),
        ):
            names = {"input_names": ["images"], "output_names": ["logits"], "opset_version": opset}
            if exporter == "dynamo":
                torch.onnx.export(
                    model,
                    (sample,),
                    str(target),
                    dynamo=True,
                    dynamic_shapes=({0: "batch"},),
                    external_data=external,
                    verbose=False,
                    **names,
                )
            elif exporter == "legacy":
                with warnings.catch_warnings():
                    warnings.simplefilter("ignore")
                    batch_axis = {"images": {0: "batch"}, "logits": {0: "batch"}}
                    torch.onnx.export(
                        model, (sample,), str(target), dynamo=False, dynamic_axes=batch_axis, **names
                    )
            else:
                raise ExportError(f"unknown ONNX exporter {exporter!r}; use 'dynamo' or 'legacy'")
    except ExportError:
        raise
    except Exception as err:
        hint = " Try --exporter legacy." if exporter == "dynamo" else ""
        raise ExportError(
            f"ONNX export of {type(model).__name__} failed: {type(err).__name__}: "
            f"{str(err).strip().splitlines()[0] if str(err).strip() else ''}.{hint}"
        ) from err
    return path


def export_program(model: nn.Module, path: str | os.PathLike[str], sample: torch.Tensor) -> Path:
    """Write a ``torch.export`` program (``torch.export.save``) with a dynamic batch dimension."""
    path = Path(path)
    if path.suffix != ".pt2":
        raise ExportError(f"{path}: torch.export programs are saved as .pt2 files; name the output *.pt2")
    batch = torch.export.Dim("batch", min=1, max=65536)
    try:
        program = torch.export.export(model, (sample,), dynamic_shapes=({0: batch},))
    except Exception as err:
        raise ExportError(
            f"torch.export of {type(model).__name__} failed: {type(err).__name__}: {err}"
        ) from err
    with atomic_path(path) as target:
        torch.export.save(program, str(target))
    return path


def export_torchscript(model: nn.Module, path: str | os.PathLike[str], sample: torch.Tensor) -> Path:
    """Write a traced TorchScript module (``torch.jit.trace``; the batch size stays free in traced models
    that do not read it as a Python number). TorchScript is deprecated in torch >= 2.9; prefer torch-export."""
    path = Path(path)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        try:
            traced = torch.jit.trace(model, (sample,), check_trace=False)
        except Exception as err:
            raise ExportError(
                f"TorchScript tracing of {type(model).__name__} failed: {type(err).__name__}: {err}"
            ) from err
        with atomic_path(path) as target:
            torch.jit.save(traced, str(target))
    return path


def load_runner(path: str | os.PathLike[str], fmt: str):
    """A function ``images (Tensor) -> logits (Tensor)`` running an exported file."""
    fmt = _check_format(fmt)
    path = str(path)
    if fmt == "onnx":
        ort = optional_import("onnxruntime", "export", "checking an ONNX export")
        session = ort.InferenceSession(path, providers=["CPUExecutionProvider"])
        name = session.get_inputs()[0].name

        def run_onnx(images: torch.Tensor) -> torch.Tensor:
            return torch.from_numpy(session.run(None, {name: images.detach().cpu().numpy()})[0])

        return run_onnx
    if fmt == "torch-export":
        module = torch.export.load(path).module()
    else:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            module = torch.jit.load(path, map_location="cpu")

    def run_torch(images: torch.Tensor) -> torch.Tensor:
        with torch.no_grad():
            out = module(images)
        return out[0] if isinstance(out, (list, tuple)) else out

    return run_torch


def max_abs_diff(model: nn.Module, runner: Any, images: torch.Tensor) -> float:
    """Largest absolute difference between ``model(images)`` and ``runner(images)``."""
    with torch.no_grad():
        expected = model(images)
    got = runner(images)
    if tuple(got.shape) != tuple(expected.shape):
        raise ExportError(
            f"the export returns shape {tuple(got.shape)} where the model returns {tuple(expected.shape)}"
        )
    return float((got.float() - expected.float()).abs().max())


def export_model(
    model: nn.Module,
    path: str | os.PathLike[str],
    fmt: str = "onnx",
    input_size: int | tuple[int, int] = 224,
    opset: int | None = None,
    atol: float = 1e-4,
    check: bool = True,
    exporter: Literal["dynamo", "legacy"] = "dynamo",
    seed: int = 0,
) -> ExportResult:
    """Export ``model`` (on CPU, in eval mode) to ``path`` in ``fmt`` and check it (see the module docstring).

    Traces with a batch of 2 and checks with a batch of 3 random images of ``input_size``; raises
    :class:`ExportError` when the difference exceeds ``atol``.
    """
    fmt = _check_format(fmt)
    h, w = (input_size, input_size) if isinstance(input_size, int) else tuple(input_size)
    model = model.to("cpu").eval()
    generator = torch.Generator().manual_seed(seed)
    sample = torch.randn(2, 3, h, w, generator=generator)
    check_images = torch.randn(3, 3, h, w, generator=generator)
    if fmt == "onnx":
        if check:  # fail before writing anything when the checker is missing
            optional_import("onnxruntime", "export", "checking an ONNX export")
        written = export_onnx(model, path, sample, opset, exporter)
    elif fmt == "torch-export":
        written = export_program(model, path, sample)
    else:
        written = export_torchscript(model, path, sample)
    diff = max_abs_diff(model, load_runner(written, fmt), check_images) if check else None
    result = ExportResult(written, fmt, tuple(sample.shape), tuple(check_images.shape), diff, atol)
    if check and not result.ok:
        raise ExportError(
            f"{written}: the {fmt} export differs from PyTorch by {diff:.3g} (max abs) on a batch "
            f"of {check_images.shape[0]}, more than atol={atol:g}"
        )
    return result
