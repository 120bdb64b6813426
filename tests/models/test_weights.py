"""Weights loading: file formats, nestings, prefixes, partial-match report, strict, tags, errors, saving."""

from __future__ import annotations

import os
from collections import OrderedDict
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file
from torch import nn

from visionstack.core.io import save_weights
from visionstack.errors import CheckpointError
from visionstack.models.weights.io import read_state_dict
from visionstack.models.weights.load import WeightsReport, load_weights
from visionstack.models.weights.tags import torchvision_weights_file


def small_net(out: int = 5, in_chans: int = 3) -> nn.Module:
    torch.manual_seed(out * 10 + in_chans)
    return nn.Sequential(
        OrderedDict(
            conv=nn.Conv2d(in_chans, 4, 3),
            bn=nn.BatchNorm2d(4),
            pool=nn.AdaptiveAvgPool2d(1),
            flat=nn.Flatten(),
            fc=nn.Linear(4, out),
        )
    )


def randomized(module: nn.Module) -> dict[str, torch.Tensor]:
    """A state dict of ``module``'s layout with fresh random values (running stats included)."""
    g = torch.Generator().manual_seed(123)
    return {
        k: (torch.rand(v.shape, generator=g) + 0.5 if v.is_floating_point() else v.clone())
        for k, v in module.state_dict().items()
    }


def assert_loaded(module: nn.Module, state: dict[str, torch.Tensor]) -> None:
    for key, value in module.state_dict().items():
        torch.testing.assert_close(value, state[key], rtol=0, atol=0, msg=key)


@pytest.mark.parametrize("suffix", [".safetensors", ".pth", ".pt", ".bin"])
def test_every_file_format_loads_all_tensors(tmp_path: Path, suffix: str) -> None:
    state = randomized(small_net())
    path = tmp_path / f"w{suffix}"
    if suffix == ".safetensors":
        save_file(state, str(path))
    else:
        torch.save(state, path)
    model = small_net()
    report = load_weights(model, path, log=False)
    assert report.ok and len(report.loaded) == len(state) == 9
    assert report.source == str(path)
    assert_loaded(model, state)


@pytest.mark.parametrize(
    "wrap",
    [
        lambda sd: {"state_dict": sd},
        lambda sd: {"model": sd, "epoch": 3, "optimizer": {"lr": 0.1}},
        lambda sd: {"checkpoint": 1, "module": {"state_dict": sd}},
        lambda sd: {"state_dict": sd, "state_dict_ema": {k: v * 0 for k, v in sd.items()}},
    ],
)
def test_nested_checkpoints_are_unwrapped(tmp_path: Path, wrap) -> None:
    state = randomized(small_net())
    torch.save(wrap(state), tmp_path / "ckpt.pth")
    model = small_net()
    report = load_weights(model, tmp_path / "ckpt.pth", log=False)
    assert report.ok
    assert_loaded(model, state)


def test_ema_only_when_asked(tmp_path: Path) -> None:
    state = randomized(small_net())
    ema = {k: v + 1 if v.is_floating_point() else v for k, v in state.items()}
    torch.save({"state_dict": state, "state_dict_ema": ema}, tmp_path / "c.pth")
    model = small_net()
    load_weights(model, tmp_path / "c.pth", use_ema=True, log=False)
    assert_loaded(model, ema)
    torch.save({"state_dict": state}, tmp_path / "no_ema.pth")
    with pytest.raises(CheckpointError, match="no EMA weights"):
        load_weights(model, tmp_path / "no_ema.pth", use_ema=True, log=False)


@pytest.mark.parametrize("prefix", ["module.", "_orig_mod.", "backbone.", "model.", "module._orig_mod."])
def test_wrapper_prefixes_are_stripped(prefix: str) -> None:
    state = randomized(small_net())
    model = small_net()
    report = load_weights(model, {prefix + k: v for k, v in state.items()}, log=False)
    assert report.ok and len(report.loaded) == 9
    assert "stripped" in report.key_map
    assert_loaded(model, state)


def test_module_path_is_added_for_a_wrapped_model() -> None:
    state = randomized(small_net())
    wrapper = nn.Module()
    wrapper.backbone = small_net()
    wrapper.head = nn.Linear(5, 2)
    report = load_weights(wrapper, state, log=False)
    assert report.key_map == "added 'backbone.'"
    assert len(report.loaded) == 9 and report.missing == ["head.weight", "head.bias"]
    assert_loaded(wrapper.backbone, state)


