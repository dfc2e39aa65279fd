"""Index backends: one protocol, one registry. A backend builds a CSD candidate index over ``[mu, sqrt(u)]`` and opens
it again to propose candidates; every candidate is re-ranked exactly from the stored rows by the searcher.

A backend is an object with (see :class:`IndexBackend`):

- ``name``: the ``kind`` recorded in the manifest and given to ``probclip index --kind``;
- ``exact``: True when its candidates contain the exact CSD top-n (a flat scan, Milvus's FLAT index);
- ``estimate_bytes(rows, dim, options)``: RAM of the built index, for ``--kind auto`` and the memory budget;
- ``build(context)``: write the index of one modality; returns the manifest entry fields (``file`` when it writes
  one, ``factory``, ``search_params``, anything it needs to open it again);
- ``open(context, entry)``: a :class:`CandidateIndex` whose ``candidates(queries, n, allowed)`` returns, per query,
  row ids.

``register_backend(backend)`` adds one (from any package); ``backend_for(kind)`` finds it. The FAISS kinds are
described the autofaiss way, a factory string plus search parameters: ``flat`` (``Flat``: the augmented rows in a
memory-mapped ``.npy``, searched by FAISS's brute-force ``faiss.knn``), ``hnsw`` (``HNSW<M>``, ``efSearch``),
``ivfpq`` (``IVF<nlist>,PQ<m>x<bits>``, ``nprobe``); ``milvus`` keeps the vectors in Milvus.
"""

from __future__ import annotations

import math
import os
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol, runtime_checkable

import faiss
import numpy as np

from ..errors import InputError, UsageError
from .layout import StoredRows
from .milvus import MilvusSearcher, build_milvus
from .vectors import augment_gallery, augment_query

__all__ = ["BuildContext", "CandidateIndex", "IndexBackend", "IndexOptions", "NpyRowWriter", "OpenContext",
           "backend_for", "backend_names", "check_finite_rows", "exact_topk", "register_backend", "unregister_backend",
           "write_faiss"]


