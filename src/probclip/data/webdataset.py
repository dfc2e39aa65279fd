"""Webdataset shards as img2dataset writes them: tar files whose members ``<key>.<ext>`` group into samples.

A sample needs one image member (``jpg``/``jpeg``/``png``/``webp`` by default) and one caption member
(``txt`` or ``json``); other members (``json`` metadata when ``txt`` is present, ``.parquet`` side files) are
ignored. Shards are opened with ``webdataset.gopen`` so local paths, ``pipe:`` commands and URLs work.

This is the one tar reader of probclip: training streams records from it (:func:`iter_shard_records`), and
evaluation and ``probclip embed`` list shards with it too, leaving image members unread and keeping their place in
the shard (:class:`MemberSpan`) to read them later. Which members form a sample, what is skipped (hidden
``__*`` members, members without an extension, members over ``data.max_member_bytes``, a shard that is unreadable
or cut short) and which members are the image and the caption (:func:`sample_member_keys`) is decided here.
"""

from __future__ import annotations

import io
import itertools
import os
import random
import re
import tarfile
from collections.abc import Collection, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import braceexpand

from ..errors import InputError
from ..limits import LimitExceededError, check_member_size, current_limits
from .captions import CaptionError, captions_from_payload
from .samples import READ_ERRORS, SampleError, decode_image_bytes

__all__ = [
    "BAD_SHARD_KEY",
    "MemberSpan",
    "ShardError",
    "check_shard_numbering",
    "expand_shard_urls",
    "check_local_shards",
    "iter_tar_records",
    "iter_shard_records",
    "sample_member_keys",
    "record_name",
    "record_to_sample",
    "split_member_name",
    "shuffled",
    "write_tar_member",
]


#: Key of the marker record standing for a shard that could not be read (decoding it raises ``SampleError``).
BAD_SHARD_KEY = "__bad_shard__"


class ShardError(InputError, FileNotFoundError):
    """A shard is missing or holds no sample (the message names it)."""


@dataclass(frozen=True)
class MemberSpan:
    """Where an unread member's bytes lie in an uncompressed local shard: ``size`` bytes from byte ``offset``."""

    offset: int
    size: int

    def read(self, path: str | os.PathLike) -> bytes:
        """The member's bytes, read from the shard file at ``path``."""
        with open(path, "rb") as handle:
            handle.seek(self.offset)
            return handle.read(self.size)


_NUMERIC_RANGE = re.compile(r"\{(-?\d+)\.\.(-?\d+)(?:\.\.(-?\d+))?\}")


def _numeric_range_product(pattern: str) -> int:
    """How many names the numeric ranges ``{a..b}`` / ``{a..b..step}`` of a brace pattern make together (an upper
    bound of its expansion's size when ranges are nested), computed without expanding anything."""
    count = 1
    for start, stop, step in _NUMERIC_RANGE.findall(pattern):
        count *= abs(int(stop) - int(start)) // max(1, abs(int(step or 1))) + 1
    return count


def expand_shard_urls(paths: Sequence[str]) -> list[str]:
    """Expand brace patterns (``data/{000..009}.tar``) and ``::``-joined lists into a flat list of shard URLs."""
    urls: list[str] = []
    limit = current_limits().max_shards
    for path in paths:
        for part in str(path).split("::"):
            # braceexpand builds each range in full: a pattern such as {0..9999999999} is counted, then refused
            named = _numeric_range_product(part)
            if named > limit:
                raise LimitExceededError(f"data.paths pattern {part.strip()[:200]!r} names {named} shards, over the "
                                         f"limit of {limit} (max_shards); not expanded")
            urls.extend(itertools.islice(braceexpand.braceexpand(part.strip()), limit + 1 - len(urls)))
            if len(urls) > limit:
                raise LimitExceededError(f"data.paths {str(list(paths))[:200]} names more than {limit} shards, the "
                                         "limit (max_shards); not expanded further")
    if not urls:
        raise ShardError(f"no shard URLs in {list(paths)!r}")
    return urls


def check_shard_numbering(shards: Sequence[os.PathLike | str], first: int | None = None) -> None:
    """Raise ``ShardError`` naming the missing shards when the numbered shards of a folder listing
    (``0.tar``, ``00007.tar``: names whose stem is a number) leave a gap between ``first`` (default: the lowest
    number present) and the highest one: a shard lost in a copy must not shrink a data set in silence."""
    numbers = sorted({int(Path(s).stem) for s in shards if Path(s).stem.isascii() and Path(s).stem.isdigit()})
    if not numbers:
        return
    start = numbers[0] if first is None else first
    missing = sorted(set(range(start, numbers[-1] + 1)) - set(numbers))
    if missing:
        folder = Path(shards[0]).parent
        width = len(Path(next(s for s in shards if Path(s).stem.isdigit())).stem)
        names = [f"{n:0{width}d}.tar" for n in missing[:5]]
        raise ShardError(f"{len(missing)} numbered shard(s) are missing from {str(folder)!r} (shards {start} to "
                         f"{numbers[-1]} expected), e.g. {names}; restore them, or list the shards to read in "
                         "nshards.txt or by a pattern")


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


