"""The collection manifest (``manifest.json``) as typed dataclasses: read, checked, upgraded and written here only.

``read_manifest(root)`` returns a :class:`Manifest` after checking every value (types, ranges, shard offsets that
add up, index files inside the collection; one line naming the field, its value and what is expected) and
upgrading an older format version (:data:`FORMAT_VERSION`, :func:`upgrade`). ``Manifest.write(root)`` writes it
back atomically. Every key written is read back into a field; ``Manifest.present_modalities()`` is the one place
that says which modalities a collection holds.

Format versions: 1, the flat and inclusion indexes were FAISS files written by hand; 2, they are ``.npy`` files
and an index entry records its factory string, search parameters, search knobs and tuning. A version-1 manifest is
upgraded when read: its index entries are dropped, so searching says the collection has no index and names
``probclip index DIR`` (its data files are unchanged and stay valid).
"""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass, field
from pathlib import Path

from ..errors import InputError
from .backends import backend_names
from .layout import DTYPES, MANIFEST_NAME, MODALITIES, Shard, collection_file, write_json_atomic

__all__ = ["FILE_KINDS", "FORMAT", "FORMAT_VERSION", "INDEX_FILE_KEYS", "IndexEntry", "Manifest", "ModalityInfo",
           "ModelRecord", "read_manifest", "upgrade", "write_manifest"]

FORMAT = "probclip-collection"
FORMAT_VERSION = 2
#: The keys of an index entry that name a file of the collection.
INDEX_FILE_KEYS = ("file", "inclusion_file", "mean_variance_file")
#: The kinds whose entry must name a ``file`` (other registered backends may write none).
FILE_KINDS = ("flat", "hnsw", "ivfpq")


@dataclass(frozen=True)
class ModelRecord:
    """The model that embedded the collection: name, config hash, weights fingerprint, D, where to reload it."""

    name: str
    fingerprint: str
    embed_dim: int
    config_hash: str | None = None
    source: str | None = None


@dataclass(frozen=True)
class ModalityInfo:
    """One modality: its rows, shards, the inputs listed and those skipped (counted; the first ones named)."""

    rows: int
    shards: tuple[Shard, ...]
    inputs: int | None = None
    skipped: int = 0
    skipped_inputs: tuple = ()


@dataclass(frozen=True)
class IndexEntry:
    """The index of one modality, as ``probclip index`` recorded it.

    ``kind``: the backend (:mod:`probclip.search.backends`); ``files``: ``file`` / ``inclusion_file`` /
    ``mean_variance_file`` -> path relative to the collection; ``fingerprints``: the same keys -> file fingerprint;
    ``factory`` / ``metric`` / ``search_params``: the autofaiss-style description; ``search``: the search knobs;
    ``tuning``: what build-time tuning reached; ``backend_fields``: anything else the backend recorded (Milvus:
    ``uri``, ``collection``; FAISS: ``params``).
    """

    kind: str
    rows: int
    files: dict = field(default_factory=dict)
    fingerprints: dict = field(default_factory=dict)
    factory: str | None = None
    metric: str | None = None
    search_params: dict = field(default_factory=dict)
    search: dict = field(default_factory=dict)
    tuning: dict = field(default_factory=dict)
    backend_fields: dict = field(default_factory=dict)

    _NAMED = ("kind", "rows", "fingerprints", "factory", "metric", "search_params", "search", "tuning")

    @classmethod
    def from_dict(cls, data: dict) -> IndexEntry:
        """An entry from its JSON form (the dict a backend's ``build`` returned, plus ``kind``, ``rows``, ...)."""
        files = {k: data[k] for k in INDEX_FILE_KEYS if k in data}
        rest = {k: v for k, v in data.items() if k not in files and k not in cls._NAMED}
        return cls(kind=data["kind"], rows=data["rows"], files=files, fingerprints=dict(data.get("fingerprints", {})),
                   factory=data.get("factory"), metric=data.get("metric"),
                   search_params=dict(data.get("search_params", {})), search=dict(data.get("search", {})),
                   tuning=dict(data.get("tuning", {})), backend_fields=rest)

    def to_dict(self) -> dict:
        """The JSON form (what a backend's ``open`` gets)."""
        out = {"kind": self.kind, "rows": self.rows, **self.files, **self.backend_fields,
               "fingerprints": dict(self.fingerprints), "search_params": dict(self.search_params),
               "search": dict(self.search)}
        out.update({k: v for k, v in (("factory", self.factory), ("metric", self.metric)) if v is not None})
        if self.tuning:
            out["tuning"] = dict(self.tuning)
        return out

    @property
    def recall_at_10(self) -> float | None:
        """The recall@10 reached by build-time tuning, or None when untuned."""
        return self.tuning.get("recall_at_10")


