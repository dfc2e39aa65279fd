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
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import faiss
import numpy as np
import torch
from PIL import Image

from ..data.listings import ImageItem
from ..embedding import ProbEmbedding
from ..errors import InputError, UsageError
from ..limits import clip_caption, current_limits
from ..tokenizers import get_tokenizer
from ..transforms import ToRGB, image_transform
from .checks import check_query_embedding, check_search_options
from .layout import (
    INDEX_FILE_KEYS,
    MANIFEST_NAME,
    StoredRows,
    check_modality,
    collection_file,
    file_fingerprint,
    read_manifest,
)
from .milvus import MilvusSearcher
from .model_id import model_fingerprint
from .model_loading import load_model
from .results import HIGHER_IS_BETTER, SCORES, SearchResults
from .vectors import augment_query, inclusion_query_weights, inclusion_test, inclusion_tests

__all__ = ["DEFAULT_OVERSAMPLE", "EXHAUSTIVE_ELEMENTS", "SearchIndex"]

#: Candidates per wanted result for the approximate kinds and the inclusion test.
DEFAULT_OVERSAMPLE = {"flat": 10, "milvus": 10, "hnsw": 4, "ivfpq": 16}
#: Extra candidates of an exact index, so that float32 rounding in the index cannot change the exact top-k.
EXACT_MARGIN = 16
#: Collections of at most this many stored elements (rows x D) are scanned exhaustively by the inclusion test.
EXHAUSTIVE_ELEMENTS = 2**20
#: For a directional inclusion search, the weight of the approximate margin in the second approximate ranking.
MARGIN_WEIGHT = 1.0
#: For a directional inclusion search, rows taken on each side of the query's ``u``, per candidate.
U_NEIGHBOURS = 4
#: A directional inclusion search whose nearest candidates are mostly copies of the query searches this many times
#: deeper, up to ``DEEPEN_LIMIT`` times its first depth.
DEEPEN_FACTOR = 4
DEEPEN_LIMIT = 64
#: Rows per block of an exhaustive scan.
SCAN_ROWS = 65536


def _file_state(path: Path) -> tuple | None:
    """``(inode, size, mtime_ns)`` of ``path``, or None when it is missing."""
    try:
        stat = path.stat()
    except OSError:
        return None
    return stat.st_ino, stat.st_size, stat.st_mtime_ns


def _top(scores: np.ndarray, ids: np.ndarray, k: int, higher: bool) -> tuple[np.ndarray, np.ndarray]:
    """The best ``k`` of ``(scores, ids)``, ties broken by the smaller row id."""
    order = np.lexsort((ids, -scores if higher else scores))[:k]
    return ids[order], scores[order]


