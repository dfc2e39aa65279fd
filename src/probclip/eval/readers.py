"""Readers for the benchmark file layouts, producing in-memory indexes (images are read lazily).

Layouts:

- image folder: ``ROOT/<class name>/<image>``; optional ``ROOT/classnames.txt`` (one display name per
  line, in sorted folder order) and ``ROOT/zeroshot_classification_templates.txt``.
- CLIP_benchmark / DataComp webdataset classification: ``ROOT/classnames.txt``,
  ``ROOT/zeroshot_classification_templates.txt``, shards ``ROOT/<split>/*.tar`` with members
  ``<key>.{jpg,jpeg,png,webp}`` and ``<key>.cls`` (the class index as text).
- COCO / Flickr30k Karpathy JSON (``dataset_coco.json``, ``dataset_flickr30k.json``):
  ``images[*].{filepath?, filename, split, sentences[*].raw, cocoid?}``.
- CSV retrieval: header with an image column (``image`` or ``filepath``) and a caption column
  (``caption`` or ``title``); one row per caption; rows of one image share its path. Optional
  ``image_id`` and ``caption_id`` columns.
- webdataset retrieval: shards with ``<key>.<image ext>`` and ``<key>.txt`` (captions, one per line)
  or ``<key>.json`` (a list of captions, or an object with a ``captions`` list).
- Urban-1k: ``ROOT/image/<name>.jpg`` and ``ROOT/caption/<name>.txt``.
- HierarCaps: CSV ``id,captions,image_url`` with captions joined by ``" => "``; images are found under
  an image root by the basename of ``image_url``.

Webdataset shards are read by training's tar reader (``probclip.data.webdataset``): the same grouping of members
into samples and the same skips. A sample it rejects (no image or caption member, a member over
``data.max_member_bytes``, unparsable captions) and a shard that is unreadable or cut short are skipped and named
in ``skipped``, like an image that cannot be decoded; captions over ``data.max_caption_chars`` are skipped and
named in ``skipped_captions`` (``probclip.eval.caption_check``), in every retrieval layout.
"""

from __future__ import annotations

import json
import warnings
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import torch

from ..data.captions import CaptionError, parse_caption_payload
from ..data.listings import (
    IMAGE_EXTENSIONS,
    SHARD_IMAGE_KEYS,
    ImageItem,
    ListingError,
    read_caption_table,
    read_karpathy_entries,
)
from ..data.samples import SampleError
from ..data.webdataset import check_shard_numbering, iter_shard_records, sample_member_keys
from ..errors import InputError
from ..limits import current_limits
from ..textfiles import read_csv_table, read_text_file
from .caption_check import check_class_prompts, drop_overlong_captions
from .image_check import drop_unreadable_images

__all__ = [
    "ImageItem",
    "ClassificationData",
    "RetrievalData",
    "HierarCapsData",
    "IMAGE_EXTENSIONS",
    "SHARD_IMAGE_KEYS",
    "read_image_folder",
    "read_wds_classification",
    "read_classification",
    "read_karpathy_json",
    "read_retrieval_csv",
    "read_wds_retrieval",
    "read_retrieval",
    "read_urban1k",
    "read_hierarcaps",
    "iter_shard_samples",
    "require_samples",
]

CLASSNAMES_FILE = "classnames.txt"
TEMPLATES_FILE = "zeroshot_classification_templates.txt"
DEFAULT_TEMPLATES = ("a photo of a {c}.",)


@dataclass
class ClassificationData:
    """Labelled images with class names and prompt templates (``{c}`` stands for the class name)."""

    items: list[ImageItem]
    labels: list[int]
    classnames: list[str]
    templates: list[str]
    skipped: list[dict] = field(default_factory=list)
    checked: bool = False

    def __post_init__(self) -> None:
        if len(self.items) != len(self.labels):
            raise ValueError(f"got {len(self.items)} images but {len(self.labels)} labels")
        if not self.items:
            raise ValueError("the classification data set holds no images")
        bad = [y for y in self.labels if not 0 <= y < len(self.classnames)]
        if bad:
            raise ValueError(
                f"labels must lie in [0, {len(self.classnames) - 1}] ({len(self.classnames)} class names); "
                f"got e.g. {bad[:5]}"
            )
        for t in self.templates:
            if "{c}" not in t:
                raise ValueError(f"every template needs the placeholder '{{c}}'; got {t!r}")
        check_class_prompts(self.classnames, self.templates)


