"""``SearchResults``: what a search returns for one query, best first."""

from __future__ import annotations

from dataclasses import dataclass, field, replace

import numpy as np

from .options import HIGHER_IS_BETTER, SCORES  # defined with the search options; also importable from here

#: ``SearchResults.ranked_by`` when the collection's hierarchy head ranked.
HEAD_RANKED_BY = "hierarchy head"

__all__ = ["HEAD_RANKED_BY", "SCORES", "HIGHER_IS_BETTER", "SearchResults"]


@dataclass
class SearchResults:
    """Results of one query, best first.

    Attributes:
        ids: int64 ``[k]`` row ids; scores: float32 ``[k]``; uncertainty: float32 ``[k]``, each item's ``u``.
        metadata: one dict per result (``row_id``, ``source``, ``caption``, ``u``, ...).
        score: the score's name; higher_is_better: False for ``csd``; exact: True when the ranking is exact
            (no item of the collection can be missing from it).
        ranked_by: what computed the scores: ``closed-form sampled distance``, ``cosine of means``,
            ``inclusion test`` or ``hierarchy head`` (then each score is the head's ranking key: its logit of the
            item being more general / more specific than the query, plus for "more specific" its generality term).
        probabilities: float64 ``[k]`` where the hierarchy head ranked: the head's probability that the item is more
            general / more specific than the query (the sigmoid of its logit); else None.
    """

    ids: np.ndarray
    scores: np.ndarray
    uncertainty: np.ndarray
    metadata: list[dict] = field(default_factory=list)
    score: str = "csd"
    higher_is_better: bool = False
    exact: bool = True
    ranked_by: str = "closed-form sampled distance"
    probabilities: np.ndarray | None = None

    def __len__(self) -> int:
        return int(self.ids.shape[0])

    def take(self, keep: np.ndarray | slice) -> SearchResults:
        """The results at positions ``keep`` (an index array or a slice), every per-result field alike."""
        metadata = self.metadata[keep] if isinstance(keep, slice) else [self.metadata[i] for i in keep]
        return replace(self, ids=self.ids[keep], scores=self.scores[keep], uncertainty=self.uncertainty[keep],
                       metadata=metadata if self.metadata else [],
                       probabilities=None if self.probabilities is None else self.probabilities[keep])

    def to_dict(self) -> dict:
        """JSON-ready dict: ``score``, ``higher_is_better``, ``exact``, ``ranked_by``, ``results`` (rank, row_id,
        score, u, ..., and ``probability`` where the hierarchy head ranked)."""
        rows = []
        probabilities = self.probabilities
        for rank, (i, s, u, meta) in enumerate(
                zip(self.ids, self.scores, self.uncertainty, self.metadata, strict=True), 1):
            rows.append({**meta, "rank": rank, "row_id": int(i), "score": float(s), "u": float(u)})
            if probabilities is not None:
                rows[-1]["probability"] = float(probabilities[rank - 1])
        return {"score": self.score, "higher_is_better": self.higher_is_better, "exact": self.exact,
                "ranked_by": self.ranked_by, "results": rows}
