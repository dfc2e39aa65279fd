"""Ranking "more general" / "more specific" by a hierarchy head: which pair kind a search asks, its exact logits and
margins, and its exact inner-product weights over the stored inclusion features.

A search with score ``included`` (items that include the query) puts the query on the inner side and the items on
the outer one: the head's kind ``f"{query_modality}_in_{item_modality}"``; ``includes`` (items the query includes)
the reverse: ``f"{item_modality}_in_{query_modality}"``. When the collection's head holds that kind, the score of an
item is the head's logit of ``P(inner included in outer)`` (float64), in place of the inclusion test; for
``includes`` plus the kind's ``generality`` times the item's mean log-variance
(:meth:`~probclip.hierarchy_head.PairWeights.specific_rank`: nearer specialisations first). The direction check
(``directional``) keeps an item when its margin is positive: the logit minus the logit with the roles swapped when
the head holds the swapped kind (``text_in_text``), else the logit itself (``P > 0.5``). An item's probability is
the sigmoid of its logit, without the generality term. The inclusion test's ``eps`` does not apply to the head.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from ..embedding import ProbEmbedding
from ..hierarchy_head import HierarchyHead, pair_kind
from .vectors import inclusion_feature_products

__all__ = ["RANKED_BY", "SELECTION_SLACK", "HeadRanking", "head_ranking", "pair_logits"]

#: What ranked a search's results per score when the head does not (``SearchResults.ranked_by``).
RANKED_BY = {"csd": "closed-form sampled distance", "mean": "cosine of means", "includes": "inclusion test",
             "included": "inclusion test"}


#: Relative slack for the float32 inner products that select the head's candidates (:meth:`HeadRanking.complete`):
#: a row left out may score up to this much (times ``1 + |bound|``) above the bound it was left out by.
SELECTION_SLACK = 1e-4


def pair_logits(head: HierarchyHead, kind: str, query: tuple[np.ndarray, np.ndarray],
                items: tuple[np.ndarray, np.ndarray], query_side: str) -> np.ndarray:
    """float64 logits ``[n]`` of one query ``(mean, logvar)`` ``[1, D]`` against items ``[n, D]`` under the pair kind
    ``kind``, the query on ``query_side`` (``"inner"`` / ``"outer"``).

    The head's exact linear form (:meth:`~probclip.hierarchy_head.HierarchyHead.query_form`) over the items'
    inclusion features in float64 (:func:`~probclip.search.vectors.inclusion_feature_products`): one matrix-vector
    product per feature block, plus the query's constant.
    """
    q_mean, q_logvar = (np.asarray(x, np.float64).reshape(1, -1) for x in query)
    weights, constants = head.query_form(kind, q_mean, q_logvar, query_side)
    return inclusion_feature_products(items[0], items[1], weights[0]) + float(constants[0])


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
    def generality(self) -> float:
        """Weight of the item's mean log-variance in the ranking key: the kind's ``generality`` for ``includes``, 0
        for ``included``."""
        return self.head.pairs[self.kind].generality if self.score == "includes" else 0.0

    @property
    def query_side(self) -> str:
        """``"inner"`` for ``included`` (the items are the more general side), ``"outer"`` for ``includes``."""
        return "inner" if self.score == "included" else "outer"

    def scores(self, query: ProbEmbedding, means: np.ndarray, logvars: np.ndarray,
               directional: bool) -> tuple[np.ndarray, np.ndarray]:
        """float64 ranking keys ``[n]`` of one query ``[1, D]`` against items ``[n, D]`` (the logits, plus the
        generality term for ``includes``), and their margins (``+inf`` without ``directional``; else the logit minus
        the reverse logit, or the logit when there is no reverse)."""
        q, items = (query.mean.numpy(), query.logvar.numpy()), (means, logvars)
        logits = pair_logits(self.head, self.kind, q, items, self.query_side)
        keys = self._rank(logits, logvars)
        if not directional:
            return keys, np.full(logits.size, np.inf)
        if self.reverse_kind is None:
            return keys, logits.copy()
        return keys, logits - pair_logits(self.head, self.reverse_kind, q, items, self._other_side)

    def _rank(self, logits: np.ndarray, logvars: np.ndarray) -> np.ndarray:
        """The ranking keys of items ``[n, D]`` (``logvars``) from their logits ``[n]``: for ``includes`` the kind's
        "more specific" rank (:meth:`~probclip.hierarchy_head.PairWeights.specific_rank`), else the logits."""
        if self.score != "includes":
            return logits
        return self.head.pairs[self.kind].specific_rank(logits, np.asarray(logvars, np.float64))

    def probabilities(self, keys: np.ndarray, logvars: np.ndarray) -> np.ndarray:
        """float64 ``[k]`` probabilities of items ``[k, D]`` (``logvars``) from their ranking keys ``[k]``: the
        sigmoid of the logit, the generality term taken out."""
        logits = np.asarray(keys, np.float64) - self._rank(np.zeros(len(keys)), logvars)
        return 1.0 / (1.0 + np.exp(-logits))

    @property
    def _other_side(self) -> str:
        return "outer" if self.query_side == "inner" else "inner"

    def complete(self, scores: np.ndarray, margins: np.ndarray, k: int, n: int, directional: bool = True) -> bool:
        """True when no row outside a search's candidates can enter its top ``k``.

        ``scores`` / ``margins``: the exact float64 values of candidates that hold the top ``n`` rows by the head's
        logit and (``directional``, with a reverse kind) by its margin (:meth:`query_weights`: exact inner products).
        Every other row then has a logit at most the candidates' ``n``-th largest (the bound) and a margin at most
        their ``n``-th largest margin: the top ``k`` is complete when its ``k``-th logit beats the bound, or
        (``directional``) when no other row can pass the check (margin bound <= 0), each with
        :data:`SELECTION_SLACK`.
        """
        if scores.size < n:  # fewer rows than asked for: the candidates are every allowed row
            return True
        bound = float(np.partition(scores, -n)[-n])
        passing = scores[margins > 0]
        if passing.size >= k and float(np.partition(passing, -k)[-k]) > bound + SELECTION_SLACK * (1 + abs(bound)):
            return True
        if not directional:
            return False
        margin_bound = bound if self.reverse_kind is None else float(np.partition(margins, -n)[-n])
        return margin_bound + SELECTION_SLACK * (1 + abs(margin_bound)) <= 0

    def query_weights(self, mean: np.ndarray, logvar: np.ndarray, margin: bool = False) -> np.ndarray:
        """float64 ``[Q, 6D + 1]`` weights over the stored inclusion features: ``features @ weights.T`` is, up to a
        per-query constant, the ranking key (``margin`` False) or the directional margin (``margin`` True), exactly.
        """
        weights = self.head.query_weights(self.kind, mean, logvar, self.query_side)
        if not margin:
            dim = (weights.shape[1] - 1) // 6
            weights[:, -1] += self.generality / dim  # the last feature is sum_d lv: g * mean_d lv
            return weights
        if self.reverse_kind is None:
            return weights
        return weights - self.head.query_weights(self.reverse_kind, mean, logvar, self._other_side)


def head_ranking(head: HierarchyHead | None, score: str, query_modality: str | None,
                 item_modality: str) -> HeadRanking | None:
    """The head's ranking of ``score`` for a query of ``query_modality`` against items of ``item_modality``, or None
    when the inclusion test ranks: no head, a score other than ``includes`` / ``included``, a query of unknown
    modality (an embedding given as numbers), or a head without that pair kind (e.g. ``image_in_image``)."""
    if head is None or query_modality is None or score not in ("includes", "included"):
        return None
    inner, outer = (query_modality, item_modality) if score == "included" else (item_modality, query_modality)
    kind = pair_kind(inner, outer)
    if kind not in head.pairs:
        return None
    reverse = pair_kind(outer, inner)
    return HeadRanking(score, head, kind, reverse if reverse in head.pairs else None)
