"""The hierarchy head a collection carries: copied in by ``probclip embed``, checked and loaded by the search.

When the model folder a collection is embedded with holds a hierarchy head (``HEAD_FILE``,
:mod:`probclip.hierarchy_head`), ``probclip embed`` loads it with the model's dimension (a bad file stops the run
before anything is embedded), copies it into the collection's root as ``HEAD_FILE`` and records it in the manifest
(:class:`~probclip.search.manifest.HeadRecord`: file, fingerprint, kinds, what it was fitted on). Rerunning the same
``probclip embed`` command on a finished collection brings its head up to date with the model folder's (copied,
replaced, or dropped when the folder no longer holds one) without embedding anything again.

The search reads the head once, when a score first needs it (:class:`CollectionHead`): the file must lie inside the
collection, be present and have the recorded fingerprint, like the index files.
"""

from __future__ import annotations

import dataclasses
import os
import shutil
from pathlib import Path

from ..errors import InputError
from ..hierarchy_head import HEAD_FILE, HierarchyHead, find_hierarchy_head, load_hierarchy_head
from .layout import collection_file, file_fingerprint, verify_fingerprint
from .manifest import HeadRecord, Manifest, read_manifest

__all__ = ["CollectionHead", "HeadFileError", "carry_head", "model_head_file"]


class HeadFileError(InputError):
    """The hierarchy head a collection's manifest records is missing, or not the file ``probclip embed`` copied."""


def model_head_file(model_source: str | None, dim: int) -> Path | None:
    """The head stored beside a local model folder ``model_source`` (checked: loaded with the model's ``dim``), or
    None when the model is not a local folder or its folder holds none. A bad file is an ``InputError`` naming it."""
    if not model_source or find_hierarchy_head(model_source, dim) is None:
        return None
    return Path(model_source) / HEAD_FILE


def carry_head(root: str | Path, head_file: Path | None) -> Manifest:
    """Make the finished collection at ``root`` carry the head ``head_file`` (None: none): copy it into the collection
    as ``HEAD_FILE`` and record it in the manifest, or drop both. Returns the manifest as written (unchanged when
    the collection already carries that head)."""
    root = Path(root)
    manifest = read_manifest(root)
    target = root / HEAD_FILE
    if head_file is None:
        if manifest.hierarchy_head is None:
            return manifest
        manifest = dataclasses.replace(manifest, hierarchy_head=None)
        manifest.write(root)  # the record goes first: a head file without one is never read
        target.unlink(missing_ok=True)
        return manifest
    fingerprint = file_fingerprint(head_file)
    current = manifest.hierarchy_head
    if current is not None and current.fingerprint == fingerprint and target.is_file() \
            and file_fingerprint(target) == fingerprint:
        return manifest
    head = load_hierarchy_head(head_file, manifest.model.embed_dim)
    tmp = target.with_name(target.name + ".tmp")
    shutil.copyfile(head_file, tmp)
    if file_fingerprint(tmp) != fingerprint:
        tmp.unlink()
        raise InputError(f"{head_file} changed while it was copied into the collection {str(root)!r}; run the same "
                         "command again")
    os.replace(tmp, target)
    record = HeadRecord(file=HEAD_FILE, fingerprint=fingerprint, kinds=tuple(sorted(head.pairs)),
                        fitted_on={kind: pair.fitted_on for kind, pair in sorted(head.pairs.items())})
    manifest = dataclasses.replace(manifest, hierarchy_head=record)
    manifest.write(root)
    return manifest


class CollectionHead:
    """The head a collection carries (``record``: the manifest's, or None), loaded and checked on first use."""

    def __init__(self, root: Path, record: HeadRecord | None, dim: int):
        self.root, self.record, self.dim = Path(root), record, dim
        self._head: HierarchyHead | None = None

    @property
    def present(self) -> bool:
        """True when the collection carries a head."""
        return self.record is not None

    def get(self) -> HierarchyHead | None:
        """The head (None when the collection carries none), its file checked once: inside the collection, present,
        with the recorded fingerprint and the collection's dimension (else a one-line ``InputError``)."""
        if self.record is None or self._head is not None:
            return self._head
        path = collection_file(self.root, self.record.file, "hierarchy_head.file")
        again = ("run `probclip embed` again with the collection's model folder (it holds the head) and the same "
                 "options, which copies it anew")
        if not path.is_file():
            raise HeadFileError(f"hierarchy head {path} is missing; {again}")
        verify_fingerprint(path, self.record.fingerprint, "hierarchy head", "`probclip embed` copied into", again,
                           HeadFileError)
        try:
            self._head = load_hierarchy_head(path, self.dim)
        except InputError as err:  # e.g. written by an older probclip, in a format this one does not read
            raise HeadFileError(f"{err}; {again}") from err
        return self._head
