"""A pool of image-text pairs: webdataset shards, listed sample by sample with the one tar reader.

A pool is a ``.tar`` shard or a folder of them (the layouts ``probclip embed`` reads; image members stay unread).
Each sample has a ``key`` (its members' common name) and, when the pool has them, a ``uid`` as DataComp's pools
do: the ``uid`` field of the sample's ``.json`` member, else the ``uid`` of its ``key`` in the ``.parquet`` beside
the shard (``00000000.tar`` -> ``00000000.parquet``, columns ``key`` and ``uid``).
"""

from __future__ import annotations

import json
import os
import tarfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pyarrow.parquet as pq

from ..data.webdataset import iter_tar_records
from ..errors import InputError, UsageError
from ..eval.readers import SHARD_IMAGE_KEYS

__all__ = ["PoolSample", "check_unchanged", "iter_pool_samples", "pool_shards", "shard_record", "side_uids"]


@dataclass(frozen=True)
class PoolSample:
    """One sample of a shard: its key, its uid (None when the pool has none) and whether it has an image."""

    key: str
    uid: str | None
    has_image: bool


def pool_shards(data: str | Path) -> list[Path]:
    """The shards of a pool, in the order ``probclip embed`` reads them (a ``.tar``, or a folder's ``*.tar``
    sorted by name)."""
    path = Path(data)
    if not path.exists():
        raise InputError(f"--data {str(path)!r} does not exist; expected a webdataset .tar shard or a folder of them")
    if path.is_dir():
        shards = sorted(path.glob("*.tar"))
        if not shards:
            raise InputError(f"--data {str(path)!r} holds no .tar shard; curation reads webdataset shards "
                             "(<key>.jpg / .png with <key>.txt and/or <key>.json)")
        return shards
    if path.suffix.lower() != ".tar":
        raise UsageError(f"--data {str(path)!r} is not a webdataset .tar shard or a folder of them")
    return [path]


def shard_record(shard: Path) -> dict:
    """How a source shard is recorded in a scores folder (to notice a shard changed since it was scored)."""
    stat = shard.stat()
    return {"path": str(shard.resolve()), "size": stat.st_size, "mtime_ns": stat.st_mtime_ns}


def side_uids(shard: Path) -> dict[str, str]:
    """``{key: uid}`` from the ``.parquet`` beside ``shard`` (empty when there is none or it has no uid)."""
    side = shard.with_suffix(".parquet")
    if not side.is_file():
        return {}
    try:
        schema = pq.read_schema(side)
        if "key" not in schema.names or "uid" not in schema.names:
            return {}
        table = pq.read_table(side, columns=["key", "uid"])
    except (OSError, ValueError) as err:
        raise InputError(f"cannot read the metadata {side} beside shard {shard.name}: {err}") from err
    return {str(k): str(u) for k, u in zip(table.column("key").to_pylist(), table.column("uid").to_pylist(),
                                            strict=True) if k is not None and u is not None}


def _json_uid(record: dict) -> str | None:
    payload = record.get("json")
    if not isinstance(payload, bytes):
        return None
    try:
        meta = json.loads(payload.decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError):
        return None
    uid = meta.get("uid") if isinstance(meta, dict) else None
    return None if uid is None else str(uid)


def iter_pool_samples(shard: Path) -> Iterator[PoolSample]:
    """The samples of one shard in shard order, read by the one tar reader (image members unread)."""
    uids = side_uids(shard)
    try:
        for record in iter_tar_records(str(shard), unread=SHARD_IMAGE_KEYS):
            key = record["__key__"]
            uid = _json_uid(record) or uids.get(key)
            yield PoolSample(key, uid, any(e in record for e in SHARD_IMAGE_KEYS))
    except (tarfile.TarError, OSError) as err:
        if isinstance(err, InputError):
            raise
        raise InputError(f"cannot read webdataset shard {shard}: {err}") from err


def check_unchanged(recorded: dict) -> Path:
    """The path of a recorded source shard; ``InputError`` if it is gone or changed since it was scored."""
    path = Path(recorded["path"])
    if not path.is_file():
        raise InputError(f"source shard {path} is gone since it was scored; score the pool again")
    stat = os.stat(path)
    if (stat.st_size, stat.st_mtime_ns) != (recorded["size"], recorded["mtime_ns"]):
        raise InputError(f"source shard {path} changed since it was scored (size or time differs); score the pool "
                         "again")
    return path
