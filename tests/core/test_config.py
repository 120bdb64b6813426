"""Config loading: _base_ inheritance, _delete_, overrides, validation errors with key paths."""

from __future__ import annotations

from pathlib import Path

import pytest

from visionstack.core.config import apply_overrides, dump_config, load_config, merge, parse_override
from visionstack.errors import ConfigError


def write(path: Path, text: str) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    return path


def test_base_chain_relative_paths_and_lists(tmp_path: Path) -> None:
    write(tmp_path / "_base_/a.yaml", "train: {epochs: 5, seed: 1}\ndata: {batch_size: 8}\n")
    write(tmp_path / "_base_/b.yaml", "_base_: a.yaml\ntrain: {epochs: 7}\n")
    write(tmp_path / "_base_/c.yaml", "data: {num_workers: 3}\n")
    cfg_path = write(
        tmp_path / "cfg/run.yaml", "_base_: [../_base_/b.yaml, ../_base_/c.yaml]\ntrain: {seed: 9}\n"
    )
    cfg = load_config(cfg_path)
    assert cfg["train"] == {"epochs": 7, "seed": 9}
    assert cfg["data"] == {"batch_size": 8, "num_workers": 3}
    assert cfg["_source_"] == str(cfg_path.resolve())


def test_delete_replaces_subtree(tmp_path: Path) -> None:
    write(tmp_path / "base.yaml", "train: {optimizer: {type: sgd, lr: 0.1, momentum: 0.9}}\n")
    cfg = load_config(
        write(
            tmp_path / "run.yaml",
            "_base_: base.yaml\ntrain: {optimizer: {_delete_: true, type: adamw, lr: 0.001}}\n",
        )
    )
    assert cfg["train"]["optimizer"] == {"type": "adamw", "lr": 0.001}
    merged = merge({"a": {"x": 1}}, {"a": {"y": 2}})
    assert merged == {"a": {"x": 1, "y": 2}}


def test_cyclic_base_is_detected(tmp_path: Path) -> None:
    write(tmp_path / "a.yaml", "_base_: b.yaml\n")
    write(tmp_path / "b.yaml", "_base_: a.yaml\n")
    with pytest.raises(ConfigError, match="cyclic _base_") as info:
        load_config(tmp_path / "a.yaml")
    assert info.value.path.startswith("_base_")


def test_missing_base_and_bad_yaml(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="not found"):
        load_config(write(tmp_path / "a.yaml", "_base_: nope.yaml\n"))
    with pytest.raises(ConfigError, match="not valid YAML"):
        load_config(write(tmp_path / "bad.yaml", "train: {epochs: [1, 2\n"))
    with pytest.raises(ConfigError, match="mapping at the top level"):
        load_config(write(tmp_path / "list.yaml", "- 1\n- 2\n"))


def test_yaml_is_never_evaluated(tmp_path: Path) -> None:
    cfg_path = write(tmp_path / "evil.yaml", "train: !!python/object/apply:os.system ['echo pwned']\n")
    with pytest.raises(ConfigError, match="not valid YAML"):
        load_config(cfg_path)


def test_overrides_parse_yaml_scalars_and_index_lists() -> None:
    cfg = {"train": {"epochs": 1}, "model": {"loss": [{"type": "ce"}, {"type": "focal"}]}}
    out = apply_overrides(
        cfg,
        [
            "train.epochs=3",
            "train.amp=bf16",
            "train.lr=1e-3",
            "model.loss.1.gamma=2.0",
            "train.flag=true",
            "train.list=[1, 2]",
            "new.key=null",
        ],
    )
    assert out["train"] == {"epochs": 3, "amp": "bf16", "lr": 1e-3, "flag": True, "list": [1, 2]}
    assert out["model"]["loss"][1] == {"type": "focal", "gamma": 2.0}
    assert out["new"] == {"key": None}
    assert cfg["train"] == {"epochs": 1}  # the input is not modified
    assert parse_override("a.b=x=y") == (["a", "b"], "x=y")


@pytest.mark.parametrize(
    ("override", "match"),
    [
        ("train.epochs", "must look like key.path=value"),
        ("train..epochs=1", "empty key segment"),
        ("=3", "empty key segment"),
        ("model.loss.5.gamma=1", "out of range"),
        ("model.loss.x.gamma=1", "not a list index"),
        ("train.epochs.sub=1", "not a mapping or list|inside a int"),
        ("train.epochs=[1, 2", "not valid YAML"),
    ],
)
def test_bad_overrides_raise_config_error(override: str, match: str) -> None:
    cfg = {"train": {"epochs": 1}, "model": {"loss": [{"type": "ce"}]}}
    with pytest.raises(ConfigError, match=match):
        apply_overrides(cfg, [override])


def test_unknown_section_and_key_name_full_path_and_closest() -> None:
    with pytest.raises(ConfigError) as info:
        load_config({"trian": {"epochs": 1}})
    assert info.value.path == "trian" and "Did you mean 'train'" in str(info.value)
    with pytest.raises(ConfigError) as info:
        load_config({"train": {"epoch": 1}})
    assert info.value.path == "train.epoch" and "Did you mean 'epochs'" in str(info.value)
    with pytest.raises(ConfigError, match="expected a mapping") as info:
        load_config({"data": [1, 2]})
    assert info.value.path == "data"


def test_dump_round_trips(tmp_path: Path) -> None:
    cfg = load_config({"train": {"epochs": 2, "optimizer": {"type": "sgd", "lr": 0.1}}, "work_dir": "runs/x"})
    path = write(tmp_path / "dumped.yaml", dump_config(cfg))
    assert load_config(path) == {**cfg, "_source_": str(path.resolve())}
