"""The collection manifest (``manifest.json``) as typed dataclasses: read, checked, upgraded and written here only.

``read_manifest(root)`` returns a :class:`Manifest` after checking every value (types, ranges, shard offsets that
add up, index files inside the collection; one line naming the field, its value and what is expected) and
upgrading an older format version (:data:`FORMAT_VERSION`, :func:`upgrade`). ``Manifest.write(root)`` writes it
back atomically. Every key written is read back into a field; ``Manifest.present_modalities()`` is the one place
that says which modalities a collection holds.

The embedding job a collection was made by is a :class:`JobRecord` (``job`` in the manifest, and
``.progress/job.json`` while a run is unfinished). :func:`read_manifest_job` reads it tolerantly, looking at that
field alone, so that a run meeting a manifest damaged elsewhere can still say which job made it, or suggest
``--overwrite``.

Format versions: 1, the flat and inclusion indexes were FAISS files written by hand; 2, they are ``.npy`` files
and an index entry records its factory string, search parameters, search knobs and tuning. A version-1 manifest is
upgraded when read: its index entries are dropped, so searching says the collection has no index and names
``probclip index DIR`` (its data files are unchanged and stay valid).
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

from ..errors import InputError
from ..hierarchy_head import PAIR_KINDS
from .backends import backend_names
from .layout import DTYPES, MANIFEST_NAME, MODALITIES, SHARD_FILES, Shard, collection_file, write_json_atomic

__all__ = ["FILE_KINDS", "FORMAT", "FORMAT_VERSION", "INDEX_FILE_KEYS", "HeadRecord", "IndexEntry", "JobRecord",
           "Manifest", "ModalityInfo", "ModelRecord", "SkippedInput", "read_job_file", "read_manifest",
           "read_manifest_job", "upgrade", "write_manifest"]

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
class SkippedInput:
    """An input left out of the collection: its ``source`` (file, or ``<shard.tar>::<key>``) and why (``error``)."""

    source: str
    error: str


@dataclass(frozen=True)
class ModalityInfo:
    """One modality: its rows, shards, the inputs listed and those skipped (counted; the first ones named)."""

    rows: int
    shards: tuple[Shard, ...]
    inputs: int | None = None
    skipped: int = 0
    skipped_inputs: tuple[SkippedInput, ...] = ()


@dataclass(frozen=True)
class JobRecord:
    """The embedding job a collection was made by (:mod:`probclip.search.job`): a run whose job differs is refused.

    ``data`` / ``image_root``: resolved paths (``data`` None for embeddings written by ``write_collection``);
    ``modality``: ``both``, ``image`` or ``text`` (``image+text`` ... for ``write_collection``); ``shard_rows``,
    ``dtype``, ``split``: the options that change the stored rows; ``model_fingerprint``: the weights' fingerprint;
    ``counts``: rows per modality; ``inputs_fingerprint``: the hash of the inputs' digests (None: embedded by an
    older probclip). ``other``: keys this probclip does not know (written by another version), kept so that two
    records still compare whole. Values are kept as written, unchecked: a damaged value makes the job differ.
    """

    data: str | None = None
    modality: str | None = None
    shard_rows: int | None = None
    dtype: str | None = None
    model_fingerprint: str | None = None
    split: str | None = None
    image_root: str | None = None
    counts: dict = field(default_factory=dict)
    inputs_fingerprint: str | None = None
    other: dict = field(default_factory=dict)

    @classmethod
    def names(cls) -> tuple[str, ...]:
        """The keys of the JSON form this probclip knows."""
        return tuple(f.name for f in dataclasses.fields(cls) if f.name != "other")

    @classmethod
    def from_dict(cls, data: Mapping) -> JobRecord:
        """A record from its JSON form, tolerantly (values as written; unknown keys into ``other``)."""
        known = {name: data[name] for name in cls.names() if name in data}
        return cls(**known, other={k: v for k, v in data.items() if k not in known})

    def to_dict(self) -> dict:
        """The JSON form."""
        return {**{name: getattr(self, name) for name in self.names()}, **self.other}

    def value(self, name: str):
        """The value of ``name`` (a field, or a key of ``other``; None when absent)."""
        return getattr(self, name) if name in self.names() else self.other.get(name)

    def differences(self, other: JobRecord) -> list[str]:
        """The names whose values differ between this record and ``other``, sorted."""
        names = set(self.names()) | set(self.other) | set(other.other)
        return sorted(name for name in names if self.value(name) != other.value(name))


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
class HeadRecord:
    """The hierarchy head the collection carries (:mod:`probclip.hierarchy_head`), copied from the model's folder by
    ``probclip embed``: ``file`` (relative to the collection), its ``fingerprint``
    (:func:`~probclip.search.layout.file_fingerprint`), the pair ``kinds`` it holds (``"text_in_text"``, ...) and
    ``fitted_on``: per kind, what it was fitted on."""

    file: str
    fingerprint: str
    kinds: tuple[str, ...]
    fitted_on: dict = field(default_factory=dict)

    def to_dict(self) -> dict:
        """The JSON form."""
        return {"file": self.file, "fingerprint": self.fingerprint, "kinds": list(self.kinds),
                "fitted_on": dict(self.fitted_on)}


@dataclass(frozen=True)
class Manifest:
    """A collection's manifest (see the module docstring). ``job`` is the embedding job (:class:`JobRecord`), whose
    ``inputs_fingerprint`` identifies the inputs (:mod:`probclip.search.input_digest`). A top-level ``inputs`` record
    written by earlier releases of format 2 repeated that fingerprint and the modalities' input counts: it is
    accepted and dropped."""

    model: ModelRecord
    dtype: str
    modalities: dict[str, ModalityInfo]
    indexes: dict[str, IndexEntry] = field(default_factory=dict)
    shard_rows: int | None = None
    job: JobRecord | None = None
    hierarchy_head: HeadRecord | None = None
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
               "modalities": {m: {"rows": i.rows, "shards": [s.to_dict() for s in i.shards],
                                  "inputs": i.inputs, "skipped": i.skipped,
                                  "skipped_inputs": [dataclasses.asdict(x) for x in i.skipped_inputs]}
                              for m, i in self.modalities.items()},
               "indexes": {m: e.to_dict() for m, e in self.indexes.items()},
               "shard_rows": self.shard_rows, "job": None if self.job is None else self.job.to_dict()}
        if self.hierarchy_head is not None:
            out["hierarchy_head"] = self.hierarchy_head.to_dict()
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
        job = None if data.get("job") is None else JobRecord.from_dict(data["job"])
        head = None if data.get("hierarchy_head") is None else _head(root, path, data["hierarchy_head"])
        return cls(model=record, dtype=data["dtype"], modalities=modalities, indexes=indexes, shard_rows=shard_rows,
                   job=job, hierarchy_head=head, format_version=FORMAT_VERSION,
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
        typed.append(Shard(index, first_row, count, _shard_fingerprints(path, where, shard.get("fingerprints"))))
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
    skips = []
    for i, one in enumerate(named):
        where = f"modalities.{modality}.skipped_inputs[{i}]"
        one = _mapping(path, where, one)
        for name in ("source", "error"):
            if not isinstance(one.get(name), str):
                raise _bad(path, f"{where}.{name}", one.get(name), "a string")
        skips.append(SkippedInput(source=one["source"], error=one["error"]))
    return ModalityInfo(rows=rows, shards=tuple(typed), inputs=inputs, skipped=skipped, skipped_inputs=tuple(skips))


def _shard_fingerprints(path: Path, where: str, value: object) -> dict[str, str] | None:
    """A shard record's ``fingerprints``: one non-empty string per :data:`SHARD_FILES` name, or None when the record
    holds none (written by an older probclip of format 2: its files are then not checked)."""
    if value is None:
        return None
    value = _mapping(path, f"{where}.fingerprints", value)
    if sorted(value) != sorted(SHARD_FILES):
        raise _bad(path, f"{where}.fingerprints", sorted(value), f"the keys {list(SHARD_FILES)}")
    for name in SHARD_FILES:
        if not isinstance(value[name], str) or not value[name]:
            raise _bad(path, f"{where}.fingerprints.{name}", value[name], "a non-empty string")
    return {name: value[name] for name in SHARD_FILES}


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


def _head(root: Path, path: Path, value: object) -> HeadRecord:
    """The ``hierarchy_head`` record, checked (its file inside the collection, its kinds known)."""
    value = _mapping(path, "hierarchy_head", value)
    collection_file(root, value.get("file"), "hierarchy_head.file")
    if not isinstance(value.get("fingerprint"), str) or not value.get("fingerprint"):
        raise _bad(path, "hierarchy_head.fingerprint", value.get("fingerprint"), "a non-empty string")
    kinds = value.get("kinds")
    if not isinstance(kinds, list) or not kinds or any(k not in PAIR_KINDS for k in kinds):
        raise _bad(path, "hierarchy_head.kinds", kinds, f"a non-empty list of {list(PAIR_KINDS)}")
    fitted_on = _mapping(path, "hierarchy_head.fitted_on", value.get("fitted_on", {}))
    return HeadRecord(file=value["file"], fingerprint=value["fingerprint"], kinds=tuple(kinds),
                      fitted_on=dict(fitted_on))


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


def _json_object(path: Path, what: str) -> dict:
    """The JSON object in ``path``; ``InputError`` naming the file (and ``what`` it is) when it is not one."""
    try:
        record = json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError, RecursionError) as err:
        raise InputError(f"{path} ({what}) is not valid JSON ({err}); give --overwrite to embed the collection "
                         "again from the start") from err
    if not isinstance(record, dict):
        raise InputError(f"{path} ({what}) holds a {type(record).__name__}, not an object; give --overwrite to embed "
                         "the collection again from the start")
    return record


def read_job_file(path: str | Path, what: str) -> JobRecord:
    """The job record in ``path`` (``.progress/job.json``); ``InputError`` suggesting ``--overwrite`` when the file
    is not a JSON object."""
    return JobRecord.from_dict(_json_object(Path(path), what))


def read_manifest_job(root: str | Path) -> tuple[JobRecord | None, str | None]:
    """The job recorded in ``root/manifest.json``, read tolerantly: only its ``job`` field is looked at.

    Returns ``(None, None)`` when there is no manifest (no finished collection), ``(job, None)`` when it records
    one, and ``(None, reason)`` when it records none (its ``job`` is missing or not an object). A manifest that is
    not a JSON object is an ``InputError`` suggesting ``--overwrite``.
    """
    path = Path(root) / MANIFEST_NAME
    if not path.is_file():
        return None, None
    job = _json_object(path, "the collection's manifest").get("job")
    if isinstance(job, dict):
        return JobRecord.from_dict(job), None
    found = "missing" if job is None else f"a {type(job).__name__}, not an object"
    return None, f"{path} records no embedding job (its \"job\" is {found})"