class SearchIndex:
    """A searchable modality of a collection (see the module docstring). Build with :meth:`load`.

    Attributes: ``name`` (``<folder>/<modality>``), ``modality``, ``rows``, ``dim``, ``kind`` (``flat``, ``hnsw``,
    ``ivfpq``, ``milvus``), ``exact`` (True when the CSD ranking is exact), ``model_name``, ``model_fingerprint``.
    """

    def __init__(self, root: Path, manifest: dict, modality: str, model=None, manifest_state: tuple | None = None):
        self.root, self.manifest, self.modality = root, manifest, modality
        self._manifest_state = manifest_state
        self.stored = StoredRows(root, manifest, modality)
        entry = manifest.get("indexes", {}).get(modality)
        if not entry:
            raise InputError(f"collection {str(root)!r} has no {modality} index; run `probclip index {root}` first")
        if int(entry.get("rows", -1)) != self.stored.rows:
            raise InputError(f"the {modality} index of {str(root)!r} covers {entry.get('rows')} rows, the collection "
                             f"{self.stored.rows}; rebuild it with `probclip index {root}`")
        self.entry = entry
        self.name = f"{root.resolve().name}/{modality}"
        self.rows, self.dim = self.stored.rows, self.stored.dim
        self.kind = str(entry["kind"])
        self.exact = self.kind in ("flat", "milvus")
        record = manifest["model"]
        self.model_name, self.model_fingerprint = str(record["name"]), str(record["fingerprint"])
        self._model = None
        if model is not None:
            self._check_model(model)
            self._model = model.eval()
        self._csd_index = None
        self._inclusion_index = None
        self._u_order = None
        self._milvus = None
        self._tokenizer = None
        self._checked_files: dict[str, str] = {}
        for key in INDEX_FILE_KEYS:
            if key in entry:
                self._file(key)  # every index file is checked against its fingerprint once, at load

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
            changed = sorted(k for k in set(current) | set(self.manifest) if current.get(k) != self.manifest.get(k))
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
            source = self.manifest["model"].get("source")
            if not source:
                raise UsageError(f"collection {str(self.root)!r} names no loadable model (it was embedded with an "
                                 "in-memory model); pass model= to SearchIndex.load")
            model, _ = load_model(source)
            self._check_model(model)
            self._model = model
        return self._model

    def _file(self, key: str) -> str:
        """The path of the index file ``entry[key]``, checked once: inside the collection, present, and with the
        fingerprint recorded when it was built (else ``InputError``)."""
        if key in self._checked_files:
            return self._checked_files[key]
        path = collection_file(self.root, self.entry[key], f"indexes.{self.modality}.{key}")
        rebuild = f"rebuild it with `probclip index {self.root}`"
        if not path.is_file():
            raise InputError(f"index file {path} is missing; {rebuild}")
        expected = (self.entry.get("fingerprints") or {}).get(key)
        if not isinstance(expected, str):
            raise InputError(f"the manifest records no fingerprint of index file {path} (built by an older probclip, "
                             f"or the manifest was edited); {rebuild}")
        found = file_fingerprint(path)
        if found != expected:
            raise InputError(f"index file {path} is not the file `probclip index` wrote for this collection "
                             f"(fingerprint {found}, the manifest records {expected}): it was replaced or damaged; "
                             f"{rebuild}")
        self._checked_files[key] = str(path)
        return str(path)

    def _read_faiss(self, key: str):
        path = self._file(key)
        flags = faiss.IO_FLAG_MMAP_IFC if self.kind in ("flat", "hnsw") or key != "file" else faiss.IO_FLAG_MMAP
        try:
            return faiss.read_index(path, flags)
        except RuntimeError as err:
            raise InputError(f"index file {path} is truncated or corrupt; rebuild it with "
                             f"`probclip index {self.root}` ({str(err).splitlines()[0][:200]})") from err

    @property
    def csd_index(self):
        """The FAISS CSD index (memory-mapped), or None for Milvus."""
        if self._csd_index is None and self.kind != "milvus":
            self._csd_index = self._read_faiss("file")
            if self._csd_index.ntotal != self.rows:
                raise InputError(f"index {self._file('file')} holds {self._csd_index.ntotal} rows, the collection "
                                 f"{self.rows}; rebuild it with `probclip index {self.root}`")
        return self._csd_index

    # ------------------------------------------------------------------------------------------------ queries
    def encode(self, query) -> ProbEmbedding:
        """A query as a float32 CPU ``ProbEmbedding [Q, D]``: an embedding, text(s) or PIL image(s)."""
        if isinstance(query, ProbEmbedding):
            emb = query.detach().cpu().float()
            emb = emb if emb.mean.dim() == 2 else ProbEmbedding(emb.mean.reshape(1, -1), emb.logvar.reshape(1, -1))
        elif isinstance(query, str) or (isinstance(query, (list, tuple)) and query
                                        and all(isinstance(q, str) for q in query)):
            texts = [query] if isinstance(query, str) else list(query)
            limit = current_limits().max_caption_chars
            if any(len(t) > limit for t in texts):
                longest = max(len(t) for t in texts)
                raise UsageError(f"a text query of {longest} characters exceeds the limit of {limit} "
                                 "(max_caption_chars); shorten it")
            model = self.model
            with torch.inference_mode():
                if self._tokenizer is None:  # built once: a BPE tokenizer takes ~0.3 s to build
                    self._tokenizer = get_tokenizer(model)
                emb = model.encode_text(self._tokenizer(texts).to(next(model.parameters()).device))
        elif isinstance(query, Image.Image) or (isinstance(query, (list, tuple)) and query
                                                and all(isinstance(q, Image.Image) for q in query)):
            images = [query] if isinstance(query, Image.Image) else list(query)
            model = self.model
            transform, to_rgb = image_transform(model.config.vision), ToRGB()
            pixels = torch.stack([transform(to_rgb(im)) for im in images])
            with torch.inference_mode():
                emb = model.encode_image(pixels.to(next(model.parameters()).device))
        else:
            raise UsageError("query must be a ProbEmbedding, a str or list of str, or a PIL image or list of them; "
                             f"got {type(query).__name__}")
        emb = emb.detach().cpu().float()
        check_query_embedding(emb, self.dim, self.model_name)
        return emb

    # ------------------------------------------------------------------------------------------------ search
    def _allowed(self, max_uncertainty, uncertainty_quantile) -> np.ndarray | None:
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
            raise UsageError(f"max_uncertainty = {max_uncertainty!r} keeps no item of {self.name}: its smallest "
                             f"uncertainty u is {float(self.stored.u.min()):.6g}; give a larger value (or none)")
        return allowed

    def _faiss_candidates(self, index, vectors: np.ndarray, n: int, allowed: np.ndarray | None,
                          params: dict) -> np.ndarray:
        kwargs = {}
        keep = None
        if allowed is not None or params:
            if self.kind == "hnsw" and index is self.csd_index:
                sp = faiss.SearchParametersHNSW()
                sp.efSearch = max(int(params.get("ef_search", 64)), n)
            elif self.kind == "ivfpq" and index is self.csd_index:
                sp = faiss.SearchParametersIVF()
                sp.nprobe = int(params.get("nprobe", 1))
            else:
                sp = faiss.SearchParameters()
            if allowed is not None:
                keep = np.packbits(allowed, bitorder="little")
                sp.sel = faiss.IDSelectorBitmap(allowed.size, faiss.swig_ptr(keep))
            kwargs["params"] = sp
        _, ids = index.search(np.ascontiguousarray(vectors, dtype=np.float32), min(n, index.ntotal), **kwargs)
        return ids

    def _csd_candidates(self, mean: np.ndarray, n: int, allowed) -> list[np.ndarray]:
        if self.kind == "milvus":
            if allowed is None:
                return self._milvus_searcher().search(augment_query(mean), n)
            if not allowed.any():
                return [np.zeros(0, np.int64)] * mean.shape[0]
            # every filter is a threshold on u, so the allowed rows are exactly those with u in [min, max]
            kept = self.stored.u[allowed]
            return self._milvus_searcher().search(augment_query(mean), n, float(kept.min()), float(kept.max()))
        params = dict(self.entry.get("params", {}))
        ids = self._faiss_candidates(self.csd_index, augment_query(mean, params.get("pad_to")), n, allowed, params)
        return [row[row >= 0] for row in ids]

    def _milvus_searcher(self):
        if self._milvus is None:
            self._milvus = MilvusSearcher(self.entry["uri"], self.entry["collection"])
        return self._milvus

    def _scan_ids(self, allowed) -> list[np.ndarray]:
        """All (allowed) row ids in blocks, for exhaustive scans."""
        ids = np.arange(self.rows, dtype=np.int64) if allowed is None else np.nonzero(allowed)[0]
        return [ids[i: i + SCAN_ROWS] for i in range(0, ids.size, SCAN_ROWS)]

    def _exact(self, score: str, query: ProbEmbedding, ids: np.ndarray, eps: float,
               directional: bool = False) -> tuple[np.ndarray, np.ndarray]:
        """Exact scores of one query ``[1, D]`` against rows ``ids`` (float64) and their margins (float64).

        A row qualifies when its margin is positive: for a directional inclusion score the margin is the test in
        the direction asked minus the reverse test (0 for a copy of the query); otherwise it is +inf.
        """
        if ids.size == 0:
            return np.zeros(0), np.zeros(0)
        if score in ("csd", "mean"):
            return self._exact_distance(score, query, ids), np.full(ids.size, np.inf)
        means, logvars = self.stored.means(ids), self.stored.logvars(ids)
        q_mean, q_logvar = query.mean.numpy(), query.logvar.numpy()
        pair = (means, logvars), (q_mean, q_logvar)  # score "includes": test(item in query)
        inner, outer = pair if score == "includes" else pair[::-1]
        if not directional:
            return inclusion_test(*inner, *outer, eps), np.full(ids.size, np.inf)
        asked, reverse = inclusion_tests(*inner, *outer, eps)
        return asked, asked - reverse

    def _exact_distance(self, score: str, query: ProbEmbedding, ids: np.ndarray) -> np.ndarray:
        """CSD or cosine of means of one query ``[1, D]`` against rows ``ids``, float64."""
        means = self.stored.means(ids).astype(np.float64)
        q = query.mean.numpy()[0].astype(np.float64)
        if score == "csd":
            u_q = float(np.exp(query.logvar.numpy()[0].astype(np.float64)).sum())
            return ((means - q) ** 2).sum(1) + u_q + self.stored.u[ids]
        norms = np.linalg.norm(means, axis=1) * np.linalg.norm(q)
        return means @ q / np.where(norms > 0, norms, 1.0)

    def _mean_scan(self, mean: np.ndarray, n: int, allowed) -> list[np.ndarray]:
        """Exact top-n by cosine of means from the flat index's vectors (memory-mapped), ``[Q]`` id arrays."""
        index = self.csd_index
        data = faiss.rev_swig_ptr(faiss.downcast_index(index).get_xb(), index.ntotal * index.d)
        data = data.reshape(index.ntotal, index.d)
        best_ids = [np.zeros(0, np.int64) for _ in range(mean.shape[0])]
        best_scores = [np.zeros(0, np.float32) for _ in range(mean.shape[0])]
        for block in self._scan_ids(allowed):
            rows = data[block[0]: block[-1] + 1][block - block[0], :-1]
            sims = (rows @ mean.T) / np.maximum(np.linalg.norm(rows, axis=1), 1e-12)[:, None]
            for qi in range(mean.shape[0]):
                ids = np.concatenate([best_ids[qi], block])
                scores = np.concatenate([best_scores[qi], sims[:, qi]])
                best_ids[qi], best_scores[qi] = _top(scores, ids, n, higher=True)
        return best_ids

    def _inclusion_candidates(self, query: ProbEmbedding, score: str, n: int, allowed, eps: float,
                              directional: bool = False) -> list[np.ndarray]:
        """Per query, the top ``n`` rows by the inner-product approximation of the test, and (``directional``
        ``included``) the top ``n`` by the approximate test plus its approximate margin over the reverse test (empty
        without the index)."""
        if self._inclusion_index is None:
            if "inclusion_file" not in self.entry:  # built with --no-inclusion
                return [np.zeros(0, np.int64)] * query.mean.shape[0]
            index = self._read_faiss("inclusion_file")
            if index.d != 6 * self.dim + 1:
                raise InputError(f"the inclusion index of {str(self.root)!r} has {index.d} features a row, this "
                                 f"probclip reads {6 * self.dim + 1}; rebuild it with `probclip index {self.root}`")
            self._inclusion_index = index
            try:
                self._mean_variance = np.load(self._file("mean_variance_file"), allow_pickle=False)
            except (OSError, ValueError, EOFError) as err:
                raise InputError(f"{self._file('mean_variance_file')} is not a NumPy array ({err}); rebuild it "
                                 f"with `probclip index {self.root}`") from err
            if self._mean_variance.shape != (self.dim,):
                raise InputError(f"{self._file('mean_variance_file')} holds shape {self._mean_variance.shape}, "
                                 f"expected ({self.dim},); rebuild it with `probclip index {self.root}`")
        mean, logvar = query.mean.numpy(), query.logvar.numpy()
        weights = [inclusion_query_weights(mean, logvar, self._mean_variance, score, eps)]
        if directional and score == "included":  # "includes" finds its items without it (and at half the cost)
            weights.append(inclusion_query_weights(mean, logvar, self._mean_variance, score, eps,
                                                   margin_weight=MARGIN_WEIGHT))
        ids = [row[row >= 0] for row in self._faiss_candidates(self._inclusion_index, np.concatenate(weights), n,
                                                               allowed, {})]
        q = query.mean.shape[0]
        return [np.unique(np.concatenate([ids[i + j * q] for j in range(len(weights))])) for i in range(q)]

    def _uncertainty_neighbours(self, query: ProbEmbedding, n: int, allowed) -> list[np.ndarray]:
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

    def _rerank(self, query: ProbEmbedding, score: str, ids, allowed, eps: float, directional: bool):
        """Exact scores of one query ``[1, D]`` over candidate ``ids``: ``(ids, scores, margins)`` (see ``_exact``)."""
        ids = np.unique(np.asarray(ids, dtype=np.int64))
        if allowed is not None:
            ids = ids[allowed[ids]]
        blocks = [self._exact(score, query, ids[i: i + SCAN_ROWS], eps, directional)
                  for i in range(0, ids.size, SCAN_ROWS)]
        scores = np.concatenate([b[0] for b in blocks] or [np.zeros(0)])
        margins = np.concatenate([b[1] for b in blocks] or [np.zeros(0)])
        return ids, scores, margins

    def _deepened_candidates(self, query: ProbEmbedding, score: str, n: int, allowed, eps: float,
                             nearest: np.ndarray | None = None):
        """Directional inclusion candidates of one query ``[1, D]``, re-ranked.

        Returns ``(ids, scores, margins, scanned)``. Takes ``n`` candidates from the approximation index and from
        the CSD index, and ``n x U_NEIGHBOURS`` on each side of the query's ``u``. When more than half of the first
        two lists are copies of the query (margin exactly 0: a stored item searched with, in a collection with many
        duplicates), they hide the rows that qualify: it searches ``DEEPEN_FACTOR`` times deeper, up to
        ``n x DEEPEN_LIMIT``; a depth that would
        re-rank half of the rows scans them all instead (``scanned``: the ranking is then exact). ``nearest``: the
        first depth's candidates of the two indexes, when already searched (in one batch for many queries).
        """
        first = n
        while True:
            if 2 * n * (1 + U_NEIGHBOURS) * 2 >= self.rows:
                ids = np.concatenate(self._scan_ids(allowed) or [np.zeros(0, np.int64)])
                return (*self._rerank(query, score, ids, allowed, eps, True), True)
            if nearest is None or n != first:
                nearest = np.union1d(self._inclusion_candidates(query, score, n, allowed, eps, True)[0],
                                     self._csd_candidates(query.mean.numpy(), n, allowed)[0])
            ids = np.union1d(nearest, self._uncertainty_neighbours(query, n * U_NEIGHBOURS, allowed)[0])
            ids, scores, margins = self._rerank(query, score, ids, allowed, eps, True)
            copies = int(np.isin(nearest, ids[margins == 0], assume_unique=True).sum())
            if 2 * copies <= nearest.size or n >= first * DEEPEN_LIMIT:
                return ids, scores, margins, False
            n *= DEEPEN_FACTOR

    def search(self, query, k: int = 10, score: str = "csd", *, max_uncertainty: float | None = None,
               uncertainty_quantile: float | None = None, eps: float = 0.0, oversample: int | None = None,
               exhaustive: bool | None = None, directional: bool = True) -> list[SearchResults]:
        """Search with one or more queries; returns one :class:`SearchResults` per query, best first.

        Args:
            query: a ``ProbEmbedding`` (``[D]`` or ``[Q, D]``), a str or list of str, a PIL image or list of them.
            k: results per query. score: ``csd``, ``mean``, ``includes`` or ``included`` (see ``SCORES``).
            max_uncertainty: keep only items with ``u <= max_uncertainty``.
            uncertainty_quantile: keep only items with ``u`` at most the q-quantile of the collection's ``u``.
            eps: log-precision offset of the inclusion test (0: the means matter; training used -10 / -20).
            oversample: candidates per result for approximate kinds and the inclusion test.
            exhaustive: scan every row for the inclusion test (default: when rows x D <= ``EXHAUSTIVE_ELEMENTS``).
            directional: for ``includes`` / ``included``, keep only the items for which the test in the direction
                asked beats the reverse test (see the module docstring); a query can then get fewer than ``k``.
        """
        if score not in SCORES:
            raise UsageError(f"score must be one of {list(SCORES)}; got {score!r}")
        check_search_options(k=k, max_uncertainty=max_uncertainty, uncertainty_quantile=uncertainty_quantile,
                             eps=eps, oversample=oversample)
        emb = self.encode(query)
        allowed = self._allowed(max_uncertainty, uncertainty_quantile)
        k = int(min(k, self.rows))
        over = oversample or DEFAULT_OVERSAMPLE.get(self.kind, 10)
        mean = emb.mean.numpy()
        exact, deepen = self.exact, False
        if score == "csd":
            n = k + EXACT_MARGIN if self.exact else k * over
            candidates = self._csd_candidates(mean, n, allowed)
        elif score == "mean":
            if self.kind == "flat":
                candidates = self._mean_scan(mean, k + EXACT_MARGIN, allowed)
            else:
                candidates = self._csd_candidates(mean, k * over, allowed)
                exact = False
        else:
            scan = exhaustive if exhaustive is not None else self.rows * self.dim <= EXHAUSTIVE_ELEMENTS
            if scan:
                candidates = [np.concatenate(self._scan_ids(allowed) or [np.zeros(0, np.int64)])] * len(emb)
            else:  # the first depth in one batch (each index read once); a directional search deepens per query
                by_test = self._inclusion_candidates(emb, score, k * over, allowed, eps, directional)
                by_csd = self._csd_candidates(mean, k * over, allowed)
                candidates = [np.union1d(a, b) for a, b in zip(by_test, by_csd, strict=True)]
                deepen = directional
            exact = bool(scan)
        higher = HIGHER_IS_BETTER[score]
        out = []
        for qi, ids in enumerate(candidates):
            one, scanned = emb[qi: qi + 1], False
            if deepen:
                ids, scores, margins, scanned = self._deepened_candidates(one, score, k * over, allowed, eps, ids)
            else:
                ids, scores, margins = self._rerank(one, score, ids, allowed, eps, directional)
            keep = margins > 0
            top_ids, top_scores = _top(scores[keep], ids[keep], k, higher)
            out.append(SearchResults(ids=top_ids.astype(np.int64), scores=top_scores.astype(np.float32),
                                     uncertainty=self.stored.u[top_ids].astype(np.float32), metadata=[],
                                     score=score, higher_is_better=higher, exact=exact or scanned))
        metadata = self.metadata(np.concatenate([r.ids for r in out]))  # one read for every query's results
        start = 0
        for r in out:
            r.metadata, start = metadata[start: start + len(r)], start + len(r)
        return out

    # ------------------------------------------------------------------------------------------------ rows
    def metadata(self, ids: Sequence[int] | np.ndarray) -> list[dict]:
        """One metadata dict per row id (``row_id``, ``source``, ``caption``, ``u``, ``offset``, ``size``).

        A caption longer than ``max_result_caption_chars`` (``probclip.limits``) is cut, ends with an ellipsis, and
        its dict gains ``caption_chars``, the stored length: a search answer stays small whatever the captions.
        """
        rows = self.stored.metadata(np.asarray(ids, dtype=np.int64))
        for row in rows:
            caption = row.get("caption")
            if isinstance(caption, str):
                row["caption"], cut = clip_caption(caption)
                if cut:
                    row["caption_chars"] = len(caption)
        return rows

    def embedding(self, ids: Sequence[int] | np.ndarray | int) -> ProbEmbedding:
        """The stored rows as a float32 ``ProbEmbedding [len(ids), D]`` (search with it to find similar items)."""
        return self.stored.embedding(np.atleast_1d(np.asarray(ids, dtype=np.int64)))

    def open_image(self, row_id: int) -> Image.Image | None:
        """The image of an image row, read from the file or shard member its metadata names and decoded by the one
        decoder (``probclip.image_decoding``: EXIF orientation, alpha over white, size limits); None for text rows."""
        if self.modality != "image":
            return None
        meta = self.metadata([int(row_id)])[0]
        source, offset, size = meta["source"], int(meta.get("offset", -1)), int(meta.get("size", -1))
        path = Path(source.split("::", 1)[0] if offset >= 0 else source)
        item = ImageItem(source, path, offset, size) if offset >= 0 else ImageItem(source, path)
        try:
            return item.open()
        except (InputError, OSError) as err:
            raise InputError(f"cannot read the image of row {row_id} from {source!r}: {err}") from err
