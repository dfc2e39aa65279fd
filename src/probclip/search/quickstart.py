"""``prepare_quickstart_collection``: the synthetic world's test split, embedded and indexed with a quickstart model.

The only module of the search package that imports the synthetic world.
"""

from __future__ import annotations

from pathlib import Path

__all__ = ["prepare_quickstart_collection"]


def prepare_quickstart_collection(quickstart_dir: str | Path, *, progress: bool = True) -> Path:
    """Placeholder until the synthetic data writer lands; see below."""
    raise NotImplementedError