@dataclass
class IndexOptions:
    """The knobs of ``probclip index`` (and ``build_index``), today's values as defaults.

    ``hnsw_m``/``ef_construction``/``ef_search``: HNSW graph degree, build and search breadth; ``nlist``/``nprobe``
    (None: from the row count) and ``pq_code`` (0: the largest that fits the budget): IVF-PQ; ``oversample``:
    candidates per wanted result (None: the kind's default); ``recall_target``: the recall@10 that build-time tuning
    of ``ef_search``/``nprobe`` aims at on held-out queries (0 turns tuning off); ``exhaustive_elements``,
    ``deepen_factor``, ``deepen_limit``: the inclusion search's scan threshold (rows x D) and deepening;
    ``milvus_max_candidates``: Milvus's cap on candidates a query (its own limit is 16,384).
    """

    hnsw_m: int = 32
    ef_construction: int = 80
    ef_search: int = 128
    nlist: int | None = None
    nprobe: int | None = None
    pq_code: int = 0
    oversample: int | None = None
    recall_target: float = 0.95
    exhaustive_elements: int = 2**20
    deepen_factor: int = 4
    deepen_limit: int = 64
    milvus_max_candidates: int = 16384
    uri: str | None = None

    def check(self) -> IndexOptions:
        """``UsageError`` naming the first knob out of range."""
        for name in ("hnsw_m", "ef_construction", "ef_search", "exhaustive_elements", "deepen_factor",
                     "deepen_limit", "milvus_max_candidates"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise UsageError(f"{name} must be an integer >= 1; got {value!r}")
        for name in ("nlist", "nprobe", "oversample"):
            value = getattr(self, name)
            if value is not None and (isinstance(value, bool) or not isinstance(value, int) or value < 1):
                raise UsageError(f"{name} must be an integer >= 1 (or unset); got {value!r}")
        if isinstance(self.pq_code, bool) or not isinstance(self.pq_code, int) or self.pq_code < 0:
            raise UsageError(f"pq_code must be an integer >= 0 (0: the largest that fits); got {self.pq_code!r}")
        if not isinstance(self.recall_target, (int, float)) or not 0 <= self.recall_target <= 1:
            raise UsageError(f"recall_target must be a number in [0, 1]; got {self.recall_target!r}")
        return self

    def search_defaults(self, oversample: int) -> dict:
        """The search-time knobs recorded in the manifest entry (``search`` field)."""
        return {"oversample": self.oversample or oversample, "exhaustive_elements": self.exhaustive_elements,
                "deepen_factor": self.deepen_factor, "deepen_limit": self.deepen_limit,
                "max_candidates": self.milvus_max_candidates}


@dataclass
class BuildContext:
    """What a backend's ``build`` gets: the stored rows, where to write, the knobs, a progress callback (rows)."""

    stored: StoredRows
    root: Path
    index_dir: Path
    modality: str
    options: IndexOptions
    progress: Callable[[int], object] = field(default=lambda rows: None)

    def path(self, suffix: str) -> Path:
        """``index_dir/<modality>.<suffix>``."""
        return self.index_dir / f"{self.modality}.{suffix}"


@dataclass
class OpenContext:
    """What a backend's ``open`` gets: the stored rows and ``file(key)``, the checked path of an entry's file."""

    stored: StoredRows
    root: Path
    modality: str
    file: Callable[[str], str]


@runtime_checkable
class CandidateIndex(Protocol):
    """An opened index: CSD candidates for queries."""

    def candidates(self, mean: np.ndarray, n: int, allowed: np.ndarray | None) -> list[np.ndarray]:
        """Per query (``mean`` float32 ``[Q, D]``) up to ``n`` row ids (int64), only ``allowed`` rows (bool
        ``[rows]``) when given."""


@runtime_checkable
class IndexBackend(Protocol):
    """A kind of CSD candidate index (see the module docstring)."""

    name: str
    exact: bool
    default_oversample: int

    def estimate_bytes(self, rows: int, dim: int, options: IndexOptions) -> int:
        """RAM of the index of ``rows`` rows of dimension ``dim`` (bytes)."""

    def build(self, context: BuildContext) -> dict:
        """Build the index of ``context.modality``; returns its manifest entry fields."""

    def open(self, context: OpenContext, entry: dict) -> CandidateIndex:
        """Open what ``build`` made (entry: the manifest entry it returned, plus ``kind``, ``rows``, ...)."""


_REGISTRY: dict[str, IndexBackend] = {}


def register_backend(backend: IndexBackend, *, replace: bool = False) -> IndexBackend:
    """Add ``backend`` to the registry under ``backend.name`` (``replace`` to override one); returns it."""
    if not isinstance(backend, IndexBackend):
        raise TypeError(f"{backend!r} does not implement IndexBackend (name, exact, default_oversample, "
                        "estimate_bytes, build, open)")
    if backend.name in _REGISTRY and not replace:
        raise ValueError(f"an index backend named {backend.name!r} is already registered")
    _REGISTRY[backend.name] = backend
    return backend


def unregister_backend(name: str) -> None:
    """Remove the backend ``name`` from the registry (a no-op when absent)."""
    _REGISTRY.pop(name, None)


def backend_names() -> list[str]:
    """The registered kinds, in registration order."""
    return list(_REGISTRY)


def backend_for(kind: str) -> IndexBackend:
    """The backend of ``kind``; ``UsageError`` naming the registered kinds."""
    if kind not in _REGISTRY:
        raise UsageError(f"index kind must be one of {backend_names()}; got {kind!r}")
    return _REGISTRY[kind]


# --------------------------------------------------------------------------------------------- shared helpers
def check_finite_rows(stored: StoredRows, first: int, mean: np.ndarray, logvar: np.ndarray, u: np.ndarray) -> None:
    """``InputError`` when stored rows hold NaN or infinity: they would be indexed and found by every query."""
    bad = ~(np.isfinite(mean).all(1) & np.isfinite(logvar).all(1) & np.isfinite(u))
    if bad.any():
        raise InputError(f"{stored.root}: {int(bad.sum())} stored {stored.modality} row(s) hold NaN or infinite "
                         f"values (first: row {first + int(np.flatnonzero(bad)[0])}); embed the collection again with "
                         "a model whose weights are finite")


def write_faiss(index, path: Path) -> None:
    """``faiss.write_index`` to a temporary sibling, then moved into place (``InputError`` when it cannot write)."""
    tmp = path.with_name(path.name + ".tmp")
    try:
        faiss.write_index(index, str(tmp))
    except RuntimeError as err:  # FAISS reports a file it cannot write as a RuntimeError
        raise InputError(f"cannot write the index file {tmp}: {str(err).splitlines()[-1][:200]}") from err
    os.replace(tmp, path)


def read_faiss(path: str, mmap: bool, root: Path):
    """``faiss.read_index`` (memory-mapped when ``mmap``); ``InputError`` for a truncated or corrupt file."""
    try:
        return faiss.read_index(path, faiss.IO_FLAG_MMAP_IFC if mmap else faiss.IO_FLAG_MMAP)
    except RuntimeError as err:
        raise InputError(f"index file {path} is truncated or corrupt; rebuild it with `probclip index {root}` "
                         f"({str(err).splitlines()[0][:200]})") from err


def load_rows_npy(path: str, rows: int, width: int, root: Path) -> np.ndarray:
    """A memory-mapped float32 ``[rows, width]`` ``.npy``; ``InputError`` when it is not one."""
    try:
        data = np.load(path, mmap_mode="r", allow_pickle=False)
    except (OSError, ValueError, EOFError) as err:
        raise InputError(f"index file {path} is truncated or corrupt ({err}); rebuild it with "
                         f"`probclip index {root}`") from err
    if data.dtype != np.float32 or data.shape != (rows, width):
        raise InputError(f"index file {path} holds {data.dtype} {tuple(data.shape)}, expected float32 "
                         f"({rows}, {width}); rebuild it with `probclip index {root}`")
    return data


SCAN_ROWS = 65536


class NpyRowWriter:
    """Write a float32 ``[rows, width]`` ``.npy`` block by block through an ordinary file (NumPy's own header,
    ``numpy.lib.format.write_array_header_1_0``), to a temporary sibling moved into place by :meth:`close`.

    Plain writes, not a writable memory map: the written pages are then page cache, not resident memory of the
    building process, so building never holds the collection (or its index) in RAM."""

    def __init__(self, path: Path, rows: int, width: int):
        self.path, self.rows, self.width, self.written = Path(path), rows, width, 0
        self.tmp = self.path.with_name(self.path.name + ".tmp")
        self.handle = open(self.tmp, "wb")
        np.lib.format.write_array_header_1_0(self.handle, {"descr": np.dtype(np.float32).str, "fortran_order": False,
                                                           "shape": (rows, width)})

    def add(self, block: np.ndarray) -> None:
        """Append float32 ``[n, width]`` rows."""
        if block.ndim != 2 or block.shape[1] != self.width or self.written + block.shape[0] > self.rows:
            raise ValueError(f"NpyRowWriter expects at most {self.rows - self.written} rows of {self.width}; "
                             f"got {block.shape}")
        self.handle.write(np.ascontiguousarray(block, dtype=np.float32).tobytes())
        self.written += block.shape[0]

    def close(self) -> Path:
        """Check the row count and move the file into place; returns its path."""
        self.handle.close()
        if self.written != self.rows:
            raise ValueError(f"NpyRowWriter wrote {self.written} of {self.rows} rows")
        os.replace(self.tmp, self.path)
        return self.path


def _merge(best: list[tuple[np.ndarray, np.ndarray]], dist: np.ndarray, ids: np.ndarray, n: int,
           higher: bool) -> list[tuple[np.ndarray, np.ndarray]]:
    out = []
    for qi, (d0, i0) in enumerate(best):
        d = np.concatenate([d0, dist[qi]])
        i = np.concatenate([i0, ids[qi]])
        keep = i >= 0
        d, i = d[keep], i[keep]
        order = np.lexsort((i, -d if higher else d))[:n]
        out.append((d[order], i[order]))
    return out


def exact_topk(data: np.ndarray, queries: np.ndarray, n: int, allowed: np.ndarray | None,
               metric: int = faiss.METRIC_L2) -> list[np.ndarray]:
    """Per query the ``n`` best rows of ``data`` (float32 ``[rows, d]``, memory-mapped or not) by FAISS's
    brute-force ``faiss.knn`` (L2 or inner product); only ``allowed`` rows when given, read block by block."""
    queries = np.ascontiguousarray(queries, dtype=np.float32)
    rows = data.shape[0]
    n = int(min(n, rows))
    if allowed is None:
        _, ids = faiss.knn(queries, data, n, metric=metric)
        return [row[row >= 0].astype(np.int64) for row in ids]
    higher = metric == faiss.METRIC_INNER_PRODUCT
    best = [(np.zeros(0, np.float32), np.zeros(0, np.int64)) for _ in range(queries.shape[0])]
    kept = np.flatnonzero(allowed)
    for start in range(0, kept.size, SCAN_ROWS):
        block = kept[start: start + SCAN_ROWS]
        rows_block = np.ascontiguousarray(data[block[0]: block[-1] + 1][block - block[0]])
        dist, local = faiss.knn(queries, rows_block, int(min(n, block.size)), metric=metric)
        best = _merge(best, dist, np.where(local >= 0, block[np.maximum(local, 0)], -1), n, higher)
    return [i for _, i in best]


# --------------------------------------------------------------------------------------------- FAISS kinds
class FlatBackend:
    """``Flat``: the augmented rows ``[mu, sqrt(u)]`` in ``<modality>.flat.npy`` (float32), written shard by shard
    and searched memory-mapped by ``faiss.knn`` (exact L2), so that neither building nor searching holds the
    collection in RAM."""

    name, exact, default_oversample = "flat", True, 10

    def estimate_bytes(self, rows: int, dim: int, options: IndexOptions) -> int:
        return rows * (dim + 1) * 4

    def build(self, context: BuildContext) -> dict:
        stored, path = context.stored, context.path("flat.npy")
        writer = NpyRowWriter(path, stored.rows, stored.dim + 1)
        for first, mean, logvar, u in stored.chunks():
            check_finite_rows(stored, first, mean, logvar, u)
            writer.add(augment_gallery(mean, u))
            context.progress(mean.shape[0])
        writer.close()
        return {"file": str(path.relative_to(context.root)), "factory": "Flat", "metric": "L2", "search_params": {},
                "params": {"dim": stored.dim + 1}}

    def open(self, context: OpenContext, entry: dict) -> CandidateIndex:
        return _FlatIndex(load_rows_npy(context.file("file"), context.stored.rows, context.stored.dim + 1,
                                        context.root))


class _FlatIndex:
    def __init__(self, data: np.ndarray):
        self.data = data  # float32 [rows, D + 1], memory-mapped

    def candidates(self, mean, n, allowed):
        return exact_topk(self.data, augment_query(mean), n, allowed)

    def means(self) -> np.ndarray:
        """The stored means as the index holds them (float32 ``[rows, D]`` view, memory-mapped)."""
        return self.data[:, :-1]


class _FaissFileIndex:
    """A FAISS index read from its file (memory-mapped), searched with its search parameters and a row filter."""

    def __init__(self, index, search_params: dict, pad_to: int | None):
        self.index, self.search_params, self.pad_to = index, dict(search_params), pad_to

    def parameters(self, n: int, allowed: np.ndarray | None):
        if "efSearch" in self.search_params:
            sp = faiss.SearchParametersHNSW()
            sp.efSearch = max(int(self.search_params["efSearch"]), n)
        elif "nprobe" in self.search_params:
            sp = faiss.SearchParametersIVF()
            sp.nprobe = int(self.search_params["nprobe"])
        else:
            sp = faiss.SearchParameters()
        keep = None
        if allowed is not None:
            keep = np.packbits(allowed, bitorder="little")
            sp.sel = faiss.IDSelectorBitmap(allowed.size, faiss.swig_ptr(keep))
        return sp, keep

    def candidates(self, mean, n, allowed):
        sp, keep = self.parameters(n, allowed)  # keep: the bitmap must live while FAISS reads it
        vectors = np.ascontiguousarray(augment_query(mean, self.pad_to), dtype=np.float32)
        _, ids = self.index.search(vectors, int(min(n, self.index.ntotal)), params=sp)
        del keep
        return [row[row >= 0].astype(np.int64) for row in ids]


class FactoryBackend:
    """A FAISS kind described by a factory string (built by ``faiss.index_factory``, rows added shard by shard) and
    its search parameters; subclasses give the string, the search parameters and the RAM estimate."""

    name, exact, default_oversample = "", False, 10

    def factory(self, stored: StoredRows, options: IndexOptions) -> tuple[str, dict, int]:
        """``(factory string, search parameters, padded width)``."""
        raise NotImplementedError

    def configure(self, index, options: IndexOptions) -> None:
        """Set build-time parameters on the new index."""

    def train(self, index, stored: StoredRows, width: int) -> None:
        if not index.is_trained:
            sample = sample_rows(stored, max(256 * 64, 64 * getattr(faiss.extract_index_ivf(index), "nlist", 1)))
            index.train(_pad(sample, width))

    def build(self, context: BuildContext) -> dict:
        stored = context.stored
        factory, search_params, width = self.factory(stored, context.options)
        index = faiss.index_factory(width, factory, faiss.METRIC_L2)
        self.configure(index, context.options)
        self.train(index, stored, width)
        for first, mean, logvar, u in stored.chunks():
            check_finite_rows(stored, first, mean, logvar, u)
            index.add(_pad(augment_gallery(mean, u), width))
            context.progress(mean.shape[0])
        path = context.path(f"{self.name}.faiss")
        write_faiss(index, path)
        params = {"dim": stored.dim + 1}
        if width != stored.dim + 1:
            params["pad_to"] = width
        return {"file": str(path.relative_to(context.root)), "factory": factory, "metric": "L2",
                "search_params": search_params, "params": params}

    def open(self, context: OpenContext, entry: dict) -> CandidateIndex:
        index = read_faiss(context.file("file"), mmap=self.name == "hnsw", root=context.root)
        if index.ntotal != context.stored.rows:
            raise InputError(f"index {context.file('file')} holds {index.ntotal} rows, the collection "
                             f"{context.stored.rows}; rebuild it with `probclip index {context.root}`")
        return _FaissFileIndex(index, entry.get("search_params", {}), entry.get("params", {}).get("pad_to"))


class HNSWBackend(FactoryBackend):
    """``HNSW<M>`` (efConstruction at build, ``efSearch`` at search)."""

    name, exact, default_oversample = "hnsw", False, 4

    def estimate_bytes(self, rows: int, dim: int, options: IndexOptions) -> int:
        return rows * ((dim + 1) * 4 + options.hnsw_m * 2 * 4 * 5 // 4)

    def factory(self, stored, options):
        return f"HNSW{options.hnsw_m}", {"efSearch": options.ef_search}, stored.dim + 1

    def configure(self, index, options):
        faiss.downcast_index(index).hnsw.efConstruction = options.ef_construction


PQ_CODE_SIZES = (64, 48, 32, 16, 8)


class IVFPQBackend(FactoryBackend):
    """``IVF<nlist>,PQ<m>x<bits>`` on vectors zero-padded to a multiple of ``m`` (``nprobe`` at search)."""

    name, exact, default_oversample = "ivfpq", False, 16

    def estimate_bytes(self, rows: int, dim: int, options: IndexOptions) -> int:
        return rows * ((options.pq_code or PQ_CODE_SIZES[0]) + 8)

    def factory(self, stored, options):
        dim = stored.dim + 1
        code = max(1, min(options.pq_code or PQ_CODE_SIZES[0], dim // 4))  # at least 4 dimensions per sub-quantizer
        padded = math.ceil(dim / code) * code
        nlist = options.nlist or max(1, min(int(4 * math.sqrt(stored.rows)), stored.rows // 39))
        bits = 8 if stored.rows >= 256 * 39 else 4  # 8-bit codebooks need about 10k training rows
        nprobe = options.nprobe or max(1, min(nlist, int(math.sqrt(nlist)) * 2))
        return f"IVF{nlist},PQ{code}x{bits}", {"nprobe": min(nprobe, nlist)}, padded


def _pad(vectors: np.ndarray, width: int) -> np.ndarray:
    return vectors if vectors.shape[1] == width else np.pad(vectors, ((0, 0), (0, width - vectors.shape[1])))


def sample_rows(stored: StoredRows, count: int) -> np.ndarray:
    """float32 ``[<= count, D + 1]`` augmented rows spread evenly over the collection."""
    ids = np.unique(np.linspace(0, stored.rows - 1, num=min(count, stored.rows)).astype(np.int64))
    return augment_gallery(stored.means(ids), stored.u[ids])


class MilvusBackend:
    """The augmented rows in a Milvus collection (FLAT index, exact L2), filtered on ``u`` by Milvus; see
    :mod:`probclip.search.milvus`. Needs ``options.uri``."""

    name, exact, default_oversample = "milvus", True, 10

    def estimate_bytes(self, rows: int, dim: int, options: IndexOptions) -> int:
        return 0  # held by the Milvus server (or Milvus Lite's file), not by probclip

    def build(self, context: BuildContext) -> dict:
        if not context.options.uri:
            raise UsageError("--backend milvus needs --uri (a Milvus Lite file such as ./collection.db, or "
                             "http://host:19530 for a Milvus server)")
        entry = build_milvus(context.stored, context.options.uri, context.root, context.modality)
        context.progress(context.stored.rows)
        return {**entry, "factory": "Milvus FLAT", "metric": "L2", "search_params": {}}

    def open(self, context: OpenContext, entry: dict) -> CandidateIndex:
        cap = int(entry.get("search", {}).get("max_candidates", 16384))
        return _MilvusIndex(MilvusSearcher(entry["uri"], entry["collection"], max_candidates=cap), context.stored)


class _MilvusIndex:
    def __init__(self, searcher, stored: StoredRows):
        self.searcher, self.stored = searcher, stored

    def candidates(self, mean, n, allowed):
        if allowed is None:
            return self.searcher.search(augment_query(mean), n)
        if not allowed.any():
            return [np.zeros(0, np.int64)] * mean.shape[0]
        # every filter is a threshold on u, so the allowed rows are exactly those with u in [min, max]
        kept = self.stored.u[allowed]
        return self.searcher.search(augment_query(mean), n, float(kept.min()), float(kept.max()))


for _backend in (FlatBackend(), HNSWBackend(), IVFPQBackend(), MilvusBackend()):
    register_backend(_backend)
