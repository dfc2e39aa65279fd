"""Candidate sources of a search: the backend's CSD index, an exact scan of the means, the inclusion candidate
index, the rows nearest in ``u``, and the deepening of a directional inclusion search. They only propose row ids;
:class:`~probclip.search.scoring.ExactScorer` scores and ranks them.
"""

from __future__ import annotations

from pathlib import Path

import faiss
import numpy as np

from ..embedding import ProbEmbedding
from ..errors import InputError
from .backends import IndexBackend, OpenContext, exact_topk, load_rows_npy
from .head_ranking import HeadRanking
from .layout import StoredRows, collection_file, verify_fingerprint
from .manifest import IndexEntry
from .scoring import ExactScorer, top
from .vectors import inclusion_query_weights

__all__ = ["MARGIN_WEIGHT", "U_NEIGHBOURS", "CandidateSources", "IndexFiles"]

#: For a directional inclusion search, the weight of the approximate margin in the second approximate ranking.
MARGIN_WEIGHT = 1.0
#: For a directional inclusion search, rows taken on each side of the query's ``u``, per candidate.
U_NEIGHBOURS = 4


class IndexFiles:
    """The index files of one modality's entry, each checked once (inside the collection, present, fingerprint)."""

    def __init__(self, root: Path, modality: str, entry: IndexEntry):
        self.root, self.modality, self.entry = root, modality, entry
        self._checked: dict[str, str] = {}

    def path(self, key: str) -> str:
        """The path of the index file ``entry[key]``, checked once: inside the collection, present, and with the
        fingerprint recorded when it was built (else ``InputError``)."""
        if key in self._checked:
            return self._checked[key]
        path = collection_file(self.root, self.entry.files[key], f"indexes.{self.modality}.{key}")
        rebuild = f"rebuild it with `probclip index {self.root}`"
        if not path.is_file():
            raise InputError(f"index file {path} is missing; {rebuild}")
        expected = self.entry.fingerprints.get(key)
        if not isinstance(expected, str):
            raise InputError(f"the manifest records no fingerprint of index file {path} (built by an older probclip, "
                             f"or the manifest was edited); {rebuild}")
        verify_fingerprint(path, expected, "index file", "`probclip index` wrote for", rebuild)
        self._checked[key] = str(path)
        return str(path)


