"""torch.distributed set-up for ``torchrun`` (gloo on CPU, nccl on CUDA) and the ``barrier`` between processes.

Shared by training and the embedding job (``probclip embed`` under ``torchrun``); training's gradient averaging and
object gathering live in ``train/distributed.py``.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import torch
import torch.distributed as dist

from .devices import check_device
from .errors import UsageError

__all__ = ["DistInfo", "init_distributed", "cleanup_distributed", "barrier"]


@dataclass(frozen=True)
class DistInfo:
    """This process's place: ``rank``, ``world_size``, ``local_rank``, ``device``."""

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    device: torch.device = torch.device("cpu")

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        return self.world_size > 1


def _pick_device(device: str, local_rank: int) -> torch.device:
    if device == "cuda" or (device == "auto" and torch.cuda.is_available()):
        if not torch.cuda.is_available():
            raise UsageError("run.device is 'cuda' but no CUDA device is available; use run.device: cpu or auto")
        check_device(f"cuda:{local_rank}", f"run.device (this process's LOCAL_RANK {local_rank})")
        torch.cuda.set_device(local_rank)
        return torch.device("cuda", local_rank)
    return torch.device("cpu")


def init_distributed(device: str = "auto", backend: str = "auto") -> DistInfo:
    """Join the process group when launched by ``torchrun`` (``WORLD_SIZE`` > 1 in the environment).

    ``backend``: ``auto`` picks nccl on CUDA and gloo on CPU. Single-process runs create no process group.
    """
    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    rank = int(os.environ.get("RANK", "0"))
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    torch_device = _pick_device(device, local_rank)
    if world_size > 1 and not dist.is_initialized():
        chosen = backend if backend != "auto" else ("nccl" if torch_device.type == "cuda" else "gloo")
        if chosen == "nccl" and torch_device.type != "cuda":
            raise UsageError("run.dist_backend 'nccl' needs CUDA devices; use gloo for CPU runs")
        dist.init_process_group(backend=chosen, device_id=torch_device if chosen == "nccl" else None)
    if dist.is_initialized():
        rank, world_size = dist.get_rank(), dist.get_world_size()
    return DistInfo(rank, world_size, local_rank, torch_device)


def cleanup_distributed() -> None:
    """Leave the process group (if any)."""
    if dist.is_initialized():
        dist.destroy_process_group()


def barrier() -> None:
    if dist.is_available() and dist.is_initialized():
        dist.barrier()
