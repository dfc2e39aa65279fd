"""Ranking "more general" / "more specific" by a hierarchy head: which pair kind a search asks, its exact logits and
margins, and its exact inner-product weights over the stored inclusion features.

A search with score ``included`` (items that include the query) puts the query on the inner side and the items on
the outer one: the head's kind ``f"{query_modality}_in_{item_modality}"``; ``includes`` (items the query includes)
the reverse: ``f"{item_modality}_in_{query_modality}"``. When the collection's head holds that kind, the score of an
item is the head's logit of ``P(inner included in outer)`` (float64), in place of the inclusion test. The direction
check (``directional``) keeps an item when its margin is positive: the logit minus the logit with the roles
swapped when the head holds the swapped kind (``text_in_text``), else the logit itself (``P > 0.5``). The inclusion
test's ``eps`` does not apply to the head.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from ..embedding import ProbEmbedding
from ..hierarchy_head import HierarchyHead, PairWeights

__all__ = ["RANKED_BY", "HeadRanking", "head_ranking", "pair_logits"]

#: What ranked a search's results per score when the head does not (``SearchResults.ranked_by``).
RANKED_BY = {"csd": "closed-form sampled distance", "mean": "cosine of means", "includes": "inclusion test",
             "included": "inclusion test"}


def _kind(inner: str, outer: str) -> str:
    return f"{inner}_in_{outer}"


def pair_logits(pair: PairWeights, inner: tuple[np.ndarray, np.ndarray],
                outer: tuple[np.ndarray, np.ndarray]) -> np.ndarray:
    """float64 logits of ``P(inner included in outer)`` for ``(mean, logvar)`` sides ``[n, D]`` and ``[1, D]`` (either
    way round) -> ``[n]``: the head's terms (:data:`~probclip.hierarchy_head.TERMS`) summed with its weights, with
    ``[n, D]`` intermediates only (one query against a block of rows)."""
    w = np.asarray(pair.weights, np.float64)
    mu_a, lv_a = (np.asarray(x, np.float64) for x in inner)
    mu_b, lv_b = (np.asarray(x, np.float64) for x in outer)
    s_a, s_b, p_a, p_b = np.exp(lv_a), np.exp(lv_b), np.exp(-lv_a), np.exp(-lv_b)
    per_dim = ((mu_a - mu_b) ** 2 * (w[0] * p_b + w[1] * p_a) + w[2] * mu_a * mu_b + w[3] * s_a + w[4] * s_b
               + w[5] * p_a + w[6] * p_b)
    return per_dim.sum(-1) + pair.bias


@dataclass(frozen=True)
class HeadRanking:
    """The head's ranking of one score for one query modality against one item modality.

    ``score``: ``includes`` or ``included``; ``head``: the head; ``kind``: the pair kind asked; ``reverse_kind``: the
    kind with the roles swapped, or None when the head lacks it (the margin is then the logit itself).
    """

    score: str
    head: HierarchyHead
    kind: str
    reverse_kind: str | None

    @property
    def query_side(self) -> str:
        """``"inner"`` for ``included`` (the items are the more general side), ``"outer"`` for ``includes``."""
        return "inner" if self.score == "included" else "outer"

    def scores(self, query: ProbEmbedding, means: np.ndarray, logvars: np.ndarray,
               directional: bool) -> tuple[np.ndarray, np.ndarray]:
        """float64 logits ``[n]`` of one query ``[1, D]`` against items ``[n, D]``, and their margins (``+inf``
        without ``directional``; else the logit minus the reverse logit, or the logit when there is no reverse)."""
        q, items = (query.mean.numpy(), query.logvar.numpy()), (means, logvars)
        inner, outer = (q, items) if self.query_side == "inner" else (items, q)
        logits = pair_logits(self.head.pairs[self.kind], inner, outer)
        if not directional:
            return logits, np.full(logits.size, np.inf)
        if self.reverse_kind is None:
            return logits, logits.copy()
        return logits, logits - pair_logits(self.head.pairs[self.reverse_kind], outer, inner)

    def query_weights(self, mean: np.ndarray, logvar: np.ndarray, margin: bool = False) -> np.ndarray:
        """float64 ``[Q, 6D + 1]`` weights over the stored inclusion features: ``features @ weights.T`` is, up to a
        per-query constant, the logit (``margin`` False) or the directional margin (``margin`` True), exactly."""
        weights = self.head.query_weights(self.kind, mean, logvar, self.query_side)
        if not margin or self.reverse_kind is None:
            return weights
        other_side = "outer" if self.query_side == "inner" else "inner"
        return weights - self.head.query_weights(self.reverse_kind, mean, logvar, other_side)


def head_ranking(head: HierarchyHead | None, score: str, query_modality: str | None,
                 item_modality: str) -> HeadRanking | None:
    """The head's ranking of ``score`` for a query of ``query_modality`` against items of ``item_modality``, or None
    when the inclusion test ranks: no head, a score other than ``includes`` / ``included``, a query of unknown
    modality (an embedding given as numbers), or a head without that pair kind (e.g. ``image_in_image``)."""
    if head is None or query_modality is None or score not in ("includes", "included"):
        return None
    inner, outer = (query_modality, item_modality) if score == "included" else (item_modality, query_modality)
    kind = _kind(inner, outer)
    if kind not in head.pairs:
        return None
    reverse = _kind(outer, inner)
    return HeadRanking(score, head, kind, reverse if reverse in head.pairs else None)
