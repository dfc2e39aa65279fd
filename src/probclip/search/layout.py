"""The on-disk collection format: shard files, the manifest, and memory-mapped reading of stored rows.

A collection directory holds, per modality (``image`` -> prefix ``img``, ``text`` -> prefix ``text``), shards of
at most ``shard_rows`` rows each (the clip-retrieval layout, with log-variances beside the means)::

    img_emb/img_emb_N.npy          [n, D] unit-norm means, float16 (or float32)
    img_logvar/img_logvar_N.npy    [n, D] log-variances, same dtype
    text_emb/text_emb_N.npy, text_logvar/text_logvar_N.npy
    metadata/metadata_N.parquet       image rows: row_id, source, caption, u (float32), offset, size
    metadata/text_metadata_N.parquet  text rows:  row_id, source, caption, u (float32), offset, size
    manifest.json                  format version, model, dtype, counts per shard, skipped inputs, the inputs'
                                   fingerprint, indexes (with a fingerprint of each index file)
    inputs/image.npy, text.npy     one uint64 digest per input row (see :mod:`probclip.search.input_digest`)
    index/                         what ``probclip index`` builds

``u = sum_d exp(logvar_d)`` is computed from the float32 log-variances before they are stored, so it is exact
whatever the storage dtype. Row ids are global positions ``0 .. rows-1`` in shard order.

``read_manifest`` checks every value the readers use (types, ranges, shard offsets that add up) and that every file
the manifest names lies inside the collection; :func:`file_fingerprint` identifies an index file without reading all
of it, so that an index file of another collection, even one with the same row count, is refused.
"""

from __future__ import annotations

import hashlib
import json
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import torch

from ..embedding import ProbEmbedding
from ..errors import InputError, UsageError

__all__ = [
    "FORMAT",
    "FORMAT_VERSION",
    "MANIFEST_NAME",
    "MODALITIES",
    "PREFIXES",
    "StoredRows",
    "DTYPES",
    "INDEX_FILE_KEYS",
    "FILE_KINDS",
    "upgrade_manifest",
    "check_manifest",
    "check_modality",
    "collection_file",
    "emb_path",
    "file_fingerprint",
    "logvar_path",
    "metadata_path",
    "read_manifest",
    "write_json_atomic",
    "write_manifest",
]

FORMAT = "probclip-collection"
#: 2: the flat and inclusion indexes are ``.npy`` files (1: hand-written FAISS files), index entries record their
#: factory string, search parameters, search knobs and tuning. A version-1 manifest is upgraded when read: its
#: index entries are dropped (the collection must be indexed again, and says so).
FORMAT_VERSION = 2
MANIFEST_NAME = "manifest.json"
MODALITIES = ("image", "text")
PREFIXES = {"image": "img", "text": "text"}
DTYPES = ("float16", "float32")
#: The kinds whose entry must name a ``file`` (other registered backends may write none).
FILE_KINDS = ("flat", "hnsw", "ivfpq")
#: The keys of an index entry that name a file of the collection.
INDEX_FILE_KEYS = ("file", "inclusion_file", "mean_variance_file")
#: :func:`file_fingerprint` reads a file whole up to this size, else its ends and ``_SAMPLES`` blocks between.
_WHOLE_BYTES = 64 * 2**20
_END_BYTES = 2**20
_SAMPLES, _SAMPLE_BYTES = 256, 4096


def check_modality(modality: str) -> str:
    """Return ``modality`` if it is ``image`` or ``text``; else raise ``UsageError``."""
    if modality not in MODALITIES:
        raise UsageError(f"modality must be one of {list(MODALITIES)}; got {modality!r}")
    return modality


def emb_path(root: Path, modality: str, shard: int) -> Path:
    """``root/img_emb/img_emb_<shard>.npy`` (or the text one)."""
    p = PREFIXES[modality]
    return Path(root) / f"{p}_emb" / f"{p}_emb_{shard}.npy"


def logvar_path(root: Path, modality: str, shard: int) -> Path:
    """``root/img_logvar/img_logvar_<shard>.npy`` (or the text one)."""
    p = PREFIXES[modality]
    return Path(root) / f"{p}_logvar" / f"{p}_logvar_{shard}.npy"


