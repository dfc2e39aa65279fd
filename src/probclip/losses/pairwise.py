"""Memory-lean sum of sigmoid binary cross-entropies over a ``[b, N]`` grid of bilinear logits.

The pairwise losses here (PPCL, SigLIP) have logits that are a bilinear form ``z_ij = left_i . right_j``
once scale, bias and uncertainties are folded into augmented vectors (see the callers). This module
evaluates ``sum_ij BCE(z_ij, y_ij)`` with positives only in one ``[b, b]`` block of columns, keeping one
``[b, N]`` buffer alive (it holds ``sigmoid(z) - y`` for the backward) plus one bounded chunk; plain
autograd would keep several ``[b, N]`` tensors (logits, labels, products, log-sigmoid output).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

__all__ = ["pairwise_sigmoid_bce"]

CHUNK_ELEMENTS = 2**22  # temporaries per chunk: 4M elements (16 MiB in float32)


class _PairwiseSigmoidBCE(torch.autograd.Function):
    @staticmethod
    def forward(ctx, left, right, targets, offset: int):
        rows = left.shape[0]
        z = left @ right.T  # [b, N]; becomes dL/dz in place below
        chunk = max(1, CHUNK_ELEMENTS // max(1, z.shape[1]))
        total = z.new_zeros((), dtype=torch.float64 if z.dtype == torch.float64 else torch.float32)
        for start in range(0, rows, chunk):
            stop = min(rows, start + chunk)
            zc = z[start:stop]
            cols = slice(offset + start, offset + stop) if targets is None else slice(offset, offset + rows)
            block = zc[:, cols]  # this chunk's columns that may hold positives
            loss_c = F.softplus(zc)  # label-0 loss everywhere; the block is overwritten below
            loss_block = loss_c[:, cols]
            if targets is None:
                # Positives on the block diagonal: -log sigmoid(z) = softplus(-z) there.
                loss_block.diagonal().copy_(F.softplus(-block.diagonal()))
                total += loss_c.sum()
                zc.sigmoid_()
                block.diagonal().sub_(1.0)
            else:
                y = targets[start:stop]
                # BCE(z, y) = y softplus(-z) + (1 - y) softplus(z): stable for any z and soft y in [0, 1].
                loss_block.copy_(y * F.softplus(-block) + (1 - y) * loss_block)
                total += loss_c.sum()
                zc.sigmoid_()
                block.sub_(y)
            del loss_c, loss_block
        ctx.save_for_backward(left, right, z)
        return total.to(z.dtype)

    @staticmethod
    def backward(ctx, grad_total):
        left, right, dz = ctx.saved_tensors
        grad_left = grad_right = None
        if ctx.needs_input_grad[0]:
            grad_left = (dz @ right) * grad_total
        if ctx.needs_input_grad[1]:
            grad_right = (dz.T @ left) * grad_total
        return grad_left, grad_right, None, None


def pairwise_sigmoid_bce(
    left: torch.Tensor, right: torch.Tensor, targets: torch.Tensor | None = None, offset: int = 0
) -> torch.Tensor:
    """``sum_{i<b, j<N} BCE_with_logits(z_ij, y_ij)`` with ``z = left @ right.T``, a 0-dim tensor.

    Args:
        left: ``[b, K]`` row vectors (this rank's samples).
        right: ``[N, K]`` column vectors (the global batch).
        targets: ``[b, b]`` soft labels in [0, 1] for the columns ``offset .. offset + b`` (the samples
            that belong to these rows); ``None`` means the identity (row i matches column ``offset + i``).
            Every other column has label 0.
        offset: index of this rank's first sample among the ``N`` columns.

    Memory: one ``[b, N]`` buffer plus chunks of at most ``CHUNK_ELEMENTS``; no ``[b, N, K]`` tensor.
    """
    if left.dim() != 2 or right.dim() != 2 or left.shape[1] != right.shape[1]:
        raise ValueError(
            f"pairwise_sigmoid_bce: need left [b, K] and right [N, K]; got {tuple(left.shape)} and {tuple(right.shape)}"
        )
    b = left.shape[0]
    if not 0 <= offset <= right.shape[0] - b:
        raise ValueError(f"pairwise_sigmoid_bce: offset {offset} + {b} rows exceeds the {right.shape[0]} columns")
    if targets is not None and tuple(targets.shape) != (b, b):
        raise ValueError(f"pairwise_sigmoid_bce: targets must be [{b}, {b}]; got {tuple(targets.shape)}")
    if targets is not None:
        targets = targets.to(dtype=left.dtype).detach()
    return _PairwiseSigmoidBCE.apply(left, right, targets, int(offset))
