"""Listing files of image-caption data sets, read and checked once for evaluation and ``probclip embed`` alike.

Nothing here opens an image: the listings name images (:class:`ImageItem`, decoded later by
``probclip.image_decoding``) and their captions. Layouts:

- a Karpathy split JSON (COCO, Flickr30k): ``images[*].{filepath?, filename, split?, sentences[*].{raw, id?},
  cocoid?}`` (:func:`read_karpathy_entries`);
- a caption table, CSV or TSV with a header: an image column (``image`` or ``filepath``), a caption column
  (``caption`` or ``title``), optional integer ``image_id`` and ``caption_id`` columns; one row per caption
  (:func:`read_caption_table`);
- a ``.txt`` file of captions, one a line (:func:`read_caption_lines`).

Every file is read within ``max_text_file_bytes`` (``probclip.limits``) as UTF-8 (``probclip.textfiles``), and a
malformed entry is a :class:`ListingError` naming the file and the entry: what the caller does with a listed image
that is missing (evaluation refuses it, embed skips and names it) is the caller's choice.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from ..errors import InputError
from ..image_decoding import decode_image
from ..limits import check_member_size, current_limits, read_bounded
from ..textfiles import read_csv_table, read_json_file, read_text_file
from .webdataset import MemberSpan

__all__ = ["IMAGE_EXTENSIONS", "SHARD_IMAGE_KEYS", "ImageItem", "ListingError", "KarpathyImage", "CaptionRow",
           "read_karpathy_entries", "read_caption_table", "read_caption_lines"]

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".webp", ".bmp")
SHARD_IMAGE_KEYS = ("jpg", "jpeg", "png", "webp", "bmp")
IMAGE_COLUMNS = ("image", "filepath")
CAPTION_COLUMNS = ("caption", "title")


class ListingError(InputError, ValueError):
    """A listing file holds a malformed entry or lacks a column (the message names the file and the entry)."""


@dataclass(frozen=True)
class ImageItem:
    """One image on disk: a plain file (``offset is None``) or a member of an uncompressed tar shard.

    ``key`` identifies the sample in its data set (file path, or ``<shard>::<member key>``).
    """

    key: str
    path: Path
    offset: int | None = None
    size: int | None = None

    def read_bytes(self) -> bytes:
        """The encoded image file (JPEG/PNG/...) as bytes (a member over ``max_member_bytes`` is refused)."""
        if self.offset is None:
            return read_bounded(self.path, current_limits().max_member_bytes, "data.max_member_bytes")
        check_member_size(self.size, self.key)
        return MemberSpan(self.offset, self.size).read(self.path)

    def open(self):
        """The image as an upright RGB ``PIL.Image``, decoded like training images (``probclip.image_decoding``).

        Raises ``ImageLoadError`` / ``LimitExceededError`` naming the item when it cannot or may not be decoded.
        """
        return decode_image(self.read_bytes() if self.offset is not None else self.path, self.key)

    def check(self) -> None:
        """Decode the image (at reduced scale where the format allows) and raise like :meth:`open` if it fails."""
        decode_image(self.read_bytes() if self.offset is not None else self.path, self.key, draft=(64, 64))


@dataclass(frozen=True)
class KarpathyImage:
    """One entry of a Karpathy split JSON: the image's path relative to the image root, its split, its captions
    (stripped; ``caption_ids`` from the sentences' ``id`` fields, None where absent) and its ``cocoid``."""

    relative_path: str
    split: str | None
    captions: tuple[str, ...]
    caption_ids: tuple[int | None, ...]
    cocoid: int | None


@dataclass(frozen=True)
class CaptionRow:
    """One row of a caption table: the image cell (relative path, may be empty), the caption (may be empty) and the
    optional integer ids. ``line`` is the row's number in the file (the header is line 1)."""

    image: str
    caption: str
    image_id: int | None
    caption_id: int | None
    line: int


def _entry_error(path: Path, number: int, entry, problem: str) -> ListingError:
    return ListingError(f"{path}: images[{number}] {problem}; each entry needs a 'filename' string and a 'sentences' "
                        f"list of {{'raw': caption}} objects; got {str(entry)[:120]}")


def read_karpathy_entries(path: str | Path) -> list[KarpathyImage]:
    """Every entry of a Karpathy split JSON, checked; raises ``ListingError`` naming the first malformed one."""
    path = Path(path)
    data = read_json_file(path)
    if not isinstance(data, dict) or not isinstance(data.get("images"), list):
        raise ListingError(f"{path} is not a Karpathy split JSON: expected an object with an 'images' list")
    entries = []
    for number, entry in enumerate(data["images"]):
        if not isinstance(entry, dict):
            raise _entry_error(path, number, entry, "is not an object")
        if not isinstance(entry.get("filename"), str) or not entry["filename"].strip():
            raise _entry_error(path, number, entry, "has no 'filename' string")
        if not isinstance(entry.get("filepath", ""), str):
            raise _entry_error(path, number, entry, "has a 'filepath' that is not a string")
        split = entry.get("split")
        if split is not None and not isinstance(split, str):
            raise _entry_error(path, number, entry, "has a 'split' that is not a string")
        sentences = entry.get("sentences")
        if not isinstance(sentences, list) or not all(isinstance(s, dict) and isinstance(s.get("raw"), str)
                                                      for s in sentences):
            raise _entry_error(path, number, entry, "has no 'sentences' list of {'raw': caption} objects")
        ids = tuple(s.get("id") if isinstance(s.get("id"), int) and not isinstance(s.get("id"), bool) else None
                    for s in sentences)
        cocoid = entry.get("cocoid")
        cocoid = cocoid if isinstance(cocoid, int) and not isinstance(cocoid, bool) else None
        relative = str(Path(entry.get("filepath", "")) / entry["filename"])
        entries.append(KarpathyImage(relative, split, tuple(s["raw"].strip() for s in sentences), ids, cocoid))
    return entries


def _pick_column(header: list[str], options: tuple[str, ...], path: Path) -> str:
    for name in options:
        if name in header:
            return name
    raise ListingError(f"{path} needs one of the columns {list(options)}; its header is {header}")


def _int_cell(row: dict, column: str, path: Path, line: int) -> int | None:
    value = (row.get(column) or "").strip()
    if not value:
        return None
    try:
        return int(value)
    except ValueError as err:
        raise ListingError(f"{path} line {line}: column {column!r} must hold integers; got {value[:60]!r}") from err


def read_caption_table(path: str | Path) -> list[CaptionRow]:
    """The rows of a caption table (CSV, or TSV when the header holds a tab), checked: UTF-8, well quoted, no row
    longer than the header, the image and caption columns present, integer ids. Rows keep their order."""
    path = Path(path)
    header, table = read_csv_table(path)
    image_column = _pick_column(header, IMAGE_COLUMNS, path)
    caption_column = _pick_column(header, CAPTION_COLUMNS, path)
    rows = []
    for number, row in enumerate(table, 2):
        rows.append(CaptionRow((row.get(image_column) or "").strip(), (row.get(caption_column) or "").strip(),
                               _int_cell(row, "image_id", path, number), _int_cell(row, "caption_id", path, number),
                               number))
    return rows


def read_caption_lines(path: str | Path) -> list[str]:
    """The non-empty lines of a UTF-8 text file, stripped (a ``.txt`` of captions or a ``photo.txt`` beside an
    image), read within ``max_text_file_bytes``."""
    return [line.strip() for line in read_text_file(path).splitlines() if line.strip()]
