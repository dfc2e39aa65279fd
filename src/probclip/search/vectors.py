"""The vector forms that turn uncertainty-aware scores into plain vector searches.

- CSD as an L2 search: gallery ``[mu, sqrt(u)]``, query ``[mu_q, 0]``; then ``||x - q||^2 = CSD - u_q`` exactly.
- Candidates for the inclusion test: per dimension the test is (``s`` = variance, item ``x``, query ``q``)::

      includes (x in q):  -1.5 lv_x - 0.5 log(s_x + 2 s_q) - e^eps (mu_x - mu_q)^2 / (s_x + 2 s_q) + const(q)
      included (q in x):  -0.5 lv_x - 0.5 log(s_q + 2 s_x) - e^eps (mu_x - mu_q)^2 / (s_q + 2 s_x) + const(q)

  The item and the query are coupled through ``s_x + 2 s_q``. Freezing the item variance in the denominators at the
  collection's mean variance ``s_bar`` (first order in ``s_x - s_bar`` for the log) makes each an inner product of
  item features ``[mu, mu^2, s, sum(lv)]`` (3D + 1) with query weights: an exact maximum-inner-product search over
  an approximation, used only to propose candidates that are then re-ranked with the exact test.
"""

from __future__ import annotations

import numpy as np

__all__ = ["augment_gallery", "augment_query", "inclusion_item_features", "inclusion_query_weights", "inclusion_test"]


def augment_gallery(mean: np.ndarray, u: np.ndarray) -> np.ndarray:
    """float32 ``[n, D + 1]``: ``[mu, sqrt(u)]`` for the L2 form of CSD."""
    out = np.empty((mean.shape[0], mean.shape[1] + 1), dtype=np.float32)
    out[:, :-1] = mean
    out[:, -1] = np.sqrt(np.maximum(u, 0))
    return out


def augment_query(mean: np.ndarray, pad_to: int | None = None) -> np.ndarray:
    """float32 ``[q, D + 1]`` (or ``[q, pad_to]``, zero-padded): ``[mu_q, 0]``."""
    width = mean.shape[1] + 1 if pad_to is None else pad_to
    out = np.zeros((mean.shape[0], width), dtype=np.float32)
    out[:, : mean.shape[1]] = mean
    return out


def inclusion_item_features(mean: np.ndarray, logvar: np.ndarray) -> np.ndarray:
    """float32 ``[n, 3D + 1]``: ``[mu, mu^2, exp(lv), sum_d lv]`` of gallery items (inputs float32 ``[n, D]``)."""
    mean = mean.astype(np.float32, copy=False)
    logvar = logvar.astype(np.float32, copy=False)
    return np.concatenate([mean, mean * mean, np.exp(logvar), logvar.sum(-1, keepdims=True)], axis=1)


def inclusion_query_weights(mean: np.ndarray, logvar: np.ndarray, mean_variance: np.ndarray, direction: str,
                            eps: float = 0.0) -> np.ndarray:
    """float32 ``[q, 3D + 1]`` query weights; ``features @ weights.T`` approximates the test up to a per-query constant.

    ``direction``: ``includes`` (items included in the query) or ``included`` (items that include the query).
    ``mean_variance``: float32 ``[D]``, the collection's mean per-dimension variance.
    """
    mean = mean.astype(np.float64)
    s_q = np.exp(logvar.astype(np.float64))
    s_bar = mean_variance.astype(np.float64)[None, :]
    scale = np.exp(eps)
    if direction == "includes":
        den, log_coef, lv_coef = s_bar + 2 * s_q, -0.5, -1.5
    elif direction == "included":
        den, log_coef, lv_coef = s_q + 2 * s_bar, -1.0, -0.5
    else:
        raise ValueError(f"direction must be 'includes' or 'included'; got {direction!r}")
    weights = np.concatenate([2 * scale * mean / den, -scale / den, log_coef / den,
                              np.full((mean.shape[0], 1), lv_coef)], axis=1)
    return weights.astype(np.float32)


def inclusion_test(mu1: np.ndarray, lv1: np.ndarray, mu2: np.ndarray, lv2: np.ndarray, eps: float = 0.0) -> np.ndarray:
    """ProLIP's inclusion test "1 is included in 2" in float64 numpy, broadcasting ``[..., D]`` -> ``[...]``.

    The formula of :func:`probclip.inclusion_score` (mean over dimensions), for re-ranking a few candidates
    without the thread start-up cost of a torch call.
    """
    mu1, lv1, mu2, lv2 = (np.asarray(x, dtype=np.float64) for x in (mu1, lv1, mu2, lv2))
    p1, p2 = np.exp(-lv1 + eps), np.exp(-lv2 + eps)
    a = p1 + p2 / 2
    b = 2 * mu1 * p1 + mu2 * p2
    c = mu1**2 * p1 + mu2**2 * p2 / 2
    return (-2 * lv1 - lv2 - np.log(a) / 2 + b**2 / (4 * a) - c).mean(-1)
