"""What ``probclip embed`` reads: the images and texts of a data path, listed without opening any image.

Layouts (the same as the evaluation readers', read by the same listing readers, ``probclip.data.listings``, with
the same checks: a malformed entry, a missing column or a non-UTF-8 file is a one-line data error). A listed image
that is missing or unreadable is skipped later, when it is decoded, and named in the manifest. A caption longer
than ``max_caption_chars`` is left out and named in a warning; caption files are read within ``max_member_bytes``
(``photo.txt``) or ``max_text_file_bytes`` (a listing).

- a folder of images (searched recursively; ``photo.jpg`` takes its caption from ``photo.txt`` when present);
- a CSV/TSV file with an image column (``image`` / ``filepath``) and a caption column (``caption`` / ``title``),
  paths relative to the file's folder (or ``image_root``);
- a Karpathy split JSON (``images[*].{filepath?, filename, split, sentences[*].raw}``; every split unless one is
  named);
- webdataset shards (a ``.tar`` file or a folder of them), read by training's tar reader: ``<key>.<jpg|png|...>``
  with ``<key>.txt`` (one caption a line) and/or ``<key>.json`` (a list of captions, or an object with
  ``captions`` / ``caption`` / ``text``);
- a ``.txt`` file with one caption per line (texts only).

The image rows are the distinct images in input order (caption: the first caption of the image); the text rows are
the distinct captions in input order (source: the first image they describe, if any).
"""

from __future__ import annotations

import json
import tarfile
import warnings
from dataclasses import dataclass, field
from pathlib import Path

from ..data.captions import CaptionError, parse_caption_payload
from ..data.listings import (
    IMAGE_EXTENSIONS,
    SHARD_IMAGE_KEYS,
    ImageItem,
    read_caption_lines,
    read_caption_table,
    read_karpathy_entries,
)
from ..data.webdataset import ShardError, check_shard_numbering, iter_tar_records
from ..errors import InputError, UsageError
from ..limits import LimitExceededError, check_caption_length, current_limits, read_bounded
from ..terminal import printable

__all__ = ["CollectionInputs", "TextInput", "list_inputs", "image_source"]


@dataclass(frozen=True)
class TextInput:
    """One caption to embed and the image it came with (``source``, empty when none)."""

    text: str
    source: str = ""


@dataclass
class CollectionInputs:
    """The images (``ImageItem`` with their captions) and texts of a data path."""

    images: list[ImageItem] = field(default_factory=list)
    image_captions: list[str | None] = field(default_factory=list)
    texts: list[TextInput] = field(default_factory=list)
    #: captions left out for their length: ``{"source": image or file, "error": message}``
    skipped_captions: list[dict] = field(default_factory=list)


def image_source(item: ImageItem) -> str:
    """The ``source`` string stored for an image: its file path, or ``<shard.tar>::<key>`` for a shard member."""
    return item.key


def _add(out: CollectionInputs, seen_images: dict, seen_texts: set, item: ImageItem | None, captions: list[str],
         where: str = ""):
    if item is not None:
        try:
            item.key.encode("utf-8")
        except UnicodeEncodeError as err:
            raise InputError(f"the file name '{printable(item.key)}' is not valid UTF-8 (a byte that is not is shown "
                             "as \\udcXX); a collection stores names as UTF-8 text: rename the file") from err
    kept = []
    for caption in captions:
        try:
            check_caption_length(caption, f"{item.key if item is not None else where} caption")
        except LimitExceededError as err:
            out.skipped_captions.append({"source": item.key if item is not None else where, "error": str(err)})
            continue
        kept.append(caption)
    if item is not None and item.key not in seen_images:
        seen_images[item.key] = len(out.images)
        out.images.append(item)
        out.image_captions.append(kept[0] if kept else None)
    for caption in kept:
        if caption and caption not in seen_texts:
            seen_texts.add(caption)
            out.texts.append(TextInput(caption, item.key if item is not None else ""))


def _file_item(path: Path) -> ImageItem:
    return ImageItem(key=str(path.resolve()), path=path)


def _side_captions(path: Path) -> list[str]:
    """The captions of ``photo.txt`` beside ``photo.jpg`` (one a line; read within ``max_member_bytes``, bytes that
    are not UTF-8 replaced)."""
    side = path.with_suffix(".txt")
    if not side.is_file():
        return []
    text = read_bounded(side, current_limits().max_member_bytes, "data.max_member_bytes").decode("utf-8", "replace")
    return [line.strip() for line in text.splitlines() if line.strip()]


