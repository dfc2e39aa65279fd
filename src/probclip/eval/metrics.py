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

from typing import Sequence

import torch

__all__ = [
    "positive_ranks",
    "per_query_ranking_metrics",
    "ranking_metrics",
    "uncertainty_bins",
    "topk_accuracy",
    "mean_per_class_recall",
]

DEFAULT_MAX_CHUNK_ELEMENTS = 2**24  # temporary block size (elements) for the counting comparisons
_SORT_ABOVE_POSITIVES = 64  # above this many positives per query, ranks come from a full stable sort


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


def _ranks_by_counting(scores: torch.Tensor, positives: torch.Tensor, n_pos: torch.Tensor) -> torch.Tensor:
    """0-based ranks of the positives of each row, ``[q, Rmax]`` ascending, padded with G."""
    q, g = scores.shape
    r_max = int(n_pos.max())
    rows, cols = positives.nonzero(as_tuple=True)  # row-major: columns ascending within a row
    row_start = torch.cumsum(n_pos, 0) - n_pos
    slot = torch.arange(rows.numel(), device=scores.device) - row_start[rows]
    pos_cols = torch.zeros(q, r_max, dtype=torch.long, device=scores.device)
    valid = torch.zeros(q, r_max, dtype=torch.bool, device=scores.device)
    pos_cols[rows, slot] = cols
    valid[rows, slot] = True
    pos_scores = scores.gather(1, pos_cols)  # [q, Rmax]
    s = scores[:, None, :]  # [q, 1, G]
    t = pos_scores[:, :, None]  # [q, Rmax, 1]
    above = (s > t).sum(-1)
    gallery_index = torch.arange(g, device=scores.device)
    tied_before = ((s == t) & (gallery_index[None, None, :] < pos_cols[:, :, None])).sum(-1)
    ranks = above + tied_before
    ranks = torch.where(valid, ranks, torch.full_like(ranks, g))
    return ranks.sort(dim=1).values


def _ranks_by_sorting(scores: torch.Tensor, positives: torch.Tensor, n_pos: torch.Tensor) -> torch.Tensor:
    """Same as :func:`_ranks_by_counting`, from a stable descending sort (for many positives)."""
    q, g = scores.shape
    r_max = int(n_pos.max())
    order = torch.sort(scores, dim=1, descending=True, stable=True).indices
    hits = positives.gather(1, order)  # [q, G] positives in ranked order
    positions = torch.arange(g, device=scores.device).expand(q, g)
    ranks = torch.where(hits, positions, torch.full_like(positions, g))
    return ranks.sort(dim=1).values[:, :r_max]


def positive_ranks(
    scores: torch.Tensor, positives: torch.Tensor, max_chunk_elements: int = DEFAULT_MAX_CHUNK_ELEMENTS
) -> torch.Tensor:
    """0-based rank of every positive of every query, ``[Q, Rmax]`` long, ascending per row.

    Args:
        scores: ``[Q, G]`` scores, higher is better.
        positives: ``[Q, G]`` bool, True where the gallery item is relevant to the query.
        max_chunk_elements: bound on the elements of the temporary ``[q, Rmax, G]`` comparison block.

    Rows with fewer than ``Rmax`` positives are padded with ``G``. Each row needs at least one positive.
    """
    _check_scores_positives(scores, positives)
    n_pos = positives.sum(1)
    empty = int((n_pos == 0).sum())
    if empty:
        first = int((n_pos == 0).nonzero()[0])
        raise ValueError(
            f"{empty} of {scores.shape[0]} queries have no positive in the gallery (first: query {first}); "
            f"every query needs at least one positive"
        )
    q_total, g = scores.shape
    r_max = int(n_pos.max())
    out = torch.full((q_total, r_max), g, dtype=torch.long, device=scores.device)
    use_sort = r_max > _SORT_ABOVE_POSITIVES
    per_row = g if use_sort else r_max * g
    step = max(1, max_chunk_elements // max(1, per_row))
    for start in range(0, q_total, step):
        sl = slice(start, start + step)
        chunk_scores = scores[sl].float()
        chunk_pos = positives[sl]
        chunk_n = n_pos[sl]
        fn = _ranks_by_sorting if use_sort else _ranks_by_counting
        ranks = fn(chunk_scores, chunk_pos, chunk_n)
        out[sl, : ranks.shape[1]] = ranks
    return out


def metrics_from_ranks(ranks: torch.Tensor, n_pos: torch.Tensor, ks: Sequence[int] = (1, 5, 10)) -> dict:
    """Per-query metrics from the ascending 0-based ranks of the positives.

    Args:
        ranks: ``[Q, Rmax]`` long, ascending per row, padded with any value >= the gallery size.
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
    ranks = positive_ranks(scores, positives, max_chunk_elements)
    return metrics_from_ranks(ranks, positives.sum(1), ks)


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
    """Per-sample top-K correctness, ``{'acc1': [N] float, 'acc5': [N] float, ...}``.

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
    return {f"acc{int(k)}": (rank < min(int(k), c)).float() for k in ks}


def mean_per_class_recall(predictions: torch.Tensor, labels: torch.Tensor, n_classes: int) -> float:
    """Mean over the classes present in ``labels`` of the fraction of their samples predicted right."""
    if predictions.shape != labels.shape:
        raise ValueError(f"predictions and labels must match in shape; got {tuple(predictions.shape)} and {tuple(labels.shape)}")
    correct = (predictions == labels).double()
    per_class_total = torch.bincount(labels, minlength=n_classes).double()
    per_class_correct = torch.bincount(labels, weights=correct, minlength=n_classes)
    present = per_class_total > 0
    if not bool(present.any()):
        raise ValueError("mean_per_class_recall needs at least one labelled sample")
    return float((per_class_correct[present] / per_class_total[present]).mean())
