"""Exact gathering of per-rank embeddings for losses that pair every sample with the global batch.

Each rank holds ``b_r`` local samples; the global batch has ``B = sum_r b_r``. A loss computes its local
rows against all ``B`` columns (memory O(b_r x B)), and scales its per-sample sums by ``W / B`` so that the
mean over ranks of the per-rank loss equals the loss on the concatenated batch. Gradients flow through
the gather: its backward sums the column gradients of every rank (all-reduce) and keeps this rank's rows,
so after DDP averages parameter gradients over ``W`` ranks they equal the single-process gradients.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
import torch.distributed as dist

__all__ = ["RankContext", "rank_context", "all_gather_rows"]


class _AllGatherRows(torch.autograd.Function):
    """All-gather of ``[b_r, K]`` row blocks (sizes may differ per rank) with a summing backward."""

    @staticmethod
    def forward(ctx, x: torch.Tensor, sizes: tuple, rank: int, group) -> torch.Tensor:
        ctx.sizes, ctx.rank, ctx.group = sizes, rank, group
        longest = max(sizes)
        x = x.contiguous()
        if x.shape[0] < longest:
            x = torch.cat([x, x.new_zeros(longest - x.shape[0], *x.shape[1:])])
        blocks = [torch.empty_like(x) for _ in sizes]
        dist.all_gather(blocks, x, group=group)
        return torch.cat([blk[:n] for blk, n in zip(blocks, sizes)])

    @staticmethod
    def backward(ctx, grad: torch.Tensor):
        grad = grad.clone(memory_format=torch.contiguous_format)
        dist.all_reduce(grad, op=dist.ReduceOp.SUM, group=ctx.group)
        start = sum(ctx.sizes[: ctx.rank])
        return grad[start : start + ctx.sizes[ctx.rank]], None, None, None


def all_gather_rows(x: torch.Tensor, sizes: Sequence[int], rank: int, group=None) -> torch.Tensor:
    """Concatenate every rank's ``x`` (``[sizes[r], K]`` on rank r) into ``[sum(sizes), K]``, with gradient.

    The backward all-reduces (sums) the gradient of the full output and returns this rank's rows, so each
    local row receives the gradient contributions of all ranks' losses.
    """
    if x.shape[0] != sizes[rank]:
        raise ValueError(f"all_gather_rows: local block has {x.shape[0]} rows but sizes[{rank}] = {sizes[rank]}")
    return _AllGatherRows.apply(x, tuple(int(s) for s in sizes), rank, group)


@dataclass(frozen=True)
class RankContext:
    """Where this process stands: ``world_size`` W, ``rank``, process ``group`` (None = default)."""

    world_size: int = 1
    rank: int = 0
    group: object = None

    @property
    def distributed(self) -> bool:
        return self.world_size > 1

    def gather_counts(self, counts: Sequence[int], device: torch.device) -> list[list[int]]:
        """``[W][len(counts)]``: every rank's ``counts`` (e.g. local batch sizes); one small all-gather."""
        if not self.distributed:
            return [list(int(c) for c in counts)]
        local = torch.tensor(list(counts), dtype=torch.long, device=device)
        out = [torch.empty_like(local) for _ in range(self.world_size)]
        dist.all_gather(out, local, group=self.group)
        return [t.tolist() for t in out]

    def gather_rows(self, x: torch.Tensor, sizes: Sequence[int]) -> torch.Tensor:
        """All ranks' rows of ``x`` concatenated in rank order (identity when not distributed)."""
        if not self.distributed:
            return x
        return all_gather_rows(x, sizes, self.rank, self.group)

    def all_reduce_max(self, x: torch.Tensor) -> torch.Tensor:
        """Element-wise maximum over ranks of a (no-grad) tensor (identity when not distributed)."""
        if not self.distributed:
            return x
        x = x.clone()
        dist.all_reduce(x, op=dist.ReduceOp.MAX, group=self.group)
        return x


def rank_context(enabled: bool = True, group=None) -> RankContext:
    """The :class:`RankContext` of this process: W > 1 only if ``enabled`` and torch.distributed is initialised."""
    if not enabled or not (dist.is_available() and dist.is_initialized()):
        return RankContext()
    return RankContext(dist.get_world_size(group), dist.get_rank(group), group)
