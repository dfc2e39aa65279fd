"""What an index's metadata shows to clients, and which image files the service may read for it.

A collection's metadata names each row's ``source`` as an absolute path on the server (or ``shard.tar::member``).
The service never sends such a path: ``source`` is made relative to the folder the collection was embedded from
(or to the collection itself), and hidden (``None``) when it lies in neither. ``--metadata-fields`` picks which
fields are served at all. Thumbnails are read only from files inside those same folders.
"""

from __future__ import annotations

import os
import re
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from ..errors import UsageError
from ..search import SearchIndex

__all__ = ["MetadataPolicy", "source_roots", "scrub_detail"]

#: The separator between a tar shard's path and a member's name in ``source``.
MEMBER_SEPARATOR = "::"


def _real(path: str | os.PathLike) -> Path:
    return Path(os.path.realpath(path))


def source_roots(index: SearchIndex) -> list[Path]:
    """The folders an index's images may be read from, most specific first: what it was embedded from (``--data``,
    or the folder of a ``--data`` file, and ``--image-root``), then the collection folder itself."""
    manifest = getattr(index, "manifest", None)
    job = manifest.job if manifest is not None else None
    roots: list[Path] = []
    for value in (job.image_root, job.data) if job is not None else ():
        if isinstance(value, str) and value:
            path = _real(value)
            roots.append(path if path.is_dir() or not path.suffix else path.parent)
    roots.append(_real(index.root))
    unique: list[Path] = []
    for root in roots:
        if root not in unique and root != Path(root.anchor):  # a root of "/" would allow every file
            unique.append(root)
    return unique


class MetadataPolicy:
    """The public view of one index's metadata.

    Args:
        index: a ``SearchIndex`` (its manifest names the folders it was embedded from).
        fields: the metadata fields to serve (``None``: every stored field); ``UsageError`` for an unknown one.
    """

    def __init__(self, index: SearchIndex, fields: Iterable[str] | None = None):
        self.roots = source_roots(index)
        known = list(index.metadata([0])[0].keys()) if index.rows else []
        if fields is None:
            self.fields = None
        else:
            self.fields = tuple(fields)
            unknown = [f for f in self.fields if f not in known]
            if unknown and known:
                raise UsageError(f"--metadata-fields: unknown field(s) {', '.join(map(repr, unknown))} in index "
                                 f"{index.name!r}; its fields are {', '.join(known)}")

    def relative(self, path: str) -> str | None:
        """``path`` relative to the first root that holds it; ``None`` when no root does."""
        real = _real(path)
        for root in self.roots:
            if real.is_relative_to(root):
                return real.relative_to(root).as_posix()
        return None

    def public_source(self, source: Any) -> str | None:
        """A ``source`` as a client sees it: relative (``images/a.png``, ``shard-0.tar::a.jpg``) or ``None``."""
        if not isinstance(source, str) or not source:
            return None
        path, sep, member = source.partition(MEMBER_SEPARATOR)
        if not os.path.isabs(path):
            return None  # a relative path in the metadata means nothing to a client either; never guess
        shown = self.relative(path)
        return None if shown is None else shown + sep + member

    def public(self, meta: dict) -> dict:
        """The served fields of one row's metadata, with ``source`` made relative (or ``None``)."""
        out = {k: v for k, v in meta.items() if self.fields is None or k in self.fields}
        if "source" in out:
            out["source"] = self.public_source(out["source"])
        return out

    def readable_image(self, source: Any) -> bool:
        """True when the file that ``source`` names lies inside one of the roots (symbolic links resolved)."""
        if not isinstance(source, str) or not source:
            return False
        path = source.partition(MEMBER_SEPARATOR)[0]
        return os.path.isabs(path) and self.relative(path) is not None


_OBJECT_REPR = re.compile(r"<[^<>\n]{0,200}? at 0x[0-9a-fA-F]+>")
_ABSOLUTE_PATH = re.compile(r"(?<![\w/.:~-])(?:/[^\s'\"/<>:,;]+){2,}/?")


def scrub_detail(text: str) -> str:
    """An error message fit for a client: one line, object reprs (``<... at 0x...>``) and absolute file paths
    (two or more components) replaced by ``<object>`` and ``<path>``."""
    line = (text.splitlines() or [""])[0]
    return _ABSOLUTE_PATH.sub("<path>", _OBJECT_REPR.sub("<object>", line))
