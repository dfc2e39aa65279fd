"""The on-disk collection format: shard files, the manifest, and memory-mapped reading of stored rows.

A collection directory holds, per modality (``image`` -> prefix ``img``, ``text`` -> prefix ``text``), shards of
at most ``shard_rows`` rows each (the clip-retrieval layout, with log-variances beside the means)::

    img_emb/img_emb_N.npy          [n, D] unit-norm means, float16 (or float32)
    img_logvar/img_logvar_N.npy    [n, D] log-variances, same dtype
    text_emb/text_emb_N.npy, text_logvar/text_logvar_N.npy
    metadata/metadata_N.parquet       image rows: row_id, source, caption, u (float32), offset, size
    metadata/text_metadata_N.parquet  text rows:  row_id, source, caption, u (float32), offset, size
    manifest.json                  format version, model, dtype, counts and file fingerprints per shard, skipped
                                   inputs, the job, indexes (with a fingerprint of each index file)
    inputs/image.npy, text.npy     one uint64 digest per input row (see :mod:`probclip.search.input_digest`)
    index/                         what ``probclip index`` builds

``u = sum_d exp(logvar_d)`` is computed from the float32 log-variances before they are stored, so it is exact
whatever the storage dtype. Row ids are global positions ``0 .. rows-1`` in shard order.

The manifest itself is read, checked, upgraded and written by :mod:`probclip.search.manifest` (a typed
``Manifest``); :func:`file_fingerprint` identifies a shard or index file without reading all of it (above 64 MiB),
so that a file of another collection, even one of the same shape, is refused. ``StoredRows`` checks each shard
file against the fingerprint its shard record holds the first time it opens it (once per file and process); a
shard record written by an older probclip holds none, and its files are then used unchecked.
"""

from __future__ import annotations

import hashlib
import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import pyarrow.parquet as pq
import torch

from ..embedding import ProbEmbedding
from ..errors import InputError, UsageError

if TYPE_CHECKING:
    from .manifest import Manifest

__all__ = [
    "MANIFEST_NAME",
    "MODALITIES",
    "PREFIXES",
    "SHARD_FILES",
    "Shard",
    "ShardFileError",
    "StoredRows",
    "DTYPES",
    "check_modality",
    "collection_file",
    "emb_path",
    "file_fingerprint",
    "logvar_path",
    "metadata_path",
    "shard_files",
    "verify_fingerprint",
    "write_json_atomic",
]

MANIFEST_NAME = "manifest.json"
MODALITIES = ("image", "text")
PREFIXES = {"image": "img", "text": "text"}
DTYPES = ("float16", "float32")
#: The files of one shard, by the name their fingerprint has in the manifest's shard record.
SHARD_FILES = ("means", "logvars", "metadata")
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


def shard_files(root: Path, modality: str, shard: int) -> dict[str, Path]:
    """The files of one shard by their :data:`SHARD_FILES` name: means, log-variances and metadata."""
    return {"means": emb_path(root, modality, shard), "logvars": logvar_path(root, modality, shard),
            "metadata": metadata_path(root, modality, shard)}


def write_json_atomic(path: Path, data: dict) -> None:
    """Write ``data`` as JSON to ``path`` through a temporary file and a rename (never a half-written file)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(data, indent=2, sort_keys=True) + "\n", encoding="utf-8")
    os.replace(tmp, path)


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


def verify_fingerprint(path: Path, expected: str, what: str, wrote: str, remedy: str,
                       error: type[InputError] = InputError) -> None:
    """Raise ``error`` unless the file ``path`` has the fingerprint ``expected`` the manifest records: "``what``
    ``path`` is not the file ``wrote`` this collection (fingerprint ..., the manifest records ...): it was replaced
    or damaged; ``remedy``"."""
    found = file_fingerprint(path)
    if found != expected:
        raise error(f"{what} {path} is not the file {wrote} this collection (fingerprint {found}, the manifest "
                    f"records {expected}): it was replaced or damaged; {remedy}")


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


class ShardFileError(InputError):
    """A shard file of a collection is missing, truncated, of another shape or not the file written with it."""


@dataclass(frozen=True)
class Shard:
    """One shard of one modality: its file number, its first global row id, its row count and the
    :func:`file_fingerprint` of each of its files by :data:`SHARD_FILES` name (None: written by an older probclip,
    which recorded none; its files are then not checked)."""

    index: int
    first_row: int
    rows: int
    fingerprints: dict[str, str] | None = None

    def to_dict(self) -> dict:
        """The JSON form of the manifest's shard record (no ``fingerprints`` key when none were recorded)."""
        out = {"index": self.index, "first_row": self.first_row, "rows": self.rows}
        if self.fingerprints is not None:
            out["fingerprints"] = dict(self.fingerprints)
        return out


#: Shard files found as recorded, by (path, recorded fingerprint, device, inode, size, mtime and ctime in ns): a
#: file is read for its fingerprint once per process, and again only once it was written since.
_VERIFIED: set[tuple] = set()


