"""Part building: signature checks before building, wiring of in_channels, errors with full key paths."""

from __future__ import annotations

from typing import Literal

import pytest
import torch
from torch import nn

from visionstack.core.build import build_part
from visionstack.core.config import load_config
from visionstack.core.registry import HEADS
from visionstack.errors import ConfigError, UnknownNameError
from visionstack.models.build import build_model
from visionstack.models.parts.base import Head


class ProbeHead(Head):
    """A head with typed arguments, for checking validation."""

    def __init__(
        self,
        in_channels: int,
        num_classes: int,
        hidden: int = 4,
        dropout: float = 0.0,
        act: Literal["relu", "gelu"] = "relu",
        widths: list[int] | None = None,
        bias: bool = True,
    ) -> None:
        super().__init__(in_channels, num_classes)
        self.fc = nn.Sequential(nn.Linear(in_channels, hidden), nn.Linear(hidden, num_classes, bias=bias))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(x)


if "test_probe_head" not in HEADS:
    HEADS.register("test_probe_head")(ProbeHead)


def model_cfg(**head) -> dict:
    return {
        "backbone": {"type": "test_tiny"},
        "encoder": "gap",
        "head": {"type": "test_probe_head", **head},
        "loss": "cross_entropy",
        "num_classes": 3,
    }


def test_in_channels_are_wired_and_explicit_value_is_checked() -> None:
    model = build_model(model_cfg())
    assert model.head.in_channels == 16  # test_tiny's last stage
    assert model(torch.zeros(2, 3, 16, 16)).shape == (2, 3)
    build_model(model_cfg(in_channels=16))  # explicit and right: fine
    with pytest.raises(ConfigError, match="previous part outputs 16") as info:
        build_model(model_cfg(in_channels=32))
    assert info.value.path == "model.head.in_channels"


@pytest.mark.parametrize(
    ("head", "path", "match"),
    [
        ({"hiden": 3}, "model.head.hiden", "Did you mean 'hidden'"),
        ({"hidden": "3"}, "model.head.hidden", "expected int, got str"),
        ({"hidden": True}, "model.head.hidden", "expected int, got bool"),
        ({"dropout": "high"}, "model.head.dropout", "expected float"),
        ({"act": "tanh"}, "model.head.act", "expected one of 'relu', 'gelu', got str"),
        ({"widths": [1, "a"]}, "model.head.widths", r"expected list\[int\] \| None"),
        ({"bias": 1}, "model.head.bias", "expected bool"),
    ],
)
def test_bad_head_arguments_name_the_full_path(head: dict, path: str, match: str) -> None:
    with pytest.raises(ConfigError, match=match) as info:
        build_model(model_cfg(**head))
    assert info.value.path == path


def test_unknown_part_type_names_the_path_and_suggests() -> None:
    cfg = model_cfg()
    cfg["encoder"] = {"type": "gapp"}
    with pytest.raises(UnknownNameError) as info:
        build_model(cfg)
    assert info.value.path == "model.encoder.type"
    assert "unknown encoder 'gapp'" in str(info.value) and "Did you mean" in str(info.value)


def test_missing_required_argument_and_missing_type() -> None:
    with pytest.raises(ConfigError, match="missing") as info:
        build_part(HEADS, {"type": "test_probe_head"}, "head", {"in_channels": 4})
    assert info.value.path == "head.num_classes"
    cfg = model_cfg()
    cfg["head"] = {"hidden": 3}
    with pytest.raises(ConfigError, match="needs a 'type'") as info:
        build_model(cfg)
    assert info.value.path == "model.head.type"


def test_validation_happens_before_anything_is_built(monkeypatch: pytest.MonkeyPatch) -> None:
    """A typo in the loss is reported without constructing the backbone."""
    from tests.conftest import TinyBackbone

    built = []
    monkeypatch.setattr(
        TinyBackbone, "__init__", lambda self, *a, **k: built.append(1) or nn.Module.__init__(self)
    )
    cfg = model_cfg()
    cfg["loss"] = {"type": "cross_entropy", "label_smothing": 0.1}
    with pytest.raises(ConfigError) as info:
        load_config({"model": cfg})
    assert info.value.path == "model.loss.label_smothing"
    assert built == []


def test_num_classes_missing_everywhere_is_a_clear_error() -> None:
    cfg = model_cfg()
    del cfg["num_classes"]
    with pytest.raises(ConfigError, match="number of classes is not set") as info:
        build_model(cfg)
    assert info.value.path == "model.num_classes"


def test_an_error_inside_a_part_keeps_its_type_traceback_and_gets_the_key_path() -> None:
    """Only config mistakes become ConfigError: a part's own failure (here torch's Linear refusing a
    negative width) stays what it is, with the key path of the part as a note."""
    with pytest.raises(RuntimeError, match="negative dimension") as info:
        build_model(model_cfg(hidden=-1))
    assert not isinstance(info.value, ConfigError)
    assert info.value.__notes__ == ["while building head 'test_probe_head' at config key model.head"]
    frames = [frame.name for frame in info.traceback]
    assert "__init__" in frames and any("linear" in str(frame.path) for frame in info.traceback)


class BuggyHead(Head):
    def __init__(self, in_channels: int, num_classes: int) -> None:
        super().__init__(in_channels, num_classes)
        self.ratio = in_channels / 0  # a user's bug


def test_a_bug_in_a_user_part_surfaces_as_itself() -> None:
    HEADS.register("test_buggy_head", force=True)(BuggyHead)
    with pytest.raises(ZeroDivisionError) as info:
        build_model({**model_cfg(), "head": "test_buggy_head"})
    assert info.value.__notes__ == ["while building head 'test_buggy_head' at config key model.head"]


def test_a_value_a_part_rejects_is_a_config_error_at_its_key() -> None:
    with pytest.raises(ConfigError, match=r"model.head.dropout: must be in \[0, 1\)") as info:
        build_model({**model_cfg(), "head": {"type": "linear", "dropout": 1.5}})
    assert info.value.path == "model.head.dropout"


def test_string_shorthand_and_prebuilt_modules() -> None:
    from tests.conftest import TinyBackbone

    model = build_model(
        {
            "backbone": TinyBackbone(),
            "encoder": "GlobalAveragePooling",
            "head": "LinearClsHead",
            "num_classes": 5,
        }
    )
    assert model(torch.zeros(1, 3, 16, 16)).shape == (1, 5)