@dataclass(frozen=True)
class Manifest:
    """A collection's manifest (see the module docstring). ``job`` and ``inputs`` are the embedding job and the
    inputs' fingerprint record (:mod:`probclip.search.job`, :mod:`probclip.search.input_digest`), kept as written."""

    model: ModelRecord
    dtype: str
    modalities: dict[str, ModalityInfo]
    indexes: dict[str, IndexEntry] = field(default_factory=dict)
    shard_rows: int | None = None
    job: dict | None = None
    inputs: dict | None = None
    format_version: int = FORMAT_VERSION
    upgraded_from: int | None = None

    def present_modalities(self) -> list[str]:
        """The modalities holding at least one row, in ``MODALITIES`` order."""
        return [m for m in MODALITIES if m in self.modalities and self.modalities[m].rows > 0]

    def rows(self) -> dict[str, int]:
        """Rows per modality."""
        return {m: info.rows for m, info in self.modalities.items()}

    def with_index(self, modality: str, entry: IndexEntry) -> Manifest:
        """This manifest with ``entry`` as the index of ``modality`` (and nothing left of an older format)."""
        return dataclasses.replace(self, indexes={**self.indexes, modality: entry}, upgraded_from=None)

    def to_dict(self) -> dict:
        """The JSON form."""
        out = {"format": FORMAT, "format_version": self.format_version,
               "model": {k: v for k, v in dataclasses.asdict(self.model).items()},
               "dtype": self.dtype,
               "modalities": {m: {"rows": i.rows, "shards": [dataclasses.asdict(s) for s in i.shards],
                                  "inputs": i.inputs, "skipped": i.skipped, "skipped_inputs": list(i.skipped_inputs)}
                              for m, i in self.modalities.items()},
               "indexes": {m: e.to_dict() for m, e in self.indexes.items()},
               "shard_rows": self.shard_rows, "job": self.job, "inputs": self.inputs}
        if self.upgraded_from is not None:
            out["upgraded_from"] = self.upgraded_from
        return out

    def write(self, root: str | Path) -> None:
        """Write ``root/manifest.json`` atomically."""
        write_manifest(root, self.to_dict())

    @classmethod
    def from_dict(cls, root: str | Path, data: dict) -> Manifest:
        """Check ``data`` (a manifest of the current format) and type it; ``InputError`` naming a bad field."""
        root = Path(root)
        path = root / MANIFEST_NAME
        model = _mapping(path, "model", data.get("model"))
        for name in ("name", "fingerprint"):
            if not isinstance(model.get(name), str) or not model.get(name):
                raise _bad(path, f"model.{name}", model.get(name), "a non-empty string")
        for name in ("source", "config_hash"):
            if model.get(name) is not None and not isinstance(model.get(name), str):
                raise _bad(path, f"model.{name}", model.get(name), "a string or null")
        record = ModelRecord(name=model["name"], fingerprint=model["fingerprint"],
                             embed_dim=_count(path, "model.embed_dim", model.get("embed_dim"), 1),
                             config_hash=model.get("config_hash"), source=model.get("source"))
        if data.get("dtype") not in DTYPES:
            raise _bad(path, "dtype", data.get("dtype"), f"one of {list(DTYPES)}")
        modalities = {m: _modality(path, m, info)
                      for m, info in _mapping(path, "modalities", data.get("modalities")).items()}
        indexes = {m: _index(root, path, m, entry, modalities)
                   for m, entry in _mapping(path, "indexes", data.get("indexes", {})).items()}
        shard_rows = data.get("shard_rows")
        if shard_rows is not None:
            _count(path, "shard_rows", shard_rows, 1)
        for name in ("job", "inputs"):
            if data.get(name) is not None:
                _mapping(path, name, data.get(name))
        return cls(model=record, dtype=data["dtype"], modalities=modalities, indexes=indexes, shard_rows=shard_rows,
                   job=data.get("job"), inputs=data.get("inputs"), format_version=FORMAT_VERSION,
                   upgraded_from=data.get("upgraded_from"))


def _bad(path: Path, name: str, value: object, expected: str) -> InputError:
    return InputError(f"{path}: {name} is {value!r}; expected {expected} (the manifest was edited or damaged: "
                      "rerun `probclip embed` with --overwrite, or `probclip index`, to rewrite it)")


def _count(path: Path, name: str, value: object, minimum: int = 0) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise _bad(path, name, value, f"an integer >= {minimum}")
    return value


def _mapping(path: Path, name: str, value: object) -> dict:
    if not isinstance(value, dict):
        raise _bad(path, name, value if not isinstance(value, (list, str)) else type(value).__name__, "an object")
    return value


