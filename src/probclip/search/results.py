"""``SearchResults``: what a search returns for one query, best first."""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from .options import HIGHER_IS_BETTER, SCORES  # defined with the search options; also importable from here

__all__ = ["SCORES", "HIGHER_IS_BETTER", "SearchResults"]


@dataclass
class SearchResults:
    """Results of one query, best first.

    Attributes:
        ids: int64 ``[k]`` row ids; scores: float32 ``[k]``; uncertainty: float32 ``[k]``, each item's ``u``.
        metadata: one dict per result (``row_id``, ``source``, ``caption``, ``u``, ...).
        score: the score's name; higher_is_better: False for ``csd``; exact: True when the ranking is exact
            (no item of the collection can be missing from it).
    """

    ids: np.ndarray
    scores: np.ndarray
    uncertainty: np.ndarray
    metadata: list[dict] = field(default_factory=list)
    score: str = "csd"
    higher_is_better: bool = False
    exact: bool = True

    def __len__(self) -> int:
        return int(self.ids.shape[0])

    def to_dict(self) -> dict:
        """JSON-ready dict: ``score``, ``higher_is_better``, ``exact``, ``results`` (rank, row_id, score, u, ...)."""
        rows = []
        for rank, (i, s, u, meta) in enumerate(
                zip(self.ids, self.scores, self.uncertainty, self.metadata, strict=True), 1):
            rows.append({**meta, "rank": rank, "row_id": int(i), "score": float(s), "u": float(u)})
        return {"score": self.score, "higher_is_better": self.higher_is_better, "exact": self.exact, "results": rows}
