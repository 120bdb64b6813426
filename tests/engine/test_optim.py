"""Optimizers by name, parameter groups (per-part lr, no-decay sets) and the OptimWrapper's update rules."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from visionstack.engine.optim import build_optim_wrapper, build_optimizer, param_groups
from visionstack.engine.optim_wrapper import NonFiniteLossError, OptimWrapper
from visionstack.errors import ConfigError, UnknownNameError
from visionstack.models.build import build_model


def _model() -> nn.Module:
    torch.manual_seed(0)
    return build_model({"backbone": "test_tiny", "num_classes": 3})


def _names(model: nn.Module, group: dict) -> set[str]:
    ids = {id(p) for p in group["params"]}
    return {n for n, p in model.named_parameters() if id(p) in ids}


def test_param_groups_split_parts_and_decay() -> None:
    model = _model()
    groups = param_groups(model, lr=0.1, weight_decay=5e-4, lr_mult={"backbone": 0.1, "head": 2.0})
    by_name = {g["name"]: g for g in groups}
    assert set(by_name) == {"backbone", "backbone/no_decay", "head", "head/no_decay"}
    assert by_name["backbone"]["lr"] == pytest.approx(0.01) and by_name["backbone/no_decay"][
        "lr"
    ] == pytest.approx(0.01)
    assert by_name["head"]["lr"] == pytest.approx(0.2) and by_name["head"]["initial_lr"] == pytest.approx(0.2)
    assert by_name["backbone"]["weight_decay"] == 5e-4 and by_name["head/no_decay"]["weight_decay"] == 0.0
    conv_weights = {f"backbone.stages.{i}.0.weight" for i in range(3)}
    assert _names(model, by_name["backbone"]) == conv_weights
    no_decay = _names(model, by_name["backbone/no_decay"])
    assert no_decay == {
        f"backbone.stages.{i}.{j}.{k}" for i in range(3) for j, k in ((0, "bias"), (1, "weight"), (1, "bias"))
    }
    assert _names(model, by_name["head"]) == {"head.fc.weight"}
    assert _names(model, by_name["head/no_decay"]) == {"head.fc.bias"}
    # every trainable parameter is in exactly one group
    assert sum(len(g["params"]) for g in groups) == len(list(model.parameters()))


def test_dotted_lr_mult_and_no_decay_off() -> None:
    model = _model()
    groups = param_groups(
        model, 1.0, 0.1, lr_mult={"backbone": 0.5, "backbone.stages.2": 0.0}, no_decay=False
    )
    by_name = {g["name"]: g for g in groups}
    assert set(by_name) == {"backbone", "backbone.stages.2", "head"}
    assert by_name["backbone.stages.2"]["lr"] == 0.0 and by_name["backbone"]["lr"] == 0.5
    assert all(g["weight_decay"] == 0.1 for g in groups)


def test_unknown_lr_mult_key_names_the_parts() -> None:
    with pytest.raises(
        ConfigError, match=r"lr_mult\.backbon.*Did you mean 'backbone'.*backbone, encoder, head"
    ):
        param_groups(_model(), 0.1, lr_mult={"backbon": 0.1})


@pytest.mark.parametrize(
    ("name", "cls"),
    [
        ("sgd", torch.optim.SGD),
        ("AdamW", torch.optim.AdamW),
        ("adam", torch.optim.Adam),
        ("rmsprop", torch.optim.RMSprop),
    ],
)
def test_torch_optimizers_by_name(name: str, cls: type) -> None:
    opt = build_optimizer(
        _model(), {"type": name, "lr": 0.01, "weight_decay": 0.01, "lr_mult": {"backbone": 0.5}}
    )
    assert type(opt) is cls
    assert sorted(g["lr"] for g in opt.param_groups) == pytest.approx([0.005, 0.005, 0.01, 0.01])
    assert sorted(g["name"] for g in opt.param_groups)[:2] == ["backbone", "backbone/no_decay"]


def test_timm_optimizer_names_resolve_and_step() -> None:
    model = _model()
    opt = build_optimizer(model, {"type": "lamb", "lr": 0.01, "weight_decay": 0.01})
    assert type(opt).__name__ == "Lamb"
    assert {g["weight_decay"] for g in opt.param_groups} == {0.0, 0.01}  # our decay split is kept
    before = model.head.fc.weight.detach().clone()
    model(torch.randn(2, 3, 16, 16)).sum().backward()
    opt.step()
    assert not torch.equal(before, model.head.fc.weight)
    assert type(build_optimizer(model, {"type": "timm/adamw", "lr": 0.01})).__name__ == "AdamW"


def test_optimizer_config_errors() -> None:
    with pytest.raises(UnknownNameError, match="train.optimizer.type.*Did you mean"):
        build_optimizer(_model(), {"type": "sgdd", "lr": 0.1})
    with pytest.raises(ConfigError, match=r"train.optimizer.*momentun"):
        build_optimizer(_model(), {"type": "sgd", "lr": 0.1, "momentun": 0.9})
    with pytest.raises(ConfigError, match=r"train.optimizer.lr: missing"):
        build_optimizer(_model(), {"type": "sgd"})
    with pytest.raises(ConfigError, match="train.nonfinite"):
        build_optim_wrapper(_model(), {"optimizer": {"type": "sgd", "lr": 0.1}, "nonfinite": "ignore"})
    with pytest.raises(ConfigError, match="train.amp"):
        build_optim_wrapper(_model(), {"optimizer": {"type": "sgd", "lr": 0.1}, "amp": "fp8"})


def _linear_problem(seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(8, 5, generator=g), torch.randn(8, 1, generator=g)


def test_grad_accumulation_equals_one_big_batch() -> None:
    x, y = _linear_problem()
    torch.manual_seed(0)
    big, small = nn.Linear(5, 1), nn.Linear(5, 1)
    small.load_state_dict(big.state_dict())
    one = OptimWrapper(torch.optim.SGD(big.parameters(), lr=0.1))
    two = OptimWrapper(torch.optim.SGD(small.parameters(), lr=0.1), grad_accum=2)
    assert one.update(nn.functional.mse_loss(big(x), y))
    assert not two.update(nn.functional.mse_loss(small(x[:4]), y[:4])) and not two.window_done
    assert two.update(nn.functional.mse_loss(small(x[4:]), y[4:])) and two.window_done
    for a, b in zip(big.parameters(), small.parameters()):
        torch.testing.assert_close(a, b)


def test_nonfinite_stop_raises_before_the_update() -> None:
    x, y = _linear_problem()
    model = nn.Linear(5, 1)
    before = [p.detach().clone() for p in model.parameters()]
    optim = OptimWrapper(torch.optim.SGD(model.parameters(), lr=0.1))
    with pytest.raises(NonFiniteLossError, match="not finite"):
        optim.update(nn.functional.mse_loss(model(x), y) * float("nan"))
    assert all(torch.equal(a, b) for a, b in zip(before, model.parameters()))
    assert all(p.grad is None for p in model.parameters())


def test_nonfinite_skip_drops_the_window_and_goes_on() -> None:
    x, y = _linear_problem()
    model = nn.Linear(5, 1)
    optim = OptimWrapper(torch.optim.SGD(model.parameters(), lr=0.1), grad_accum=2, nonfinite="skip")
    before = [p.detach().clone() for p in model.parameters()]
    optim.update(nn.functional.mse_loss(model(x[:4]), y[:4]) + float("inf"))
    assert not optim.update(nn.functional.mse_loss(model(x[4:]), y[4:]))
    assert optim.window_done and optim.skipped == 1
    assert all(torch.equal(a, b) for a, b in zip(before, model.parameters()))
    optim.update(nn.functional.mse_loss(model(x[:4]), y[:4]))
    assert optim.update(nn.functional.mse_loss(model(x[4:]), y[4:]))
    assert not torch.equal(before[0], model.weight)


def test_clip_grad_bounds_the_norm() -> None:
    x, y = _linear_problem()
    model = nn.Linear(5, 1)
    optim = OptimWrapper(torch.optim.SGD(model.parameters(), lr=1.0), clip_grad=0.01)
    before = torch.cat([p.detach().flatten() for p in model.parameters()])
    optim.update(100 * nn.functional.mse_loss(model(x), y))
    after = torch.cat([p.detach().flatten() for p in model.parameters()])
    assert optim.last_grad_norm > 0.01
    assert (after - before).norm() == pytest.approx(0.01, rel=1e-4)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="the late check runs on accelerators only")
def test_nonfinite_stop_on_cuda_is_checked_one_update_late() -> None:
    x, y = (t.cuda() for t in _linear_problem())
    model = nn.Linear(5, 1).cuda()
    optim = OptimWrapper(torch.optim.SGD(model.parameters(), lr=0.1))
    optim.update(nn.functional.mse_loss(model(x), y) * float("nan"))  # queued: no host sync
    with pytest.raises(NonFiniteLossError, match="previous optimizer update"):
        optim.update(nn.functional.mse_loss(model(x), y))
    optim.update(nn.functional.mse_loss(model(x), y) * float("inf"))
    with pytest.raises(NonFiniteLossError, match="previous optimizer update"):
        optim.check_pending()


def test_nonfinite_gradient_norm_is_caught_with_clipping() -> None:
    """Finite loss, NaN gradient: with clip_grad the norm (computed anyway) joins the one non-finite flag."""
    x, y = _linear_problem()
    for policy in ("stop", "skip"):
        model = nn.Linear(5, 1)
        model.weight.register_hook(lambda g: g * float("nan"))
        before = [p.detach().clone() for p in model.parameters()]
        optim = OptimWrapper(torch.optim.SGD(model.parameters(), lr=0.1), clip_grad=1.0, nonfinite=policy)
        if policy == "stop":
            with pytest.raises(NonFiniteLossError, match="gradient norm is not finite"):
                optim.update(nn.functional.mse_loss(model(x), y))
        else:
            assert not optim.update(nn.functional.mse_loss(model(x), y)) and optim.skipped == 1
        assert all(torch.equal(a, b) for a, b in zip(before, model.parameters()))
        assert all(p.grad is None for p in model.parameters())


def test_total_loss_of_one_entry_is_that_tensor() -> None:
    from visionstack.models.parts.base import total_loss

    ce = torch.tensor(0.75, requires_grad=True) * 2
    assert total_loss({"loss_ce": ce, "acc": torch.tensor(1.0)}) is ce  # no stack, no sum, no copy
    half = total_loss({"loss_ce": ce.to(torch.bfloat16)})
    assert half.dtype == torch.float32 and half.item() == 1.5
    both = total_loss({"loss_a": ce, "loss_b": torch.tensor(0.25, dtype=torch.float16)})
    assert both.dtype == torch.float32 and both.item() == 1.75
    with pytest.raises(ValueError, match="no 'loss\\*' entries"):
        total_loss({"acc": ce})
