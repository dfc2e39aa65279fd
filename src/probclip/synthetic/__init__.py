"""The synthetic world, whose truth is known exactly: scenes, captions and their truth (``world``), the training
source ``data.source: synthetic`` (``source``), the evaluation (``evaluation``), webdataset shards and the
``probclip synth`` command (``shards``, ``cli``) and the quickstart report (``report``).

Importing this package registers the ``synthetic`` data source, the same way a user registers their own.
"""

from ..data.sources import register_source
from .evaluation import (
    EvaluationSet,
    build_evaluation_set,
    encode_synthetic,
    evaluate_synthetic,
)
from .source import build_synthetic_source
from .world import Caption, Scene, SyntheticDataset, world_vocabulary

register_source("synthetic", build_synthetic_source)

__all__ = [
    "Caption",
    "EvaluationSet",
    "Scene",
    "SyntheticDataset",
    "build_evaluation_set",
    "build_synthetic_source",
    "encode_synthetic",
    "evaluate_synthetic",
    "world_vocabulary",
]
