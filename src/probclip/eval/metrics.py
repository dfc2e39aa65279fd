"""Exact ranking and classification metrics, vectorised and memory-bounded.

All metrics are fractions in [0, 1] (multiply by 100 for the percentages that papers print).

Ranking convention: a gallery is ranked by decreasing score; equal scores are ordered by increasing
gallery index (the order of a stable descending sort). Every metric is exact under this convention,
whatever the number of positives per query.

Definitions for a query with ranked list ``L`` and positive set ``G`` of size ``R``:

- ``R@K = 1`` if any of ``L[:K]`` is in ``G`` else 0;
- ``P@r = |L[:r] & G| / r``;  ``R-Precision = P@R``;
- ``mAP@R = (1/R) * sum_{r <= R} P@r * [L[r-1] in G]``.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from ..distances import (
    DEFAULT_MAX_CHUNK_ELEMENTS,  # the one bound of pairwise blocks (query rows x gallery)
)

__all__ = [
    "DEFAULT_MAX_CHUNK_ELEMENTS",
    "at_least_float32",
    "positive_ranks",
    "per_query_ranking_metrics",
    "ranking_metrics",
    "uncertainty_bins",
    "topk_accuracy",
    "mean_per_class_recall",
]



def at_least_float32(t: torch.Tensor) -> torch.Tensor:
    """float16 / bfloat16 / integer tensors as float32; float32 and float64 unchanged."""
    return t if t.dtype in (torch.float32, torch.float64) else t.float()


def _check_scores_positives(scores: torch.Tensor, positives: torch.Tensor) -> None:
    if not isinstance(scores, torch.Tensor) or not isinstance(positives, torch.Tensor):
        raise TypeError(
            f"scores and positives must be torch.Tensor; got {type(scores).__name__} and {type(positives).__name__}"
        )
    if scores.dim() != 2:
        raise ValueError(f"scores must have shape [Q, G]; got {tuple(scores.shape)}")
    if positives.shape != scores.shape:
        raise ValueError(
            f"positives must have the shape of scores {tuple(scores.shape)}; got {tuple(positives.shape)}"
        )
    if positives.dtype != torch.bool:
        raise TypeError(f"positives must be a bool tensor; got dtype {positives.dtype}")


def _ranks_by_thresholds(scores: torch.Tensor, positives: torch.Tensor, n_pos: torch.Tensor) -> torch.Tensor:
    """0-based ranks of the positives of each row, ``[q, Rmax]`` ascending, padded with G.

    The positives' scores of a row, sorted, act as thresholds: a binary search places every gallery
    item between them, and a per-row histogram of these places counts the items ranked ahead of each
    positive. Cost O(q * G * log Rmax), memory O(q * G). Items whose score equals a positive's score
    (the positive itself, and true ties) are then ordered by gallery index, exactly.
    """
    q, g = scores.shape
    r_max = int(n_pos.max())
    device = scores.device
    rows, cols = positives.nonzero(as_tuple=True)  # row-major: columns ascending within a row
    row_start = torch.cumsum(n_pos, 0) - n_pos
    slot = torch.arange(rows.numel(), device=device) - row_start[rows]
    thresholds = torch.full((q, r_max), float("inf"), dtype=scores.dtype, device=device)
    thresholds[rows, slot] = scores[rows, cols]
    pos_cols = torch.full((q, r_max), g, dtype=torch.long, device=device)
    pos_cols[rows, slot] = cols
    thresholds, order = thresholds.sort(dim=1)  # ascending; padding (+inf) last
    pos_cols = pos_cols.gather(1, order)
    below = torch.searchsorted(thresholds, scores.contiguous(), right=False)  # [q, G] #thresholds < score
    # hist[r, b] = items of row r with exactly b thresholds below their score
    flat = below + (torch.arange(q, device=device) * (r_max + 1))[:, None]
    hist = torch.bincount(flat.flatten(), minlength=q * (r_max + 1)).reshape(q, r_max + 1)
    # items strictly above threshold k: those with at least k + 1 thresholds below them
    above = hist.flip(1).cumsum(1).flip(1)[:, 1:]  # [q, Rmax]
    # Exact ties with a threshold: item g is ahead of positive k iff its index is lower.
    at_or_below = torch.searchsorted(thresholds, scores.contiguous(), right=True)
    tied = at_or_below > below  # [q, G] items whose score equals some positive's score (the positives too)
    valid = pos_cols < g
    # Rows where some item shares a positive's score, besides each positive itself.
    shared = (tied.sum(1) > n_pos) | ((thresholds[:, 1:] == thresholds[:, :-1]) & valid[:, 1:]).any(1)
    if bool(shared.any()):
        sub = shared.nonzero().flatten()
        above[sub] += _tied_ahead(thresholds[sub], pos_cols[sub], below[sub], tied[sub])
    ranks = torch.where(valid, above, torch.full_like(above, g))
    return ranks.sort(dim=1).values


def _tied_ahead(thresholds: torch.Tensor, pos_cols: torch.Tensor, below: torch.Tensor,
                tied: torch.Tensor) -> torch.Tensor:
    """``[q, Rmax]`` number of items with the same score as positive k and a lower gallery index.

    Items tied with a threshold form groups (the index of the first equal threshold, ``below``). The sorted
    columns of the positives cut each row into Rmax + 1 segments; one histogram of (row, segment, group)
    and a cumulative sum over segments count, for every positive, the items of its group that come
    before its column. Cost O(q * G * log Rmax), memory O(q * G + q * Rmax^2): no per-tie expansion.
    """
    q, g = below.shape
    r_max = thresholds.shape[1]
    n_groups = r_max + 1  # group r_max: not tied
    pos_by_col = pos_cols.sort(dim=1).values  # ascending; padding (g) last
    columns = torch.arange(g, device=below.device).expand(q, g).contiguous()
    segment = torch.searchsorted(pos_by_col, columns, right=True)  # positives at columns <= item's column
    group = torch.where(tied, below, torch.full_like(below, r_max))
    rows = torch.arange(q, device=below.device)[:, None]
    flat = (rows * (r_max + 1) + segment) * n_groups + group
    hist = torch.bincount(flat.flatten(), minlength=q * (r_max + 1) * n_groups).reshape(q, r_max + 1, n_groups)
    before = hist.cumsum(1)  # before[r, s, grp]: tied items of group grp with segment <= s
    first_equal = torch.searchsorted(thresholds, thresholds.contiguous(), right=False)  # group of positive k
    order_in_cols = torch.searchsorted(pos_by_col, pos_cols.contiguous(), right=False)  # its segment cut
    valid = pos_cols < g
    ahead = before[rows, order_in_cols.clamp_max(r_max), first_equal.clamp_max(r_max)]
    return torch.where(valid, ahead, torch.zeros_like(ahead))


def _ranks_within_top(scores: torch.Tensor, positives: torch.Tensor, n_pos: torch.Tensor, depth: int) -> torch.Tensor:
    """Like :func:`_ranks_by_thresholds`, but ranks at or beyond ``depth`` are reported as ``depth``.

    One ``topk(depth)`` per row, re-ordered so that ties follow gallery index, gives the cut-off score
    ``v`` (the depth-th largest). Every item scoring above ``v`` is in that list, so a positive scoring
    above ``v`` ranks at its place in the list; one scoring below ``v`` ranks at ``depth`` or later. For
    a positive scoring exactly ``v`` (a tie block that may straddle the cut-off) its rank is the number
    of items above ``v`` plus the items scoring ``v`` with a lower index, counted over its row by binary
    search. Exact with any ties; cost O(q * G) plus O(q * depth * log depth) whatever the number of ties.
    """
    q, g = scores.shape
    r_max = int(n_pos.max())
    values, index = scores.topk(depth, dim=1)
    by_index = index.sort(dim=1)  # ties inside the top: lower gallery index first
    values = values.gather(1, by_index.indices)
    order = values.sort(dim=1, descending=True, stable=True).indices
    values, index = values.gather(1, order), by_index.values.gather(1, order)
    cut = values[:, depth - 1]
    above_cut = values > cut[:, None]
    positions = torch.arange(depth, device=scores.device).expand(q, depth)
    in_list = torch.where(positives.gather(1, index) & above_cut, positions, torch.full_like(positions, depth))
    ranks = in_list.sort(dim=1).values[:, :r_max]
    if ranks.shape[1] < r_max:
        ranks = torch.cat([ranks, ranks.new_full((q, r_max - ranks.shape[1]), depth)], dim=1)
    at_cut = positives & (scores == cut[:, None])  # [q, G] positives in the tie block of the cut-off
    rows = at_cut.any(1).nonzero().flatten()
    if rows.numel():
        local, cols = at_cut[rows].nonzero(as_tuple=True)  # row-major: ascending within a row
        # positions (row * G + column) of the items scoring exactly the cut-off, ascending
        equal_at = (scores[rows] == cut[rows, None]).flatten().nonzero().flatten()
        before = torch.searchsorted(equal_at, local * g + cols) - torch.searchsorted(equal_at, local * g)
        tie_ranks = (above_cut[rows].sum(1)[local] + before).clamp_max(depth)
        slot = torch.arange(local.numel(), device=scores.device)
        slot = slot - (torch.cumsum(torch.bincount(local, minlength=rows.numel()), 0)
                       - torch.bincount(local, minlength=rows.numel()))[local]
        extra = torch.full((rows.numel(), r_max), depth, dtype=ranks.dtype, device=scores.device)
        extra[local, slot] = tie_ranks
        ranks[rows] = torch.cat([ranks[rows], extra], dim=1).sort(dim=1).values[:, :r_max]
    return ranks


def positive_ranks(
    scores: torch.Tensor,
    positives: torch.Tensor,
    max_chunk_elements: int = DEFAULT_MAX_CHUNK_ELEMENTS,
    depth: int | None = None,
    n_pos: torch.Tensor | None = None,
) -> torch.Tensor:
    """0-based rank of every positive of every query, ``[Q, Rmax]`` long, ascending per row.

    Args:
        scores: ``[Q, G]`` scores, higher is better.
        positives: ``[Q, G]`` bool, True where the gallery item is relevant to the query.
        max_chunk_elements: bound on the elements of the temporary ``[q, G]`` blocks.
        depth: if given, ranks ``>= depth`` are reported as ``depth`` (R@K, mAP@R and R-Precision only
            look at ranks below ``max(K, R)``, so ``depth = max(K_max, Rmax)`` keeps them exact) and a
            fast top-k search replaces the full count.
        n_pos: ``[Q]`` number of positives per row, if already known (saves a pass over ``positives``).

    Rows with fewer than ``Rmax`` positives are padded with ``G`` (or ``depth``). Each row needs at
    least one positive.
    """
    _check_scores_positives(scores, positives)
    n_pos = positives.sum(1) if n_pos is None else n_pos
    empty = int((n_pos == 0).sum())
    if empty:
        first = int((n_pos == 0).nonzero()[0])
        raise ValueError(
            f"{empty} of {scores.shape[0]} queries have no positive in the gallery (first: query {first}); "
            f"every query needs at least one positive"
        )
    q_total, g = scores.shape
    r_max = int(n_pos.max())
    if depth is not None and depth < 1:
        raise ValueError(f"depth must be a positive integer or None; got {depth}")
    fill = g if depth is None or depth >= g else depth
    out = torch.full((q_total, r_max), fill, dtype=torch.long, device=scores.device)
    step = max(1, max_chunk_elements // max(1, g))
    for start in range(0, q_total, step):
        sl = slice(start, start + step)
        if depth is not None and depth < g:
            ranks = _ranks_within_top(at_least_float32(scores[sl]), positives[sl], n_pos[sl], depth)
        else:
            ranks = _ranks_by_thresholds(at_least_float32(scores[sl]), positives[sl], n_pos[sl])
        out[sl, : ranks.shape[1]] = ranks
    return out


def metrics_from_ranks(ranks: torch.Tensor, n_pos: torch.Tensor, ks: Sequence[int] = (1, 5, 10)) -> dict:
    """Per-query metrics from the ascending 0-based ranks of the positives.

    Args:
        ranks: ``[Q, Rmax]`` long, ascending per row, padded with any value >= the gallery size (ranks
            may be capped at any depth >= max(K, R)).
        n_pos: ``[Q]`` number of positives R of each query.

    Returns a dict of ``[Q]`` float64 tensors: ``r{K}`` for each K, ``map_at_r``, ``r_precision``.
    """
    out = {}
    for k in ks:
        if int(k) < 1:
            raise ValueError(f"recall cut-offs must be positive integers; got {k}")
        out[f"r{int(k)}"] = (ranks[:, 0] < int(k)).double()
    n_pos = n_pos.to(ranks.device)
    hit = ranks < n_pos[:, None]  # positive ranked within the first R places
    position = torch.arange(1, ranks.shape[1] + 1, device=ranks.device, dtype=torch.float64)
    precision_at_hit = position[None, :] / (ranks.double() + 1.0)
    out["map_at_r"] = (precision_at_hit * hit).sum(1) / n_pos.double()
    out["r_precision"] = hit.sum(1).double() / n_pos.double()
    return out


def per_query_ranking_metrics(
    scores: torch.Tensor,
    positives: torch.Tensor,
    ks: Sequence[int] = (1, 5, 10),
    max_chunk_elements: int = DEFAULT_MAX_CHUNK_ELEMENTS,
) -> dict:
    """Per-query R@K, mAP@R and R-Precision, each a ``[Q]`` float tensor (keys ``r1``, ``r5``, ...)."""
    n_pos = positives.sum(1)
    depth = max(max(int(k) for k in ks), int(n_pos.max()) if n_pos.numel() else 1)
    ranks = positive_ranks(scores, positives, max_chunk_elements, depth=depth)
    return metrics_from_ranks(ranks, n_pos, ks)


def ranking_metrics(
    scores: torch.Tensor,
    positives: torch.Tensor,
    ks: Sequence[int] = (1, 5, 10),
    max_chunk_elements: int = DEFAULT_MAX_CHUNK_ELEMENTS,
) -> dict:
    """Mean retrieval metrics over queries, exact with any number of positives per query.

    Args:
        scores: ``[Q, G]`` scores (higher ranks first); ties ordered by gallery index.
        positives: ``[Q, G]`` bool; every query needs at least one positive.
        ks: cut-offs K of R@K.

    Returns ``{'r1', 'r5', 'r10' (one key per K), 'map_at_r', 'r_precision'}`` as floats in [0, 1].
    """
    per_query = per_query_ranking_metrics(scores, positives, ks, max_chunk_elements)
    return {name: float(values.mean()) for name, values in per_query.items()}


def uncertainty_bins(uncertainty, per_query_metric, n_bins: int = 10) -> dict:
    """Metric per uncertainty bin and its correlation with the bin index.

    Queries are sorted by increasing ``uncertainty`` (stable) and cut into ``n_bins`` bins of equal
    count (sizes differ by at most one). Bin 0 holds the most certain queries.

    Args:
        uncertainty: ``[Q]`` scalar uncertainty per query (e.g. ``ProbEmbedding.uncertainty``).
        per_query_metric: ``[Q]`` metric per query (e.g. R@1 as 0/1, or correctness).
        n_bins: number of bins, at most Q.

    Returns ``dict(bin_metric=list[float], pearson=float, bin_uncertainty=list[[min, max]],
    bin_count=list[int])``; ``pearson`` is the Pearson correlation between bin index and bin metric,
    NaN when the bin metric is constant.
    """
    u = torch.as_tensor(uncertainty).detach().flatten().double().cpu()
    m = torch.as_tensor(per_query_metric).detach().flatten().double().cpu()
    if u.numel() != m.numel():
        raise ValueError(
            f"uncertainty and per_query_metric must have the same length; got {u.numel()} and {m.numel()}"
        )
    if not isinstance(n_bins, int) or n_bins < 2:
        raise ValueError(f"n_bins must be an integer >= 2; got {n_bins!r}")
    if u.numel() < n_bins:
        raise ValueError(f"need at least n_bins={n_bins} queries to fill the bins; got {u.numel()}")
    if not bool(torch.isfinite(u).all()):
        raise ValueError("uncertainty holds non-finite values; finite values are required")
    order = torch.sort(u, stable=True).indices
    bin_metric, bin_range, bin_count = [], [], []
    for idx in torch.tensor_split(order, n_bins):
        bin_metric.append(float(m[idx].mean()))
        bin_range.append([float(u[idx].min()), float(u[idx].max())])
        bin_count.append(int(idx.numel()))
    x = torch.arange(n_bins, dtype=torch.float64)
    y = torch.tensor(bin_metric, dtype=torch.float64)
    xc, yc = x - x.mean(), y - y.mean()
    denom = float(xc.norm() * yc.norm())
    pearson = float((xc * yc).sum()) / denom if denom > 0 else float("nan")
    return dict(bin_metric=bin_metric, pearson=pearson, bin_uncertainty=bin_range, bin_count=bin_count)


def topk_accuracy(logits: torch.Tensor, labels: torch.Tensor, ks: Sequence[int] = (1, 5)) -> dict:
    """Per-sample top-K correctness, ``{'acc1': [N] float64, 'acc5': [N] float64, ...}``.

    ``logits`` is ``[N, C]`` (higher is better), ``labels`` ``[N]`` class indices. K larger than C is
    clipped to C. Ties are ordered by class index (as in :func:`ranking_metrics`).
    """
    if logits.dim() != 2 or labels.dim() != 1 or labels.shape[0] != logits.shape[0]:
        raise ValueError(
            f"topk_accuracy expects logits [N, C] and labels [N]; got {tuple(logits.shape)} and {tuple(labels.shape)}"
        )
    n, c = logits.shape
    if n and (int(labels.min()) < 0 or int(labels.max()) >= c):
        raise ValueError(f"labels must lie in [0, {c - 1}]; got values in [{int(labels.min())}, {int(labels.max())}]")
    label_scores = logits.gather(1, labels[:, None])
    class_index = torch.arange(c, device=logits.device)
    rank = (logits > label_scores).sum(1) + ((logits == label_scores) & (class_index[None] < labels[:, None])).sum(1)
    return {f"acc{int(k)}": (rank < min(int(k), c)).double() for k in ks}


def mean_per_class_recall(predictions: torch.Tensor, labels: torch.Tensor, n_classes: int) -> float:
    """Mean over the classes present in ``labels`` of the fraction of their samples predicted right."""
    if predictions.shape != labels.shape:
        raise ValueError(
            f"predictions and labels must match in shape; got {tuple(predictions.shape)} and {tuple(labels.shape)}"
        )
    correct = (predictions == labels).double()
    per_class_total = torch.bincount(labels, minlength=n_classes).double()
    per_class_correct = torch.bincount(labels, weights=correct, minlength=n_classes)
    present = per_class_total > 0
    if not bool(present.any()):
        raise ValueError("mean_per_class_recall needs at least one labelled sample")
    return float((per_class_correct[present] / per_class_total[present]).mean())
