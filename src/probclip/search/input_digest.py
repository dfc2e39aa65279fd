"""The fingerprint of what a collection was embedded from: one 64-bit digest per input row, and their hash.

An image row's digest covers its key (file path, or ``<shard.tar>::<key>``), its caption, its place in a shard
(offset and size of the member) and the size and modification time (nanoseconds) of the file it is read from;
a text row's digest covers its caption and the image it came with. Sizes and modification times are used for
image files rather than a hash of their bytes because hashing would read the whole data set once more before the
first row is embedded (a day for a large folder on network storage), while one ``stat`` per file is cheap; any
write to a file changes its modification time, so only a deliberate reset of both (``touch -d``) goes unseen.
Captions are compared by content: they are in memory anyway.

``collection/inputs/<modality>.npy`` keeps the digests (uint64 ``[inputs]``), so that a refused re-run can name the
first row that changed; ``manifest.json`` and the job record keep the fingerprint (the hash of all digests).
"""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

import numpy as np

from .inputs import CollectionInputs, image_source

__all__ = ["INPUTS_DIR", "METHOD", "describe_change", "digests_path", "fingerprint", "input_digests",
           "read_digests", "write_digests"]

INPUTS_DIR = "inputs"
METHOD = "per row: key, caption, shard offset and size, file size and mtime_ns (images); caption and source (texts)"


def _digest(*parts: object) -> int:
    text = "\0".join(str(p) for p in parts).encode("utf-8", "surrogateescape")
    return int.from_bytes(hashlib.blake2b(text, digest_size=8).digest(), "little")


def _file_state(path: Path, cache: dict) -> str:
    key = str(path)
    if key not in cache:
        try:
            stat = os.stat(path)
            cache[key] = f"{stat.st_size}:{stat.st_mtime_ns}"
        except OSError as err:  # skipped (and named) when embedded; its absence is part of the fingerprint
            cache[key] = f"unreadable:{type(err).__name__}"
    return cache[key]


def input_digests(inputs: CollectionInputs, modalities: tuple[str, ...]) -> dict[str, np.ndarray]:
    """``{modality: uint64 [rows]}``: the digest of every input row of the given modalities (see the module
    docstring); one ``stat`` per distinct file."""
    out = {}
    if "image" in modalities:
        cache: dict = {}
        out["image"] = np.array([_digest(image_source(item), caption, item.offset, item.size,
                                         _file_state(item.path, cache))
                                 for item, caption in zip(inputs.images, inputs.image_captions, strict=True)],
                                dtype=np.uint64)
    if "text" in modalities:
        out["text"] = np.array([_digest(t.text, t.source) for t in inputs.texts], dtype=np.uint64)
    return out


def fingerprint(digests: dict[str, np.ndarray]) -> str:
    """First 16 hex digits of the SHA-256 of every modality's digests (in modality order)."""
    total = hashlib.sha256()
    for modality in sorted(digests):
        total.update(f"{modality}:{digests[modality].size}:".encode())
        total.update(np.ascontiguousarray(digests[modality], dtype="<u8").tobytes())
    return total.hexdigest()[:16]


def digests_path(out: Path, modality: str) -> Path:
    """``out/inputs/<modality>.npy``."""
    return Path(out) / INPUTS_DIR / f"{modality}.npy"


def write_digests(out: Path, digests: dict[str, np.ndarray]) -> None:
    """Write each modality's digests to ``out/inputs/<modality>.npy`` (through a temporary file and a rename)."""
    for modality, values in digests.items():
        path = digests_path(out, modality)
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(path.name + ".tmp")
        with open(tmp, "wb") as handle:
            np.save(handle, values)
        os.replace(tmp, path)


def read_digests(out: Path, modality: str) -> np.ndarray | None:
    """The digests kept in ``out/inputs/<modality>.npy``, or None when missing or unreadable."""
    try:
        values = np.load(digests_path(out, modality), allow_pickle=False)
    except (OSError, ValueError, EOFError):
        return None
    return values if values.dtype == np.uint64 and values.ndim == 1 else None


def describe_change(out: Path, digests: dict[str, np.ndarray], inputs: CollectionInputs) -> str:
    """What differs between the inputs listed now and those the collection at ``out`` was embedded from: the row
    counts, or the first row that changed (named by its source or caption); a general phrase when ``out`` keeps no
    digests."""
    for modality, now in digests.items():
        before = read_digests(out, modality)
        if before is None:
            continue
        if before.size != now.size:
            return f"the data now lists {now.size} {modality} rows, {before.size} when the collection was embedded"
        changed = np.nonzero(before != now)[0]
        if changed.size:
            row = int(changed[0])
            what = (image_source(inputs.images[row]) if modality == "image" else repr(inputs.texts[row].text[:80]))
            detail = ("its file's size or modification time, or its caption" if modality == "image"
                      else "its caption or source")
            return f"{modality} row {row} ({what}) changed since the collection was embedded ({detail}), " \
                   f"{changed.size} row(s) in all"
    return "the inputs' fingerprint differs (the files listed, their sizes or modification times, or the captions)"
