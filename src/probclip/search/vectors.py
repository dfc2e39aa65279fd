"""The vector forms that turn uncertainty-aware scores into plain vector searches.

- CSD as an L2 search: gallery ``[mu, sqrt(u)]``, query ``[mu_q, 0]``; then ``||x - q||^2 = CSD - u_q`` exactly.
- Candidates for the inclusion test: per dimension the test is (``s`` = variance, ``p = 1/s``, item ``x``, query
  ``q``)::

      includes (x in q):  -1.5 lv_x - 0.5 log(s_x + 2 s_q) - e^eps (mu_x - mu_q)^2 / (s_x + 2 s_q) + const(q)
      included (q in x):  -0.5 lv_x - 0.5 log(s_q + 2 s_x) - e^eps (mu_x - mu_q)^2 / (s_q + 2 s_x) + const(q)

  The item and the query are coupled through ``s_x + 2 s_q`` and ``s_q + 2 s_x``. Each direction freezes the
  coupling where the items it looks for make it small: ``includes`` (items less uncertain than the query) freezes
  the item variance at the collection's mean ``s_bar`` (first order in ``s_x - s_bar`` for the log), linear in
  ``[mu, mu^2, s, sum(lv)]``; ``included`` (items more uncertain) freezes the ratio ``s_q / s_x`` at
  ``r = s_q / s_bar``, so that ``s_q + 2 s_x ~ (2 + r) s_x``, linear in ``[mu p, mu^2 p, p, sum(lv)]``. One item
  feature row ``[mu, mu^2, s, mu p, mu^2 p, p, sum(lv)]`` (``6D + 1`` floats) serves both directions, and also
  their difference: a query can ask for the approximate test plus the approximate margin over the reverse test
  (the direction check), all as exact maximum-inner-product searches over approximations, used only to propose
  candidates that are then re-ranked with the exact test.
"""

from __future__ import annotations

import numpy as np

__all__ = ["INCLUSION_DIRECTIONS", "augment_gallery", "augment_query", "inclusion_feature_products",
           "inclusion_item_features", "inclusion_query_weights", "inclusion_test", "inclusion_tests"]


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


INCLUSION_DIRECTIONS = ("includes", "included")


def _check_direction(direction: str) -> None:
    if direction not in INCLUSION_DIRECTIONS:
        raise ValueError(f"direction must be one of {list(INCLUSION_DIRECTIONS)}; got {direction!r}")


def inclusion_item_features(mean: np.ndarray, logvar: np.ndarray) -> np.ndarray:
    """float32 ``[n, 6D + 1]`` candidate features of gallery items (inputs ``[n, D]``):
    ``[mu, mu^2, s, mu p, mu^2 p, p, sum_d lv]`` with ``s = exp(lv)``, ``p = exp(-lv)``."""
    mean = mean.astype(np.float32, copy=False)
    logvar = logvar.astype(np.float32, copy=False)
    s, p = np.exp(logvar), np.exp(-logvar)
    square = mean * mean
    return np.concatenate([mean, square, s, mean * p, square * p, p, logvar.sum(-1, keepdims=True)], axis=1)


def inclusion_feature_products(mean: np.ndarray, logvar: np.ndarray, weights: np.ndarray) -> np.ndarray:
    """float64 ``[n]``: ``inclusion_item_features(mean, logvar) @ weights`` for ``weights`` ``[6D + 1]``, computed in
    float64 one feature block ``[n, D]`` at a time (never the ``[n, 6D + 1]`` matrix): the exact value of a linear
    score over the features, such as the hierarchy head's logit up to its per-query constant."""
    mean, logvar = np.asarray(mean, np.float64), np.asarray(logvar, np.float64)
    w = np.asarray(weights, np.float64)
    dim = mean.shape[1]
    block = [w[i * dim:(i + 1) * dim] for i in range(6)]
    out = mean @ block[0] + (mean * mean) @ block[1]
    s = np.exp(logvar)
    out += s @ block[2]
    p = np.reciprocal(s, out=s)
    out += (mean * p) @ block[3] + (mean * mean * p) @ block[4] + p @ block[5]
    return out + logvar.sum(1) * w[6 * dim]