@dataclass
class RetrievalData:
    """Images and captions; ``caption_image[k]`` is the index of the image that caption k describes.

    ``skipped``: the unreadable images removed by the reader (``{"image": key, "error": message}``).
    ``skipped_captions``: the over-long captions removed (``{"image": key, "caption_index": i, "error": message}``).

    ``image_ids`` / ``caption_ids`` are optional external ids (e.g. COCO ids for ECCV Caption).
    """

    items: list[ImageItem]
    captions: list[str]
    caption_image: torch.Tensor
    image_ids: list[int] | None = None
    caption_ids: list[int] | None = None
    skipped: list[dict] = field(default_factory=list)
    skipped_captions: list[dict] = field(default_factory=list)
    checked: bool = False

    def __post_init__(self) -> None:
        self.caption_image = torch.as_tensor(self.caption_image, dtype=torch.long)
        if self.caption_image.shape != (len(self.captions),):
            raise ValueError(
                f"caption_image must have one entry per caption ({len(self.captions)}); "
                f"got shape {tuple(self.caption_image.shape)}"
            )
        if not self.items or not self.captions:
            raise ValueError(
                f"retrieval data needs images and captions; got {len(self.items)} and {len(self.captions)}"
            )
        if int(self.caption_image.min()) < 0 or int(self.caption_image.max()) >= len(self.items):
            raise ValueError(f"caption_image indices must lie in [0, {len(self.items) - 1}]")
        without = len(self.items) - int(torch.unique(self.caption_image).numel())
        if without:
            raise ValueError(f"{without} images have no caption; every image needs at least one")
        if self.image_ids is not None and len(self.image_ids) != len(self.items):
            raise ValueError(f"image_ids has {len(self.image_ids)} entries for {len(self.items)} images")
        if self.caption_ids is not None and len(self.caption_ids) != len(self.captions):
            raise ValueError(f"caption_ids has {len(self.caption_ids)} entries for {len(self.captions)} captions")


@dataclass
class HierarCapsData:
    """Images with caption chains from general to specific (``chains[i]`` has the levels of image i)."""

    items: list[ImageItem]
    chains: list[list[str]]
    ids: list[str] = field(default_factory=list)
    skipped: list[dict] = field(default_factory=list)
    checked: bool = False


# ----------------------------------------------------------------------------- helpers
def _read_lines(path: Path) -> list[str]:
    return [line.strip() for line in read_text_file(path).splitlines() if line.strip()]


def _require_dir(path: Path, what: str) -> Path:
    path = Path(path)
    if not path.is_dir():
        raise FileNotFoundError(f"{what}: {str(path)!r} is not a directory")
    return path


def iter_shard_samples(shard: Path, text_keys: Sequence[str], skipped: list[dict],
                       image_keys: Sequence[str] = SHARD_IMAGE_KEYS) -> Iterator[tuple[ImageItem, str, dict]]:
    """``(image item, text extension, record)`` per sample of an uncompressed tar shard, read by training's tar
    reader: ``record[text extension]`` is the text member's bytes (other members too, by extension); image members
    are left unread, and the item reads its image later from its place in the shard.

    The samples the reader rejects, and a shard that breaks off, are appended to ``skipped`` as
    ``{"image": "<shard>::<key>" or "<shard>", "error": message}``.
    """
    for record in iter_shard_records(str(shard), unread=image_keys):
        name = f"{shard.resolve()}::{record['__key__']}" if "__key__" in record else str(shard.resolve())
        try:
            image_key, text_key = sample_member_keys(record, image_keys, text_keys)
        except SampleError as err:
            skipped.append({"image": name, "error": str(err)})
            continue
        span = record[image_key]
        yield ImageItem(name, shard, span.offset, span.size), text_key, record


def _shards(root: Path, split: str | None) -> list[Path]:
    candidates = [root / split] if split else []
    candidates.append(root)
    for directory in candidates:
        if directory.is_dir():
            shards = sorted(directory.glob("*.tar"))
            if shards:
                check_shard_numbering(shards)
                return shards
    where = " or ".join(repr(str(c)) for c in candidates)
    raise FileNotFoundError(f"no .tar shards found in {where}")


