"""The scores of one image-text pair, from the two stored Gaussian embeddings.

Every function takes the image and text sides row by row (``[n, D]`` means and log-variances, float32 or float64)
and returns float64 ``[n]``. The columns of a scores folder (:data:`SCORE_COLUMNS`):

- ``cosine``: cosine of the two means (the CLIP score of a deterministic model);
- ``csd``: closed-form sampled distance ``||mu_i - mu_t||^2 + u_i + u_t`` (lower: a better match);
- ``match_prob``: the match probability the model was trained to output,
  ``sigmoid(s * (mu_i . mu_t - (u_i + u_t) / 2) + b)`` with ``s = exp(logit_scale)``, ``b = logit_bias``;
- ``image_u``, ``text_u``: each side's uncertainty ``u = sum_d exp(logvar_d)`` (as stored in the collection);
- ``image_in_text``, ``text_in_image``: ProLIP's inclusion test at ``eps = 0`` in each direction
  (larger: more included), the formula of :func:`probclip.search.vectors.inclusion_tests`.
"""

from __future__ import annotations

import numpy as np

from ..search.vectors import inclusion_tests

__all__ = ["SCORE_COLUMNS", "pair_scores"]

SCORE_COLUMNS = ("cosine", "csd", "match_prob", "image_u", "text_u", "image_in_text", "text_in_image")


def pair_scores(image_mean: np.ndarray, image_logvar: np.ndarray, image_u: np.ndarray, text_mean: np.ndarray,
                text_logvar: np.ndarray, text_u: np.ndarray, logit_scale: float, logit_bias: float
                ) -> dict[str, np.ndarray]:
    """``{column: float64 [n]}`` for the pairs ``(image row k, text row k)``.

    ``image_u`` / ``text_u``: float ``[n]``, each row's ``sum exp(logvar)`` (the stored value, exact whatever the
    storage dtype of the log-variances). ``logit_scale`` / ``logit_bias``: the model's parameters (log scale, bias).
    """
    mi = np.asarray(image_mean, dtype=np.float64)
    mt = np.asarray(text_mean, dtype=np.float64)
    ui = np.asarray(image_u, dtype=np.float64)
    ut = np.asarray(text_u, dtype=np.float64)
    dot = (mi * mt).sum(-1)
    norms = np.linalg.norm(mi, axis=-1) * np.linalg.norm(mt, axis=-1)
    cosine = dot / np.maximum(norms, 1e-12)
    csd = ((mi - mt) ** 2).sum(-1) + ui + ut
    logit = float(np.exp(logit_scale)) * (dot - (ui + ut) / 2) + float(logit_bias)
    match_prob = 0.5 * (1 + np.tanh(logit / 2))  # sigmoid without overflow warnings
    image_in_text, text_in_image = inclusion_tests(mi, image_logvar, mt, text_logvar, eps=0.0)
    return {"cosine": cosine, "csd": csd, "match_prob": match_prob, "image_u": ui, "text_u": ut,
            "image_in_text": image_in_text, "text_in_image": text_in_image}
