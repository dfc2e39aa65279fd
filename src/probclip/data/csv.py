"""CSV/TSV tables of image paths and captions (one row per image; a cell may hold several captions)."""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path

from ..limits import LimitExceededError, check_caption_length
from ..textfiles import read_csv_table
from ..transforms import ImageLoadError, load_image
from .captions import split_captions
from .samples import DatasetError, SampleError

__all__ = ["CsvPairs", "read_pair_table"]


def _separator_for(path: Path, separator: str | None) -> str:
    if separator is not None:
        return separator
    return "\t" if path.suffix.lower() in (".tsv", ".tab") else ","


def read_pair_table(path: str | os.PathLike, image_column: str, caption_column: str, separator: str | None = None,
                    image_root: str | os.PathLike | None = None,
                    caption_separator: str | None = None) -> list[tuple[str, list[str]]]:
    """Rows of a CSV/TSV file -> ``[(image_path, captions), ...]``.

    Relative image paths are resolved against ``image_root`` (default: the table's directory). Rows whose caption
    cell is empty are kept with no captions and skipped (counted) when read. Raises ``FileNotFoundError`` for a
    missing table, ``DatasetError`` (a ``ValueError``) naming the columns found when a column is absent, or when
    the table has no row.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"CSV/TSV table not found: {path}")
    root = Path(image_root) if image_root is not None else path.parent
    columns, table = read_csv_table(path, _separator_for(path, separator))
    for column, role in ((image_column, "image"), (caption_column, "caption")):
        if column not in columns:
            raise DatasetError(
                f"{path} has no {role} column {column!r}; its columns are {columns} "
                f"(set data.csv_{role}_column, and data.csv_separator if the separator is not "
                f"{_separator_for(path, separator)!r})"
            )
    rows = []
    for row in table:
        image = (row.get(image_column) or "").strip()
        captions = split_captions(row.get(caption_column) or "", caption_separator)
        image_path = image if os.path.isabs(image) else str(root / image)
        rows.append((image_path, captions))
    if not rows:
        raise DatasetError(f"{path} has no data rows: the dataset is empty")
    return rows


class CsvPairs:
    """Indexed image-caption pairs from one or more CSV/TSV tables (``len`` and ``load(index)``)."""

    def __init__(self, paths: Sequence[str], image_column: str, caption_column: str, separator: str | None = None,
                 image_root: str | None = None, caption_separator: str | None = None):
        self.rows: list[tuple[str, list[str]]] = []
        for path in paths:
            self.rows.extend(
                read_pair_table(path, image_column, caption_column, separator, image_root, caption_separator)
            )

    def __len__(self) -> int:
        return len(self.rows)

    def load(self, index: int):
        """``(RGB PIL image, captions, name)`` of row ``index``; raises ``SampleError`` if unusable."""
        image_path, captions = self.rows[index]
        if not captions:
            raise SampleError(f"{image_path}: empty caption cell")
        try:
            for caption in captions:
                check_caption_length(caption, f"{image_path} caption")
            image = load_image(image_path)
        except (ImageLoadError, LimitExceededError) as err:
            raise SampleError(str(err)) from err
        return image, captions, image_path