def _file_key(path: Path, expected: str) -> tuple:
    stat = path.stat()
    return str(path.resolve()), expected, stat.st_dev, stat.st_ino, stat.st_size, stat.st_mtime_ns, stat.st_ctime_ns


class StoredRows:
    """Memory-mapped stored rows of one modality: means, log-variances, ``u`` and metadata by global row id.

    ``rows``: number of rows; ``dim``: D; ``u``: float32 ``[rows]`` (read from the metadata once, in RAM).
    A missing or truncated shard file, or one whose fingerprint differs from its shard record's (checked the first
    time it is opened), raises ``ShardFileError`` (an ``InputError``) naming the file.
    """

    def __init__(self, root: str | Path, manifest: Manifest, modality: str):
        self.root = Path(root)
        self.modality = check_modality(modality)
        info = manifest.modalities.get(modality)
        if info is None or not info.rows:
            raise InputError(f"collection {str(self.root)!r} holds no {modality} rows (rows per modality: "
                             f"{ {m: v.rows for m, v in manifest.modalities.items()} })")
        self.rows = info.rows
        self.dim = manifest.model.embed_dim
        self.dtype = np.dtype(manifest.dtype)
        self.shards = [s for s in info.shards if s.rows > 0]
        self._starts = np.array([s.first_row for s in self.shards], dtype=np.int64)
        self._means: dict[int, np.ndarray] = {}
        self._logvars: dict[int, np.ndarray] = {}
        self._u: np.ndarray | None = None
        self._tables: dict = {}

    # ------------------------------------------------------------------ shard files
    def _verify(self, k: int, name: str, path: Path) -> None:
        """Check the file ``name`` (a :data:`SHARD_FILES` name) of the k-th non-empty shard against the fingerprint
        its shard record holds, once per process (none recorded: nothing to check); ``ShardFileError`` if it
        differs."""
        expected = (self.shards[k].fingerprints or {}).get(name)
        if expected is None:
            return
        key = _file_key(path, expected)
        if key in _VERIFIED:
            return
        verify_fingerprint(path, expected, "shard file", "`probclip embed` wrote for",
                           f"rerun `probclip embed ... --out {self.root} --overwrite` to embed the collection again",
                           ShardFileError)
        _VERIFIED.add(key)

    def _open(self, k: int, name: str, path: Path) -> np.ndarray:
        rows = self.shards[k].rows
        if not path.is_file():
            raise ShardFileError(f"shard {path} is missing from collection {str(self.root)!r}; rerun `probclip "
                                 "embed`")
        try:
            array = np.load(path, mmap_mode="r")
        except (ValueError, OSError, EOFError) as err:
            raise ShardFileError(f"shard {path} is truncated or corrupt ({err}); rerun `probclip embed`") from err
        if array.shape != (rows, self.dim) or array.dtype != self.dtype:
            raise ShardFileError(f"shard {path} holds {array.dtype} {tuple(array.shape)}; the manifest expects "
                                 f"{self.dtype} ({rows}, {self.dim}); rerun `probclip embed`")
        self._verify(k, name, path)
        return array

    def means_of_shard(self, k: int) -> np.ndarray:
        """Memory-mapped ``[n, D]`` means of the k-th non-empty shard (storage dtype)."""
        if k not in self._means:
            self._means[k] = self._open(k, "means", emb_path(self.root, self.modality, self.shards[k].index))
        return self._means[k]

    def logvars_of_shard(self, k: int) -> np.ndarray:
        """Memory-mapped ``[n, D]`` log-variances of the k-th non-empty shard (storage dtype)."""
        if k not in self._logvars:
            self._logvars[k] = self._open(k, "logvars", logvar_path(self.root, self.modality, self.shards[k].index))
        return self._logvars[k]

    def check_files(self) -> None:
        """Open every shard file once and check its fingerprint (``ShardFileError`` for a missing, truncated or
        replaced one)."""
        for k in range(len(self.shards)):
            self.means_of_shard(k)
            self.logvars_of_shard(k)
            path = self._metadata_file(k)
            self._verify(k, "metadata", path)

    def _metadata_file(self, k: int) -> Path:
        path = metadata_path(self.root, self.modality, self.shards[k].index)
        if not path.is_file():
            raise ShardFileError(f"metadata shard {path} is missing from collection {str(self.root)!r}")
        return path

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
        path = self._metadata_file(k)
        try:
            table = pq.read_table(path, columns=columns, memory_map=True)
        except (OSError, ValueError) as err:
            raise ShardFileError(f"metadata shard {path} is truncated or corrupt ({err}); rerun `probclip "
                                 "embed`") from err
        if table.num_rows != self.shards[k].rows:
            raise ShardFileError(f"metadata shard {path} holds {table.num_rows} rows, the manifest "
                                 f"{self.shards[k].rows}; rerun `probclip embed`")
        self._verify(k, "metadata", path)
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