def _list_folder(root: Path, out, seen_images, seen_texts) -> None:
    for path in sorted(p for p in root.rglob("*") if p.suffix.lower() in IMAGE_EXTENSIONS and p.is_file()):
        _add(out, seen_images, seen_texts, _file_item(path), _side_captions(path))


def _list_csv(path: Path, image_root: Path, out, seen_images, seen_texts) -> None:
    rows = read_caption_table(path)
    if not rows:
        raise InputError(f"{path} has a header but no data rows")
    for row in rows:
        item = _file_item(image_root / row.image) if row.image else None
        _add(out, seen_images, seen_texts, item, [row.caption] if row.caption else [], f"{path} line {row.line}")


def _list_karpathy(path: Path, image_root: Path, split: str | None, out, seen_images, seen_texts) -> None:
    for entry in read_karpathy_entries(path):
        if split is not None and entry.split != split:
            continue
        _add(out, seen_images, seen_texts, _file_item(image_root / entry.relative_path),
             [c for c in entry.captions if c])


def _member_captions(record: dict, ext: str) -> list[str]:
    """Captions of a ``txt`` (one a line) or ``json`` member, parsed by training's caption parser; a member that
    holds none is named in a warning and gives none."""
    try:
        return parse_caption_payload(ext, record[ext], separator="\n" if ext == "txt" else None)
    except (CaptionError, UnicodeDecodeError, json.JSONDecodeError) as err:
        warnings.warn(f"{record['__url__']}:{record['__key__']}.{ext}: no caption read ({err})", RuntimeWarning,
                      stacklevel=2)
        return []


def _list_shards(shards: list[Path], out, seen_images, seen_texts) -> None:
    """Samples as training's tar reader groups them; image members stay unread (read when embedded, where one
    that cannot be read or exceeds ``data.max_member_bytes`` is skipped and named in the manifest)."""
    for shard in shards:
        try:
            for record in iter_tar_records(str(shard), unread=SHARD_IMAGE_KEYS):
                image = next((e for e in SHARD_IMAGE_KEYS if e in record), None)
                for message in record.get("__too_large__", []):  # an over-limit image is named when embedded
                    if image is None or f"{record['__key__']}.{image}: " not in message:
                        warnings.warn(f"{message}; skipped", RuntimeWarning, stacklevel=2)
                captions = []  # the .txt caption first (img2dataset's caption: the image row's), then the .json ones
                for ext in ("txt", "json"):
                    if ext in record:
                        captions += [c for c in _member_captions(record, ext) if c not in captions]
                item = None
                if image is not None:
                    span = record[image]
                    item = ImageItem(f"{shard.resolve()}::{record['__key__']}", shard, span.offset, span.size)
                _add(out, seen_images, seen_texts, item, captions)
        except ShardError:
            raise
        except (tarfile.TarError, OSError) as err:
            raise InputError(f"cannot read webdataset shard {shard}: {err}") from err


def list_inputs(data: str | Path, *, image_root: str | Path | None = None,
                split: str | None = None) -> CollectionInputs:
    """List the images and captions of ``data`` (see the module docstring for the layouts)."""
    path = Path(data)
    if not path.exists():
        raise InputError(f"--data {str(path)!r} does not exist; expected an image folder, a .csv/.tsv, a Karpathy "
                         ".json, webdataset .tar shards or a .txt file of captions")
    out, seen_images, seen_texts = CollectionInputs(), {}, set()
    root = Path(image_root) if image_root is not None else path.parent
    suffix = path.suffix.lower()
    if path.is_dir():
        shards = sorted(path.glob("*.tar"))
        check_shard_numbering(shards)
        if shards:
            _list_shards(shards, out, seen_images, seen_texts)
        else:
            _list_folder(path, out, seen_images, seen_texts)
    elif suffix == ".tar":
        _list_shards([path], out, seen_images, seen_texts)
    elif suffix in (".csv", ".tsv"):
        _list_csv(path, root, out, seen_images, seen_texts)
    elif suffix == ".json":
        _list_karpathy(path, root, split, out, seen_images, seen_texts)
    elif suffix == ".txt":
        _add(out, seen_images, seen_texts, None, read_caption_lines(path), str(path))
    else:
        raise UsageError(f"cannot tell the layout of --data {str(path)!r}: expected an image folder, a .csv/.tsv, a "
                         "Karpathy .json, webdataset .tar shards (or a folder of them) or a .txt file of captions")
    if out.skipped_captions:
        first = out.skipped_captions[0]["error"]
        warnings.warn(f"{len(out.skipped_captions)} caption(s) over max_caption_chars left out (first: {first})",
                      RuntimeWarning, stacklevel=2)
    if not out.images and not out.texts:
        raise InputError(f"--data {str(path)!r} holds no image and no caption")
    return out
