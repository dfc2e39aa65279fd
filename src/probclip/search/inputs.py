"""What ``probclip embed`` reads: the images and texts of a data path, listed without opening any image.

Layouts (the same as the evaluation readers', read leniently: a listed image that is missing or unreadable is
skipped later, when it is decoded, and named in the manifest; nothing is checked here but the listing itself):

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

import csv
import io
import json
import tarfile
import warnings
from dataclasses import dataclass, field
from pathlib import Path

from ..data.captions import CaptionError, parse_caption_payload
from ..data.webdataset import ShardError, check_shard_numbering, iter_tar_records
from ..errors import InputError, UsageError
from ..eval.readers import IMAGE_EXTENSIONS, SHARD_IMAGE_KEYS, ImageItem
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


def image_source(item: ImageItem) -> str:
    """The ``source`` string stored for an image: its file path, or ``<shard.tar>::<key>`` for a shard member."""
    return item.key


def _add(out: CollectionInputs, seen_images: dict, seen_texts: set, item: ImageItem | None, captions: list[str]):
    if item is not None:
        try:
            item.key.encode("utf-8")
        except UnicodeEncodeError as err:
            raise InputError(f"the file name '{printable(item.key)}' is not valid UTF-8 (a byte that is not is shown "
                             "as \\udcXX); a collection stores names as UTF-8 text: rename the file") from err
    if item is not None and item.key not in seen_images:
        seen_images[item.key] = len(out.images)
        out.images.append(item)
        out.image_captions.append(captions[0] if captions else None)
    for caption in captions:
        if caption and caption not in seen_texts:
            seen_texts.add(caption)
            out.texts.append(TextInput(caption, item.key if item is not None else ""))


def _file_item(path: Path) -> ImageItem:
    return ImageItem(key=str(path.resolve()), path=path)


def _list_folder(root: Path, out, seen_images, seen_texts) -> None:
    for path in sorted(p for p in root.rglob("*") if p.suffix.lower() in IMAGE_EXTENSIONS and p.is_file()):
        side = path.with_suffix(".txt")
        captions = [line.strip() for line in side.read_text(encoding="utf-8", errors="replace").splitlines()
                    if line.strip()] if side.is_file() else []
        _add(out, seen_images, seen_texts, _file_item(path), captions)


def _pick(header: list[str], options: tuple[str, ...], path: Path) -> str:
    for name in options:
        if name in header:
            return name
    raise InputError(f"{path} needs one of the columns {list(options)}; its header is {header}")


def _list_csv(path: Path, image_root: Path, out, seen_images, seen_texts) -> None:
    text = path.read_text(encoding="utf-8")
    lines = text.splitlines()
    if not lines:
        raise InputError(f"{path} is empty; expected a header with image and caption columns")
    dialect = csv.excel_tab if path.suffix.lower() == ".tsv" or "\t" in lines[0] else csv.excel
    reader = csv.DictReader(io.StringIO(text), dialect=dialect)
    header = list(reader.fieldnames or [])
    image_col = _pick(header, ("image", "filepath"), path)
    caption_col = _pick(header, ("caption", "title"), path)
    for row in reader:
        rel = (row.get(image_col) or "").strip()
        caption = (row.get(caption_col) or "").strip()
        _add(out, seen_images, seen_texts, _file_item(image_root / rel) if rel else None, [caption] if caption else [])


def _list_karpathy(path: Path, image_root: Path, split: str | None, out, seen_images, seen_texts) -> None:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as err:
        raise InputError(f"{path} is not valid JSON ({err}); expected a Karpathy split JSON") from err
    if not isinstance(data, dict) or not isinstance(data.get("images"), list):
        raise InputError(f"{path} is not a Karpathy split JSON: expected an object with an 'images' list")
    for entry in data["images"]:
        if split is not None and entry.get("split") != split:
            continue
        image = image_root / entry.get("filepath", "") / entry["filename"]
        captions = [s["raw"].strip() for s in entry.get("sentences", []) if s.get("raw", "").strip()]
        _add(out, seen_images, seen_texts, _file_item(image), captions)


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
        captions = [line.strip() for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]
        _add(out, seen_images, seen_texts, None, captions)
    else:
        raise UsageError(f"cannot tell the layout of --data {str(path)!r}: expected an image folder, a .csv/.tsv, a "
                         "Karpathy .json, webdataset .tar shards (or a folder of them) or a .txt file of captions")
    if not out.images and not out.texts:
        raise InputError(f"--data {str(path)!r} holds no image and no caption")
    return out