def _templates_for(root: Path, templates: list[str] | None) -> list[str]:
    if templates is not None:
        return list(templates)
    path = root / TEMPLATES_FILE
    return _read_lines(path) if path.is_file() else list(DEFAULT_TEMPLATES)


# ----------------------------------------------------------------------------- classification
def read_image_folder(root: str | Path, templates: list[str] | None = None) -> ClassificationData:
    """Read ``ROOT/<class>/<image>``: classes are the sorted sub-folder names.

    Class display names come from ``ROOT/classnames.txt`` when present (one per line, in sorted folder
    order), else from the folder names with ``_`` read as a space.
    """
    root = _require_dir(Path(root), "image folder")
    folders = sorted(p for p in root.iterdir() if p.is_dir())
    if not folders:
        raise FileNotFoundError(f"image folder {str(root)!r} has no class sub-folders")
    names_file = root / CLASSNAMES_FILE
    if names_file.is_file():
        classnames = _read_lines(names_file)
        if len(classnames) != len(folders):
            raise ValueError(
                f"{names_file} lists {len(classnames)} class names but {root} has {len(folders)} class folders"
            )
    else:
        classnames = [p.name.replace("_", " ") for p in folders]
    items, labels = [], []
    for label, folder in enumerate(folders):
        before = len(items)
        for path in sorted(folder.iterdir()):
            if path.suffix.lower() in IMAGE_EXTENSIONS:
                items.append(ImageItem(key=str(path.resolve()), path=path))
                labels.append(label)
        if len(items) == before:
            warnings.warn(f"class folder {folder} holds no image ({', '.join(IMAGE_EXTENSIONS)}); its class stays a "
                          "candidate of every prediction but is never a label", RuntimeWarning, stacklevel=2)
    return ClassificationData(items, labels, classnames, _templates_for(root, templates))


def read_wds_classification(
    root: str | Path, split: str = "test", templates: list[str] | None = None
) -> ClassificationData:
    """Read the CLIP_benchmark / DataComp webdataset layout (``classnames.txt``, templates, ``.cls``)."""
    root = _require_dir(Path(root), "webdataset classification root")
    names_file = root / CLASSNAMES_FILE
    if not names_file.is_file():
        raise FileNotFoundError(f"webdataset classification needs {names_file} (one class name per line)")
    classnames = _read_lines(names_file)
    items, labels, skipped = [], [], []
    for shard in _shards(root, split):
        for item, _, record in iter_shard_samples(shard, ("cls",), skipped):
            label_text = record["cls"].decode("utf-8", errors="replace").strip()
            if not label_text.lstrip("-").isdigit():
                raise ValueError(f"{item.key}.cls must hold an integer class index; got {label_text!r}")
            items.append(item)
            labels.append(int(label_text))
    require_samples(items, skipped, root)
    return ClassificationData(items, labels, classnames, _templates_for(root, templates), skipped)


def read_classification(
    root: str | Path, split: str = "test", templates: list[str] | None = None
) -> ClassificationData:
    """Read an image folder or a webdataset classification root, whichever ``root`` holds."""
    root = Path(root)
    has_shards = any(root.glob("*.tar")) or (root / split).is_dir() and any((root / split).glob("*.tar"))
    if has_shards:
        return drop_unreadable_images(read_wds_classification(root, split, templates))
    return drop_unreadable_images(read_image_folder(root, templates))


