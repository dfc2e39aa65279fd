"""``SearchIndex``: search a collection by CSD, cosine of means or the inclusion test, with its uncertainty.

Every score is computed exactly at the end: an index proposes candidates (all of them for a flat index, the
best ``k x oversample`` for the approximate kinds), and the candidates are re-ranked from the stored rows
(means and log-variances in float32, ``u`` as stored in float32), ties broken by row id. The flat CSD index and
Milvus (exact L2) give the exact CSD top-k; the inclusion test, which has no exact vector-search form, is scanned
exhaustively when the collection is small (``exhaustive``) and otherwise re-ranked from three candidate sources: an
inner-product index over an approximation of the test (one per direction), the CSD index, and the rows nearest to
the query on the uncertainty scale.

The inclusion scores keep only the items for which the test holds in the direction asked (``directional``, the
default): ``includes`` keeps items with ``test(item in query) > test(query in item)``, the comparison ProLIP's
inclusion loss trains, and ranks them by ``test(item in query)``; ``included`` the reverse. The raw test alone
rewards every low-variance item near the query, so without the check both directions list the most specific items.

A collection that carries a hierarchy head (:mod:`probclip.search.collection_head`) ranks the inclusion scores by
the head's logits instead, where the head holds the pair of modalities asked and the query's modality is known
(a text or an image; an embedding when ``query_modality`` says which): see :mod:`probclip.search.head_ranking`.
The option ``hierarchy_head=False`` ranks by the test. The candidates of a large collection then come from the
same stored features, as exact inner products of the head's logit and margin.

``SearchIndex`` is a facade over parts with one job each: :class:`~probclip.search.queries.QueryEncoder` (queries
to embeddings), :class:`~probclip.search.candidates.CandidateSources` (the backend's index and the other candidate
sources), :class:`~probclip.search.scoring.ExactScorer` (the exact scores and their ranking over stored rows) and
:class:`~probclip.search.items.CollectionItems` (metadata, stored embeddings, images).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from pathlib import Path

import numpy as np
from PIL import Image

from ..embedding import ProbEmbedding
from ..errors import InputError, UsageError
from .backends import backend_for
from .candidates import CandidateSources, IndexFiles
from .collection_head import CollectionHead
from .head_ranking import RANKED_BY, head_ranking
from .items import CollectionItems
from .layout import MANIFEST_NAME, MODALITIES, StoredRows, check_modality
from .manifest import INDEX_FILE_KEYS, Manifest, read_manifest
from .model_id import model_fingerprint
from .model_loading import load_model
from .options import HIGHER_IS_BETTER, SearchOptions
from .queries import QueryEncoder
from .results import HEAD_RANKED_BY, SearchResults
from .scoring import ExactScorer, top

__all__ = ["DEFAULT_OVERSAMPLE", "EXHAUSTIVE_ELEMENTS", "SearchIndex"]

#: Candidates per wanted result for the approximate kinds and the inclusion test, when the manifest records none.
DEFAULT_OVERSAMPLE = {"flat": 10, "milvus": 10, "hnsw": 4, "ivfpq": 16}
#: Extra candidates of an exact index, so that float32 rounding in the index cannot change the exact top-k.
EXACT_MARGIN = 16
#: Collections of at most this many stored elements (rows x D) are scanned exhaustively by the inclusion test.
EXHAUSTIVE_ELEMENTS = 2**20
#: A directional inclusion search whose nearest candidates are mostly copies of the query searches this many times
#: deeper, up to ``DEEPEN_LIMIT`` times its first depth (defaults of the manifest's search knobs).
DEEPEN_FACTOR = 4
DEEPEN_LIMIT = 64


def _file_state(path: Path) -> tuple | None:
    """``(inode, size, mtime_ns)`` of ``path``, or None when it is missing."""
    try:
        stat = path.stat()
    except OSError:
        return None
    return stat.st_ino, stat.st_size, stat.st_mtime_ns


class SearchIndex:
    """A searchable modality of a collection (see the module docstring). Build with :meth:`load`.

    Attributes: ``name`` (``<folder>/<modality>``), ``modality``, ``rows``, ``dim``, ``kind`` (``flat``, ``hnsw``,
    ``ivfpq``, ``milvus`` or a registered backend), ``exact`` (True when the CSD ranking is exact), ``recall_at_10``,
    ``model_name``, ``model_fingerprint``.
    """

    def __init__(self, root: Path, manifest: Manifest, modality: str, model=None,
                 manifest_state: tuple | None = None):
        self.root, self.manifest, self.modality = root, manifest, modality
        self._manifest_state = manifest_state
        self.stored = StoredRows(root, manifest, modality)
        entry = manifest.indexes.get(modality)
        if entry is None:
            older = (f" (its index was built by an older probclip, manifest format {manifest.upgraded_from})"
                     if manifest.upgraded_from is not None else "")
            raise InputError(f"collection {str(root)!r} has no {modality} index{older}; run `probclip index {root}` "
                             "first")
        if entry.rows != self.stored.rows:
            raise InputError(f"the {modality} index of {str(root)!r} covers {entry.rows} rows, the collection "
                             f"{self.stored.rows}; rebuild it with `probclip index {root}`")
        self.entry = entry
        self.name = f"{root.resolve().name}/{modality}"
        self.rows, self.dim = self.stored.rows, self.stored.dim
        self.kind = entry.kind
        self.backend = backend_for(self.kind)
        self.exact = bool(self.backend.exact)
        #: recall@10 of the CSD candidates: 1.0 for an exact kind, else reached by build-time tuning (None: untuned).
        self.recall_at_10 = 1.0 if self.exact else entry.recall_at_10
        #: The search knobs recorded when the index was built (oversample, exhaustive threshold, deepening).
        self.knobs = {"oversample": DEFAULT_OVERSAMPLE.get(self.kind, self.backend.default_oversample),
                      "exhaustive_elements": EXHAUSTIVE_ELEMENTS, "deepen_factor": DEEPEN_FACTOR,
                      "deepen_limit": DEEPEN_LIMIT, **entry.search}
        self.model_name, self.model_fingerprint = manifest.model.name, manifest.model.fingerprint
        self._model = None
        if model is not None:
            self._check_model(model)
            self._model = model.eval()
        self.files = IndexFiles(root, modality, entry)
        for key in INDEX_FILE_KEYS:
            if key in entry.files:
                self.files.path(key)  # every index file is checked against its fingerprint once, at load
        self.queries = QueryEncoder(lambda: self.model, self.dim, self.model_name)
        self.scorer = ExactScorer(self.stored)
        self.candidates = CandidateSources(self.stored, self.backend, self.files, self.scorer, self.knobs)
        self.items = CollectionItems(self.stored)
        #: The hierarchy head the collection carries (its file checked when a search first needs it).
        self.head = CollectionHead(root, manifest.hierarchy_head, self.dim)

    # ------------------------------------------------------------------------------------------------ loading
    @classmethod
    def load(cls, collection_dir: str | Path, modality: str = "image", model=None) -> SearchIndex:
        """Open the ``modality`` index of a collection (files memory-mapped); ``model`` encodes text/image queries."""
        check_modality(modality)
        root = Path(collection_dir)
        state = _file_state(root / MANIFEST_NAME)
        return cls(root, read_manifest(root), modality, model, manifest_state=state)

    def changed(self) -> str | None:
        """Why the collection on disk is no longer the one loaded (its manifest was removed, or rewritten with other
        content: re-embedded or re-indexed in place), or None while it is the same. One ``stat`` when unchanged.
        The reason names no path (a service sends it to its clients)."""
        if self._manifest_state is None:
            return None
        path = self.root / MANIFEST_NAME
        state = _file_state(path)
        if state == self._manifest_state:
            return None
        if state is None:
            return f"its {MANIFEST_NAME} was removed (the collection is being embedded again, or was deleted)"
        try:
            current = read_manifest(self.root)
        except InputError:
            return f"its {MANIFEST_NAME} changed and cannot be read now"
        if current != self.manifest:
            changed = [f.name for f in dataclasses.fields(Manifest)
                       if getattr(current, f.name) != getattr(self.manifest, f.name)]
            return f"its {MANIFEST_NAME} was rewritten (changed: {', '.join(changed)})"
        self._manifest_state = state  # rewritten with the same content
        return None

    def _check_model(self, model) -> None:
        found = model_fingerprint(model)
        if found != self.model_fingerprint:
            raise UsageError(f"the model's fingerprint {found} differs from the collection's "
                             f"{self.model_fingerprint} ({self.model_name}): queries must be encoded with the model "
                             "that embedded the collection")

    @property
    def model(self):
        """The model of the collection (loaded from the manifest's ``model.source`` on first use)."""
        if self._model is None:
            source = self.manifest.model.source
            if not source:
                raise UsageError(f"collection {str(self.root)!r} names no loadable model (it was embedded with an "
                                 "in-memory model); pass model= to SearchIndex.load")
            model, _ = load_model(source)
            self._check_model(model)
            self._model = model
        return self._model


    @property
    def candidate_index(self):
        """The opened CSD candidate index of the backend (:mod:`probclip.search.backends`)."""
        return self.candidates.index

    def encode(self, query) -> ProbEmbedding:
        """A query as a float32 CPU ``ProbEmbedding [Q, D]``: an embedding, text(s) or PIL image(s)."""
        return self.queries.encode(query)

    def search(self, query, k: int | None = None, score: str | None = None, *, options: SearchOptions | None = None,
               query_modality: str | None = None, **option_values) -> list[SearchResults]:
        """Search with one or more queries; returns one :class:`SearchResults` per query, best first.

        Args:
            query: a ``ProbEmbedding`` (``[D]`` or ``[Q, D]``), a str or list of str, a PIL image or list of them.
            k, score, **option_values: any field of :class:`~probclip.search.options.SearchOptions` by name
                (``k``: results per query, default 10; ``score``: ``csd``, ``mean``, ``includes`` or ``included``;
                ``max_uncertainty``, ``uncertainty_quantile``, ``eps``, ``directional``, ``oversample``,
                ``exhaustive``, ``hierarchy_head``), overriding ``options``.
            options: a ``SearchOptions`` (default: the defaults). A bad or unknown option is a ``UsageError``.
            query_modality: ``text`` or ``image``: what an embedding query was encoded from (texts and images say so
                themselves); None for an embedding of unknown origin, which the hierarchy head cannot rank.

        ``directional`` (the default) keeps, for ``includes`` / ``included``, only the items for which the test in
        the direction asked beats the reverse test (see the module docstring); a query can then get fewer than ``k``.
        """
        given = {name: value for name, value in (("k", k), ("score", score)) if value is not None}
        opts = SearchOptions.from_values({**given, **option_values}, base=options)
        k, score, eps, directional = opts.k, opts.score, opts.eps, opts.directional
        query_modality = self._query_modality(query, query_modality)
        emb = self.encode(query)
        ranking = head_ranking(self.head.get() if opts.hierarchy_head and score in ("includes", "included") else None,
                               score, query_modality, self.modality)
        ranked_by = HEAD_RANKED_BY if ranking is not None else RANKED_BY[score]
        allowed = self.scorer.allowed(opts.max_uncertainty, opts.uncertainty_quantile, self.name)
        k = int(min(k, self.rows))
        over = opts.oversample or int(self.knobs["oversample"])
        mean = emb.mean.numpy()
        exact, deepen = self.exact, False
        if score == "csd":
            n = k + EXACT_MARGIN if self.exact else k * over
            candidates = self.candidates.csd(mean, n, allowed)
        elif score == "mean":
            if hasattr(self.candidates.index, "means"):  # a flat index holds the means: scan them exactly
                candidates = self.candidates.mean_scan(mean, k + EXACT_MARGIN, allowed)
            else:
                candidates = self.candidates.csd(mean, k * over, allowed)
                exact = False
        else:
            scan = (opts.exhaustive if opts.exhaustive is not None
                    else self.rows * self.dim <= int(self.knobs["exhaustive_elements"]))
            if scan:
                candidates = [np.concatenate(self.scorer.scan_ids(allowed) or [np.zeros(0, np.int64)])] * len(emb)
            else:  # the first depth in one batch (each index read once); a directional search deepens per query
                by_test = self.candidates.inclusion(emb, score, k * over, allowed, eps, directional, ranking)
                by_csd = self.candidates.csd(mean, k * over, allowed)
                candidates = [np.union1d(a, b) for a, b in zip(by_test, by_csd, strict=True)]
                deepen = directional
            exact = bool(scan)
        higher = HIGHER_IS_BETTER[score]
        out = []
        for qi, ids in enumerate(candidates):
            one, scanned = emb[qi: qi + 1], False
            if deepen:
                ids, scores, margins, scanned = self.candidates.deepened(one, score, k * over, allowed, eps, ids,
                                                                         ranking, k)
            else:
                ids, scores, margins = self.scorer.rerank(one, score, ids, allowed, eps, directional, ranking)
                if ranking is not None and not exact:  # the head's candidates are exact top lists: complete?
                    scanned = ranking.complete(scores, margins, k, k * over, directional=False)
            keep = margins > 0
            top_ids, top_scores = top(scores[keep], ids[keep], k, higher)
            top_ids = top_ids.astype(np.int64)
            probabilities = None if ranking is None else ranking.probabilities(top_scores,
                                                                               self.stored.logvars(top_ids))
            out.append(SearchResults(ids=top_ids, scores=top_scores.astype(np.float32),
                                     uncertainty=self.stored.u[top_ids].astype(np.float32), metadata=[],
                                     score=score, higher_is_better=higher, exact=exact or scanned,
                                     ranked_by=ranked_by, probabilities=probabilities))
        metadata = self.metadata(np.concatenate([r.ids for r in out]))  # one read for every query's results
        start = 0
        for r in out:
            r.metadata, start = metadata[start: start + len(r)], start + len(r)
        return out

    @staticmethod
    def _query_modality(query, given: str | None) -> str | None:
        """The modality of ``query``: ``text`` for str, ``image`` for PIL images, ``given`` for an embedding."""
        if given is not None and given not in MODALITIES:
            raise UsageError(f"query_modality must be one of {list(MODALITIES)} or None; got {given!r}")
        first = query[0] if isinstance(query, (list, tuple)) and query else query
        found = "text" if isinstance(first, str) else "image" if isinstance(first, Image.Image) else None
        if found is not None and given is not None and given != found:
            raise UsageError(f"query_modality = {given!r}, but the query is a {found}")
        return found or given

    def metadata(self, ids: Sequence[int] | np.ndarray) -> list[dict]:
        """One metadata dict per row id (see :meth:`CollectionItems.metadata`)."""
        return self.items.metadata(ids)

    def embedding(self, ids: Sequence[int] | np.ndarray | int) -> ProbEmbedding:
        """The stored rows as a float32 ``ProbEmbedding [len(ids), D]`` (search with it to find similar items)."""
        return self.items.embedding(ids)

    def open_image(self, row_id: int) -> Image.Image | None:
        """The image of an image row, decoded by the one decoder; None for text rows."""
        return self.items.open_image(row_id)
