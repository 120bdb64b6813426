"""Optimizers by name, parameter groups (per-part learning rates, weight-decay exclusions), the OptimWrapper.

``train.optimizer`` config::

    optimizer: {type: sgd, lr: 0.002, momentum: 0.9, weight_decay: 5.0e-4,
                lr_mult: {backbone: 0.1}, no_decay: true}

- ``type``: ``sgd``, ``adamw``, ``adam``, ``rmsprop`` (torch.optim) or any name of timm's optimizer factory
  (``lamb``, ``lion``, ``adan``, ``timm/adamw``...; built by ``timm.optim.create_optimizer_v2``). The other
  keys are the optimizer's own arguments, checked against its signature.
- ``lr_mult``: learning-rate multipliers by module name: a top-level child of the model (``backbone``,
  ``neck``, ``encoder``, ``head``, ``heads``...) or a dotted path below it (``backbone.layer4``); the longest
  matching name wins, everything else gets 1.0 (FGVCLib's ``LR.backbone``).
- ``no_decay`` (default ``true``): no weight decay for 1-d parameters (norm weights, biases) and for names
  the model lists in ``no_weight_decay()`` (timm convention: ``pos_embed``, ``cls_token``).

Parts with the same multiplier share a parameter group; each group records ``name`` (its parts joined by
``+``, with ``/no_decay`` for the group without weight decay), ``lr_mult`` and ``initial_lr`` (the
scheduler's base learning rate for the group).
"""

from __future__ import annotations

import copy
from collections.abc import Mapping
from typing import Any

import torch
from torch import nn

from visionstack.core.build import build_part, closest
from visionstack.core.registry import OPTIMIZERS, normalize
from visionstack.engine.optim_wrapper import NONFINITE_POLICIES, OptimWrapper
from visionstack.engine.precision import amp_dtype
from visionstack.errors import ConfigError

OPTIMIZERS.register("sgd", aliases=("SGD", "momentum_sgd"))(torch.optim.SGD)
OPTIMIZERS.register("adamw", aliases=("AdamW",))(torch.optim.AdamW)
OPTIMIZERS.register("adam", aliases=("Adam",))(torch.optim.Adam)
OPTIMIZERS.register("rmsprop", aliases=("RMSprop",))(torch.optim.RMSprop)

#: keys of ``train.optimizer`` consumed here rather than passed to the optimizer
GROUP_KEYS = ("lr_mult", "no_decay")


def _timm_names() -> list[str]:
    from timm.optim import list_optimizers

    return list(list_optimizers())


def _timm_builder(name: str):
    def build_timm_optimizer(
        params: Any, lr: float | None = None, weight_decay: float = 0.0, momentum: float = 0.9, **kwargs: Any
    ) -> torch.optim.Optimizer:
        """An optimizer of timm's factory; ``params`` are parameter groups (their decay already set)."""
        from timm.optim import create_optimizer_v2

        return create_optimizer_v2(
            params, opt=name, lr=lr, weight_decay=weight_decay, momentum=momentum, **kwargs
        )

    build_timm_optimizer.__name__ = f"timm_{name}"
    return build_timm_optimizer


@OPTIMIZERS.register_family(lambda: [f"timm/{n}" for n in _timm_names()])
def _resolve_timm(name: str) -> Any:
    bare = name[5:] if name.lower().startswith("timm/") else name
    by_key = {normalize(n): n for n in _timm_names()}
    found = by_key.get(normalize(bare))
    return _timm_builder(found) if found is not None else None


# -- parameter groups ----------------------------------------------------------------------------------
def _no_decay_names(model: nn.Module) -> set[str]:
    """Parameter names the model (or its top-level children) excludes from weight decay, timm style."""
    names: set[str] = set()
    for prefix, module in [("", model), *((f"{n}.", m) for n, m in model.named_children())]:
        hook = getattr(module, "no_weight_decay", None)
        if callable(hook):
            names.update(f"{prefix}{n}" for n in hook())
    return names


def _match_mult(name: str, mults: Mapping[str, float]) -> tuple[str, float]:
    """The longest ``lr_mult`` key that is ``name`` or a dotted prefix of it, with its multiplier."""
    best = ""
    for key in mults:
        if (name == key or name.startswith(key + ".")) and len(key) > len(best):
            best = key
    if best:
        return best, float(mults[best])
    return name.split(".", 1)[0], 1.0


