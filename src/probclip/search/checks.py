"""The query embeddings a search is given, checked before it runs (the search options are checked by
:class:`probclip.search.options.SearchOptions`).

A value that cannot mean anything (NaN, infinity, a mean that is not unit norm like the stored means, a log-variance
out of range) is a ``UsageError`` naming it and what is accepted, in the Python API, the CLI and over HTTP (where it
becomes a 400 answer); nothing is searched with it.
"""

from __future__ import annotations

import numpy as np

from ..embedding import ProbEmbedding
from ..errors import UsageError

__all__ = ["MAX_ABS_LOGVAR", "NORM_TOLERANCE", "check_query_embedding", "check_embeddings_finite"]

#: How far a query mean's L2 norm may be from 1 (the stored means are unit vectors; float16 storage keeps them
#: within 1e-3 of it).
NORM_TOLERANCE = 1e-2
#: Largest |log-variance| of a query (sigma^2 from 1e-13 to 1e13; trained models stay well inside).
MAX_ABS_LOGVAR = 30.0


def check_embeddings_finite(mean: np.ndarray, logvar: np.ndarray, what: str) -> None:
    """Raise ``UsageError`` when ``mean`` or ``logvar`` (``[N, D]``) holds NaN or infinity, naming the first row."""
    bad = ~(np.isfinite(mean).all(axis=-1) & np.isfinite(logvar).all(axis=-1))
    if bad.any():
        first = int(np.flatnonzero(bad.reshape(-1))[0])
        raise UsageError(f"{what} holds NaN or infinite values ({int(bad.sum())} of {bad.size} rows, first: row "
                         f"{first}); finite means and log-variances are required")


def check_query_embedding(emb: ProbEmbedding, dim: int, model_name: str) -> None:
    """Refuse a query embedding ``[Q, D]`` that does not look like the stored ones: the wrong dimension, NaN or
    infinite values, a mean whose L2 norm is not 1 (within ``NORM_TOLERANCE``), or |log-variance| over
    ``MAX_ABS_LOGVAR``."""
    if emb.mean.shape[-1] != dim:
        raise UsageError(f"query dimension {emb.mean.shape[-1]} differs from the index's {dim} ({model_name}); "
                         "encode queries with the collection's model")
    mean, logvar = emb.mean.numpy().astype(np.float64), emb.logvar.numpy().astype(np.float64)
    check_embeddings_finite(mean, logvar, "query")
    norms = np.linalg.norm(mean, axis=-1)  # float64: a mean of 1e38s has a finite norm
    off = np.abs(norms - 1.0) > NORM_TOLERANCE
    if off.any():
        first = int(np.flatnonzero(off)[0])
        raise UsageError(f"query mean has L2 norm {norms[first]:.4g} (row {first}); the collection's means are unit "
                         f"vectors, so a query mean must have norm 1 (within {NORM_TOLERANCE}): divide it by its norm")
    peak = float(np.abs(logvar).max(initial=0.0))
    if peak > MAX_ABS_LOGVAR:
        raise UsageError(f"query log-variance of {peak:.4g} in absolute value is out of range; expected values in "
                         f"[-{MAX_ABS_LOGVAR:g}, {MAX_ABS_LOGVAR:g}] (log sigma^2)")
