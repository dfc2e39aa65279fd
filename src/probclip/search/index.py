"""Building the search indexes of a collection: a CSD candidate index over the augmented L2 vectors of CSD, by any
registered backend (:mod:`probclip.search.backends`: flat, HNSW, IVF-PQ, Milvus, or one registered from outside).

``build_index(collection_dir)`` writes, per modality, into ``collection_dir/index/``:

- the backend's CSD index (``flat``: ``<modality>.flat.npy``, the rows ``[mu, sqrt(u)]`` as a float32 ``.npy``
  written shard by shard, so building never holds the collection in RAM; ``hnsw`` / ``ivfpq``:
  ``<modality>.<kind>.faiss`` written by ``faiss.write_index``; ``milvus``: a Milvus collection);
- ``<modality>.inclusion.npy``: the inclusion candidate features (``6D + 1`` float32 a row, searched by exact inner
  product), and ``<modality>.mean_variance.npy`` (see :mod:`probclip.search.vectors`);

and records them under ``indexes`` in ``manifest.json``, with the factory string, the search parameters, the
search knobs and, for the approximate kinds, the recall@10 reached on held-out queries after tuning (see
:func:`tune_search`).

``kind="auto"`` chooses the way autofaiss does, from the row count and a memory budget: ``flat`` up to
``AUTO_FLAT_ROWS`` rows, else ``hnsw`` while its vectors and graph fit the budget, else ``ivfpq`` with the largest
code that fits.
"""

from __future__ import annotations

import dataclasses
import os
import re
from pathlib import Path

import numpy as np
from tqdm.auto import tqdm

from ..errors import InputError, UsageError
from .backends import (
    PQ_CODE_SIZES,
    BuildContext,
    IndexOptions,
    NpyRowWriter,
    OpenContext,
    backend_for,
    backend_names,
    exact_topk,
)
from .layout import StoredRows, file_fingerprint
from .manifest import INDEX_FILE_KEYS, IndexEntry, read_manifest
from .vectors import augment_gallery, inclusion_item_features

__all__ = [
    "AUTO_FLAT_ROWS",
    "KINDS",
    "IndexOptions",
    "build_index",
    "choose_kind",
    "estimate_bytes",
    "parse_memory",
    "tune_search",
]

KINDS = ("auto", "flat", "hnsw", "ivfpq")
BACKENDS = ("faiss", "milvus")
AUTO_FLAT_ROWS = 100_000
#: Held-out queries of the build-time tuning: this many rows spread over the collection, as many of its most
#: uncertain rows, and as many of the other modality's (its captions for an image index), k = 10.
TUNE_QUERIES = 100
TUNE_K = 10
_UNITS = {"": 1, "b": 1, "k": 2**10, "kb": 2**10, "m": 2**20, "mb": 2**20, "g": 2**30, "gb": 2**30, "t": 2**40,
          "tb": 2**40}


