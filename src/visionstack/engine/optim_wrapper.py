"""OptimWrapper: owns backward, AMP autocast and loss scaling, accumulation, clipping, the step, the
non-finite loss policy and (under DDP) the gradient synchronization.

DDP and ``train_step``: models run their own forward passes (several per batch for PMG) and call
``optim.update(loss)``. DDP's gradient all-reduce hooks only fire for a backward that follows a forward
*through the DDP module*, so the Trainer wraps the model in a :class:`ForwardRedirect` (a module whose
``forward(x)`` returns ``x``) inside ``DistributedDataParallel`` and hands it to the wrapper as ``ddp``.
``update(loss)`` passes the loss through it (``loss = ddp(loss)``): DDP prepares its reducer for exactly the
graph that produced the loss (``find_unused_parameters`` traverses it from the loss), and the backward then
all-reduces gradients bucket by bucket, overlapped with the backward as usual. Micro-batches that do not
step (gradient accumulation) run under ``ddp.no_sync()``.
"""

from __future__ import annotations

import contextlib
import math
from typing import Any

import torch
from torch import nn

from visionstack.engine.precision import amp_dtype, autocast
from visionstack.errors import VisionStackError

NONFINITE_POLICIES = ("stop", "skip")


class NonFiniteLossError(VisionStackError, FloatingPointError):
    """The loss became NaN or infinite (``train.nonfinite: stop``); the update was not applied."""