def _direction_weights(mean: np.ndarray, s_q: np.ndarray, s_bar: np.ndarray, direction: str,
                       scale: float) -> np.ndarray:
    """float64 ``[q, 6D + 1]``: the approximate test of one direction, up to a per-query constant."""
    zeros = np.zeros_like(mean)
    if direction == "includes":  # test(x in q), s_x frozen at s_bar in the coupled terms
        den = s_bar + 2 * s_q
        blocks = [2 * scale * mean / den, -scale / den, -0.5 / den, zeros, zeros, zeros]
        lv = -1.5
    else:  # test(q in x), s_q / s_x frozen at r = s_q / s_bar: 1 / (s_q + 2 s_x) ~ p_x / (2 + r)
        den = 2 + s_q / s_bar
        blocks = [zeros, zeros, zeros, 2 * scale * mean / den, -scale / den, -scale * mean * mean / den]
        lv = -1.0
    return np.concatenate([*blocks, np.full((mean.shape[0], 1), lv)], axis=1)


def inclusion_query_weights(mean: np.ndarray, logvar: np.ndarray, mean_variance: np.ndarray, direction: str,
                            eps: float = 0.0, margin_weight: float = 0.0) -> np.ndarray:
    """float32 ``[q, 6D + 1]`` query weights for :func:`inclusion_item_features`.

    ``features @ weights.T`` approximates, up to a per-query constant, the test in ``direction`` (``includes``:
    items included in the query; ``included``: items that include the query) plus ``margin_weight`` times its
    margin over the reverse test. ``mean_variance``: float32 ``[D]``, the collection's mean per-dimension variance.
    """
    _check_direction(direction)
    mean = mean.astype(np.float64)
    s_q = np.exp(logvar.astype(np.float64))
    s_bar = mean_variance.astype(np.float64)[None, :]
    scale = float(np.exp(eps))
    reverse = "included" if direction == "includes" else "includes"
    asked = _direction_weights(mean, s_q, s_bar, direction, scale)
    if margin_weight:
        asked = (1 + margin_weight) * asked - margin_weight * _direction_weights(mean, s_q, s_bar, reverse, scale)
    return asked.astype(np.float32)


def _precision_terms(mu: np.ndarray, lv: np.ndarray, eps: float) -> tuple[np.ndarray, ...]:
    """float64 ``(mu, lv, p, mu p, mu^2 p)`` with ``p = exp(-lv + eps)``: what the test needs of one side."""
    mu, lv = np.asarray(mu, dtype=np.float64), np.asarray(lv, dtype=np.float64)
    p = np.exp(-lv + eps)
    mp = mu * p
    return mu, lv, p, mp, mu * mp


def _test_from_terms(inner: tuple[np.ndarray, ...], outer: tuple[np.ndarray, ...]) -> np.ndarray:
    """test(inner in outer), mean over the last axis, from :func:`_precision_terms` of both sides."""
    _, lv1, p1, mp1, sq1 = inner
    _, lv2, p2, mp2, sq2 = outer
    a = p1 + p2 / 2
    b = 2 * mp1 + mp2
    return (-2 * lv1 - lv2 - np.log(a) / 2 + b * b / (4 * a) - sq1 - sq2 / 2).mean(-1)


def inclusion_tests(mu1: np.ndarray, lv1: np.ndarray, mu2: np.ndarray, lv2: np.ndarray,
                    eps: float = 0.0) -> tuple[np.ndarray, np.ndarray]:
    """Both directions of :func:`inclusion_test` at once, ``(test(1 in 2), test(2 in 1))`` (the precisions shared)."""
    one, two = _precision_terms(mu1, lv1, eps), _precision_terms(mu2, lv2, eps)
    return _test_from_terms(one, two), _test_from_terms(two, one)


def inclusion_test(mu1: np.ndarray, lv1: np.ndarray, mu2: np.ndarray, lv2: np.ndarray, eps: float = 0.0) -> np.ndarray:
    """ProLIP's inclusion test "1 is included in 2" in float64 numpy, broadcasting ``[..., D]`` -> ``[...]``.

    The formula of :func:`probclip.inclusion_score` (mean over dimensions), for re-ranking a few candidates
    without the thread start-up cost of a torch call.
    """
    return _test_from_terms(_precision_terms(mu1, lv1, eps), _precision_terms(mu2, lv2, eps))
