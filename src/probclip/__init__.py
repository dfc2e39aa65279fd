"""probclip: probabilistic vision-language models (ProLIP, LongProLIP, PCME++).

Public API (the rest lives in submodules: ``probclip.losses``, ``probclip.data``, ``probclip.train``,
``probclip.eval``):

- ``ProbEmbedding``: a batch of diagonal Gaussians (``mean``, ``logvar``, ``uncertainty``).
- distances: ``csd``, ``inclusion_score``, ``match_probability``, ``wasserstein2``.
"""

from .distances import (
    csd,
    csd_paired,
    inclusion_score,
    inclusion_score_paired,
    match_probability,
    wasserstein2,
)
from .embedding import ProbEmbedding

__version__ = "0.1.0"

__all__ = [
    "ProbEmbedding",
    "csd",
    "csd_paired",
    "inclusion_score",
    "inclusion_score_paired",
    "match_probability",
    "wasserstein2",
]
