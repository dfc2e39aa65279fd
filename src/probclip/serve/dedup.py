"""Hiding duplicates: results whose stored embeddings equal, or nearly equal, a better-ranked result's.

Two items are duplicates when their stored means lie within ``MEAN_TOLERANCE`` (squared distance) of each other
AND their uncertainties ``u = sum_d exp(logvar_d)`` (stored per item, computed in float32 at embed time) differ by at
most ``U_TOLERANCE`` relative to the larger. Identical files embed to identical rows (both differences 0); float
rounding that differs between batches moves them by about 1e-9 and 1e-7. The means are unit vectors, so 1e-7 means a
cosine of at least 1 - 5e-8: near-copies only (distinct images of an untrained 64-dimensional test model already
lie 3e-6 apart; a trained model's, far more). Comparing ``u`` first (it comes with every result) means only the
results whose ``u`` matches another's have their stored means read.

The search asks for a few more results than shown (``fetch_k``), and more again while hiding copies leaves fewer
than k, so that k results come back whenever the index has them.
"""

from __future__ import annotations

import numpy as np

from ..search import SearchIndex, SearchResults

__all__ = ["MEAN_TOLERANCE", "U_TOLERANCE", "candidate_rows", "duplicate_mask", "fetch_k", "hide_duplicates"]

#: Largest squared distance between two duplicates' stored means (unit vectors).
MEAN_TOLERANCE = 1e-7
#: Largest difference between two duplicates' ``u``, relative to the larger one.
U_TOLERANCE = 1e-5
#: A deduplicated search first asks the index for ``k + max(MIN_MARGIN, k // 4)`` results, then twice as many
#: each time hiding copies left fewer than k (and the index has more).
MIN_MARGIN = 4


def fetch_k(k: int, rows: int, previous: int = 0) -> int:
    """How many results a search of ``k`` deduplicated results asks the index for (``previous``: the last try)."""
    wanted = 2 * previous if previous else k + max(MIN_MARGIN, k // 4)
    return int(min(rows, wanted))


def candidate_rows(u: np.ndarray) -> np.ndarray:
    """Positions (rank order) of the results whose ``u`` matches another result's within ``U_TOLERANCE``."""
    u = np.asarray(u)
    if u.size < 2:
        return np.zeros(0, dtype=np.int64)
    order = np.argsort(u, kind="stable")
    ranked = u[order].astype(np.float64)
    # sorted: two close values are joined by a chain of close neighbours
    near = ranked[1:] - ranked[:-1] <= U_TOLERANCE * np.abs(ranked[1:])
    if not near.any():
        return np.zeros(0, dtype=np.int64)
    involved = np.zeros(u.size, dtype=bool)
    involved[1:] = near
    involved[:-1] |= near
    return np.sort(order[involved])


def duplicate_mask(mean: np.ndarray, u: np.ndarray) -> np.ndarray:
    """``bool [n]``: True for each row (in rank order) that duplicates a better-ranked row.

    ``mean``: ``[n, D]`` stored means; ``u``: ``[n]`` stored uncertainties. Compares all ``n (n - 1) / 2`` pairs
    (``n`` is small: the candidates of ``candidate_rows``), in blocks of rows for large ``n``.
    """
    n = mean.shape[0]
    hidden = np.zeros(n, dtype=bool)
    if n < 2:
        return hidden
    m = mean.astype(np.float64)
    u = np.asarray(u, dtype=np.float64)
    block = max(1, 2**22 // (n * m.shape[1]))  # rows per block: at most ~32 MB of differences at a time
    for start in range(0, n, block):
        rows = slice(start, min(n, start + block))
        distance = ((m[rows, None, :] - m[None, :, :]) ** 2).sum(axis=-1)  # [block, n]
        same = (distance <= MEAN_TOLERANCE) & (np.abs(u[rows, None] - u[None, :])
                                               <= U_TOLERANCE * np.maximum(u[rows, None], u[None, :]))
        earlier = np.arange(n)[None, :] < np.arange(rows.start, rows.stop)[:, None]
        hidden[rows] = (same & earlier).any(axis=1)
    return hidden


def _stored_means(index: SearchIndex, ids: np.ndarray) -> np.ndarray:
    """float32 ``[len(ids), D]`` stored means (the means alone when the index can read them alone)."""
    stored = getattr(index, "stored", None)
    if stored is not None and hasattr(stored, "means"):
        return stored.means(ids)
    return index.embedding(ids).mean.numpy()


def hide_duplicates(index: SearchIndex, results: SearchResults, k: int) -> tuple[SearchResults, int]:
    """``(results without duplicates, truncated to k; how many were hidden)`` for one ``SearchResults``.

    Only the results in ``candidate_rows`` have their stored means read.
    """
    rows = candidate_rows(results.uncertainty)
    if rows.size:
        hidden = rows[duplicate_mask(_stored_means(index, results.ids[rows]), results.uncertainty[rows])]
        if hidden.size:
            keep = np.ones(len(results), dtype=bool)
            keep[hidden] = False
            return results.take(np.flatnonzero(keep)[:k]), int(hidden.size)
    return results.take(slice(0, k)), 0
