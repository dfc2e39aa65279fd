"""The items of a searchable modality: their metadata (captions cut for answers), stored embeddings and images."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
from PIL import Image

from ..data.listings import ImageItem
from ..embedding import ProbEmbedding
from ..errors import InputError
from ..limits import clip_caption
from .layout import StoredRows

__all__ = ["CollectionItems"]


class CollectionItems:
    """Row ids -> metadata dicts, stored ``ProbEmbedding`` rows, decoded images."""

    def __init__(self, stored: StoredRows):
        self.stored, self.modality = stored, stored.modality

    def metadata(self, ids: Sequence[int] | np.ndarray) -> list[dict]:
        """One metadata dict per row id (``row_id``, ``source``, ``caption``, ``u``, ``offset``, ``size``).

        A caption longer than ``max_result_caption_chars`` (``probclip.limits``) is cut, ends with an ellipsis, and
        its dict gains ``caption_chars``, the stored length: a search answer stays small whatever the captions.
        """
        rows = self.stored.metadata(np.asarray(ids, dtype=np.int64))
        for row in rows:
            caption = row.get("caption")
            if isinstance(caption, str):
                row["caption"], cut = clip_caption(caption)
                if cut:
                    row["caption_chars"] = len(caption)
        return rows

    def embedding(self, ids: Sequence[int] | np.ndarray | int) -> ProbEmbedding:
        """The stored rows as a float32 ``ProbEmbedding [len(ids), D]`` (search with it to find similar items)."""
        return self.stored.embedding(np.atleast_1d(np.asarray(ids, dtype=np.int64)))

    def open_image(self, row_id: int) -> Image.Image | None:
        """The image of an image row, read from the file or shard member its metadata names and decoded by the one
        decoder (``probclip.image_decoding``: EXIF orientation, alpha over white, size limits); None for text rows."""
        if self.modality != "image":
            return None
        meta = self.metadata([int(row_id)])[0]
        source, offset, size = meta["source"], int(meta.get("offset", -1)), int(meta.get("size", -1))
        path = Path(source.split("::", 1)[0] if offset >= 0 else source)
        item = ImageItem(source, path, offset, size) if offset >= 0 else ImageItem(source, path)
        try:
            return item.open()
        except (InputError, OSError) as err:
            raise InputError(f"cannot read the image of row {row_id} from {source!r}: {err}") from err
