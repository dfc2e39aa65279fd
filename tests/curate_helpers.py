"""Shared helpers of the curation tests: small pools written in DataComp's layout."""

from __future__ import annotations

import hashlib
import io
import json
import tarfile
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
from PIL import Image


def image(i: int) -> Image.Image:
    rng = np.random.default_rng(i)
    return Image.fromarray(rng.integers(0, 256, (20 + i % 7, 24, 3), dtype=np.uint8))


def jpeg(i: int) -> bytes:
    buffer = io.BytesIO()
    image(i).save(buffer, format="JPEG", quality=95)
    return buffer.getvalue()


def uid(i: int) -> str:
    """A DataComp-like uid: 32 hex digits (the md5 of the sample number)."""
    return hashlib.md5(str(i).encode()).hexdigest()


def _add(tar: tarfile.TarFile, name: str, payload: bytes) -> None:
    info = tarfile.TarInfo(name)
    info.size = len(payload)
    tar.addfile(info, io.BytesIO(payload))


def write_datacomp_pool(root: Path, shards: int = 3, per_shard: int = 6, *, uid_in_json: bool = True,
                        with_parquet: bool = True, special: bool = True) -> dict:
    """Shards ``root/0000000N.tar`` in DataComp's layout (``<key>.jpg``, ``<key>.txt``, ``<key>.json`` with ``uid``,
    ``key`` and ``caption``) with a ``.parquet`` beside each (``uid``, ``key``, ``text``, ``url``).

    ``special``: in shard 0, sample 1 has an image that cannot be decoded, sample 2 no image member and sample 3 no
    caption. Returns ``{"keys": all keys, "captions": {key: caption}, "uids": {key: uid}, "bad": {key: reason}}``.
    """
    root.mkdir(parents=True, exist_ok=True)
    info = {"keys": [], "captions": {}, "uids": {}, "bad": {}}
    for s in range(shards):
        rows = []
        with tarfile.open(root / f"{s:08d}.tar", "w", format=tarfile.USTAR_FORMAT) as tar:
            for j in range(per_shard):
                n = s * per_shard + j
                key = f"{s:05d}{j:04d}"
                caption = f"picture {n} of a {['red', 'green', 'blue'][n % 3]} thing"
                meta = {"key": key, "url": f"http://example.com/{n}.jpg", "caption": caption}
                if uid_in_json:
                    meta["uid"] = uid(n)
                kind = "ok" if not special or s != 0 else {1: "bad image", 2: "no image", 3: "no caption"}.get(j, "ok")
                if kind != "no image":
                    _add(tar, f"{key}.jpg", b"not a jpeg at all" if kind == "bad image" else jpeg(n))
                if kind == "no caption":
                    meta.pop("caption")
                else:
                    _add(tar, f"{key}.txt", caption.encode())
                _add(tar, f"{key}.json", json.dumps(meta).encode())
                info["keys"].append(key)
                info["captions"][key] = caption
                info["uids"][key] = uid(n)
                if kind != "ok":
                    info["bad"][key] = kind
                rows.append({"uid": uid(n), "key": key, "text": caption, "url": meta["url"]})
        if with_parquet:
            pq.write_table(pa.Table.from_pylist(rows), root / f"{s:08d}.parquet")
    return info


def file_digests(root: Path) -> dict[str, str]:
    """``{name: sha256}`` of every file under ``root`` (to show that nothing was modified)."""
    return {str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(root.rglob("*")) if p.is_file()}
