"""Data curation with uncertainty: score the image-text pairs of a pool of shards, filter them by rules.

- :func:`score_pool` (``probclip curate score``): one Parquet row of pair scores per sample (cosine, CSD, match
  probability, each side's uncertainty, the inclusion test both ways), on top of the embedding job.
- :func:`filter_pool` (``probclip curate filter``): rules (:mod:`probclip.curate.rules`) -> DataComp's uid ``.npy``,
  a key list, new shards.
"""

from .pair_scores import SCORE_COLUMNS, pair_scores
from .rules import apply_rules, parse_rule
from .score import read_scores, score_pool
from .subset import filter_pool, reshard, uids_to_datacomp

__all__ = ["SCORE_COLUMNS", "apply_rules", "filter_pool", "pair_scores", "parse_rule", "read_scores", "reshard",
           "score_pool", "uids_to_datacomp"]