def _check_mults(model: nn.Module, mults: Any, path: str) -> dict[str, float]:
    if mults is None:
        return {}
    if not isinstance(mults, Mapping):
        raise ConfigError(path, f"expected a mapping of module name -> multiplier, got {mults!r}")
    modules = dict(model.named_modules())
    children = [n for n, _ in model.named_children()]
    out = {}
    for key, value in mults.items():
        if key not in modules or key == "":
            raise ConfigError(
                f"{path}.{key}",
                f"the model has no module {key!r}.{closest(str(key), children)} Its parts are: {', '.join(children)}",
            )
        if isinstance(value, bool) or not isinstance(value, (int, float)) or value < 0:
            raise ConfigError(f"{path}.{key}", f"expected a non-negative number, got {value!r}")
        out[str(key)] = float(value)
    return out


def param_groups(
    model: nn.Module,
    lr: float,
    weight_decay: float = 0.0,
    lr_mult: Mapping[str, float] | None = None,
    no_decay: bool = True,
    path: str = "train.optimizer",
) -> list[dict[str, Any]]:
    """Trainable parameters grouped by (learning-rate multiplier, decay or not):
    ``[{params, lr, weight_decay, lr_mult, name, initial_lr}]``. Parts with the same multiplier share a
    group (fewer groups: fewer optimizer kernel launches); ``name`` lists them (``backbone+head``, with a
    ``/no_decay`` suffix for the group without weight decay). Groups keep the order in which their first
    parameter appears in ``model.named_parameters()``.
    """
    mults = _check_mults(model, lr_mult, f"{path}.lr_mult")
    skip = _no_decay_names(model) if no_decay else set()
    groups: dict[tuple[float, bool], dict[str, Any]] = {}
    parts: dict[tuple[float, bool], list[str]] = {}
    for name, param in model.named_parameters():
        if not param.requires_grad:
            continue
        part, mult = _match_mult(name, mults)
        decay = not (no_decay and (param.ndim <= 1 or name in skip))
        key = (mult, decay)
        if key not in groups:
            groups[key] = {
                "params": [],
                "lr_mult": mult,
                "lr": lr * mult,
                "initial_lr": lr * mult,
                "weight_decay": weight_decay if decay else 0.0,
            }
            parts[key] = []
        groups[key]["params"].append(param)
        if part not in parts[key]:
            parts[key].append(part)
    if not groups:
        raise ConfigError(path, "the model has no trainable parameters")
    for key, group in groups.items():
        group["name"] = "+".join(parts[key]) + ("" if key[1] else "/no_decay")
    return list(groups.values())


def build_optimizer(model: nn.Module, cfg: Mapping[str, Any] | str, path: str = "train.optimizer"):
    """A torch optimizer over :func:`param_groups` of ``model`` from an optimizer config."""
    cfg = {"type": cfg} if isinstance(cfg, str) else copy.deepcopy(dict(cfg))
    if "lr" not in cfg:
        raise ConfigError(f"{path}.lr", "missing: give the base learning rate")
    lr = cfg["lr"]
    if isinstance(lr, bool) or not isinstance(lr, (int, float)) or lr < 0:
        raise ConfigError(f"{path}.lr", f"expected a non-negative number, got {lr!r}")
    weight_decay = cfg.get("weight_decay", 0.0)
    groups = param_groups(
        model, float(lr), float(weight_decay), cfg.pop("lr_mult", None), bool(cfg.pop("no_decay", True)), path
    )
    return build_part(OPTIMIZERS, cfg, path, {"params": groups})


def build_optim_wrapper(
    model: nn.Module, train_cfg: Mapping[str, Any], device_type: str = "cpu"
) -> OptimWrapper:
    """The OptimWrapper of a ``train`` section: optimizer, ``amp``, ``grad_accum``, ``clip_grad``, ``nonfinite``."""
    opt_cfg = train_cfg.get("optimizer") or {"type": "sgd", "lr": 0.01, "momentum": 0.9}
    optimizer = build_optimizer(model, opt_cfg)
    nonfinite = train_cfg.get("nonfinite") or "stop"
    if nonfinite not in NONFINITE_POLICIES:
        raise ConfigError(
            "train.nonfinite", f"expected one of {', '.join(NONFINITE_POLICIES)}, got {nonfinite!r}"
        )
    accum = train_cfg.get("grad_accum") or 1
    if isinstance(accum, bool) or not isinstance(accum, int) or accum < 1:
        raise ConfigError("train.grad_accum", f"expected a positive integer, got {accum!r}")
    clip = train_cfg.get("clip_grad")
    if clip is not None and (isinstance(clip, bool) or not isinstance(clip, (int, float)) or clip <= 0):
        raise ConfigError("train.clip_grad", f"expected a positive max gradient norm or null, got {clip!r}")
    return OptimWrapper(
        optimizer,
        amp=amp_dtype(train_cfg.get("amp")),
        device_type=device_type,
        grad_accum=accum,
        clip_grad=None if clip is None else float(clip),
        nonfinite=nonfinite,
    )