class ForwardRedirect(nn.Module):
    """The module DDP wraps: it holds the model (so DDP owns its parameters) and returns its input."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.module = model

    def forward(self, output: torch.Tensor) -> torch.Tensor:
        return output


class OptimWrapper:
    """Wraps an optimizer so models call ``optim.update(loss)`` and know nothing about AMP or accumulation.

    Args:
        optimizer: the torch optimizer.
        amp: ``None`` or a spelling of :mod:`visionstack.engine.precision` (``bf16``, ``fp16``...); fp16
            uses a GradScaler where the device supports it.
        device_type: ``"cpu"`` or ``"cuda"``: where autocast applies.
        grad_accum: number of ``update`` calls whose gradients add up before one optimizer step.
        clip_grad: max global gradient norm (``None``: no clipping).
        nonfinite: ``"stop"``: a non-finite loss raises :class:`NonFiniteLossError` before the optimizer
            steps; ``"skip"``: the accumulation window that saw it is dropped (gradients zeroed, no step,
            ``skipped`` counts it).

    Attributes set by the trainer: ``ddp`` (the DDP-wrapped :class:`ForwardRedirect`, or ``None``).
    After ``update``: ``stepped`` (the optimizer stepped), ``window_done`` (an accumulation window ended,
    stepped or skipped).
    """

    def __init__(
        self,
        optimizer: torch.optim.Optimizer,
        amp: str | torch.dtype | None = None,
        device_type: str = "cpu",
        grad_accum: int = 1,
        clip_grad: float | None = None,
        nonfinite: str = "stop",
    ) -> None:
        if grad_accum < 1:
            raise ValueError(f"grad_accum must be >= 1, got {grad_accum}")
        if nonfinite not in NONFINITE_POLICIES:
            raise ValueError(f"nonfinite must be one of {NONFINITE_POLICIES}, got {nonfinite!r}")
        self.optimizer = optimizer
        self.amp_dtype = amp_dtype(amp)
        self.device_type = device_type
        self.grad_accum = int(grad_accum)
        self.clip_grad = clip_grad
        use_scaler = self.amp_dtype is torch.float16 and device_type == "cuda"
        self.scaler = torch.amp.GradScaler(device_type, enabled=use_scaler)
        self.micro_step = 0
        self._grad_norm: torch.Tensor | None = None
        self._pending: tuple[torch.Tensor, Any] | None = None
        self.stepped = False
        self.window_done = False
        self.nonfinite_policy = nonfinite
        self.skipped = 0
        self.ddp: nn.Module | None = None
        self._finite: torch.Tensor | None = None  # the running sum of the window's losses
        self._clipped = False  # update() clipped the current window's gradients already

    def autocast(self) -> contextlib.AbstractContextManager:
        """Mixed-precision context for the forward pass (a no-op without AMP)."""
        return autocast(self.device_type, self.amp_dtype)

    def params(self) -> list[nn.Parameter]:
        return [p for group in self.optimizer.param_groups for p in group["params"]]

    def backward(self, loss: torch.Tensor) -> None:
        """Scale for accumulation and AMP, then backpropagate."""
        self.scaler.scale(loss / self.grad_accum if self.grad_accum > 1 else loss).backward()

    def should_step(self) -> bool:
        return (self.micro_step + 1) % self.grad_accum == 0

    def _clip(self) -> None:
        self.scaler.unscale_(self.optimizer)
        self._grad_norm = torch.nn.utils.clip_grad_norm_(self.params(), self.clip_grad)

    def step(self) -> None:
        """Unscale and clip (unless :meth:`update` already did), step the optimizer and the scaler, zero
        gradients."""
        if self.clip_grad is not None and not self._clipped:
            self._clip()
        self._clipped = False
        self.scaler.step(self.optimizer)
        self.scaler.update()
        self.optimizer.zero_grad(set_to_none=True)

    @property
    def last_grad_norm(self) -> float | None:
        """The global gradient norm before the last clipping (``None`` without clipping)."""
        return None if self._grad_norm is None else float(self._grad_norm)

    def update(self, loss: torch.Tensor) -> bool:
        """Backward on ``loss``; step when the accumulation window is full. Returns whether it stepped.

        A non-finite loss anywhere in the window (on any rank) stops or skips the step; with ``clip_grad``
        (and no fp16 loss scaler, which handles overflowing gradients itself) a non-finite gradient norm
        does too. Loss and norm are checked together: one flag, ``window loss sum + norm``, read once. The
        read costs a host sync, so where it would stall the device it runs one window late: with
        ``nonfinite: stop`` on an accelerator, window ``w``'s flag is read when window ``w + 1`` steps (by
        then it is long computed) and :meth:`check_pending` reads the last one; the bad update has then
        been applied, but the run stops before anything is saved. On CPU, and with ``skip``, every window is
        checked before its optimizer step.
        """
        value = loss.detach().float()
        self._finite = value if self._finite is None else self._finite + value  # NaN / inf survive sums
        self.window_done = self.should_step()
        if self.ddp is None:
            self.backward(loss)
        elif self.window_done:
            self.backward(self.ddp(loss))
        else:
            with self.ddp.no_sync():
                self.backward(self.ddp(loss))
        self.stepped = False
        self.micro_step += 1
        if not self.window_done:
            return False
        flag = self._window_loss()
        if self.clip_grad is not None and not self.scaler.is_enabled():
            self._clip()  # the norm is computed anyway: fold it into the one flag
            self._clipped = True
            flag = flag + self._grad_norm
        if self.nonfinite_policy == "skip" or flag.device.type == "cpu":
            if not math.isfinite(float(flag)):
                self._reject(self._nonfinite_message(loss))
                return False
        else:
            self.check_pending()
            event = torch.cuda.Event() if flag.is_cuda else None
            self._pending = (flag.to("cpu", non_blocking=True), event)
            if event is not None:
                event.record()
        self.step()
        self.stepped = True
        return True

    def _nonfinite_message(self, loss: torch.Tensor) -> str:
        last = float(loss.detach())
        if math.isfinite(last) and self._grad_norm is not None and not math.isfinite(float(self._grad_norm)):
            return f"the gradient norm is not finite ({float(self._grad_norm):g}; last loss {last:g})"
        return f"the loss is not finite (last value {last:g})"

    def _window_loss(self) -> torch.Tensor:
        """The sum of the window's losses (over every rank under DDP): finite iff each of them is."""
        total, self._finite = self._finite, None
        if self.ddp is not None:
            import torch.distributed as dist

            total = total.sum().reshape(1)
            dist.all_reduce(total)
        return total

    def _reject(self, message: str) -> None:
        self._clipped = False
        self.zero_grad()
        self.skipped += 1
        if self.nonfinite_policy == "stop":
            raise NonFiniteLossError(message)

    def check_pending(self) -> None:
        """Read the flag of a window checked late (see :meth:`update`); raises if its loss was not finite."""
        pending, self._pending = self._pending, None
        if pending is None:
            return
        host, event = pending
        if event is not None:
            event.synchronize()
        if not math.isfinite(float(host)):
            self._reject(
                "the loss of the previous optimizer update was not finite (checked one update late on the "
                "accelerator to avoid a host sync per step; that update was applied, nothing was saved after it)"
            )

    def zero_grad(self) -> None:
        self.optimizer.zero_grad(set_to_none=True)

    @property
    def lr(self) -> float:
        return float(self.optimizer.param_groups[0]["lr"])

    def state_dict(self) -> dict:
        return {
            "optimizer": self.optimizer.state_dict(),
            "scaler": self.scaler.state_dict(),
            "micro_step": self.micro_step,
            "skipped": self.skipped,
        }

    def load_state_dict(self, state: dict) -> None:
        self.optimizer.load_state_dict(state["optimizer"])
        if state.get("scaler"):
            self.scaler.load_state_dict(state["scaler"])
        self.micro_step = int(state.get("micro_step", 0))
        self.skipped = int(state.get("skipped", 0))