def metadata_path(root: Path, modality: str, shard: int) -> Path:
    """``root/metadata/metadata_<shard>.parquet`` for images, ``text_metadata_<shard>.parquet`` for texts."""
    name = f"metadata_{shard}.parquet" if modality == "image" else f"text_metadata_{shard}.parquet"
    return Path(root) / "metadata" / name


def write_json_atomic(path: Path, data: dict) -> None:
    """Write ``data`` as JSON to ``path`` through a temporary file and a rename (never a half-written file)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(data, indent=2, sort_keys=True) + "\n", encoding="utf-8")
    os.replace(tmp, path)


def write_manifest(root: Path, manifest: dict) -> None:
    """Write ``root/manifest.json`` atomically."""
    write_json_atomic(Path(root) / MANIFEST_NAME, manifest)


def collection_file(root: str | Path, relative: object, what: str) -> Path:
    """``root / relative`` for a path the manifest names; ``InputError`` unless it is a relative path that stays
    inside the collection (after resolving ``..`` and symbolic links)."""
    root = Path(root)
    if not isinstance(relative, str) or not relative or Path(relative).is_absolute():
        raise InputError(f"{root / MANIFEST_NAME}: {what} must be a path relative to the collection; got {relative!r}")
    path = root / relative
    if not path.resolve().is_relative_to(root.resolve()):
        raise InputError(f"{root / MANIFEST_NAME}: {what} {relative!r} lies outside the collection {str(root)!r}; "
                         f"rebuild the index with `probclip index {root}`")
    return path


def file_fingerprint(path: str | Path) -> str:
    """First 16 hex digits of a SHA-256 over the file's size and content: all of it up to 64 MiB, else its first
    and last MiB and 256 blocks of 4 KiB spread evenly between (about 3 MiB read, whatever the file's size).

    Every row of an index file contributes to it, so two index files of the same shape but different rows differ in
    nearly every block; modification times are left out, so that a copied collection keeps its fingerprints."""
    path = Path(path)
    size = path.stat().st_size
    digest = hashlib.sha256(str(size).encode())
    with open(path, "rb") as handle:
        if size <= _WHOLE_BYTES:
            digest.update(handle.read())
        else:
            starts = [0, size - _END_BYTES]
            starts += [_END_BYTES + i * (size - 2 * _END_BYTES) // _SAMPLES for i in range(_SAMPLES)]
            for start, length in zip(starts, [_END_BYTES] * 2 + [_SAMPLE_BYTES] * _SAMPLES, strict=True):
                handle.seek(start)
                digest.update(handle.read(length))
    return digest.hexdigest()[:16]


def _bad(path: Path, field: str, value: object, expected: str) -> InputError:
    return InputError(f"{path}: {field} is {value!r}; expected {expected} (the manifest was edited or damaged: "
                      "rerun `probclip embed` with --overwrite, or `probclip index`, to rewrite it)")


def _count(path: Path, field: str, value: object, minimum: int = 0) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise _bad(path, field, value, f"an integer >= {minimum}")
    return value


def _mapping(path: Path, field: str, value: object) -> dict:
    if not isinstance(value, dict):
        raise _bad(path, field, value if not isinstance(value, (list, str)) else type(value).__name__, "an object")
    return value


def check_manifest(root: str | Path, manifest: dict) -> dict:
    """Check every value of ``manifest`` that the readers use; returns it, or raises ``InputError`` naming the
    field, its value and what is expected. Files named by the index entries must lie inside the collection."""
    root = Path(root)
    path = root / MANIFEST_NAME
    model = _mapping(path, "model", manifest.get("model"))
    for field in ("name", "fingerprint"):
        if not isinstance(model.get(field), str) or not model.get(field):
            raise _bad(path, f"model.{field}", model.get(field), "a non-empty string")
    _count(path, "model.embed_dim", model.get("embed_dim"), 1)
    if model.get("source") is not None and not isinstance(model.get("source"), str):
        raise _bad(path, "model.source", model.get("source"), "a string or null")
    if manifest.get("dtype") not in DTYPES:
        raise _bad(path, "dtype", manifest.get("dtype"), f"one of {list(DTYPES)}")
    modalities = _mapping(path, "modalities", manifest.get("modalities"))
    for modality, info in modalities.items():
        if modality not in MODALITIES:
            raise _bad(path, "a key of modalities", modality, f"one of {list(MODALITIES)}")
        info = _mapping(path, f"modalities.{modality}", info)
        rows = _count(path, f"modalities.{modality}.rows", info.get("rows"))
        shards = info.get("shards")
        if not isinstance(shards, list):
            raise _bad(path, f"modalities.{modality}.shards", type(shards).__name__, "a list")
        first_row = 0
        for i, shard in enumerate(shards):
            where = f"modalities.{modality}.shards[{i}]"
            shard = _mapping(path, where, shard)
            _count(path, f"{where}.index", shard.get("index"))
            if _count(path, f"{where}.first_row", shard.get("first_row")) != first_row:
                raise _bad(path, f"{where}.first_row", shard.get("first_row"), f"{first_row} (the rows before it)")
            first_row += _count(path, f"{where}.rows", shard.get("rows"))
        if first_row != rows:
            raise _bad(path, f"modalities.{modality}.rows", rows, f"{first_row} (the sum of its shards' rows)")
    indexes = _mapping(path, "indexes", manifest.get("indexes", {}))
    for modality, entry in indexes.items():
        if modality not in modalities:
            raise _bad(path, "a key of indexes", modality, f"a modality of the collection {sorted(modalities)}")
        from .backends import backend_names  # the registry imports this module

        entry = _mapping(path, f"indexes.{modality}", entry)
        if entry.get("kind") not in backend_names():
            raise _bad(path, f"indexes.{modality}.kind", entry.get("kind"), f"one of {backend_names()}")
        _count(path, f"indexes.{modality}.rows", entry.get("rows"))
        files = [key for key in INDEX_FILE_KEYS if key in entry]
        for group in ("search", "search_params"):
            for knob, value in _mapping(path, f"indexes.{modality}.{group}", entry.get(group, {})).items():
                _count(path, f"indexes.{modality}.{group}.{knob}", value, 1)
        tuning = _mapping(path, f"indexes.{modality}.tuning", entry.get("tuning", {}))
        recall = tuning.get("recall_at_10", 0.0)
        if isinstance(recall, bool) or not isinstance(recall, (int, float)) or not 0 <= recall <= 1:
            raise _bad(path, f"indexes.{modality}.tuning.recall_at_10", recall, "a number in [0, 1]")
        if entry["kind"] in FILE_KINDS and "file" not in files:
            raise _bad(path, f"indexes.{modality}.file", None, "the path of the index file")
        if entry["kind"] == "milvus":
            for field in ("uri", "collection"):
                if not isinstance(entry.get(field), str) or not entry.get(field):
                    raise _bad(path, f"indexes.{modality}.{field}", entry.get(field), "a non-empty string")
        for key in files:
            collection_file(root, entry[key], f"indexes.{modality}.{key}")
        _mapping(path, f"indexes.{modality}.fingerprints", entry.get("fingerprints", {}))
    return manifest


def read_manifest(root: str | Path) -> dict:
    """Read and check ``root/manifest.json``; ``InputError`` for a missing, corrupt or newer-format manifest."""
    root = Path(root)
    path = root / MANIFEST_NAME
    if not root.is_dir():
        raise InputError(f"collection directory {str(root)!r} does not exist; create one with `probclip embed`")
    if not path.is_file():
        raise InputError(f"{path} not found: {str(root)!r} is not a finished collection (run `probclip embed` "
                         f"with --out {root}, or rerun it to finish an interrupted run)")
    try:
        manifest = json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError, RecursionError) as err:
        raise InputError(f"{path} is not valid JSON ({err}); rerun `probclip embed` with --overwrite to rewrite "
                         "it") from err
    if not isinstance(manifest, dict) or manifest.get("format") != FORMAT:
        raise InputError(f"{path} is not a probclip collection manifest (expected \"format\": \"{FORMAT}\")")
    version = manifest.get("format_version")
    if isinstance(version, bool) or not isinstance(version, int) or version > FORMAT_VERSION:
        raise InputError(f"{path} has format version {version!r}, newer than this probclip reads "
                         f"(<= {FORMAT_VERSION}); upgrade probclip")
    return check_manifest(root, upgrade_manifest(manifest))


def upgrade_manifest(manifest: dict) -> dict:
    """A manifest of an older format version as the current one (in memory; written when next rewritten).

    1 -> 2: the index entries are dropped (their flat and inclusion files are in FAISS's own format, which this
    probclip no longer reads): searching says the collection has no index and names `probclip index DIR`;
    ``upgraded_from`` records the version read.
    """
    version = manifest.get("format_version")
    if isinstance(version, int) and version < 2:
        manifest = {k: v for k, v in manifest.items() if k != "indexes"}
        manifest.update(format_version=FORMAT_VERSION, upgraded_from=version)
    return manifest


@dataclass
class _Shard:
    index: int
    first_row: int
    rows: int


class StoredRows:
    """Memory-mapped stored rows of one modality: means, log-variances, ``u`` and metadata by global row id.

    ``rows``: number of rows; ``dim``: D; ``u``: float32 ``[rows]`` (read from the metadata once, in RAM).
    Missing or truncated shards raise ``InputError`` naming the file.
    """

    def __init__(self, root: str | Path, manifest: dict, modality: str):
        self.root = Path(root)
        self.modality = check_modality(modality)
        info = manifest.get("modalities", {}).get(modality)
        if not info or not info.get("rows"):
            counts = {m: v.get("rows", 0) for m, v in manifest.get("modalities", {}).items()}
            raise InputError(f"collection {str(self.root)!r} holds no {modality} rows (rows per modality: {counts})")
        self.rows = int(info["rows"])
        self.dim = int(manifest["model"]["embed_dim"])
        self.dtype = np.dtype(manifest["dtype"])
        self.shards = [_Shard(int(s["index"]), int(s["first_row"]), int(s["rows"])) for s in info["shards"]]
        self.shards = [s for s in self.shards if s.rows > 0]
        self._starts = np.array([s.first_row for s in self.shards], dtype=np.int64)
        self._means: dict[int, np.ndarray] = {}
        self._logvars: dict[int, np.ndarray] = {}
        self._u: np.ndarray | None = None
        self._tables: dict = {}

    # ------------------------------------------------------------------ shard files
    def _open(self, path: Path, rows: int) -> np.ndarray:
        if not path.is_file():
            raise InputError(f"shard {path} is missing from collection {str(self.root)!r}; rerun `probclip embed`")
        try:
            array = np.load(path, mmap_mode="r")
        except (ValueError, OSError, EOFError) as err:
            raise InputError(f"shard {path} is truncated or corrupt ({err}); rerun `probclip embed`") from err
        if array.shape != (rows, self.dim) or array.dtype != self.dtype:
            raise InputError(f"shard {path} holds {array.dtype} {tuple(array.shape)}; the manifest expects "
                             f"{self.dtype} ({rows}, {self.dim}); rerun `probclip embed`")
        return array

    def means_of_shard(self, k: int) -> np.ndarray:
        """Memory-mapped ``[n, D]`` means of the k-th non-empty shard (storage dtype)."""
        if k not in self._means:
            s = self.shards[k]
            self._means[k] = self._open(emb_path(self.root, self.modality, s.index), s.rows)
        return self._means[k]

    def logvars_of_shard(self, k: int) -> np.ndarray:
        """Memory-mapped ``[n, D]`` log-variances of the k-th non-empty shard (storage dtype)."""
        if k not in self._logvars:
            s = self.shards[k]
            self._logvars[k] = self._open(logvar_path(self.root, self.modality, s.index), s.rows)
        return self._logvars[k]

    def check_files(self) -> None:
        """Open every shard once (raises ``InputError`` for a missing or truncated one)."""
        for k in range(len(self.shards)):
            self.means_of_shard(k)
            self.logvars_of_shard(k)
            path = metadata_path(self.root, self.modality, self.shards[k].index)
            if not path.is_file():
                raise InputError(f"metadata shard {path} is missing from collection {str(self.root)!r}")

    # ------------------------------------------------------------------ rows
    def _locate(self, ids: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        ids = np.asarray(ids, dtype=np.int64).reshape(-1)
        if ids.size and (ids.min() < 0 or ids.max() >= self.rows):
            bad = ids[(ids < 0) | (ids >= self.rows)][:5].tolist()
            raise UsageError(f"row ids must lie in [0, {self.rows - 1}]; got {bad}")
        shard = np.searchsorted(self._starts, ids, side="right") - 1
        return shard, ids - self._starts[shard]

    def _gather(self, ids, getter) -> np.ndarray:
        shard, local = self._locate(ids)
        out = np.empty((shard.size, self.dim), dtype=np.float32)
        for k in np.unique(shard):
            sel = shard == k
            out[sel] = getter(int(k))[local[sel]]
        return out

    def means(self, ids) -> np.ndarray:
        """float32 ``[len(ids), D]`` stored means of the given rows."""
        return self._gather(ids, self.means_of_shard)

    def logvars(self, ids) -> np.ndarray:
        """float32 ``[len(ids), D]`` stored log-variances of the given rows."""
        return self._gather(ids, self.logvars_of_shard)

    def embedding(self, ids) -> ProbEmbedding:
        """The stored rows as a float32 ``ProbEmbedding [len(ids), D]``."""
        return ProbEmbedding(torch.from_numpy(self.means(ids)), torch.from_numpy(self.logvars(ids)))

    def chunks(self):
        """Yield ``(first_row, means float32 [n, D], logvars float32 [n, D], u float32 [n])`` shard by shard."""
        u = self.u
        for k, shard in enumerate(self.shards):
            yield (shard.first_row, np.asarray(self.means_of_shard(k), dtype=np.float32),
                   np.asarray(self.logvars_of_shard(k), dtype=np.float32),
                   u[shard.first_row: shard.first_row + shard.rows])

    @property
    def u(self) -> np.ndarray:
        """float32 ``[rows]``: each row's uncertainty ``sum exp(logvar)`` as stored in the metadata."""
        if self._u is None:
            self._u = np.concatenate([self.read_metadata(k, columns=["u"])["u"].to_numpy(zero_copy_only=False)
                                      for k in range(len(self.shards))]).astype(np.float32)
            if self._u.shape != (self.rows,):
                raise InputError(f"collection {str(self.root)!r}: metadata holds {self._u.shape[0]} {self.modality} "
                                 f"rows, the manifest {self.rows}")
        return self._u

    def read_metadata(self, k: int, columns: list[str] | None = None):
        """The k-th non-empty shard's metadata as a ``pyarrow.Table``."""
        if columns is None and k in self._tables:
            return self._tables[k]
        path = metadata_path(self.root, self.modality, self.shards[k].index)
        if not path.is_file():
            raise InputError(f"metadata shard {path} is missing from collection {str(self.root)!r}")
        try:
            table = pq.read_table(path, columns=columns, memory_map=True)
        except (OSError, ValueError) as err:
            raise InputError(f"metadata shard {path} is truncated or corrupt ({err}); rerun `probclip embed`") from err
        if table.num_rows != self.shards[k].rows:
            raise InputError(f"metadata shard {path} holds {table.num_rows} rows, the manifest "
                             f"{self.shards[k].rows}; rerun `probclip embed`")
        if columns is None:
            self._tables[k] = table  # memory-mapped: kept open so that result metadata costs no re-read
        return table

    def metadata(self, ids) -> list[dict]:
        """One dict per row id (``row_id``, ``source``, ``caption``, ``u``, ``offset``, ``size``), in order."""
        shard, local = self._locate(ids)
        out: list[dict | None] = [None] * shard.size
        for k in np.unique(shard):
            positions = np.nonzero(shard == k)[0]
            table = self.read_metadata(int(k)).take(local[positions])
            for pos, row in zip(positions, table.to_pylist(), strict=False):
                row["u"] = float(row["u"])
                out[pos] = row
        return out  # type: ignore[return-value]
