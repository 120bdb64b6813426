"""Learning-rate schedules by name, with warmup, stepped per optimizer step or per epoch.

``train.scheduler`` config::

    scheduler: {type: cosine, interval: epoch, warmup_epochs: 1, warmup: linear, warmup_factor: 0.001}

- ``type``: ``cosine`` (``min_lr``), ``step`` (``step_size``, ``gamma``), ``multistep`` (``milestones``,
  ``gamma``), ``poly`` (``power``, ``min_lr``), ``plateau`` (``metric``, ``mode``, ``factor``, ``patience``,
  ``threshold``, ``cooldown``, ``min_lr``) or ``constant``.
- ``interval``: ``epoch`` (default for runs counted in epochs) or ``step`` (default for ``train.steps`` runs):
  when the main schedule advances. ``step_size`` and ``milestones`` are in the run's unit (epochs, or steps
  for step-based runs) whatever the interval.
- Warmup: ``warmup_epochs`` (may be fractional) or ``warmup_steps``; always advanced per optimizer step.
  ``warmup: linear`` ramps from ``warmup_factor * lr`` to ``lr``; ``constant`` holds ``warmup_factor * lr``.
  Cosine and poly run over the time left after warmup; step / multistep count from the start of training.

Every learning rate is a closed-form function of (optimizer steps done, epochs done) -- plus, for
``plateau``, the reductions so far -- so the state to resume is a few numbers. Each optimizer parameter
group is scheduled from its own ``initial_lr`` (set by :func:`visionstack.engine.optim.param_groups`, so
per-part multipliers carry through).
"""

from __future__ import annotations

import bisect
import math
from collections.abc import Mapping
from typing import Any, Literal

import torch

from visionstack.core.build import build_part
from visionstack.core.registry import SCHEDULERS
from visionstack.errors import ConfigError

#: keys of ``train.scheduler`` read by :func:`build_scheduler` rather than by the schedule itself
COMMON_KEYS = ("interval", "warmup_epochs", "warmup_steps", "warmup", "warmup_factor")


class Rule:
    """A schedule shape: ``lr(base, t)`` for ``t`` in interval units after binding the run's lengths."""

    #: the schedule runs over the time left after warmup (cosine, poly) rather than from time 0
    after_warmup = False
    #: the schedule reacts to evaluation metrics (plateau)
    uses_metrics = False

    def bind(self, total: float, unit: float, warmup: float) -> None:
        """``total``: schedule length in interval units; ``unit``: interval units per run unit (epochs or
        steps); ``warmup``: warmup length in interval units."""
        self.total, self.unit, self.warmup = float(total), float(unit), float(warmup)

    def progress(self, t: float) -> float:
        span = self.total - (self.warmup if self.after_warmup else 0.0)
        start = self.warmup if self.after_warmup else 0.0
        return min(max((t - start) / span, 0.0), 1.0) if span > 0 else 1.0

    def lr(self, base: float, t: float) -> float:
        raise NotImplementedError

    def observe(self, metrics: Mapping[str, float]) -> None:
        """Evaluation results at the end of an epoch (only ``plateau`` uses them)."""

    def state_dict(self) -> dict[str, Any]:
        return {}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        del state


@SCHEDULERS.register("cosine", aliases=("CosineAnnealingLR", "cosine_annealing"))
class Cosine(Rule):
    """``min_lr + (lr - min_lr) * (1 + cos(pi * p)) / 2`` with ``p`` the fraction of the run after warmup."""

    after_warmup = True

    def __init__(self, min_lr: float = 0.0) -> None:
        self.min_lr = float(min_lr)

    def lr(self, base: float, t: float) -> float:
        return self.min_lr + (base - self.min_lr) * 0.5 * (1.0 + math.cos(math.pi * self.progress(t)))


@SCHEDULERS.register("poly", aliases=("PolynomialLR", "polynomial"))
class Poly(Rule):
    """``min_lr + (lr - min_lr) * (1 - p) ** power`` (``p`` as for cosine)."""

    after_warmup = True

    def __init__(self, power: float = 1.0, min_lr: float = 0.0) -> None:
        self.power, self.min_lr = float(power), float(min_lr)

    def lr(self, base: float, t: float) -> float:
        return self.min_lr + (base - self.min_lr) * (1.0 - self.progress(t)) ** self.power


@SCHEDULERS.register("step", aliases=("StepLR",))
class Step(Rule):
    """``lr * gamma ** floor(t / step_size)`` (``step_size`` in epochs, or steps for step-based runs)."""

    def __init__(self, step_size: int, gamma: float = 0.1) -> None:
        if step_size < 1:
            raise ValueError(f"step_size must be >= 1, got {step_size}")
        self.step_size, self.gamma = int(step_size), float(gamma)

    def lr(self, base: float, t: float) -> float:
        return base * self.gamma ** math.floor(t / (self.step_size * self.unit) + 1e-9)


