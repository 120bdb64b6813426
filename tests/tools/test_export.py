"""Export to ONNX / torch.export / TorchScript: the reloaded files reproduce PyTorch's logits."""

from __future__ import annotations

import sys

import pytest
import torch

from visionstack.errors import MissingDependencyError, VisionStackError
from visionstack.tools.export import ExportError, export_model, load_runner


@pytest.mark.parametrize(
    ("fmt", "suffix"), [("onnx", ".onnx"), ("torch-export", ".pt2"), ("torchscript", ".ts")]
)
def test_export_reloads_and_agrees_at_any_batch_size(tmp_path, tiny_model, fmt: str, suffix: str) -> None:
    result = export_model(tiny_model, tmp_path / f"model{suffix}", fmt, input_size=32)
    assert result.ok and result.max_abs_diff <= 1e-4
    assert result.input_shape[0] != result.check_shape[0]  # checked on another batch size than traced
    runner = load_runner(result.path, fmt)
    images = torch.randn(5, 3, 32, 32, generator=torch.Generator().manual_seed(3))
    with torch.no_grad():
        expected = tiny_model(images)
    assert torch.allclose(runner(images), expected, atol=1e-4)


def test_legacy_onnx_exporter(tmp_path, tiny_model) -> None:
    result = export_model(
        tiny_model, tmp_path / "legacy.onnx", "onnx", input_size=(32, 24), exporter="legacy"
    )
    assert result.ok and result.check_shape == (3, 3, 32, 24)


def test_export_errors(tmp_path, tiny_model, monkeypatch) -> None:
    with pytest.raises(ExportError, match=r"\.pt2"):
        export_model(tiny_model, tmp_path / "model.bin", "torch-export", input_size=32)
    with pytest.raises(ExportError, match="unknown export format 'tflite'"):
        export_model(tiny_model, tmp_path / "model.tflite", "tflite", input_size=32)
    monkeypatch.setitem(sys.modules, "onnxruntime", None)  # as if not installed
    with pytest.raises(MissingDependencyError, match=r"pip install 'visionstack\[export\]'") as info:
        export_model(tiny_model, tmp_path / "model.onnx", "onnx", input_size=32)
    assert isinstance(info.value, VisionStackError) and "onnxruntime" in str(info.value)


def test_check_fails_when_export_disagrees(tmp_path, tiny_model, monkeypatch) -> None:
    import visionstack.tools.export as export

    real = export.load_runner
    monkeypatch.setattr(export, "load_runner", lambda path, fmt: lambda x: real(path, fmt)(x) + 1e-3)
    with pytest.raises(ExportError, match="differs from PyTorch by 0.001"):
        export_model(tiny_model, tmp_path / "model.ts", "torchscript", input_size=32)
