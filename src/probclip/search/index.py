"""Building the search indexes of a collection: FAISS (flat, HNSW, IVF-PQ) over the augmented L2 vectors of CSD.

``build_index(collection_dir)`` writes, per modality, into ``collection_dir/index/``:

- ``<modality>.<kind>.faiss``: the CSD index over ``[mu, sqrt(u)]`` (``flat``: exact ``IndexFlatL2``, written
  shard by shard straight to its file format, so building never holds the collection in RAM; ``hnsw``:
  ``IndexHNSWFlat``; ``ivfpq``: ``IVF<nlist>,PQ<m>`` on vectors zero-padded to a multiple of ``m``);
- ``<modality>.inclusion.faiss``: an exact inner-product (flat) index over the inclusion candidate features
  (``6D + 1`` floats a row), and ``<modality>.mean_variance.npy`` (see :mod:`probclip.search.vectors`);

and records them under ``indexes`` in ``manifest.json``. Flat files are read memory-mapped.

``kind="auto"`` chooses the way autofaiss does, from the row count and a memory budget: ``flat`` up to
``AUTO_FLAT_ROWS`` rows, else ``hnsw`` while its vectors and graph fit the budget, else ``ivfpq`` with the largest
code that fits.
"""

from __future__ import annotations

import math
import os
import re
import struct
from pathlib import Path

import faiss
import numpy as np
from tqdm.auto import tqdm

from ..errors import InputError, UsageError
from .layout import INDEX_FILE_KEYS, MODALITIES, StoredRows, file_fingerprint, read_manifest, write_manifest
from .milvus import build_milvus
from .vectors import augment_gallery, inclusion_item_features

__all__ = [
    "AUTO_FLAT_ROWS",
    "HNSW_M",
    "KINDS",
    "FlatFileWriter",
    "build_index",
    "choose_kind",
    "estimate_bytes",
    "parse_memory",
]

KINDS = ("auto", "flat", "hnsw", "ivfpq")
BACKENDS = ("faiss", "milvus")
AUTO_FLAT_ROWS = 100_000
HNSW_M = 32
HNSW_EF_CONSTRUCTION = 80
HNSW_EF_SEARCH = 128
PQ_CODE_SIZES = (64, 48, 32, 16, 8)
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


