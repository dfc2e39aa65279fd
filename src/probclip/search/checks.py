"""The numbers a search is given, checked before it runs: query embeddings and search options.

A value that cannot mean anything (NaN, infinity, a negative or out-of-range filter, a mean that is not unit norm
like the stored means) is a ``UsageError`` naming it and what is accepted, in the Python API, the CLI and over HTTP
(where it becomes a 400 answer); nothing is searched with it.
"""

from __future__ import annotations

import math

import numpy as np

from ..embedding import ProbEmbedding
from ..errors import UsageError

__all__ = ["MAX_ABS_EPS", "MAX_ABS_LOGVAR", "NORM_TOLERANCE", "check_query_embedding", "check_embeddings_finite",
           "check_search_options"]

#: How far a query mean's L2 norm may be from 1 (the stored means are unit vectors; float16 storage keeps them
#: within 1e-3 of it).
NORM_TOLERANCE = 1e-2
#: Largest |log-variance| of a query (sigma^2 from 1e-13 to 1e13; trained models stay well inside).
MAX_ABS_LOGVAR = 30.0
#: Largest |eps| of the inclusion test: its precisions are exp(eps - logvar), which must stay finite in float64.
MAX_ABS_EPS = 100.0


def _is_number(value) -> bool:
    return isinstance(value, (int, float, np.integer, np.floating)) and not isinstance(value, (bool, np.bool_))


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


def check_search_options(*, k, max_uncertainty, uncertainty_quantile, eps, oversample) -> None:
    """Refuse search options that cannot mean anything: ``k`` and ``oversample`` must be positive integers,
    ``max_uncertainty`` a finite number > 0 (u is a sum of variances), ``uncertainty_quantile`` a finite number in
    (0, 1], ``eps`` a finite number with |eps| <= ``MAX_ABS_EPS``."""
    if isinstance(k, (bool, np.bool_)) or not isinstance(k, (int, np.integer)) or k < 1:
        raise UsageError(f"k must be a positive integer; got {k!r}")
    if oversample is not None and (isinstance(oversample, (bool, np.bool_))
                                   or not isinstance(oversample, (int, np.integer)) or oversample < 1):
        raise UsageError(f"oversample must be a positive integer; got {oversample!r}")
    if max_uncertainty is not None and not (_is_number(max_uncertainty) and math.isfinite(max_uncertainty)
                                            and max_uncertainty > 0):
        raise UsageError(f"max_uncertainty must be a finite number > 0 (u, the sum of an item's variances, is "
                         f"positive); got {max_uncertainty!r}")
    if uncertainty_quantile is not None and not (_is_number(uncertainty_quantile)
                                                 and 0 < uncertainty_quantile <= 1):
        raise UsageError(f"uncertainty_quantile must lie in (0, 1]; got {uncertainty_quantile!r}")
    if not (_is_number(eps) and math.isfinite(eps) and abs(eps) <= MAX_ABS_EPS):
        raise UsageError(f"eps must be a finite number from -{MAX_ABS_EPS:g} to {MAX_ABS_EPS:g} (training used -10 "
                         f"and -20); got {eps!r}")
