"""torch.distributed from ``torchrun``: process group, device per rank, DDP wrapping, small collectives.

``torchrun --nproc_per_node N -m visionstack train CFG`` sets ``RANK``, ``WORLD_SIZE``, ``LOCAL_RANK`` and
the rendezvous address; :func:`init_distributed` joins the group (``nccl`` on GPUs, ``gloo`` on CPU) and
returns this rank's device. Multi-node runs work the same way (``--nnodes``, ``--rdzv-endpoint``).

How DDP sees ``model.train_step``: see :mod:`visionstack.engine.optim_wrapper` (the forward redirect).
"""

from __future__ import annotations

import os
from typing import Any

import torch
import torch.distributed as dist
from torch import nn

from visionstack.engine.optim_wrapper import ForwardRedirect


def env_world_size() -> int:
    """``WORLD_SIZE`` from the environment (1 when not launched by torchrun)."""
    return int(os.environ.get("WORLD_SIZE", "1"))


def is_distributed() -> bool:
    """A process group with more than one rank is initialized."""
    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


def get_rank() -> int:
    return dist.get_rank() if dist.is_available() and dist.is_initialized() else 0


def get_world_size() -> int:
    return dist.get_world_size() if dist.is_available() and dist.is_initialized() else 1


def is_main_process() -> bool:
    """Rank 0 (or no process group): the process that writes files and prints."""
    return get_rank() == 0


def default_device(device: str | None = None) -> torch.device:
    """``device`` if given, else ``cuda`` when available, else ``cpu``."""
    if device:
        return torch.device(device)
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def init_distributed(device: str | None = None) -> torch.device:
    """Join the ``torchrun`` process group when ``WORLD_SIZE > 1``; returns this rank's device.

    On CUDA each rank takes ``cuda:LOCAL_RANK`` and the ``nccl`` backend; on CPU the ``gloo`` backend.
    Without torchrun (or with one process) nothing is initialized and :func:`default_device` is returned.
    """
    target = default_device(device)
    if env_world_size() <= 1 or is_distributed():
        if target.type == "cuda" and target.index is None and is_distributed():
            target = torch.device("cuda", int(os.environ.get("LOCAL_RANK", "0")))
        return target
    if target.type == "cuda":
        target = torch.device("cuda", int(os.environ.get("LOCAL_RANK", "0")))
        torch.cuda.set_device(target)
        dist.init_process_group("nccl", device_id=target)
    else:
        dist.init_process_group("gloo")
    return target


def cleanup() -> None:
    """Leave the process group (if one was initialized)."""
    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()


def barrier() -> None:
    if is_distributed():
        dist.barrier()


def wrap_ddp(model: nn.Module, device: torch.device, find_unused_parameters: bool = True) -> nn.Module:
    """``DistributedDataParallel`` around a :class:`ForwardRedirect` of ``model`` (give it to the
    OptimWrapper as ``ddp``). ``find_unused_parameters`` (default on) lets methods whose steps use only
    some parameters (PMG's per-granularity steps) train under DDP."""
    from torch.nn.parallel import DistributedDataParallel

    ids = [device.index] if device.type == "cuda" and device.index is not None else None
    return DistributedDataParallel(
        ForwardRedirect(model), device_ids=ids, find_unused_parameters=find_unused_parameters
    )


def convert_sync_bn(model: nn.Module) -> nn.Module:
    """BatchNorm layers -> SyncBatchNorm (batch statistics over all ranks; GPU only)."""
    return nn.SyncBatchNorm.convert_sync_batchnorm(model)


def broadcast_object(obj: Any, src: int = 0) -> Any:
    """``obj`` of rank ``src`` on every rank (identity without a process group)."""
    if not is_distributed():
        return obj
    box = [obj]
    dist.broadcast_object_list(box, src=src)
    return box[0]


def all_gather_object(obj: Any) -> list[Any]:
    """Every rank's ``obj``, in rank order (``[obj]`` without a process group)."""
    if not is_distributed():
        return [obj]
    out: list[Any] = [None] * dist.get_world_size()
    dist.all_gather_object(out, obj)
    return out


def all_reduce_sum(tensor: torch.Tensor) -> torch.Tensor:
    """The elementwise sum of ``tensor`` over ranks (a copy; the input is unchanged)."""
    out = tensor.clone()
    if is_distributed():
        dist.all_reduce(out, op=dist.ReduceOp.SUM)
    return out