def test_partial_match_report_counts_are_exact() -> None:
    model = small_net(out=5)
    source = randomized(small_net(out=3))  # fc has 3 outputs in the file: 2 shape mismatches
    del source["bn.running_var"]  # 1 missing
    source["extra.weight"] = torch.zeros(2)  # 2 unexpected
    source["extra.bias"] = torch.zeros(2)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    report = load_weights(model, source, log=False)
    assert sorted(report.loaded) == sorted(
        ["conv.weight", "conv.bias", "bn.weight", "bn.bias", "bn.running_mean", "bn.num_batches_tracked"]
    )
    assert report.missing == ["bn.running_var"]
    assert report.unexpected == ["extra.weight", "extra.bias"]
    assert report.shape_mismatched == ["fc.weight", "fc.bias"]
    assert report.shapes["fc.weight"] == ((5, 4), (3, 4))
    assert not report.ok
    after = model.state_dict()
    torch.testing.assert_close(after["fc.weight"], before["fc.weight"])  # left as initialized
    torch.testing.assert_close(after["bn.running_var"], before["bn.running_var"])
    torch.testing.assert_close(after["conv.weight"], source["conv.weight"])
    text = str(report)
    assert "loaded 6, missing 1, unexpected 2, shape-mismatched 2" in text
    assert (
        "fc.weight model [5, 4] file [3, 4]" in text and "extra.weight" in text and "bn.running_var" in text
    )
    assert set(report.unused) == {"extra.weight", "extra.bias", "fc.weight", "fc.bias"}


def test_report_lists_only_first_names() -> None:
    report = WeightsReport("x", missing=[f"layer{i}.weight" for i in range(12)])
    assert "layer4.weight, ... 7 more" in str(report) and "layer5.weight" not in str(report)


def test_strict_fails_naming_what_does_not_match() -> None:
    model = small_net(out=5)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    source = randomized(small_net(out=3))
    with pytest.raises(CheckpointError) as info:
        load_weights(model, source, strict=True, log=False)
    message = str(info.value)
    assert (
        "strict" in message
        and "shape-mismatched 2" in message
        and "fc.weight model [5, 4] file [3, 4]" in message
    )
    for key, value in model.state_dict().items():  # nothing was loaded
        torch.testing.assert_close(value, before[key])
    assert load_weights(small_net(out=3), source, strict=True, log=False).ok


@pytest.mark.parametrize("suffix", [".safetensors", ".pth"])
def test_truncated_file_names_the_file(tmp_path: Path, suffix: str) -> None:
    path = tmp_path / f"broken{suffix}"
    state = randomized(small_net())
    save_file(state, str(path)) if suffix == ".safetensors" else torch.save(state, path)
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    with pytest.raises(CheckpointError, match="broken"):
        load_weights(small_net(), path, log=False)


def test_missing_file_and_unsafe_pickle(tmp_path: Path) -> None:
    with pytest.raises(CheckpointError, match="not found.*nope.pth"):
        load_weights(small_net(), tmp_path / "nope.pth", log=False)
    torch.save(small_net(), tmp_path / "whole_module.pth")  # a pickled module, not a state dict
    with pytest.raises(CheckpointError, match="weights_only"):
        read_state_dict(tmp_path / "whole_module.pth")


def test_input_conv_is_adapted_to_other_channel_counts() -> None:
    source = randomized(small_net())
    model = small_net(in_chans=1)
    report = load_weights(model, source, log=False)
    assert report.adapted == ["conv.weight"] and report.ok
    torch.testing.assert_close(model.conv.weight, source["conv.weight"].sum(1, keepdim=True))


@pytest.fixture
def hub_dir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.setattr(torch.hub, "_hub_dir", str(tmp_path / "hub"))
    return tmp_path / "hub"