class CandidateSources:
    """Where a search's candidates come from (see the module docstring); ``knobs``: the entry's search knobs."""

    def __init__(self, stored: StoredRows, backend: IndexBackend, files: IndexFiles, scorer: ExactScorer,
                 knobs: dict):
        self.stored, self.backend, self.files, self.scorer, self.knobs = stored, backend, files, scorer, knobs
        self._index = None
        self._inclusion_index = None
        self._mean_variance = None
        self._u_order = None

    @property
    def index(self):
        """The backend's opened CSD candidate index (:mod:`probclip.search.backends`), opened on first use."""
        if self._index is None:
            context = OpenContext(self.stored, self.files.root, self.files.modality, self.files.path)
            self._index = self.backend.open(context, self.files.entry.to_dict())
        return self._index

    def csd(self, mean: np.ndarray, n: int, allowed) -> list[np.ndarray]:
        """Per query (``[Q, D]`` means) the backend's CSD candidates, int64 row ids."""
        return self.index.candidates(mean, n, allowed)

    def mean_scan(self, mean: np.ndarray, n: int, allowed) -> list[np.ndarray]:
        """Exact top-n by cosine of means from the flat index's rows (memory-mapped), ``[Q]`` id arrays."""
        data = self.index.means()
        best_ids = [np.zeros(0, np.int64) for _ in range(mean.shape[0])]
        best_scores = [np.zeros(0, np.float32) for _ in range(mean.shape[0])]
        for block in self.scorer.scan_ids(allowed):
            rows = data[block[0]: block[-1] + 1][block - block[0]]
            sims = (rows @ mean.T) / np.maximum(np.linalg.norm(rows, axis=1), 1e-12)[:, None]
            for qi in range(mean.shape[0]):
                ids = np.concatenate([best_ids[qi], block])
                scores = np.concatenate([best_scores[qi], sims[:, qi]])
                best_ids[qi], best_scores[qi] = top(scores, ids, n, higher=True)
        return best_ids

    def inclusion(self, query: ProbEmbedding, score: str, n: int, allowed, eps: float,
                  directional: bool = False, ranking: HeadRanking | None = None) -> list[np.ndarray]:
        """Per query, the top ``n`` rows by the inner-product approximation of the test, and (``directional``
        ``included``) the top ``n`` by the approximate test plus its approximate margin over the reverse test (empty
        without the index).

        With a hierarchy head's ``ranking``, the same stored features give the head's logit and (``directional``,
        when the head holds the reverse kind) its margin exactly as inner products
        (:meth:`~probclip.search.head_ranking.HeadRanking.query_weights`): the top ``n`` by each."""
        if self._inclusion_index is None:
            if "inclusion_file" not in self.files.entry.files:  # built with --no-inclusion
                return [np.zeros(0, np.int64)] * query.mean.shape[0]
            self._inclusion_index = load_rows_npy(self.files.path("inclusion_file"), self.stored.rows,
                                                  6 * self.stored.dim + 1, self.files.root)
            try:
                self._mean_variance = np.load(self.files.path("mean_variance_file"), allow_pickle=False)
            except (OSError, ValueError, EOFError) as err:
                raise InputError(f"{self.files.path('mean_variance_file')} is not a NumPy array ({err}); rebuild it "
                                 f"with `probclip index {self.files.root}`") from err
            if self._mean_variance.shape != (self.stored.dim,):
                raise InputError(f"{self.files.path('mean_variance_file')} holds shape {self._mean_variance.shape}, "
                                 f"expected ({self.stored.dim},); rebuild it with `probclip index {self.files.root}`")
        mean, logvar = query.mean.numpy(), query.logvar.numpy()
        if ranking is not None:
            weights = [ranking.query_weights(mean, logvar)]
            if directional and ranking.reverse_kind is not None:
                weights.append(ranking.query_weights(mean, logvar, margin=True))
        else:
            weights = [inclusion_query_weights(mean, logvar, self._mean_variance, score, eps)]
            if directional and score == "included":  # "includes" finds its items without it (at half the cost)
                weights.append(inclusion_query_weights(mean, logvar, self._mean_variance, score, eps,
                                                       margin_weight=MARGIN_WEIGHT))
        ids = exact_topk(self._inclusion_index, np.concatenate(weights), n, allowed, faiss.METRIC_INNER_PRODUCT)
        q = query.mean.shape[0]
        return [np.unique(np.concatenate([ids[i + j * q] for j in range(len(weights))])) for i in range(q)]

    def uncertainty_neighbours(self, query: ProbEmbedding, n: int, allowed) -> list[np.ndarray]:
        """Per query, the ``n`` allowed rows just below and the ``n`` just above the query's ``u``.

        Where the means barely differ, the directional inclusion ranking is decided at the boundary of the check:
        the best items are the least (``included``) or most (``includes``) uncertain that still pass it, which
        sit next to the query on the uncertainty scale.
        """
        if self._u_order is None:
            self._u_order = np.argsort(self.stored.u, kind="stable")
        order = self._u_order if allowed is None else self._u_order[allowed[self._u_order]]
        sorted_u = self.stored.u[order]
        u_q = np.exp(query.logvar.numpy().astype(np.float64)).sum(1).astype(np.float32)
        at = np.searchsorted(sorted_u, u_q)
        return [order[max(0, i - n): i + n] for i in at]

    def deepened(self, query: ProbEmbedding, score: str, n: int, allowed, eps: float,
                 nearest: np.ndarray | None = None, ranking: HeadRanking | None = None, k: int = 1):
        """Directional inclusion candidates of one query ``[1, D]``, re-ranked.

        Returns ``(ids, scores, margins, exact)``. Takes ``n`` candidates from the approximation index and from
        the CSD index, and ``n x U_NEIGHBOURS`` on each side of the query's ``u``. When more than half of the first
        two lists are copies of the query (margin exactly 0: a stored item searched with, in a collection with many
        duplicates), they hide the rows that qualify: it searches ``DEEPEN_FACTOR`` times deeper, up to
        ``n x DEEPEN_LIMIT``; a depth that would
        re-rank half of the rows scans them all instead (``exact``: the ranking is then exact). ``nearest``: the
        first depth's candidates of the two indexes, when already searched (in one batch for many queries).

        ``ranking``: the hierarchy head ranks instead of the test. Its candidates are exact top lists, so the search
        knows when its top ``k`` is complete (:meth:`~probclip.search.head_ranking.HeadRanking.complete`; ``exact``)
        and goes deeper, by the same steps, until it is, instead of looking at copies of the query.
        """
        first = n
        while True:
            if 2 * n * (1 + U_NEIGHBOURS) * 2 >= self.stored.rows:
                ids = np.concatenate(self.scorer.scan_ids(allowed) or [np.zeros(0, np.int64)])
                return (*self.scorer.rerank(query, score, ids, allowed, eps, True, ranking), True)
            if nearest is None or n != first:
                nearest = np.union1d(self.inclusion(query, score, n, allowed, eps, True, ranking)[0],
                                     self.csd(query.mean.numpy(), n, allowed)[0])
            ids = np.union1d(nearest, self.uncertainty_neighbours(query, n * U_NEIGHBOURS, allowed)[0])
            ids, scores, margins = self.scorer.rerank(query, score, ids, allowed, eps, True, ranking)
            if ranking is not None:
                if ranking.complete(scores, margins, k, n):
                    return ids, scores, margins, True
                if n >= first * self.knobs["deepen_limit"]:
                    return ids, scores, margins, False
                n *= self.knobs["deepen_factor"]
                continue
            copies = int(np.isin(nearest, ids[margins == 0], assume_unique=True).sum())
            if 2 * copies <= nearest.size or n >= first * self.knobs["deepen_limit"]:
                return ids, scores, margins, False
            n *= self.knobs["deepen_factor"]
