"""Gradient averaging and object gathering across ``torchrun`` processes; the process-group set-up itself
(``init_distributed``, ``DistInfo``, ``barrier``) is :mod:`probclip.process_group`, re-exported here."""

from __future__ import annotations

import torch
import torch.distributed as dist

from ..process_group import DistInfo, barrier, cleanup_distributed, init_distributed

__all__ = ["DistInfo", "init_distributed", "cleanup_distributed", "average_gradients", "all_reduce_mean",
           "broadcast_object", "gather_objects", "barrier"]

#: Elements per all-reduce bucket when averaging gradients.
_BUCKET_ELEMENTS = 16 * 1024 * 1024


@torch.no_grad()
def average_gradients(parameters, world_size: int) -> None:
    """Average ``.grad`` over ranks in place (bucketed all-reduce of the flattened gradients).

    Parameters without a gradient are skipped; every rank must have gradients for the same parameters.
    """
    if world_size <= 1:
        return
    grads = [p.grad for p in parameters if p.grad is not None]
    bucket: list[torch.Tensor] = []
    size = 0
    for grad in grads + [None]:
        if grad is not None:
            bucket.append(grad)
            size += grad.numel()
        if bucket and (grad is None or size >= _BUCKET_ELEMENTS):
            flat = torch.cat([g.reshape(-1) for g in bucket])
            dist.all_reduce(flat)
            flat /= world_size
            offset = 0
            for g in bucket:
                g.copy_(flat[offset: offset + g.numel()].view_as(g))
                offset += g.numel()
            bucket, size = [], 0


def all_reduce_mean(values: dict[str, float], device: torch.device) -> dict[str, float]:
    """Mean of scalar ``values`` over ranks (identity in a single process)."""
    if not (dist.is_available() and dist.is_initialized()) or not values:
        return dict(values)
    keys = sorted(values)
    tensor = torch.tensor([float(values[k]) for k in keys], dtype=torch.float64, device=device)
    dist.all_reduce(tensor)
    tensor /= dist.get_world_size()
    return dict(zip(keys, tensor.tolist()))


def broadcast_object(obj, src: int = 0):
    """``obj`` of rank ``src`` on every rank."""
    if not (dist.is_available() and dist.is_initialized()):
        return obj
    holder = [obj]
    dist.broadcast_object_list(holder, src=src)
    return holder[0]


def gather_objects(obj) -> list:
    """Every rank's ``obj`` in rank order (``[obj]`` in a single process)."""
    if not (dist.is_available() and dist.is_initialized()):
        return [obj]
    out = [None] * dist.get_world_size()
    dist.all_gather_object(out, obj)
    return out