def estimate_bytes(kind: str, rows: int, dim: int, code_size: int = 64) -> int:
    """RAM of a CSD index of ``rows`` augmented vectors of ``dim + 1`` floats (flat, hnsw) or PQ codes (ivfpq)."""
    if kind == "flat":
        return rows * (dim + 1) * 4
    if kind == "hnsw":
        return rows * ((dim + 1) * 4 + HNSW_M * 2 * 4 * 5 // 4)
    if kind == "ivfpq":
        return rows * (code_size + 8)
    raise UsageError(f"kind must be one of {list(KINDS[1:])}; got {kind!r}")


def choose_kind(rows: int, dim: int, memory_budget: int) -> tuple[str, int]:
    """``(kind, pq code size)`` for ``kind="auto"`` (see the module docstring)."""
    if rows <= AUTO_FLAT_ROWS:
        return "flat", 0
    if estimate_bytes("hnsw", rows, dim) <= memory_budget:
        return "hnsw", 0
    for code in PQ_CODE_SIZES:
        if estimate_bytes("ivfpq", rows, dim, code) <= memory_budget:
            return "ivfpq", code
    raise UsageError(f"--memory-budget {memory_budget} bytes is too small for {rows} rows (an IVF-PQ index of "
                     f"{PQ_CODE_SIZES[-1]}-byte codes needs {estimate_bytes('ivfpq', rows, dim, PQ_CODE_SIZES[-1])})")


class FlatFileWriter:
    """Write a FAISS ``IndexFlatL2`` / ``IndexFlatIP`` file chunk by chunk (the file format of ``faiss.write_index``).

    Layout: fourcc, ``d`` int32, ``ntotal`` int64, two int64 fields, ``is_trained`` byte, ``metric`` int32, then
    the vector of ``ntotal * d`` float32 (its length as uint64 first). ``ntotal`` is patched in at ``close``.
    """

    def __init__(self, path: Path, dim: int, metric: str = "l2"):
        self.path, self.dim, self.rows = Path(path), dim, 0
        self.tmp = self.path.with_name(self.path.name + ".tmp")
        self.handle = open(self.tmp, "wb")
        fourcc, metric_type = (b"IxF2", faiss.METRIC_L2) if metric == "l2" else (b"IxFI", faiss.METRIC_INNER_PRODUCT)
        self.handle.write(fourcc + struct.pack("<iqqq?i", dim, 0, 1 << 20, 1 << 20, True, metric_type))
        self._count_at = self.handle.tell()
        self.handle.write(struct.pack("<Q", 0))

    def add(self, vectors: np.ndarray) -> None:
        """Append float32 ``[n, dim]`` rows."""
        if vectors.ndim != 2 or vectors.shape[1] != self.dim:
            raise ValueError(f"FlatFileWriter expects [n, {self.dim}] rows; got {vectors.shape}")
        self.handle.write(np.ascontiguousarray(vectors, dtype=np.float32).tobytes())
        self.rows += vectors.shape[0]

    def close(self) -> Path:
        """Patch the row count in and move the file into place; returns its path."""
        self.handle.seek(4 + 4)
        self.handle.write(struct.pack("<q", self.rows))
        self.handle.seek(self._count_at)
        self.handle.write(struct.pack("<Q", self.rows * self.dim))
        self.handle.close()
        os.replace(self.tmp, self.path)
        return self.path


def _sample_rows(stored: StoredRows, count: int) -> np.ndarray:
    ids = np.unique(np.linspace(0, stored.rows - 1, num=min(count, stored.rows)).astype(np.int64))
    return augment_gallery(stored.means(ids), stored.u[ids])


def _check_rows(stored: StoredRows, first: int, mean: np.ndarray, logvar: np.ndarray, u: np.ndarray) -> None:
    """Raise ``InputError`` when stored rows hold NaN or infinity: they would be indexed and found by every query."""
    bad = ~(np.isfinite(mean).all(1) & np.isfinite(logvar).all(1) & np.isfinite(u))
    if bad.any():
        raise InputError(f"{stored.root}: {int(bad.sum())} stored {stored.modality} row(s) hold NaN or infinite "
                         f"values (first: row {first + int(np.flatnonzero(bad)[0])}); embed the collection again with "
                         "a model whose weights are finite")


def _build_csd(stored: StoredRows, kind: str, path: Path, code_size: int, bar) -> dict:
    dim = stored.dim + 1
    params: dict = {"dim": dim}
    if kind == "flat":
        writer = FlatFileWriter(path, dim, "l2")
        for first, mean, logvar, u in stored.chunks():
            _check_rows(stored, first, mean, logvar, u)
            writer.add(augment_gallery(mean, u))
            bar.update(mean.shape[0])
        writer.close()
        return params
    if kind == "hnsw":
        index = faiss.IndexHNSWFlat(dim, HNSW_M)
        index.hnsw.efConstruction = HNSW_EF_CONSTRUCTION
        params.update(m=HNSW_M, ef_construction=HNSW_EF_CONSTRUCTION, ef_search=HNSW_EF_SEARCH)
    else:
        code = max(1, min(code_size or PQ_CODE_SIZES[0], dim // 4))  # at least 4 dimensions per sub-quantizer
        padded = math.ceil(dim / code) * code
        nlist = max(1, min(int(4 * math.sqrt(stored.rows)), stored.rows // 39))
        bits = 8 if stored.rows >= 256 * 39 else 4  # 8-bit codebooks need about 10k training rows
        index = faiss.index_factory(padded, f"IVF{nlist},PQ{code}x{bits}")
        train = _sample_rows(stored, max(256 * 64, 64 * nlist))
        index.train(np.pad(train, ((0, 0), (0, padded - dim))))
        params.update(pad_to=padded, nlist=nlist, code_size=code, bits=bits,
                      nprobe=max(1, min(nlist, int(math.sqrt(nlist)) * 2)))
    for first, mean, logvar, u in stored.chunks():
        _check_rows(stored, first, mean, logvar, u)
        vectors = augment_gallery(mean, u)
        if kind == "ivfpq":
            vectors = np.pad(vectors, ((0, 0), (0, params["pad_to"] - dim)))
        index.add(vectors)
        bar.update(mean.shape[0])
    tmp = path.with_name(path.name + ".tmp")
    try:
        faiss.write_index(index, str(tmp))
    except RuntimeError as err:  # FAISS reports a file it cannot write as a RuntimeError
        raise InputError(f"cannot write the index file {tmp}: {str(err).splitlines()[-1][:200]}") from err
    os.replace(tmp, path)
    return params


def _build_inclusion(stored: StoredRows, path: Path, variance_path: Path) -> None:
    """The mean variance ``[D]`` and the inclusion candidate feature index (``6D + 1`` floats a row)."""
    total = np.zeros(stored.dim, dtype=np.float64)
    for _, _, logvar, _ in stored.chunks():
        total += np.exp(logvar.astype(np.float64)).sum(0)
    np.save(variance_path, (total / stored.rows).astype(np.float32))
    writer = FlatFileWriter(path, 6 * stored.dim + 1, "ip")
    for _, mean, logvar, _ in stored.chunks():
        writer.add(inclusion_item_features(mean, logvar))
    writer.close()


def build_index(collection_dir: str | Path, *, kind: str = "auto", memory_budget: int | str | None = None,
                backend: str = "faiss", uri: str | None = None, progress: bool = True,
                modalities: tuple[str, ...] | None = None, inclusion: bool = True) -> Path:
    """Build the search indexes of every modality of ``collection_dir`` (see the module docstring); returns the dir.

    ``backend="milvus"`` loads the augmented vectors into Milvus at ``uri`` (a Milvus Lite ``.db`` file or a
    server address, see :mod:`probclip.search.milvus`) instead of writing a FAISS CSD index; the inclusion
    candidate index is still written locally. ``inclusion=False`` skips the inclusion candidate index.
    """
    root = Path(collection_dir)
    manifest = read_manifest(root)
    if kind not in KINDS:
        raise UsageError(f"--kind must be one of {list(KINDS)}; got {kind!r}")
    if backend not in BACKENDS:
        raise UsageError(f"--backend must be one of {list(BACKENDS)}; got {backend!r}")
    if backend == "milvus" and not uri:
        raise UsageError("--backend milvus needs --uri (a Milvus Lite file such as ./collection.db, or "
                         "http://host:19530 for a Milvus server)")
    budget = parse_memory(memory_budget)
    present = [m for m in MODALITIES if manifest.get("modalities", {}).get(m, {}).get("rows")]
    if modalities is not None:
        present = [m for m in modalities if m in present]
    if not present:
        raise InputError(f"collection {str(root)!r} is empty: no image or text rows to index")
    index_dir = root / "index"
    _check_writable(root, index_dir)
    for modality in present:
        stored = StoredRows(root, manifest, modality)
        stored.check_files()
        entry: dict = {"backend": backend}
        with tqdm(total=stored.rows, desc=f"indexing {modality}", unit="row", disable=not progress) as bar:
            if backend == "milvus":
                entry.update(build_milvus(stored, uri, root, modality))
                entry["kind"] = "milvus"
            else:
                chosen, code = (kind, 0) if kind != "auto" else choose_kind(stored.rows, stored.dim, budget)
                if kind != "auto" and estimate_bytes(chosen, stored.rows, stored.dim) > budget and chosen != "flat":
                    raise UsageError(f"a {chosen} index of {stored.rows} rows needs about "
                                     f"{estimate_bytes(chosen, stored.rows, stored.dim)} bytes, over the memory budget "
                                     f"{budget}; raise --memory-budget or use --kind ivfpq")
                path = index_dir / f"{modality}.{chosen}.faiss"
                entry.update(kind=chosen, file=str(path.relative_to(root)),
                             params=_build_csd(stored, chosen, path, code, bar))
        if inclusion:
            incl, variance = index_dir / f"{modality}.inclusion.faiss", index_dir / f"{modality}.mean_variance.npy"
            _build_inclusion(stored, incl, variance)
            entry.update(inclusion_file=str(incl.relative_to(root)), mean_variance_file=str(variance.relative_to(root)))
        entry["rows"] = stored.rows
        entry["fingerprints"] = {key: file_fingerprint(root / entry[key]) for key in INDEX_FILE_KEYS if key in entry}
        manifest = read_manifest(root)
        manifest.setdefault("indexes", {})[modality] = entry
        write_manifest(root, manifest)
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
