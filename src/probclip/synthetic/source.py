"""The synthetic world as a training source: ``data.source: synthetic`` in a training config."""

from __future__ import annotations

from ..data.sources import DatasetPairs
from .world import SyntheticDataset

__all__ = ["build_synthetic_source"]


def build_synthetic_source(data, seed: int) -> DatasetPairs:
    """An indexed source over ``SyntheticDataset(**data.synthetic)``; its ``seed`` defaults to the run seed.

    ``data`` is the training config's ``DataSection``; ``data.synthetic`` holds ``SyntheticDataset``'s keyword
    arguments.
    """
    return DatasetPairs(SyntheticDataset(**{"seed": seed, **data.synthetic}), "synthetic")
