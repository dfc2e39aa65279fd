"""Exact scores over the stored rows: CSD, cosine of means, the inclusion test or the collection's hierarchy head,
their margins, the ranking.

The one place where a candidate's score and its ranking are computed (:class:`ExactScorer`); candidate sources
(:mod:`probclip.search.candidates`) only propose rows. Scores are float64 from the stored float32 means and
log-variances (``u`` as stored); ties are broken by the smaller row id (:func:`top`).

A row qualifies when its margin is positive: for a directional inclusion score (``includes`` / ``included`` with
``directional``) the margin is the test in the direction asked minus the reverse test; otherwise it is +inf. A copy
of the query (:func:`copies_of_query`: the same embedding up to the collection's storage precision, such as the
stored caption a text query was embedded from) gets margin 0: it is neither more general nor more specific than
the query. Where the collection's hierarchy head ranks an inclusion score (a
:class:`~probclip.search.head_ranking.HeadRanking` given), the score is the head's logit and the margin the one it
defines (:mod:`probclip.search.head_ranking`).
"""

from __future__ import annotations

import numpy as np

from ..embedding import ProbEmbedding
from ..errors import UsageError
from .head_ranking import HeadRanking
from .layout import StoredRows
from .vectors import inclusion_test, inclusion_tests

__all__ = ["SCAN_ROWS", "COPY_RELATIVE_TOLERANCE", "ExactScorer", "copies_of_query", "top"]

#: Rows per block of an exhaustive scan.
SCAN_ROWS = 65536


#: Relative difference, beyond the storage precision, within which a row still copies the query: float32 embeddings
#: of one input differ by about 1e-7 relative between batches.
COPY_RELATIVE_TOLERANCE = 1e-6


def copies_of_query(query: ProbEmbedding, means: np.ndarray, logvars: np.ndarray, dtype) -> np.ndarray:
    """bool ``[n]``: the rows ``[n, D]`` that equal the query ``[1, D]`` up to the storage precision ``dtype``, in
    every dimension of the mean and the log-variance: within one unit in the last place of ``dtype`` at the query's
    value, plus ``COPY_RELATIVE_TOLERANCE`` relative. A caption's or an image's stored row is such a copy of the same
    caption or image embedded again as a query."""
    out = np.zeros(len(means), dtype=bool)
    sides = []
    for stored, value in ((means, query.mean.numpy()[0]), (logvars, query.logvar.numpy()[0])):
        value = value.astype(np.float64)
        tolerance = np.abs(np.spacing(value.astype(dtype))).astype(np.float64) + COPY_RELATIVE_TOLERANCE * np.abs(value)
        sides.append((stored, value, tolerance))
    stored, value, tolerance = sides[0]
    rows = np.flatnonzero(np.abs(np.asarray(stored[:, 0], np.float64) - value[0]) <= tolerance[0])  # few rows
    for stored, value, tolerance in sides:
        rows = rows[(np.abs(np.asarray(stored[rows], np.float64) - value) <= tolerance).all(1)]
    out[rows] = True
    return out


def top(scores: np.ndarray, ids: np.ndarray, k: int, higher: bool) -> tuple[np.ndarray, np.ndarray]:
    """The best ``k`` of ``(scores, ids)``, ties broken by the smaller row id."""
    order = np.lexsort((ids, -scores if higher else scores))[:k]
    return ids[order], scores[order]


class ExactScorer:
    """Exact scores of queries against stored rows, and the row filters on ``u``."""

    def __init__(self, stored: StoredRows):
        self.stored = stored

    def allowed(self, max_uncertainty, uncertainty_quantile, name: str) -> np.ndarray | None:
        """The rows the uncertainty filters keep (None: no filter); a filter that keeps none is a ``UsageError``."""
        bound = None
        if uncertainty_quantile is not None:
            bound = float(np.quantile(self.stored.u, float(uncertainty_quantile)))
        if max_uncertainty is not None:
            bound = float(max_uncertainty) if bound is None else min(bound, float(max_uncertainty))
        if bound is None:
            return None
        allowed = self.stored.u <= np.float32(bound)
        if not allowed.any():
            raise UsageError(f"max_uncertainty = {max_uncertainty!r} keeps no item of {name}: its smallest "
                             f"uncertainty u is {float(self.stored.u.min()):.6g}; give a larger value (or none)")
        return allowed

    def scan_ids(self, allowed) -> list[np.ndarray]:
        """All (allowed) row ids in blocks, for exhaustive scans."""
        ids = np.arange(self.stored.rows, dtype=np.int64) if allowed is None else np.nonzero(allowed)[0]
        return [ids[i: i + SCAN_ROWS] for i in range(0, ids.size, SCAN_ROWS)]

    def scores(self, score: str, query: ProbEmbedding, ids: np.ndarray, eps: float,
               directional: bool = False, ranking: HeadRanking | None = None) -> tuple[np.ndarray, np.ndarray]:
        """Exact scores of one query ``[1, D]`` against rows ``ids`` (float64) and their margins (float64).

        A row qualifies when its margin is positive: for a directional inclusion score the margin is the test in
        the direction asked minus the reverse test (0 for a copy of the query); otherwise it is +inf. ``ranking``:
        the hierarchy head ranks the inclusion score instead of the test (``eps`` does not apply).
        """
        if ids.size == 0:
            return np.zeros(0), np.zeros(0)
        if score in ("csd", "mean"):
            return self._distance(score, query, ids), np.full(ids.size, np.inf)
        means, logvars = self.stored.means(ids), self.stored.logvars(ids)
        if ranking is not None:
            scores, margins = ranking.scores(query, means, logvars, directional)
        else:
            q_mean, q_logvar = query.mean.numpy(), query.logvar.numpy()
            pair = (means, logvars), (q_mean, q_logvar)  # score "includes": test(item in query)
            inner, outer = pair if score == "includes" else pair[::-1]
            if not directional:
                return inclusion_test(*inner, *outer, eps), np.full(ids.size, np.inf)
            scores, reverse = inclusion_tests(*inner, *outer, eps)
            margins = scores - reverse
        if directional:
            margins = np.where(copies_of_query(query, means, logvars, self.stored.dtype), 0.0, margins)
        return scores, margins

    def _distance(self, score: str, query: ProbEmbedding, ids: np.ndarray) -> np.ndarray:
        """CSD or cosine of means of one query ``[1, D]`` against rows ``ids``, float64."""
        means = self.stored.means(ids).astype(np.float64)
        q = query.mean.numpy()[0].astype(np.float64)
        if score == "csd":
            u_q = float(np.exp(query.logvar.numpy()[0].astype(np.float64)).sum())
            return ((means - q) ** 2).sum(1) + u_q + self.stored.u[ids]
        norms = np.linalg.norm(means, axis=1) * np.linalg.norm(q)
        return means @ q / np.where(norms > 0, norms, 1.0)

    def rerank(self, query: ProbEmbedding, score: str, ids, allowed, eps: float, directional: bool,
               ranking: HeadRanking | None = None):
        """Exact scores of one query ``[1, D]`` over candidate ``ids``: ``(ids, scores, margins)`` (see
        :meth:`scores`)."""
        ids = np.unique(np.asarray(ids, dtype=np.int64))
        if allowed is not None:
            ids = ids[allowed[ids]]
        blocks = [self.scores(score, query, ids[i: i + SCAN_ROWS], eps, directional, ranking)
                  for i in range(0, ids.size, SCAN_ROWS)]
        scores = np.concatenate([b[0] for b in blocks] or [np.zeros(0)])
        margins = np.concatenate([b[1] for b in blocks] or [np.zeros(0)])
        return ids, scores, margins
