"""Webdataset shards as img2dataset writes them: tar files whose members ``<key>.<ext>`` group into samples.

A sample needs one image member (``jpg``/``jpeg``/``png``/``webp`` by default) and one caption member
(``txt`` or ``json``); other members (``json`` metadata when ``txt`` is present, ``.parquet`` side files) are
ignored. Shards are opened with ``webdataset.gopen`` so local paths, ``pipe:`` commands and URLs work.
"""

from __future__ import annotations

import os
import random
import tarfile
from collections.abc import Iterator, Sequence

import braceexpand

from ..errors import InputError
from ..limits import LimitExceededError, check_member_size
from .captions import CaptionError, captions_from_payload
from .samples import READ_ERRORS, SampleError, decode_image_bytes

__all__ = [
    "ShardError",
    "expand_shard_urls",
    "check_local_shards",
    "iter_tar_records",
    "record_to_sample",
    "split_member_name",
    "shuffled",
]


class ShardError(InputError, FileNotFoundError):
    """A shard is missing or holds no sample (the message names it)."""


def expand_shard_urls(paths: Sequence[str]) -> list[str]:
    """Expand brace patterns (``data/{000..009}.tar``) and ``::``-joined lists into a flat list of shard URLs."""
    urls: list[str] = []
    for path in paths:
        for part in str(path).split("::"):
            urls.extend(braceexpand.braceexpand(part.strip()))
    if not urls:
        raise ShardError(f"no shard URLs in {list(paths)!r}")
    return urls


def _is_local(url: str) -> bool:
    return not (url.startswith("pipe:") or "://" in url) or url.startswith("file://")


def _local_path(url: str) -> str:
    return url[len("file://"):] if url.startswith("file://") else url


def check_local_shards(urls: Sequence[str], image_keys: Sequence[str], caption_keys: Sequence[str]) -> None:
    """Raise ``ShardError`` naming the first missing local shard, or the shards if none holds a usable sample.

    Remote shards (``pipe:``, ``http://``...) are not checked here. For local shards the first shard is opened
    and must contain at least one member with an image and a caption extension.
    """
    local = [_local_path(u) for u in urls if _is_local(u)]
    missing = [u for u in local if not os.path.isfile(u)]
    if missing:
        more = f" (and {len(missing) - 1} more)" if len(missing) > 1 else ""
        raise ShardError(f"shard not found: {missing[0]}{more}")
    checked = local[:8]
    for path in checked:
        try:
            for record in iter_tar_records(path):
                if _first_key(record, image_keys) and _first_key(record, caption_keys):
                    return
        except (OSError, tarfile.TarError):
            continue
    if checked:
        raise ShardError(
            f"no sample with an image ({list(image_keys)}) and a caption ({list(caption_keys)}) in "
            f"{'shard ' + checked[0] if len(checked) == 1 else f'the first {len(checked)} shards ({checked[0]}, ...)'}"
            ": "
            "the dataset is empty or unreadable"
        )


def split_member_name(name: str) -> tuple[str, str]:
    """``dir/000123.jpg`` -> (``dir/000123``, ``jpg``); the extension is everything after the first dot of the base."""
    directory, base = os.path.split(name)
    if "." not in base:
        return name, ""
    stem, extension = base.split(".", 1)
    return os.path.join(directory, stem), extension.lower()


class _CountingReader:
    """A binary stream that counts the bytes read through it."""

    def __init__(self, raw):
        self.raw, self.count = raw, 0

    def read(self, size: int = -1) -> bytes:
        data = self.raw.read(size)
        self.count += len(data)
        return data

    def close(self) -> None:
        self.raw.close()


