"""Every encoder x head x loss (and every neck) builds from a config without channel numbers and trains.

One SGD step on a tiny batch through ``ImageClassifier.train_step`` and an ``OptimWrapper``: the loss is
finite, every trainable parameter receives a finite gradient before the step (captured by an optimizer
pre-step hook, since the wrapper zeroes gradients after stepping), and the step moves each parameter by
exactly ``-lr * grad``. Parts are enumerated from the registries, so a newly registered part is covered
automatically.
"""

from __future__ import annotations

from typing import Any

import pytest
import torch

from visionstack.core.registry import ENCODERS, HEADS, LOSSES, NECKS
from visionstack.engine.optim_wrapper import OptimWrapper
from visionstack.models.build import build_model


def own_parts(registry, module: str) -> list[str]:
    return [n for n in registry.names() if getattr(registry.get(n), "__module__", "") == module]


ENCODER_NAMES = own_parts(ENCODERS, "visionstack.models.parts.encoders")
HEAD_NAMES = own_parts(HEADS, "visionstack.models.parts.heads")
LOSS_NAMES = own_parts(LOSSES, "visionstack.models.parts.losses")
NECK_NAMES = own_parts(NECKS, "visionstack.models.parts.necks")

#: Arguments a part cannot do without (never channel numbers the model already knows).
REQUIRED: dict[str, dict[str, Any]] = {"stacked_linear": {"mid_channels": [8]}}
#: Losses that do not look at the logits get a classification loss beside them, as they are used in
#: practice; otherwise the head would honestly receive no gradient (checked in its own test below).
FEATURE_ONLY_LOSSES = {"center"}
NUM_CLASSES = 3


def part(name: str) -> dict[str, Any]:
    return {"type": name, **REQUIRED.get(name, {})}


def loss_cfg(name: str) -> list[dict[str, Any]]:
    if name in FEATURE_ONLY_LOSSES:
        return [part("cross_entropy"), {**part(name), "weight": 0.1}]
    return [part(name)]


def tiny_batch(seed: int = 0, soft: bool = False) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    labels = torch.tensor([0, 1, 2, 1])
    batch = {"image": torch.randn(4, 3, 16, 16, generator=g), "label": labels, "index": torch.arange(4)}
    if soft:
        batch["label"] = 0.7 * torch.nn.functional.one_hot(labels, NUM_CLASSES) + 0.1
    return batch


def train_one_step(cfg: dict[str, Any], soft: bool = False) -> dict[str, torch.Tensor | None]:
    """Build, run one step; returns the gradients seen just before the optimizer step."""
    torch.manual_seed(0)
    model = build_model(cfg)
    model.train()
    params = dict(model.named_parameters())
    before = {n: p.detach().clone() for n, p in params.items()}
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    grads: dict[str, torch.Tensor | None] = {}

    def capture(opt, args, kwargs) -> None:
        grads.update({n: None if p.grad is None else p.grad.detach().clone() for n, p in params.items()})

    optimizer.register_step_pre_hook(capture)
    logs = model.train_step(tiny_batch(soft=soft), OptimWrapper(optimizer))
    assert torch.isfinite(logs["loss"]), f"loss is {logs['loss']}"
    assert grads, "the optimizer did not step"
    for name, p in params.items():  # plain SGD: the step is exactly -lr * grad
        g = grads[name]
        expected = before[name] if g is None else before[name] - 0.1 * g
        torch.testing.assert_close(p.detach(), expected, msg=f"{name} was not updated by the SGD step")
    return grads


def assert_all_gradients(grads: dict[str, torch.Tensor | None]) -> None:
    missing = [n for n, g in grads.items() if g is None]
    assert not missing, f"no gradient reached: {missing}"
    bad = [n for n, g in grads.items() if not torch.isfinite(g).all()]
    assert not bad, f"non-finite gradients: {bad}"


def test_the_parts_are_all_enumerated() -> None:
    assert set(ENCODER_NAMES) == {
        "gap",
        "gmp",
        "max_pooling_2d",
        "avg_pooling_2d",
        "gem",
        "bilinear_attention_pooling",
    }
    assert set(HEAD_NAMES) == {
        "linear",
        "classifier_2fc",
        "classifier_drop_1fc",
        "stacked_linear",
        "mlp",
        "cosine",
    }
    assert set(LOSS_NAMES) == {
        "cross_entropy",
        "soft_target_cross_entropy",
        "binary_cross_entropy",
        "focal",
        "center",
    }
    assert set(NECK_NAMES) == {"multi_scale_conv", "fpn", "hr_fuse_scales", "global_average_pooling"}


@pytest.mark.parametrize("head", HEAD_NAMES)
@pytest.mark.parametrize("encoder", ENCODER_NAMES)
def test_encoder_head_loss_trains_one_step(encoder: str, head: str) -> None:
    for loss in LOSS_NAMES:
        cfg = {
            "backbone": {"type": "test_tiny"},
            "encoder": part(encoder),
            "head": part(head),
            "loss": loss_cfg(loss),
            "num_classes": NUM_CLASSES,
        }
        try:
            assert_all_gradients(train_one_step(cfg))
        except AssertionError as err:
            raise AssertionError(f"{encoder} x {head} x {loss}: {err}") from err


@pytest.mark.parametrize("loss", LOSS_NAMES)
def test_every_loss_takes_soft_targets(loss: str) -> None:
    cfg = {"backbone": "test_tiny", "loss": loss_cfg(loss), "num_classes": NUM_CLASSES}
    assert_all_gradients(train_one_step(cfg, soft=True))


def test_a_feature_only_loss_alone_trains_backbone_and_centers_but_not_the_head() -> None:
    cfg = {"backbone": "test_tiny", "loss": part("center"), "num_classes": NUM_CLASSES}
    grads = train_one_step(cfg)
    assert grads["head.fc.weight"] is None and grads["head.fc.bias"] is None
    assert_all_gradients({n: g for n, g in grads.items() if not n.startswith("head.")})
    assert grads["loss.0.centers"].abs().sum() > 0


@pytest.mark.parametrize("encoder", ENCODER_NAMES)
@pytest.mark.parametrize("neck", [n for n in NECK_NAMES if n != "global_average_pooling"])
def test_map_neck_encoder_combinations_train(neck: str, encoder: str) -> None:
    cfg = {
        "backbone": {"type": "test_tiny", "out_indices": [0, 1, 2]},
        "neck": part(neck),
        "encoder": part(encoder),
        "head": "linear",
        "loss": "cross_entropy",
        "num_classes": NUM_CLASSES,
    }
    assert_all_gradients(train_one_step(cfg))


@pytest.mark.parametrize("head", HEAD_NAMES)
def test_pooling_neck_with_every_head_trains(head: str) -> None:
    cfg = {
        "backbone": {"type": "test_tiny", "out_indices": [1, 2]},
        "neck": "global_average_pooling",
        "head": part(head),
        "loss": "cross_entropy",
        "num_classes": NUM_CLASSES,
    }
    assert_all_gradients(train_one_step(cfg))