def _modality(path: Path, modality: str, info: object) -> ModalityInfo:
    if modality not in MODALITIES:
        raise _bad(path, "a key of modalities", modality, f"one of {list(MODALITIES)}")
    info = _mapping(path, f"modalities.{modality}", info)
    rows = _count(path, f"modalities.{modality}.rows", info.get("rows"))
    shards = info.get("shards")
    if not isinstance(shards, list):
        raise _bad(path, f"modalities.{modality}.shards", type(shards).__name__, "a list")
    first_row, typed = 0, []
    for i, shard in enumerate(shards):
        where = f"modalities.{modality}.shards[{i}]"
        shard = _mapping(path, where, shard)
        index = _count(path, f"{where}.index", shard.get("index"))
        if _count(path, f"{where}.first_row", shard.get("first_row")) != first_row:
            raise _bad(path, f"{where}.first_row", shard.get("first_row"), f"{first_row} (the rows before it)")
        count = _count(path, f"{where}.rows", shard.get("rows"))
        typed.append(Shard(index, first_row, count))
        first_row += count
    if first_row != rows:
        raise _bad(path, f"modalities.{modality}.rows", rows, f"{first_row} (the sum of its shards' rows)")
    inputs = info.get("inputs")
    if inputs is not None:
        _count(path, f"modalities.{modality}.inputs", inputs)
    skipped = _count(path, f"modalities.{modality}.skipped", info.get("skipped", 0))
    named = info.get("skipped_inputs", [])
    if not isinstance(named, list):
        raise _bad(path, f"modalities.{modality}.skipped_inputs", type(named).__name__, "a list")
    return ModalityInfo(rows=rows, shards=tuple(typed), inputs=inputs, skipped=skipped, skipped_inputs=tuple(named))


def _index(root: Path, path: Path, modality: str, entry: object, modalities: dict) -> IndexEntry:
    if modality not in modalities:
        raise _bad(path, "a key of indexes", modality, f"a modality of the collection {sorted(modalities)}")
    entry = _mapping(path, f"indexes.{modality}", entry)
    if entry.get("kind") not in backend_names():
        raise _bad(path, f"indexes.{modality}.kind", entry.get("kind"), f"one of {backend_names()}")
    _count(path, f"indexes.{modality}.rows", entry.get("rows"))
    for group in ("search", "search_params"):
        for knob, value in _mapping(path, f"indexes.{modality}.{group}", entry.get(group, {})).items():
            _count(path, f"indexes.{modality}.{group}.{knob}", value, 1)
    tuning = _mapping(path, f"indexes.{modality}.tuning", entry.get("tuning", {}))
    recall = tuning.get("recall_at_10", 0.0)
    if isinstance(recall, bool) or not isinstance(recall, (int, float)) or not 0 <= recall <= 1:
        raise _bad(path, f"indexes.{modality}.tuning.recall_at_10", recall, "a number in [0, 1]")
    files = [key for key in INDEX_FILE_KEYS if key in entry]
    if entry["kind"] in FILE_KINDS and "file" not in files:
        raise _bad(path, f"indexes.{modality}.file", None, "the path of the index file")
    if entry["kind"] == "milvus":
        for name in ("uri", "collection"):
            if not isinstance(entry.get(name), str) or not entry.get(name):
                raise _bad(path, f"indexes.{modality}.{name}", entry.get(name), "a non-empty string")
    for key in files:
        collection_file(root, entry[key], f"indexes.{modality}.{key}")
    _mapping(path, f"indexes.{modality}.fingerprints", entry.get("fingerprints", {}))
    return IndexEntry.from_dict(entry)


def write_manifest(root: str | Path, manifest: dict) -> None:
    """Write ``root/manifest.json`` atomically (the JSON form; see :meth:`Manifest.write`)."""
    write_json_atomic(Path(root) / MANIFEST_NAME, manifest)


def upgrade(data: dict) -> dict:
    """A manifest's JSON of an older format version as the current one (in memory; written when next rewritten).

    1 -> 2: the index entries are dropped (their flat and inclusion files are in FAISS's own format, which this
    probclip no longer reads); ``upgraded_from`` records the version read, until the collection is indexed again.
    """
    version = data.get("format_version")
    if isinstance(version, int) and version < 2:
        data = {k: v for k, v in data.items() if k != "indexes"}
        data.update(format_version=FORMAT_VERSION, upgraded_from=version)
    return data


def read_manifest(root: str | Path) -> Manifest:
    """Read, upgrade and check ``root/manifest.json``; ``InputError`` for a missing, corrupt or newer-format one."""
    root = Path(root)
    path = root / MANIFEST_NAME
    if not root.is_dir():
        raise InputError(f"collection directory {str(root)!r} does not exist; create one with `probclip embed`")
    if not path.is_file():
        raise InputError(f"{path} not found: {str(root)!r} is not a finished collection (run `probclip embed` "
                         f"with --out {root}, or rerun it to finish an interrupted run)")
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError, RecursionError) as err:
        raise InputError(f"{path} is not valid JSON ({err}); rerun `probclip embed` with --overwrite to rewrite "
                         "it") from err
    if not isinstance(data, dict) or data.get("format") != FORMAT:
        raise InputError(f"{path} is not a probclip collection manifest (expected \"format\": \"{FORMAT}\")")
    version = data.get("format_version")
    if isinstance(version, bool) or not isinstance(version, int) or version > FORMAT_VERSION:
        raise InputError(f"{path} has format version {version!r}, newer than this probclip reads "
                         f"(<= {FORMAT_VERSION}); upgrade probclip")
    return Manifest.from_dict(root, upgrade(data))
