"""OptimWrapper: owns backward, AMP autocast and loss scaling, accumulation, clipping and the step."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import torch
from torch import nn

_AMP_DTYPES = {"bf16": torch.bfloat16, "bfloat16": torch.bfloat16, "fp16": torch.float16, "float16": torch.float16}


class OptimWrapper:
    """Wraps an optimizer so models call ``optim.update(loss)`` and know nothing about AMP or accumulation.

    Args:
        optimizer: the torch optimizer.
        amp: ``None``, ``"bf16"`` or ``"fp16"`` (fp16 uses a GradScaler where the device supports it).
        device_type: ``"cpu"`` or ``"cuda"``: where autocast applies.
        grad_accum: number of ``update`` calls whose gradients add up before one optimizer step.
        clip_grad: max global gradient norm (``None``: no clipping).
        params: the parameters to clip (default: those of the optimizer).
    """

    def __init__(
        self,
        optimizer: torch.optim.Optimizer,
        amp: str | None = None,
        device_type: str = "cpu",
        grad_accum: int = 1,
        clip_grad: float | None = None,
    ) -> None:
        if amp is not None and amp not in _AMP_DTYPES:
            raise ValueError(f"amp must be one of {sorted(_AMP_DTYPES)} or null, got {amp!r}")
        if grad_accum < 1:
            raise ValueError(f"grad_accum must be >= 1, got {grad_accum}")
        self.optimizer = optimizer
        self.amp_dtype = _AMP_DTYPES.get(amp) if amp else None
        self.device_type = device_type
        self.grad_accum = int(grad_accum)
        self.clip_grad = clip_grad
        use_scaler = self.amp_dtype is torch.float16 and device_type == "cuda"
        self.scaler = torch.amp.GradScaler(device_type, enabled=use_scaler)
        self.micro_step = 0
        self.last_grad_norm: float | None = None
        self.stepped = False

    @contextlib.contextmanager
    def autocast(self) -> Iterator[None]:
        """Mixed-precision context for the forward pass (a no-op without AMP)."""
        if self.amp_dtype is None:
            yield
        else:
            with torch.autocast(self.device_type, dtype=self.amp_dtype):
                yield

    def params(self) -> list[nn.Parameter]:
        return [p for group in self.optimizer.param_groups for p in group["params"]]

    def backward(self, loss: torch.Tensor) -> None:
        """Scale for accumulation and AMP, then backpropagate."""
        self.scaler.scale(loss / self.grad_accum).backward()

    def should_step(self) -> bool:
        return (self.micro_step + 1) % self.grad_accum == 0

    def step(self) -> None:
        """Unscale, clip, step the optimizer and the scaler, zero gradients."""
        if self.clip_grad is not None:
            self.scaler.unscale_(self.optimizer)
            norm = torch.nn.utils.clip_grad_norm_(self.params(), self.clip_grad)
            self.last_grad_norm = float(norm)
        self.scaler.step(self.optimizer)
        self.scaler.update()
        self.optimizer.zero_grad(set_to_none=True)

    def update(self, loss: torch.Tensor) -> bool:
        """Backward on ``loss``; step when the accumulation window is full. Returns whether it stepped."""
        self.backward(loss)
        self.stepped = self.should_step()
        if self.stepped:
            self.step()
        self.micro_step += 1
        return self.stepped

    def zero_grad(self) -> None:
        self.optimizer.zero_grad(set_to_none=True)

    @property
    def lr(self) -> float:
        return float(self.optimizer.param_groups[0]["lr"])

    def state_dict(self) -> dict:
        return {"optimizer": self.optimizer.state_dict(), "scaler": self.scaler.state_dict(), "micro_step": self.micro_step}

    def load_state_dict(self, state: dict) -> None:
        self.optimizer.load_state_dict(state["optimizer"])
        if state.get("scaler"):
            self.scaler.load_state_dict(state["scaler"])
        self.micro_step = int(state.get("micro_step", 0))
