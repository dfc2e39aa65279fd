"""The synthetic world, whose truth is known exactly: scenes, captions and their truth (``world``), the training
source ``data.source: synthetic`` (``source``), the evaluation (``evaluation``), webdataset shards and the
``probclip synth`` command (``shards``, ``cli``) and the quickstart report (``report``).

Importing this package registers the ``synthetic`` data source and its phrase views (``masking.text_mask_mode:
phrase``), the same way a user registers their own.
"""

from ..data.sources import register_source
from ..data.text_views import register_phrase_views
from .evaluation import (
    EvaluationSet,
    build_evaluation_set,
    encode_synthetic,
    evaluate_synthetic,
)
from .source import build_synthetic_source
from .world import Caption, Scene, SyntheticDataset, phrase_view, world_vocabulary

register_source("synthetic", build_synthetic_source)
register_phrase_views("synthetic", phrase_view)

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