@SCHEDULERS.register("multistep", aliases=("MultiStepLR", "multi_step"))
class MultiStep(Rule):
    """``lr * gamma ** (number of milestones reached)`` (milestones in epochs, or steps)."""

    def __init__(self, milestones: list[int], gamma: float = 0.1) -> None:
        if list(milestones) != sorted(milestones):
            raise ValueError(f"milestones must be increasing, got {milestones}")
        self.milestones, self.gamma = [int(m) for m in milestones], float(gamma)

    def lr(self, base: float, t: float) -> float:
        return base * self.gamma ** bisect.bisect_right(self.milestones, t / self.unit + 1e-9)


@SCHEDULERS.register("constant", aliases=("ConstantLR", "fixed"))
class Constant(Rule):
    """The base learning rate throughout (after any warmup)."""

    def lr(self, base: float, t: float) -> float:
        return base


@SCHEDULERS.register("plateau", aliases=("ReduceLROnPlateau", "reduce_on_plateau"))
class Plateau(Rule):
    """Multiply by ``factor`` after ``patience`` evaluations without improving ``metric`` (torch's rule,
    relative threshold), then wait ``cooldown`` evaluations; never below ``min_lr``."""

    uses_metrics = True

    def __init__(
        self,
        metric: str = "val/top1",
        mode: Literal["max", "min"] = "max",
        factor: float = 0.1,
        patience: int = 10,
        threshold: float = 1e-4,
        cooldown: int = 0,
        min_lr: float = 0.0,
    ) -> None:
        if not 0.0 < factor < 1.0:
            raise ValueError(f"factor must be in (0, 1), got {factor}")
        self.metric, self.mode, self.factor = metric, mode, float(factor)
        self.patience, self.threshold, self.cooldown = int(patience), float(threshold), int(cooldown)
        self.min_lr = float(min_lr)
        self.best: float | None = None
        self.bad = 0
        self.cooling = 0
        self.reductions = 0

    def _better(self, value: float) -> bool:
        if self.best is None:
            return True
        if self.mode == "max":
            return value > self.best * (1.0 + self.threshold)
        return value < self.best * (1.0 - self.threshold)

    def observe(self, metrics: Mapping[str, float]) -> None:
        if self.metric not in metrics:
            return
        value = float(metrics[self.metric])
        if self._better(value):
            self.best, self.bad = value, 0
        else:
            self.bad += 1
        if self.cooling > 0:
            self.cooling -= 1
            self.bad = 0
        if self.bad > self.patience:
            self.reductions += 1
            self.cooling, self.bad = self.cooldown, 0

    def lr(self, base: float, t: float) -> float:
        return max(base * self.factor**self.reductions, min(self.min_lr, base))

    def state_dict(self) -> dict[str, Any]:
        return {"best": self.best, "bad": self.bad, "cooling": self.cooling, "reductions": self.reductions}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        self.best = state.get("best")
        self.bad, self.cooling = int(state.get("bad", 0)), int(state.get("cooling", 0))
        self.reductions = int(state.get("reductions", 0))