def iter_tar_records(url: str, unread: Collection[str] = ()) -> Iterator[dict]:
    """Stream the samples of one tar shard: ``{"__key__": key, "__url__": url, ext: bytes, ...}``.

    Consecutive members with the same key form one record. Raises ``OSError``/``tarfile.TarError`` if the
    shard itself cannot be read (callers count and skip it); the records read before the break are yielded
    first. An uncompressed shard must end with tar's end-of-archive block: one cut short at a member boundary
    (which ``tarfile`` alone takes for the end) raises ``tarfile.ReadError`` after its complete records.

    ``unread``: extensions whose members are not read but recorded as a :class:`MemberSpan` (random access later;
    only an uncompressed local shard allows it, else ``ShardError``). A member that the file does not hold to its
    end breaks the shard off as reading it would. A member over ``data.max_member_bytes`` is not read and is named
    in the record's ``__too_large__`` list (an unread one keeps its span; reading it later is refused too).
    """
    import webdataset  # heavy; only reading shards needs it

    raw = webdataset.gopen(url, "rb") if not _is_local(url) else open(_local_path(url), "rb")
    stream = _CountingReader(raw)
    current: dict | None = None
    try:
        with tarfile.open(fileobj=stream, mode="r|*") as archive:
            uncompressed = getattr(archive.fileobj, "comptype", "tar") == "tar"
            file_size = _random_access_size(url, uncompressed) if unread else 0
            for member in archive:
                if not member.isfile():
                    continue
                key, extension = split_member_name(member.name)
                if key.startswith("__") or not extension:
                    continue
                too_large, payload = None, None
                if extension in unread:
                    if member.offset_data + member.size > file_size:
                        raise tarfile.ReadError(f"{url}:{member.name} is cut short: the shard ends inside it")
                    payload = MemberSpan(member.offset_data, member.size)
                try:
                    check_member_size(member.size, f"{url}:{member.name}")
                    if payload is None:
                        handle = archive.extractfile(member)
                        payload = handle.read() if handle is not None else b""
                except LimitExceededError as err:  # not read: the decoder skips, counts and names the sample
                    too_large = str(err)
                if current is not None and current["__key__"] != key:
                    yield current
                    current = None
                if current is None:
                    current = {"__key__": key, "__url__": url}
                if too_large is not None:
                    current.setdefault("__too_large__", []).append(too_large)
                if payload is not None:  # an unread member over the limit keeps its span (reading it is refused)
                    current[extension] = payload
            end = archive.offset  # where the end-of-archive block starts (or where the data stopped)
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


def _random_access_size(url: str, uncompressed: bool) -> int:
    if not (_is_local(url) and uncompressed):
        raise ShardError(f"{url}: reading members later needs an uncompressed local .tar shard; "
                         "this one is compressed or remote")
    return os.path.getsize(_local_path(url))


def iter_shard_records(url: str, unread: Collection[str] = ()) -> Iterator[dict]:
    """:func:`iter_tar_records`, with a shard that cannot be read (or breaks off) ending in one marker record
    ``{BAD_SHARD_KEY: message, "__url__": url}`` that :func:`sample_member_keys` rejects like a bad sample."""
    try:
        yield from iter_tar_records(url, unread)
    except ShardError:
        raise
    except (OSError, tarfile.TarError) as err:
        yield {BAD_SHARD_KEY: f"shard {url} unreadable: {type(err).__name__}: {err}", "__url__": url}


def _first_key(record: dict, keys: Sequence[str]) -> str | None:
    for key in keys:
        if key in record:
            return key
    return None


def record_name(record: dict) -> str:
    """``<shard url>:<key>``, the name of a record in messages."""
    return f"{record.get('__url__', '?')}:{record.get('__key__', '?')}"


def sample_member_keys(record: dict, image_keys: Sequence[str], caption_keys: Sequence[str]) -> tuple[str, str]:
    """The extensions of a record's image and caption members (the first present of each list).

    Raises ``SampleError`` naming the shard and key for a bad-shard marker, a member over the size limit, or a
    missing image or caption member: the sample is skipped.
    """
    if BAD_SHARD_KEY in record:
        raise SampleError(record[BAD_SHARD_KEY])
    if "__too_large__" in record:
        raise SampleError("; ".join(record["__too_large__"]))
    name = record_name(record)
    image_key = _first_key(record, image_keys)
    caption_key = _first_key(record, caption_keys)
    if image_key is None:
        raise SampleError(
            f"{name}: no image member (looked for {list(image_keys)}; "
            f"found {sorted(k for k in record if not k.startswith('__'))})"
        )
    if caption_key is None:
        raise SampleError(f"{name}: no caption member (looked for {list(caption_keys)})")
    return image_key, caption_key


def record_to_sample(record: dict, image_keys: Sequence[str], caption_keys: Sequence[str],
                     caption_separator: str | None = None):
    """A tar record -> ``(PIL image, captions)``; raises ``SampleError`` naming the shard and key if unusable."""
    image_key, caption_key = sample_member_keys(record, image_keys, caption_keys)
    name = record_name(record)
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


def write_tar_member(tar: tarfile.TarFile, name: str, payload: bytes) -> None:
    """Add ``payload`` to an open tar as ``name`` with a fixed mtime and mode, so that the same content always
    gives byte-identical shards (the synthetic world, the known-noise pool, resharded subsets)."""
    info = tarfile.TarInfo(name)
    info.size = len(payload)
    info.mtime = 0
    info.mode = 0o644
    tar.addfile(info, io.BytesIO(payload))
