"""The CLIP_benchmark / DataComp webdataset layout, read the way CLIP_benchmark reads it.

Layout of one data set folder (``wds_<name>`` in the CLIP_benchmark conversions, ``wds_<name>_test`` as
DataComp's download script writes it)::

    ROOT/classnames.txt                          one class name per line (classification)
    ROOT/zeroshot_classification_templates.txt   prompt templates with {c} (classification)
    ROOT/dataset_type.txt                        "retrieval" for retrieval sets (else classification)
    ROOT/<split>/nshards.txt                     number of shards n
    ROOT/<split>/0.tar ... <n-1>.tar             samples: <key>.{webp,png,jpg,jpeg} and
                                                 <key>.cls (class index), <key>.npy (metadata row), or
                                                 <key>.txt (captions, one per line) for retrieval

As in CLIP_benchmark: shards are read in the order ``0..n-1`` given by ``nshards.txt`` (folders without
it: every ``*.tar``, in numeric order of their names, and a gap in the numbers is an error naming the missing
shards); a sample's image is its first member among ``webp, png, jpg, jpeg``; a retrieval sample's captions are
the lines of its ``.txt`` (``str.splitlines``).
Shards are read by training's tar reader (``probclip.eval.readers.iter_shard_samples``): a sample without an image
or a ``.cls`` / ``.txt`` member, and a shard that breaks off, are skipped and named in ``skipped`` like an image that
cannot be decoded or a caption over the length limit (``skipped_captions``).
"""

from __future__ import annotations

import io
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from ..data.webdataset import check_shard_numbering
from ..errors import InputError
from ..limits import check_shard_count
from ..textfiles import read_text_file
from .caption_check import drop_overlong_captions
from .image_check import drop_unreadable_images
from .readers import ClassificationData, RetrievalData, iter_shard_samples, require_samples

__all__ = [
    "IMAGE_MEMBER_ORDER",
    "BenchmarkClassification",
    "dataset_type",
    "has_split",
    "is_benchmark_retrieval",
    "list_shards",
    "read_benchmark_classification",
    "read_benchmark_retrieval",
]

IMAGE_MEMBER_ORDER = ("webp", "png", "jpg", "jpeg")
_TEMPLATES_FILE = "zeroshot_classification_templates.txt"


@dataclass
class BenchmarkClassification:
    """A classification set and, when its samples carry ``.npy`` members, their metadata ``[N, F]``."""

    data: ClassificationData
    metadata: np.ndarray | None


def _numeric_then_name(path: Path) -> tuple:
    return (0, int(path.stem), "") if path.stem.isdigit() else (1, 0, path.name)


def has_split(root: str | Path, split: str = "test") -> bool:
    """True if ``root/<split>`` holds ``nshards.txt`` or at least one ``.tar`` shard."""
    folder = Path(root) / split
    return folder.is_dir() and ((folder / "nshards.txt").is_file() or any(folder.glob("*.tar")))


def is_benchmark_retrieval(root: str | Path, split: str = "test") -> bool:
    """True for a folder in the CLIP_benchmark layout holding a retrieval set: ``dataset_type.txt`` says
    ``retrieval``, or ``<split>/nshards.txt`` exists without ``classnames.txt``."""
    root = Path(root)
    if not root.is_dir():
        return False
    if (root / "dataset_type.txt").is_file():
        return dataset_type(root) == "retrieval"
    return (root / split / "nshards.txt").is_file() and not (root / "classnames.txt").is_file()