# ----------------------------------------------------------------------------- retrieval
def read_karpathy_json(path: str | Path, image_root: str | Path | None = None, split: str = "test") -> RetrievalData:
    """Read a Karpathy split JSON (COCO or Flickr30k); images at ``image_root/[filepath/]filename``.

    The entries are read and checked by ``probclip.data.listings.read_karpathy_entries`` (a malformed entry is a
    ``ListingError`` naming it). ``image_root`` defaults to the JSON's folder. ``image_ids`` are the ``cocoid``
    values when present; caption ids are the sentences' ``id`` fields when present (COCO caption ids).
    """
    path = Path(path)
    entries = read_karpathy_entries(path)
    root = Path(image_root) if image_root is not None else path.parent
    items, captions, caption_image, image_ids, caption_ids = [], [], [], [], []
    splits = set()
    for entry in entries:
        splits.add(entry.split)
        if entry.split != split:
            continue
        image_path = root / entry.relative_path
        if not image_path.is_file():
            raise FileNotFoundError(f"image {str(image_path)!r} listed in {path} does not exist (image root {root})")
        index = len(items)
        items.append(ImageItem(key=str(image_path.resolve()), path=image_path))
        image_ids.append(entry.cocoid)
        captions.extend(entry.captions)
        caption_image.extend([index] * len(entry.captions))
        caption_ids.extend(entry.caption_ids)
    if not items:
        raise ValueError(f"{path} has no image in split {split!r}; splits present: {sorted(map(str, splits))}")
    return RetrievalData(
        items,
        captions,
        torch.tensor(caption_image),
        image_ids=image_ids if None not in image_ids else None,
        caption_ids=caption_ids if None not in caption_ids else None,
    )


def read_retrieval_csv(path: str | Path, image_root: str | Path | None = None) -> RetrievalData:
    """Read a CSV (comma- or tab-separated) with one row per caption; rows of one image share its path.

    The rows are read and checked by ``probclip.data.listings.read_caption_table``.
    """
    path = Path(path)
    rows = read_caption_table(path)
    if not rows:
        raise ValueError(f"{path} has no data rows")
    root = Path(image_root) if image_root is not None else path.parent
    index_of: dict[str, int] = {}
    items, captions, caption_image, image_ids, caption_ids = [], [], [], [], []
    for row in rows:
        if not row.image:
            raise ListingError(f"{path} line {row.line}: the image cell is empty; every row needs an image path")
        if row.image not in index_of:
            image_path = root / row.image
            if not image_path.is_file():
                raise FileNotFoundError(f"image {str(image_path)!r} listed in {path} does not exist")
            index_of[row.image] = len(items)
            items.append(ImageItem(key=str(image_path.resolve()), path=image_path))
            image_ids.append(row.image_id)
        captions.append(row.caption)
        caption_image.append(index_of[row.image])
        caption_ids.append(row.caption_id)
    return RetrievalData(
        items,
        captions,
        torch.tensor(caption_image),
        image_ids=image_ids if None not in image_ids else None,
        caption_ids=caption_ids if None not in caption_ids else None,
    )


def require_samples(items: list, skipped: list[dict], where: Path) -> None:
    """Raise ``InputError`` naming the first skipped sample when a shard reader found no usable sample."""
    if not items:
        first = f"; first: {skipped[0]['image']}: {skipped[0]['error']}" if skipped else ""
        raise InputError(f"no usable sample in the shards of {str(where)!r} ({len(skipped)} skipped{first})")


def _shard_captions(payload: bytes, ext: str) -> list[str]:
    """Captions of a ``txt`` (one per line) or ``json`` member, parsed by training's caption parser; raises
    ``SampleError`` naming the problem when there is none."""
    try:
        return parse_caption_payload(ext, payload, separator="\n" if ext == "txt" else None)
    except CaptionError as err:
        raise SampleError(f"{ext}: {err}") from err
    except UnicodeDecodeError as err:
        raise SampleError(f"{ext}: byte {err.start} is not UTF-8 text") from err
    except json.JSONDecodeError as err:
        raise SampleError(f"{ext} line {err.lineno} column {err.colno}: malformed JSON ({err.msg})") from err


def read_wds_retrieval(root: str | Path, split: str = "test") -> RetrievalData:
    """Read webdataset shards with several captions per image (``.txt`` one per line, or ``.json``).

    Over-long captions are not removed here (:func:`read_retrieval` does, through ``drop_overlong_captions``).
    """
    root = Path(root)
    shards = [root] if root.is_file() else _shards(_require_dir(root, "webdataset retrieval root"), split)
    items, captions, caption_image, skipped = [], [], [], []
    for shard in shards:
        for item, text_ext, record in iter_shard_samples(shard, ("txt", "json"), skipped):
            try:
                caps = _shard_captions(record[text_ext], text_ext)
            except SampleError as err:
                skipped.append({"image": item.key, "error": f"{item.key}.{err}"})
                continue
            caption_image.extend([len(items)] * len(caps))
            items.append(item)
            captions.extend(caps)
    require_samples(items, skipped, root)
    return RetrievalData(items, captions, torch.tensor(caption_image), skipped=skipped)


