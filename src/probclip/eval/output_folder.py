"""An evaluation's output folder, written whole or not at all.

``probclip eval`` (a task or a suite) writes into a fresh temporary sibling of ``--out`` (``.<name>.tmp-<random>``)
and moves it into place only when the run succeeded: a failed run leaves ``--out`` as it was (and no temporary
folder). ``--out`` that is not empty is refused unless ``overwrite``; with it, the previous folder is renamed aside,
the new one renamed into place, and the previous one deleted, so that ``--out`` never holds files of two runs.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import uuid
from collections.abc import Iterator
from pathlib import Path

from ..errors import UsageError

__all__ = ["fresh_output_folder"]


@contextlib.contextmanager
def fresh_output_folder(out: str | Path, overwrite: bool = False) -> Iterator[Path]:
    """Yield an empty temporary folder beside ``out`` to write the run's outputs into; on success it replaces
    ``out`` (see the module docstring). ``UsageError`` when ``out`` is a file, or a non-empty folder and not
    ``overwrite``."""
    out = Path(out)
    if out.exists() and not out.is_dir():
        raise UsageError(f"--out {str(out)!r} is a file; give a folder for the results")
    if out.is_dir() and not overwrite:
        entries = sorted(p.name for p in out.iterdir())
        if entries:
            raise UsageError(f"--out {str(out)!r} is not empty (it holds {entries[:3]}"
                             f"{' and more' if len(entries) > 3 else ''}): give --overwrite to replace it, or "
                             "another --out")
    out.parent.mkdir(parents=True, exist_ok=True)
    tag = uuid.uuid4().hex[:8]
    tmp = out.parent / f".{out.name}.tmp-{tag}"
    tmp.mkdir()
    try:
        yield tmp
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    old = out.parent / f".{out.name}.old-{tag}"
    if out.is_dir():
        os.replace(out, old)
    os.replace(tmp, out)
    shutil.rmtree(old, ignore_errors=True)
