"""Hiding duplicates: results whose stored embeddings equal, or nearly equal, a better-ranked result's.

Two items are duplicates when the squared 2-Wasserstein distance between their Gaussians,
``W2^2 = ||mu_a - mu_b||^2 + ||sigma_a - sigma_b||^2`` (``sigma = exp(logvar / 2)``), is at most
``DUPLICATE_W2`` = 1e-7. Identical files embed to identical rows: W2^2 = 0, or about 1e-11 when float rounding
differs between batches (float16 storage: about 1e-9). The means are unit vectors, so 1e-7 also means a cosine of
at least 1 - 5e-8 between the means, and standard deviations that match to the same degree: near-copies only
(distinct images of an untrained 64-dimensional test model already lie 3e-6 apart; a trained model's, far more). The search asks for more results than shown (``FETCH_FACTOR`` x k) so
that hiding duplicates still leaves k when the index has them.
"""

from __future__ import annotations

from dataclasses import replace
from typing import Any

import numpy as np

__all__ = ["DUPLICATE_W2", "FETCH_FACTOR", "duplicate_mask", "fetch_k", "hide_duplicates"]

#: Largest squared 2-Wasserstein distance between two items' Gaussians for them to count as duplicates.
DUPLICATE_W2 = 1e-7
#: A deduplicated search first asks the index for this many times k results.
FETCH_FACTOR = 2


def fetch_k(k: int, rows: int, max_k: int) -> int:
    """How many results a search of ``k`` deduplicated results asks the index for."""
    return int(min(rows, max(k, min(FETCH_FACTOR * k, FETCH_FACTOR * max_k))))


def duplicate_mask(mean: np.ndarray, logvar: np.ndarray, threshold: float = DUPLICATE_W2) -> np.ndarray:
    """``bool [n]``: True for each row (in rank order) within ``threshold`` (W2^2) of a better-ranked row.

    ``mean``, ``logvar``: ``[n, D]``. Costs one ``[n, 2D] x [2D, n]`` product in float64.
    """
    n = mean.shape[0]
    if n < 2:
        return np.zeros(n, dtype=bool)
    x = np.concatenate([mean.astype(np.float64), np.exp(0.5 * logvar.astype(np.float64))], axis=1)
    sq = np.einsum("ij,ij->i", x, x)
    w2 = sq[:, None] + sq[None, :] - 2.0 * (x @ x.T)
    close = np.triu(w2 <= threshold, k=1)  # close[i, j]: i ranked better than j and within the threshold
    return close.any(axis=0)


def hide_duplicates(index: Any, results: Any, k: int, threshold: float = DUPLICATE_W2) -> tuple[Any, int]:
    """``(results without duplicates, truncated to k; how many were hidden)`` for one ``SearchResults``.

    ``index`` supplies the stored rows (``index.embedding(ids)``); the hidden count is over the fetched results.
    """
    if len(results) == 0:
        return results, 0
    emb = index.embedding(results.ids)
    hidden = duplicate_mask(emb.mean.numpy(), emb.logvar.numpy(), threshold)
    keep = np.flatnonzero(~hidden)[:k]
    metadata = [results.metadata[i] for i in keep] if results.metadata else []
    trimmed = replace(results, ids=results.ids[keep], scores=results.scores[keep],
                      uncertainty=results.uncertainty[keep], metadata=metadata)
    return trimmed, int(hidden.sum())