def parse_memory(value: int | str | None) -> int:
    """Bytes from ``4GB``, ``512M``, ``1.5G`` or an int; ``None`` -> half of this machine's RAM."""
    if value is None:
        try:
            return int(os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") // 2)
        except (ValueError, OSError, AttributeError):
            return 4 * 2**30
    if isinstance(value, int) and not isinstance(value, bool) and value > 0:
        return value
    match = re.fullmatch(r"\s*([0-9]*\.?[0-9]+)\s*([a-zA-Z]*)\s*", str(value))
    if not match or match.group(2).lower() not in _UNITS or float(match.group(1)) <= 0:
        raise UsageError(f"--memory-budget must be a positive size such as 4GB, 512MB or 1073741824; got {value!r}")
    size = int(float(match.group(1)) * _UNITS[match.group(2).lower()])
    if size < 1:
        raise UsageError(f"--memory-budget must be at least 1 byte; got {value!r} ({size} bytes)")
    return size


def estimate_bytes(kind: str, rows: int, dim: int, code_size: int = 64,
                   options: IndexOptions | None = None) -> int:
    """RAM of a CSD index of ``rows`` augmented vectors of ``dim + 1`` floats (flat, hnsw) or PQ codes (ivfpq)."""
    if kind not in backend_names():
        raise UsageError(f"kind must be one of {backend_names()}; got {kind!r}")
    options = dataclasses.replace(options or IndexOptions(), pq_code=code_size)
    return backend_for(kind).estimate_bytes(rows, dim, options)


def choose_kind(rows: int, dim: int, memory_budget: int, options: IndexOptions | None = None) -> tuple[str, int]:
    """``(kind, pq code size)`` for ``kind="auto"`` (see the module docstring)."""
    if rows <= AUTO_FLAT_ROWS:
        return "flat", 0
    if estimate_bytes("hnsw", rows, dim, options=options) <= memory_budget:
        return "hnsw", 0
    for code in PQ_CODE_SIZES:
        if estimate_bytes("ivfpq", rows, dim, code) <= memory_budget:
            return "ivfpq", code
    raise UsageError(f"--memory-budget {memory_budget} bytes is too small for {rows} rows (an IVF-PQ index of "
                     f"{PQ_CODE_SIZES[-1]}-byte codes needs {estimate_bytes('ivfpq', rows, dim, PQ_CODE_SIZES[-1])})")


def _held_out_queries(stored: StoredRows, other: StoredRows | None) -> np.ndarray:
    """float32 ``[Q, D]`` query means drawn from the collection: rows spread evenly, the most uncertain rows, and
    (when the collection has one) rows of the other modality, spread evenly and its most uncertain."""
    def draw(rows: StoredRows) -> np.ndarray:
        spread = np.unique(np.linspace(0, rows.rows - 1, num=min(TUNE_QUERIES, rows.rows)).astype(np.int64))
        uncertain = np.argsort(rows.u, kind="stable")[::-1][:TUNE_QUERIES]
        return rows.means(np.union1d(spread, uncertain))
    return np.concatenate([draw(stored)] + ([draw(other)] if other is not None else []))


def _exact_truth(stored: StoredRows, queries: np.ndarray, k: int) -> list[np.ndarray]:
    """The exact CSD top-k of each query mean (``[Q, D]``), by brute force shard by shard."""
    best = [(np.zeros(0, np.float32), np.zeros(0, np.int64)) for _ in range(queries.shape[0])]
    augmented = np.zeros((queries.shape[0], stored.dim + 1), np.float32)
    augmented[:, :-1] = queries
    for first, mean, _, u in stored.chunks():
        ids = exact_topk(augment_gallery(mean, u), augmented, k, None)
        rows = augment_gallery(mean, u)
        for qi, local in enumerate(ids):
            d = ((rows[local] - augmented[qi]) ** 2).sum(1)
            dist = np.concatenate([best[qi][0], d])
            glob = np.concatenate([best[qi][1], local + first])
            order = np.lexsort((glob, dist))[:k]
            best[qi] = (dist[order], glob[order])
    return [i for _, i in best]


def _recall(index, queries: np.ndarray, truth: list[np.ndarray], n: int) -> float:
    """The smallest per-query recall of the exact top-k among ``n`` candidates (re-ranking them exactly finds
    every true item that is a candidate)."""
    found = index.candidates(queries, n, None)
    return min(len(np.intersect1d(f, t)) / max(1, len(t)) for f, t in zip(found, truth, strict=True))


def tune_search(index, entry: dict, stored: StoredRows, other: StoredRows | None, target: float) -> dict:
    """Raise the search breadth of an approximate index until recall@10 reaches ``target`` on held-out queries.

    The queries are drawn from the collection itself (:func:`_held_out_queries`, including its most uncertain rows
    and the other modality's rows); recall is that of the exact top-10 among the ``10 x oversample`` candidates,
    taken as the worst over the queries. ``efSearch`` (HNSW) or ``nprobe`` (IVF) doubles, then ``oversample``
    doubles, until the target is met or the index is searched whole. Returns ``{"recall_at_10", "queries"}`` and
    updates ``entry["search_params"]`` and ``entry["search"]["oversample"]`` in place.
    """
    queries = _held_out_queries(stored, other)
    truth = _exact_truth(stored, queries, TUNE_K)
    params, search = entry["search_params"], entry["search"]
    knob = "efSearch" if "efSearch" in params else "nprobe" if "nprobe" in params else None
    limit = {"efSearch": max(stored.rows, 1), "nprobe": int(getattr(getattr(index, "index", None), "nlist", 0)
                                                             or _nlist(entry))}.get(knob, 0)
    while True:
        index.search_params = dict(params)
        recall = _recall(index, queries, truth, TUNE_K * search["oversample"])
        if recall >= target:
            break
        if knob is not None and params[knob] < limit:
            params[knob] = int(min(limit, params[knob] * 2))
        elif TUNE_K * search["oversample"] < stored.rows:
            search["oversample"] *= 2
        else:
            break
    return {"recall_at_10": round(float(recall), 4), "queries": int(queries.shape[0]), "target": target}


def _nlist(entry: dict) -> int:
    match = re.match(r"IVF(\d+)", entry.get("factory", ""))
    return int(match.group(1)) if match else 1


def _build_inclusion(stored: StoredRows, path: Path, variance_path: Path) -> None:
    """The mean variance ``[D]`` and the inclusion candidate features (``6D + 1`` float32 a row) as a ``.npy``
    written shard by shard."""
    total = np.zeros(stored.dim, dtype=np.float64)
    for _, _, logvar, _ in stored.chunks():
        total += np.exp(logvar.astype(np.float64)).sum(0)
    np.save(variance_path, (total / stored.rows).astype(np.float32))
    writer = NpyRowWriter(path, stored.rows, 6 * stored.dim + 1)
    for _, mean, logvar, _ in stored.chunks():
        writer.add(inclusion_item_features(mean, logvar))
    writer.close()


def build_index(collection_dir: str | Path, *, kind: str = "auto", memory_budget: int | str | None = None,
                backend: str = "faiss", uri: str | None = None, progress: bool = True,
                modalities: tuple[str, ...] | None = None, inclusion: bool = True,
                options: IndexOptions | None = None) -> Path:
    """Build the search indexes of every modality of ``collection_dir`` (see the module docstring); returns the dir.

    ``kind``: ``auto`` or a registered backend (``flat``, ``hnsw``, ``ivfpq``, ``milvus``, ...). ``backend="milvus"``
    (the same as ``kind="milvus"``) loads the augmented vectors into Milvus at ``uri`` (a Milvus Lite ``.db`` file
    or a server address, see :mod:`probclip.search.milvus`); the inclusion candidate index is still written
    locally. ``inclusion=False`` skips the inclusion candidate index. ``options``: the knobs
    (:class:`~probclip.search.backends.IndexOptions`; today's values by default).
    """
    root = Path(collection_dir)
    manifest = read_manifest(root)
    options = dataclasses.replace(options or IndexOptions(), uri=uri if uri is not None else (options and options.uri))
    options.check()
    if backend not in BACKENDS:
        raise UsageError(f"--backend must be one of {list(BACKENDS)}; got {backend!r}")
    if backend == "milvus":
        kind = "milvus"
    if kind != "auto" and kind not in backend_names():
        raise UsageError(f"--kind must be one of {['auto', *backend_names()]}; got {kind!r}")
    if kind == "milvus" and not options.uri:
        raise UsageError("--backend milvus needs --uri (a Milvus Lite file such as ./collection.db, or "
                         "http://host:19530 for a Milvus server)")
    budget = parse_memory(memory_budget)
    present = manifest.present_modalities()
    every = list(present)
    if modalities is not None:
        present = [m for m in modalities if m in present]
    if not present:
        raise InputError(f"collection {str(root)!r} is empty: no image or text rows to index")
    index_dir = root / "index"
    _check_writable(root, index_dir)
    for modality in present:
        stored = StoredRows(root, manifest, modality)
        stored.check_files()
        with tqdm(total=stored.rows, desc=f"indexing {modality}", unit="row", disable=not progress) as bar:
            chosen, code = (kind, options.pq_code) if kind != "auto" else choose_kind(stored.rows, stored.dim,
                                                                                       budget, options)
            chosen_options = dataclasses.replace(options, pq_code=code)
            impl = backend_for(chosen)
            needed = impl.estimate_bytes(stored.rows, stored.dim, chosen_options)
            if kind != "auto" and needed > budget and chosen not in ("flat", "milvus"):
                raise UsageError(f"a {chosen} index of {stored.rows} rows needs about {needed} bytes, over the "
                                 f"memory budget {budget}; raise --memory-budget or use --kind ivfpq")
            context = BuildContext(stored, root, index_dir, modality, chosen_options, progress=bar.update)
            entry = {"kind": chosen, **impl.build(context)}
        entry["search"] = chosen_options.search_defaults(impl.default_oversample)
        entry["rows"] = stored.rows
        checked: dict[str, str] = {}

        def file_of(key: str, entry=entry, checked=checked) -> str:
            return checked.setdefault(key, str(root / entry[key]))

        if not impl.exact and options.recall_target > 0:
            opened = impl.open(OpenContext(stored, root, modality, file_of), entry)
            others = [m for m in every if m != modality]
            other = StoredRows(root, manifest, others[0]) if others else None
            entry["tuning"] = tune_search(opened, entry, stored, other, options.recall_target)
        if inclusion:
            incl, variance = index_dir / f"{modality}.inclusion.npy", index_dir / f"{modality}.mean_variance.npy"
            _build_inclusion(stored, incl, variance)
            entry.update(inclusion_file=str(incl.relative_to(root)), mean_variance_file=str(variance.relative_to(root)))
        entry["fingerprints"] = {key: file_fingerprint(root / entry[key]) for key in INDEX_FILE_KEYS if key in entry}
        manifest = read_manifest(root).with_index(modality, IndexEntry.from_dict(entry))
        manifest.write(root)
        _remove_stale_files(root, index_dir, modality, entry)
    return root


def _check_writable(root: Path, index_dir: Path) -> None:
    """Create ``index_dir`` and a file in it and in ``root``; ``InputError`` naming the folder when that fails (a
    read-only collection: copy it somewhere writable to index it)."""
    for folder in (root, index_dir):
        try:
            folder.mkdir(exist_ok=True)
            probe = folder / ".probclip-write-test"
            probe.write_bytes(b"")
            probe.unlink()
        except OSError as err:
            raise InputError(f"cannot write in the collection folder {str(folder)!r} ({err.strerror or err}): "
                             "`probclip index` writes the index files and the manifest there; copy the collection "
                             "to a writable place, or make it writable") from err


def _remove_stale_files(root: Path, index_dir: Path, modality: str, entry: dict) -> None:
    """Delete this modality's index files that the new entry does not name (another kind, an older layout)."""
    current = {str(v) for k, v in entry.items() if k.endswith("_file") or k == "file"}
    for path in index_dir.glob(f"{modality}.*"):
        if path.is_file() and str(path.relative_to(root)) not in current:
            path.unlink()
