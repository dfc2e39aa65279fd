"""Uncertainty-aware search over embedded collections: embed, index (FAISS or Milvus), search.

- :func:`embed_collection`: images and texts -> shards of means, log-variances and Parquet metadata + manifest.
- :func:`build_index`: the CSD index over augmented L2 vectors by a registered backend (flat / HNSW / IVF-PQ /
  Milvus, or one added with :func:`register_backend`; knobs in :class:`IndexOptions`) and the inclusion candidate
  index.
- :class:`SearchIndex`: ``SearchIndex.load(dir, modality).search(query, k, score=...)`` -> :class:`SearchResults`;
  :class:`SearchOptions` is the one definition of the search options (the API, the CLI and the HTTP schema).
- ``probclip.search.quickstart.prepare_quickstart_collection``: the synthetic world's test split, embedded and
  indexed with a quickstart model. It is the package's one glue module to the synthetic world (and, through it,
  the evaluation code), so it is not imported here: ``import probclip.search`` loads no training or evaluation
  code.
"""

from .backends import IndexOptions, register_backend
from .embed import embed_collection
from .index import build_index
from .options import SearchOptions
from .results import SCORES, SearchResults
from .searcher import SearchIndex

__all__ = ["SCORES", "IndexOptions", "SearchIndex", "SearchOptions", "SearchResults", "build_index",
           "embed_collection", "register_backend"]