def read_retrieval(path: str | Path, image_root: str | Path | None = None, split: str = "test") -> RetrievalData:
    """Read any retrieval layout: ``.json`` Karpathy, ``.csv``/``.tsv``, or a webdataset folder/shard."""
    path = Path(path)
    suffix = path.suffix.lower()
    if suffix == ".json":
        return drop_unreadable_images(drop_overlong_captions(read_karpathy_json(path, image_root, split)))
    if suffix in (".csv", ".tsv"):
        return drop_unreadable_images(drop_overlong_captions(read_retrieval_csv(path, image_root)))
    if suffix == ".tar" or path.is_dir():
        if path.is_dir() and (path / "image").is_dir() and (path / "caption").is_dir():
            return read_urban1k(path)
        return drop_unreadable_images(drop_overlong_captions(read_wds_retrieval(path, split)))
    raise ValueError(
        f"cannot tell the retrieval layout of {str(path)!r}: expected a Karpathy .json, a .csv/.tsv, "
        f"a webdataset folder or .tar shard, or an Urban-1k folder (image/ and caption/)"
    )


def read_urban1k(root: str | Path) -> RetrievalData:
    """Read Urban-1k: ``ROOT/image/<name>.jpg`` paired with ``ROOT/caption/<name>.txt`` (one long caption)."""
    root = _require_dir(Path(root), "Urban-1k root")
    image_dir = _require_dir(root / "image", "Urban-1k image folder")
    caption_dir = _require_dir(root / "caption", "Urban-1k caption folder")
    items, captions = [], []
    for image_path in sorted(image_dir.iterdir()):
        if image_path.suffix.lower() not in IMAGE_EXTENSIONS:
            continue
        caption_path = caption_dir / f"{image_path.stem}.txt"
        if not caption_path.is_file():
            raise FileNotFoundError(f"Urban-1k image {image_path.name} has no caption file {caption_path}")
        items.append(ImageItem(key=str(image_path.resolve()), path=image_path))
        text = read_text_file(caption_path, max_bytes=current_limits().max_member_bytes)  # one caption file
        captions.append(" ".join(text.split()))
    if not items:
        raise FileNotFoundError(f"no images in {image_dir}")
    return drop_unreadable_images(drop_overlong_captions(RetrievalData(items, captions, torch.arange(len(items)))))


def read_hierarcaps(path: str | Path, image_root: str | Path | None = None) -> HierarCapsData:
    """Read a HierarCaps CSV (``id,captions,image_url``; captions general -> specific, joined by ``" => "``).

    Each image is looked up as ``image_root/<basename of image_url>`` (default root: the CSV's folder),
    or at ``image_url`` itself when that is an existing local path.
    """
    path = Path(path)
    root = Path(image_root) if image_root is not None else path.parent
    header, rows = read_csv_table(path, ",")
    if not rows:
        raise ValueError(f"{path} has no data rows")
    missing = {"id", "captions", "image_url"} - set(header)
    if missing:
        raise ValueError(f"{path} needs the columns id, captions, image_url; missing {sorted(missing)}")
    items, chains, ids = [], [], []
    for row in rows:
        url = row["image_url"].strip()
        local = Path(url)
        image_path = local if local.is_file() else root / url.rstrip("/").rsplit("/", 1)[-1]
        if not image_path.is_file():
            raise FileNotFoundError(f"HierarCaps image for id {row['id']!r} not found at {str(image_path)!r}")
        chain = [c.strip() for c in row["captions"].split("=>")]
        if len(chain) < 2 or not all(chain):
            raise ValueError(f"HierarCaps row {row['id']!r} needs at least 2 non-empty levels; got {row['captions']!r}")
        items.append(ImageItem(key=str(image_path.resolve()), path=image_path))
        chains.append(chain)
        ids.append(row["id"])
    return drop_unreadable_images(drop_overlong_captions(HierarCapsData(items, chains, ids)))
