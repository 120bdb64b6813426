"""Zoo test: every torchvision classification model as a backbone, and its native classifier path.

* every model, ``features_only``: every level's map is NCHW with ``feature_info``'s channels, reductions
  are non-decreasing and each spatial size lies in ``[H / (2 * reduction), ceil(H / reduction) + 1]``;
  the input is 64 px, or the size the model needs (ViT / MaxViT: 224, Inception: 128);
* every model, on the meta device (no compute): the native split (encoder + classifier) is found;
* one model per family: ``create_model(name, weights=<file of the torchvision model>)`` gives the
  torchvision model's logits.
"""

from __future__ import annotations

import math

import pytest
import torch

import visionstack as vs
from tests.models.test_equivalence import reference, save
from visionstack.core.registry import BACKBONES
from visionstack.models.backbones.torchvision import build_torchvision_model, torchvision_names
from visionstack.models.features.discovery import discover_stages
from visionstack.models.features.graph_cut import split_native, trace_model
from visionstack.models.parts.native import in_units

pytestmark = pytest.mark.zoo

NAMES = torchvision_names()
#: the smallest model of each family (the equivalence sample)
FAMILY_SAMPLE = (
    "alexnet",
    "convnext_tiny",
    "densenet121",
    "efficientnet_b0",
    "efficientnet_v2_s",
    "googlenet",
    "inception_v3",
    "maxvit_t",
    "mnasnet0_5",
    "mobilenet_v2",
    "mobilenet_v3_large",
    "regnet_x_400mf",
    "regnet_y_400mf",
    "resnet18",
    "resnext50_32x4d",
    "shufflenet_v2_x0_5",
    "squeezenet1_1",
    "swin_v2_t",
    "vgg11_bn",
    "vit_b_32",
    "wide_resnet50_2",
)


def input_size(discovery) -> int:
    return discovery.input_size[0] if discovery.fixed_size else max(64, discovery.input_size[0])


@pytest.mark.parametrize("name", NAMES)
def test_every_level_of_every_model(name):
    backbone = BACKBONES.get(name)(features_only=True).eval()
    size = input_size(backbone.discovery)
    with torch.no_grad():
        outs = backbone(torch.randn(1, 3, size, size))
    infos = backbone.feature_info
    assert len(outs) == len(infos) >= 1
    reductions = [f.reduction for f in infos]
    assert reductions == sorted(reductions), reductions
    for out, info in zip(outs, infos):
        assert out.ndim == 4 and out.shape[0] == 1, (info, tuple(out.shape))
        assert out.shape[1] == info.channels, (info, tuple(out.shape))
        for s in out.shape[2:]:
            assert size / (2 * info.reduction) <= s <= math.ceil(size / info.reduction) + 1, (
                info,
                tuple(out.shape),
            )


@pytest.mark.parametrize("name", NAMES)
def test_native_path_is_found(name):
    model = build_torchvision_model(name, meta=True)
    found = discover_stages(model, cache_key=("torchvision", name, "[]"))
    split = split_native(model, trace_model(model, found.body_units), found.levels[-1])
    assert in_units(split.final) > 0 and split.encoder is not None


@pytest.mark.parametrize("name", FAMILY_SAMPLE)
def test_family_sample_matches_torchvision(tmp_path, name):
    size = {"maxvit_t": 224, "vit_b_32": 224, "inception_v3": 299}.get(name, 64)  # Inception: its aux head
    ref = reference(name, size=size)
    model = vs.create_model(name, weights=save(ref, tmp_path / name, "safetensors")).eval()
    x = torch.randn(2, 3, size, size)
    with torch.no_grad():
        want, got = ref(x), model(x)
    assert (got - want).abs().max().item() <= 1e-5
    assert (want[0] - want[1]).abs().max() > 1e-3


@pytest.mark.parametrize("output_stride", [16, 8])
@pytest.mark.parametrize("name", FAMILY_SAMPLE)
def test_family_sample_output_stride(name, output_stride):
    """Either the reductions cap at ``output_stride`` and the maps have those sizes, or a clear refusal."""
    try:
        backbone = BACKBONES.get(name)(features_only=True, output_stride=output_stride).eval()
    except ValueError as err:
        assert f"output_stride={output_stride} is not available for {name}: " in str(err)
        return
    base = BACKBONES.get(name)(features_only=True)
    size = input_size(backbone.discovery)
    with torch.no_grad():
        outs = backbone(torch.randn(1, 3, size, size))
    want = [min(f.reduction, output_stride) for f in base.feature_info]
    assert [f.reduction for f in backbone.feature_info] == want
    for out, info in zip(outs, backbone.feature_info):
        assert out.shape[1] == info.channels and torch.isfinite(out).all()
        for s in out.shape[2:]:
            assert size / (2 * info.reduction) <= s <= math.ceil(size / info.reduction) + 1
