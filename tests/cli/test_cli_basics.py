"""The CLI skeleton: fast --help, list, config show/check, info, plugins, clear errors."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from visionstack.cli.main import main

ROOT = Path(__file__).resolve().parents[2]


def run_cli(*args: str, cwd: Path | None = None) -> subprocess.CompletedProcess:
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    return subprocess.run(
        [sys.executable, "-m", "visionstack", *args],
        capture_output=True,
        text=True,
        cwd=cwd or ROOT,
        env=env,
        timeout=300,
    )


def test_help_is_fast_and_does_not_import_torch() -> None:
    code = (
        "import sys, time; t=time.perf_counter(); from visionstack.cli.main import main; "
        "import contextlib, io\nwith contextlib.redirect_stdout(io.StringIO()), contextlib.suppress(SystemExit):"
        " main(['--help'])\nprint(time.perf_counter()-t, 'torch' in sys.modules)"
    )
    start = time.perf_counter()
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    wall = time.perf_counter() - start
    elapsed, torch_loaded = out.stdout.split()
    assert torch_loaded == "False", "visionstack --help must not import torch"
    assert float(elapsed) < 2.0 and wall < 10  # generous wall bound: interpreter start on a busy machine
    import_code = "import sys, visionstack; print('torch' in sys.modules)"
    assert (
        subprocess.run([sys.executable, "-c", import_code], capture_output=True, text=True).stdout.strip()
        == "False"
    )


def test_every_verb_has_help(capsys: pytest.CaptureFixture[str]) -> None:
    from visionstack.cli.main import VERBS

    for verb in VERBS:
        with pytest.raises(SystemExit) as info:
            main([verb, "--help"])
        assert info.value.code == 0
        assert "usage: visionstack" in capsys.readouterr().out


def test_list_kinds_and_pattern(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["list"]) == 0
    out = capsys.readouterr().out
    for kind in ("backbone", "encoder", "head", "loss", "method"):
        assert kind in out
    assert main(["list", "encoder", "g*", "--aliases"]) == 0
    out = capsys.readouterr().out
    assert "gap" in out and "gem" in out
    assert main(["list", "head", "nothing_matches_this*"]) == 1


def test_config_show_merges_and_overrides(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    (tmp_path / "base.yaml").write_text("train: {epochs: 5, seed: 1}\n")
    cfg = tmp_path / "run.yaml"
    cfg.write_text("_base_: base.yaml\nmodel: {backbone: test_tiny, num_classes: 4}\n")
    assert main(["config", "show", str(cfg), "--set", "train.epochs=2", "model.head.type=cosine"]) == 0
    out = capsys.readouterr().out
    assert "epochs: 2" in out and "seed: 1" in out and "type: cosine" in out and "_base_" not in out


def test_config_error_exits_2_with_path(tmp_path: Path) -> None:
    cfg = tmp_path / "bad.yaml"
    cfg.write_text("model: {backbone: {type: resnet18}, head: {type: linear, num_clases: 3}}\n")
    result = run_cli("config", "check", str(cfg))
    assert result.returncode == 2
    assert "model.head.num_clases" in result.stderr and "num_classes" in result.stderr


def test_plugins_register_user_parts(tmp_path: Path) -> None:
    plugin = tmp_path / "my_parts.py"
    plugin.write_text(
        "import visionstack as vs\n"
        "from visionstack.models.parts.base import Head\n"
        "import torch\n"
        "@vs.register('head', 'plugin_zero_head')\n"
        "class ZeroHead(Head):\n"
        "    def forward(self, x):\n"
        "        return torch.zeros(x.shape[0], self.num_classes)\n"
    )
    cfg = tmp_path / "run.yaml"
    cfg.write_text("model: {backbone: {type: resnet18}, head: {type: plugin_zero_head}, num_classes: 3}\n")
    assert run_cli("config", "check", str(cfg)).returncode == 2  # unknown without the plugin
    result = run_cli("--plugins", str(plugin), "config", "check", str(cfg))
    assert result.returncode == 0, result.stderr
    result = run_cli("info", str(cfg), "--plugins", str(plugin), "--input-size", "32")
    assert result.returncode == 0, result.stderr


def test_info_reports_params_flops_and_feature_info() -> None:
    result = run_cli(
        "info", "resnet18", "--num-classes", "10", "--input-size", "64", "--layers", "--depth", "1"
    )
    assert result.returncode == 0, result.stderr
    out = result.stdout
    assert "11,181,642" in out  # torchvision resnet18 with a 10-class fc
    assert "1 MAC = 2 FLOPs" in out
    assert "feature_info" in out and "512" in out
    assert "layer4" in out