def iter_tar_records(url: str) -> Iterator[dict]:
    """Stream the samples of one tar shard: ``{"__key__": key, "__url__": url, ext: bytes, ...}``.

    Consecutive members with the same key form one record. Raises ``OSError``/``tarfile.TarError`` if the
    shard itself cannot be read (callers count and skip it); the records read before the break are yielded
    first. An uncompressed shard must end with tar's end-of-archive block: one cut short at a member boundary
    (which ``tarfile`` alone takes for the end) raises ``tarfile.ReadError`` after its complete records.
    """
    import webdataset  # heavy; only reading shards needs it

    raw = webdataset.gopen(url, "rb") if not _is_local(url) else open(_local_path(url), "rb")
    stream = _CountingReader(raw)
    current: dict | None = None
    try:
        with tarfile.open(fileobj=stream, mode="r|*") as archive:
            for member in archive:
                if not member.isfile():
                    continue
                key, extension = split_member_name(member.name)
                if key.startswith("__") or not extension:
                    continue
                too_large = None
                try:
                    check_member_size(member.size, f"{url}:{member.name}")
                    handle = archive.extractfile(member)
                    payload = handle.read() if handle is not None else b""
                except LimitExceededError as err:  # not read: the decoder skips, counts and names the sample
                    too_large, payload = str(err), b""
                if current is not None and current["__key__"] != key:
                    yield current
                    current = None
                if current is None:
                    current = {"__key__": key, "__url__": url}
                if too_large is not None:
                    current.setdefault("__too_large__", []).append(too_large)
                else:
                    current[extension] = payload
            end = archive.offset  # where the end-of-archive block starts (or where the data stopped)
            uncompressed = getattr(archive.fileobj, "comptype", "tar") == "tar"
        while stream.read(1 << 16):
            pass
        if uncompressed and stream.count - end < tarfile.BLOCKSIZE:
            raise tarfile.ReadError(
                f"{url} stops after {end} bytes without tar's end-of-archive block: the shard is cut short"
            )
    except (OSError, tarfile.TarError):
        if current is not None:
            yield current  # a partial record is rejected (and counted) by the decoder
            current = None
        raise
    finally:
        stream.close()
    if current is not None:
        yield current


def _first_key(record: dict, keys: Sequence[str]) -> str | None:
    for key in keys:
        if key in record:
            return key
    return None


def record_to_sample(record: dict, image_keys: Sequence[str], caption_keys: Sequence[str],
                     caption_separator: str | None = None):
    """A tar record -> ``(PIL image, captions)``; raises ``SampleError`` naming the shard and key if unusable."""
    if "__bad_shard__" in record:
        raise SampleError(record["__bad_shard__"])
    if "__too_large__" in record:
        raise SampleError("; ".join(record["__too_large__"]))
    name = f"{record.get('__url__', '?')}:{record.get('__key__', '?')}"
    image_key = _first_key(record, image_keys)
    caption_key = _first_key(record, caption_keys)
    if image_key is None:
        raise SampleError(
            f"{name}: no image member (looked for {list(image_keys)}; "
            f"found {sorted(k for k in record if not k.startswith('__'))})"
        )
    if caption_key is None:
        raise SampleError(f"{name}: no caption member (looked for {list(caption_keys)})")
    image = decode_image_bytes(record[image_key], f"{name}.{image_key}")
    try:
        captions = captions_from_payload(caption_key, record[caption_key], caption_separator)
    except (CaptionError, *READ_ERRORS) as err:
        raise SampleError(f"{name}.{caption_key}: {err}") from err
    return image, captions


def shuffled(items: Iterator, buffer_size: int, rng: random.Random) -> Iterator:
    """Stream ``items`` through a shuffle buffer of ``buffer_size`` (0 or 1: unchanged order), drawing with ``rng``."""
    if buffer_size <= 1:
        yield from items
        return
    buffer: list = []
    for item in items:
        if len(buffer) < buffer_size:
            buffer.append(item)
            continue
        index = rng.randrange(buffer_size)
        yield buffer[index]
        buffer[index] = item
    rng.shuffle(buffer)
    yield from buffer


def shard_stream(urls: Sequence[str], resample: bool, seed: int, slot: int, num_slots: int) -> Iterator[str]:
    """The endless sequence of shard URLs read by one reader slot (a rank x worker pair).

    ``resample``: shards drawn with replacement by a generator seeded with ``(seed, slot)``. Otherwise each epoch
    shuffles the list with ``(seed, epoch)`` and slot ``s`` reads every ``num_slots``-th shard from ``s``.
    """
    if resample:
        rng = random.Random(seed * 1_000_003 + slot)
        while True:
            yield urls[rng.randrange(len(urls))]
    epoch = 0
    while True:
        order = list(urls)
        random.Random(seed * 1_000_003 + epoch).shuffle(order)
        yield from order[slot::num_slots]
        epoch += 1

