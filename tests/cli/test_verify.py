"""``visionstack verify``: bad files are listed with the reason and the exit code says whether any exist."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from tests.data.fakes import image_folder, write_corrupt, write_image
from visionstack.cli.main import main


def test_folder_with_one_corrupt_file(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    image_folder(tmp_path / "imgs", {"a": 2, "b": 1})
    assert main(["verify", str(tmp_path / "imgs")]) == 0
    assert "checked 3 file(s)" in capsys.readouterr().out
    bad = write_corrupt(tmp_path / "imgs" / "b" / "broken.jpg")
    assert main(["verify", str(tmp_path / "imgs"), "--workers", "2"]) == 1
    out = capsys.readouterr().out
    assert str(bad) in out and "truncated" in out and "1 bad" in out


def test_config_reports_missing_and_corrupt_files_per_split(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    image_folder(tmp_path / "train", {"a": 2})
    write_image(tmp_path / "v1.png")
    write_corrupt(tmp_path / "v2.png")
    (tmp_path / "val.csv").write_text("image,label\nv1.png,a\nv2.png,a\nv3.png,a\n")
    cfg = {
        "data": {
            "root": str(tmp_path),
            "decode": {"on_error": "skip"},  # verify reports instead of skipping
            "train": {"type": "image_folder", "split": "train"},
            "val": {"type": "csv", "csv_file": "val.csv"},
        }
    }
    path = tmp_path / "run.yaml"
    path.write_text(yaml.safe_dump(cfg))
    assert main(["verify", str(path), "--split", "train"]) == 0
    capsys.readouterr()
    assert main(["verify", str(path)]) == 1
    out = capsys.readouterr().out
    assert "train: 2, val: 3" in out and "2 bad" in out
    assert str(tmp_path / "v2.png") in out and str(tmp_path / "v3.png") in out and "file not found" in out
    assert str(tmp_path / "v1.png") not in out


def test_config_errors_exit_2(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = tmp_path / "run.yaml"
    path.write_text(
        yaml.safe_dump({"data": {"train": {"type": "image_folder", "root": str(tmp_path / "gone")}}})
    )
    assert main(["verify", str(path)]) == 2
    assert "gone does not exist" in capsys.readouterr().err
    path.write_text(yaml.safe_dump({"data": {"val": {"type": "image_folder", "root": str(tmp_path)}}}))
    assert main(["verify", str(path), "--split", "train"]) == 2
    assert "data.train: no dataset configured" in capsys.readouterr().err