def list_shards(root: str | Path, split: str = "test") -> list[Path]:
    """The shards of ``root/<split>`` in reading order (``0..n-1`` from ``nshards.txt`` when present)."""
    folder = Path(root) / split
    if not folder.is_dir():
        raise InputError(f"webdataset split folder {str(folder)!r} does not exist (split {split!r})")
    count_file = folder / "nshards.txt"
    if count_file.is_file():
        text = read_text_file(count_file, max_bytes=4096).strip()
        if not (text.isascii() and text.isdigit()) or int(text) < 1:
            raise InputError(f"{count_file} must hold a positive number of shards; got {text[:40]!r}")
        check_shard_count(int(text), str(count_file))
        shards = [folder / f"{i}.tar" for i in range(int(text))]
        missing = [s.name for s in shards if not s.is_file()]
        if missing:
            raise InputError(f"{count_file} announces {text} shards but {len(missing)} are missing, e.g. {missing[:3]}")
        return shards
    shards = sorted(folder.glob("*.tar"), key=_numeric_then_name)
    if not shards:
        raise InputError(f"no .tar shards in {str(folder)!r}")
    check_shard_numbering(shards, first=0)  # CLIP_benchmark numbers a split's shards from 0
    return shards


def dataset_type(root: str | Path) -> str:
    """``ROOT/dataset_type.txt`` lower-cased (``"retrieval"``, ``"multilabel"``), else ``"classification"``."""
    path = Path(root) / "dataset_type.txt"
    return read_text_file(path, max_bytes=4096).strip().lower() if path.is_file() else "classification"


def _read_lines(path: Path) -> list[str]:
    return [line.strip() for line in read_text_file(path).splitlines()]


def read_benchmark_classification(root: str | Path, split: str = "test") -> BenchmarkClassification:
    """Images, ``.cls`` labels, class names, templates and (if present) ``.npy`` metadata rows."""
    root = Path(root)
    names_file = root / "classnames.txt"
    if not names_file.is_file():
        raise InputError(f"classification data set {str(root)!r} has no classnames.txt (one class name per line)")
    classnames = [name for name in _read_lines(names_file) if name]
    templates_file = root / _TEMPLATES_FILE
    if not templates_file.is_file():
        raise InputError(f"classification data set {str(root)!r} has no {_TEMPLATES_FILE} (templates with {{c}})")
    templates = [t for t in _read_lines(templates_file) if t]
    items, labels, rows, skipped = [], [], [], []
    for shard in list_shards(root, split):
        for item, _, record in iter_shard_samples(shard, ("cls",), skipped, image_keys=IMAGE_MEMBER_ORDER):
            text = record["cls"].decode("utf-8", errors="replace").strip()
            if not text.isdigit():
                raise InputError(f"{item.key}.cls must hold a non-negative class index; got {text!r}")
            items.append(item)
            labels.append(int(text))
            if "npy" in record:
                rows.append(np.load(io.BytesIO(record["npy"]), allow_pickle=False).reshape(-1))
    require_samples(items, skipped, root)
    if rows and len(rows) != len(items):
        raise InputError(f"{root}: {len(rows)} of {len(items)} samples carry .npy metadata; all or none must")
    try:
        data = ClassificationData(items, labels, classnames, templates, skipped)
    except ValueError as err:
        raise InputError(f"{root}: {err}") from err
    metadata = np.stack(rows) if rows else None
    checked = drop_unreadable_images(data)
    if metadata is not None and len(checked.items) < len(items):
        kept = {id(item) for item in checked.items}  # the same objects, in the same order
        metadata = metadata[[i for i, item in enumerate(items) if id(item) in kept]]
    return BenchmarkClassification(checked, metadata)


def read_benchmark_retrieval(root: str | Path, split: str = "test") -> RetrievalData:
    """Images and their ``.txt`` captions (``str.splitlines``, as CLIP_benchmark reads them)."""
    root = Path(root)
    items, captions, caption_image, skipped = [], [], [], []
    for shard in list_shards(root, split):
        for item, _, record in iter_shard_samples(shard, ("txt",), skipped, image_keys=IMAGE_MEMBER_ORDER):
            lines = record["txt"].decode("utf-8", errors="replace").splitlines()
            if not lines:
                skipped.append({"image": item.key, "error": f"{item.key}.txt holds no caption"})
                continue
            caption_image.extend([len(items)] * len(lines))
            items.append(item)
            captions.extend(lines)
    require_samples(items, skipped, root)
    data = RetrievalData(items, captions, torch.tensor(caption_image), skipped=skipped)
    return drop_unreadable_images(drop_overlong_captions(data))
