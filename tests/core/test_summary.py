"""Model summary numbers against direct computations on the reference torchvision model."""

from __future__ import annotations

import torch
import torchvision
from torch.utils.flop_counter import FlopCounterMode

import visionstack as vs
from visionstack.tools.summary import count_params, summarize


def test_params_and_flops_match_torchvision_resnet18() -> None:
    model = vs.create_model("resnet18", num_classes=7)
    ref = torchvision.models.resnet18(num_classes=7)
    summary = summarize(model, 64, layers=True, max_depth=3)
    assert summary.total_params == sum(p.numel() for p in ref.parameters())
    with FlopCounterMode(display=False) as counter:
        ref(torch.zeros(1, 3, 64, 64))
    assert summary.flops == counter.get_total_flops() > 0
    assert summary.macs * 2 == summary.flops
    assert summary.output_shapes["output"] == "1x7"
    assert [f.channels for f in summary.feature_info] == [512]
    parts = {name: total for name, total, _ in summary.parts}
    assert parts["head"] == 512 * 7 + 7
    assert any(row.name.endswith("layer4") and row.output_shape.endswith("x2x2") for row in summary.layers)


def test_trainable_counts_follow_requires_grad() -> None:
    model = vs.build_model({"backbone": "test_tiny", "num_classes": 3})
    for p in model.backbone.parameters():
        p.requires_grad_(False)
    total, trainable = count_params(model)
    assert trainable == 16 * 3 + 3 and total > trainable