def test_torchvision_tag_reads_the_hub_cache(hub_dir: Path) -> None:
    from torchvision.models import resnet18

    torch.manual_seed(0)
    reference = resnet18()
    file = torchvision_weights_file("resnet18", "IMAGENET1K_V1")
    assert file == hub_dir / "checkpoints" / "resnet18-f37072fd.pth"
    with pytest.raises(CheckpointError) as info:
        load_weights(resnet18(), "IMAGENET1K_V1", family="torchvision", arch="resnet18", log=False)
    assert "resnet18-f37072fd.pth" in str(info.value) and str(hub_dir / "checkpoints") in str(info.value)
    file.parent.mkdir(parents=True)
    torch.save(reference.state_dict(), file)
    for tag in ("IMAGENET1K_V1", "DEFAULT"):
        model = resnet18()
        report = load_weights(model, tag, family="torchvision", arch="resnet18", log=False)
        assert report.ok and str(file) in report.source
        assert_loaded(model, reference.state_dict())
    with pytest.raises(CheckpointError, match="IMAGENET1K_V1"):
        load_weights(resnet18(), "IMAGENET1K_V9", family="torchvision", arch="resnet18", log=False)


def test_torchvision_densenet_old_key_names(hub_dir: Path) -> None:
    from torchvision.models import densenet121

    reference = densenet121()
    old = {
        k.replace("norm1.", "norm.1.").replace("conv2.", "conv.2."): v
        for k, v in reference.state_dict().items()
    }
    assert old.keys() != reference.state_dict().keys()
    file = torchvision_weights_file("densenet121", "DEFAULT")
    file.parent.mkdir(parents=True)
    torch.save(old, file)
    report = load_weights(densenet121(), "DEFAULT", family="torchvision", arch="densenet121", log=False)
    assert report.ok, str(report)


def test_timm_tag_reads_the_local_drop_in_file(hub_dir: Path) -> None:
    import timm

    reference = timm.create_model("resnet10t", pretrained=False)
    with pytest.raises(CheckpointError) as info:
        load_weights(timm.create_model("resnet10t"), "c3_in1k", family="timm", arch="resnet10t", log=False)
    drop_in = hub_dir / "checkpoints" / "timm" / "resnet10t.c3_in1k.safetensors"
    assert str(drop_in) in str(info.value) and "timm/resnet10t.c3_in1k" in str(info.value)
    save_weights(reference, drop_in)
    for tag in ("c3_in1k", "DEFAULT"):
        model = timm.create_model("resnet10t")
        report = load_weights(model, tag, family="timm", arch="resnet10t", log=False)
        assert report.ok and str(drop_in) in report.source
        assert_loaded(model, reference.state_dict())


def test_save_weights_is_atomic_and_handles_tied_tensors(tmp_path: Path) -> None:
    model = small_net()
    model.tied = nn.Linear(4, 5)
    model.tied.weight = model.fc.weight  # shared parameter
    path = save_weights(model, tmp_path / "sub" / "w.safetensors", metadata={"arch": "small"})
    assert sorted(os.listdir(path.parent)) == ["w.safetensors"]  # no temporary file left behind
    loaded = load_file(str(path))
    assert set(loaded) == set(model.state_dict())
    torch.testing.assert_close(loaded["tied.weight"], model.fc.weight.detach())
    fresh = small_net(out=5)
    fresh.tied = nn.Linear(4, 5)
    assert load_weights(fresh, path, log=False).ok


def test_logging_reports_mismatches(caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level("INFO", logger="visionstack.models.weights.load"):
        load_weights(small_net(out=5), randomized(small_net(out=3)))
    assert any(r.levelname == "WARNING" and "shape-mismatched 2" in r.getMessage() for r in caplog.records)


class _Versioned(nn.Module):
    """A module that, like MNASNet, reads its state-dict version while loading."""

    _version = 2

    def __init__(self) -> None:
        super().__init__()
        self.lin = nn.Linear(2, 2)
        self.seen: list[int | None] = []

    def _load_from_state_dict(self, state_dict, prefix, local_metadata, *args) -> None:
        self.seen.append(local_metadata.get("version"))
        super()._load_from_state_dict(state_dict, prefix, local_metadata, *args)


def test_loading_passes_the_models_state_dict_versions(tmp_path: Path) -> None:
    source = nn.Sequential(_Versioned())
    path = save_weights(source, tmp_path / "v.safetensors")  # safetensors keeps no versions
    model = nn.Sequential(_Versioned())
    report = load_weights(model, path, log=False)
    assert report.ok and model[0].seen == [2]
    assert_loaded(model, source.state_dict())