class LRScheduler:
    """Sets every parameter group's ``lr`` from (optimizer steps done, epochs done).

    Args:
        optimizer: its groups carry ``initial_lr`` (else their current ``lr`` is taken as the base).
        rule: the schedule shape (a registered :class:`Rule`).
        interval: ``"step"`` or ``"epoch"``: the clock of the main schedule.
        steps_per_epoch: optimizer steps in one epoch.
        total_epochs: the run's length in epochs (may be fractional for step-based runs).
        warmup_steps: warmup length in optimizer steps (0: none).
        warmup: ``"linear"`` or ``"constant"``.
        warmup_factor: the warmup's starting fraction of the base learning rate.
        run_unit: ``"epoch"`` or ``"step"``: the unit of ``step_size`` / ``milestones``.
    """

    def __init__(
        self,
        optimizer: torch.optim.Optimizer,
        rule: Rule,
        interval: str = "epoch",
        steps_per_epoch: int = 1,
        total_epochs: float = 1.0,
        warmup_steps: int = 0,
        warmup: str = "linear",
        warmup_factor: float = 0.001,
        run_unit: str = "epoch",
    ) -> None:
        self.optimizer, self.rule = optimizer, rule
        self.interval, self.warmup, self.warmup_factor = interval, warmup, float(warmup_factor)
        self.steps_per_epoch = max(1, int(steps_per_epoch))
        self.warmup_steps = int(warmup_steps)
        if interval == "step":
            unit = 1.0 if run_unit == "step" else float(self.steps_per_epoch)
            rule.bind(total_epochs * self.steps_per_epoch, unit, self.warmup_steps)
        else:
            rule.bind(total_epochs, 1.0, self.warmup_steps / self.steps_per_epoch)
        for group in optimizer.param_groups:
            group.setdefault("initial_lr", group["lr"])
        self.step_count = 0
        self.epoch = 0
        self.apply()

    def lr_of(self, base: float) -> float:
        """The learning rate of a group with base ``base`` at the current time."""
        if self.step_count < self.warmup_steps:
            if self.warmup == "constant":
                return base * self.warmup_factor
            frac = self.step_count / self.warmup_steps
            return base * (self.warmup_factor + (1.0 - self.warmup_factor) * frac)
        t = self.step_count if self.interval == "step" else self.epoch
        return self.rule.lr(base, t)

    def apply(self) -> None:
        for group in self.optimizer.param_groups:
            group["lr"] = self.lr_of(group["initial_lr"])

    def step_update(self, steps_done: int) -> None:
        """After an optimizer step: ``steps_done`` optimizer steps are behind us."""
        self.step_count = int(steps_done)
        self.apply()

    def step_epoch(self, epochs_done: int, metrics: Mapping[str, float] | None = None) -> None:
        """After an epoch (and its evaluation, whose ``metrics`` drive ``plateau``)."""
        self.epoch = int(epochs_done)
        if metrics:
            self.rule.observe(metrics)
        self.apply()

    @property
    def lrs(self) -> list[float]:
        return [float(g["lr"]) for g in self.optimizer.param_groups]

    def state_dict(self) -> dict[str, Any]:
        return {"step_count": self.step_count, "epoch": self.epoch, "rule": self.rule.state_dict()}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        self.step_count, self.epoch = int(state["step_count"]), int(state["epoch"])
        self.rule.load_state_dict(state.get("rule") or {})
        self.apply()


def build_scheduler(
    optimizer: torch.optim.Optimizer,
    cfg: Mapping[str, Any] | str | None,
    steps_per_epoch: int,
    total_epochs: float,
    run_unit: str = "epoch",
    path: str = "train.scheduler",
) -> LRScheduler:
    """The :class:`LRScheduler` of a ``train.scheduler`` config (``None``: constant learning rate)."""
    cfg = {"type": "constant"} if cfg is None else ({"type": cfg} if isinstance(cfg, str) else dict(cfg))
    common = {k: cfg.pop(k) for k in COMMON_KEYS if k in cfg}
    interval = common.get("interval", "step" if run_unit == "step" else "epoch")
    if interval not in ("step", "epoch"):
        raise ConfigError(f"{path}.interval", f"expected 'step' or 'epoch', got {interval!r}")
    if run_unit == "step" and interval == "epoch":
        raise ConfigError(f"{path}.interval", "a run counted in train.steps schedules per step")
    if "warmup_epochs" in common and "warmup_steps" in common:
        raise ConfigError(f"{path}.warmup_steps", "give warmup_epochs or warmup_steps, not both")
    warmup_steps = common.get("warmup_steps", 0)
    if "warmup_epochs" in common:
        epochs = common["warmup_epochs"]
        if isinstance(epochs, bool) or not isinstance(epochs, (int, float)) or epochs < 0:
            raise ConfigError(f"{path}.warmup_epochs", f"expected a non-negative number, got {epochs!r}")
        warmup_steps = round(epochs * steps_per_epoch)
    if isinstance(warmup_steps, bool) or not isinstance(warmup_steps, int) or warmup_steps < 0:
        raise ConfigError(f"{path}.warmup_steps", f"expected a non-negative integer, got {warmup_steps!r}")
    mode = common.get("warmup", "linear")
    if mode not in ("linear", "constant"):
        raise ConfigError(f"{path}.warmup", f"expected 'linear' or 'constant', got {mode!r}")
    factor = common.get("warmup_factor", 0.001)
    if isinstance(factor, bool) or not isinstance(factor, (int, float)) or not 0 <= factor <= 1:
        raise ConfigError(f"{path}.warmup_factor", f"expected a number in [0, 1], got {factor!r}")
    rule = build_part(SCHEDULERS, cfg, path)
    return LRScheduler(
        optimizer,
        rule,
        interval=interval,
        steps_per_epoch=steps_per_epoch,
        total_epochs=total_epochs,
        warmup_steps=warmup_steps,
        warmup=mode,
        warmup_factor=float(factor),
        run_unit=run_unit,
    )
