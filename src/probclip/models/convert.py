"""Rewriting a checkpoint in the released or the probclip layout, all or nothing.

The new checkpoint is written to a temporary directory beside ``dest`` and renamed into place only when every file
was written; a failure (a layout that cannot hold the model, a full disk) removes the temporary directory and leaves
``source`` and ``dest`` as they were. ``dest`` may be ``source`` itself (conversion in place).
"""

from __future__ import annotations

import os
import shutil
import uuid
from pathlib import Path

from ..errors import UsageError
from .factory import load_pretrained_model
from .released import save_released

__all__ = ["LAYOUTS", "convert_checkpoint"]

LAYOUTS = ("released", "probclip")


def convert_checkpoint(source: str | os.PathLike, dest: str | os.PathLike, to: str) -> Path:
    """Load ``source`` (directory or ``hf-hub:``), write it to ``dest`` in layout ``to``; returns ``dest``.

    Raises ``UsageError`` for an unknown layout or a ``dest`` that is a non-empty directory other than ``source``
    (nothing is overwritten silently); the errors of loading and saving propagate after the clean-up.
    """
    if to not in LAYOUTS:
        raise UsageError(f"--to {to!r} is not a checkpoint layout; accepted: {list(LAYOUTS)}")
    dest = Path(dest)
    in_place = dest.exists() and Path(source).exists() and dest.resolve() == Path(source).resolve()
    if dest.exists() and not in_place and (not dest.is_dir() or any(dest.iterdir())):
        raise UsageError(f"{dest} already exists and is not empty; give a new output directory (or the source "
                         "itself to convert in place)")
    model = load_pretrained_model(source)
    dest.parent.mkdir(parents=True, exist_ok=True)
    tmp = dest.parent / f".{dest.name}.tmp-{uuid.uuid4().hex[:8]}"
    try:
        if to == "released":
            save_released(model, tmp)
        else:
            model.save_pretrained(tmp)
        if dest.exists():
            trash = dest.parent / f".{dest.name}.old-{uuid.uuid4().hex[:8]}"
            os.replace(dest, trash)
            os.replace(tmp, dest)
            shutil.rmtree(trash)
        else:
            os.replace(tmp, dest)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
    return dest
