"""The hierarchy head: ProLIP's inclusion test with its per-dimension weights fitted on known hierarchies.

The inclusion test ``test(a in b)`` (:func:`probclip.inclusion_score`) sums, over the embedding dimensions, fixed
terms of the two Gaussians with equal weight. The head keeps the same kind of terms and fits one weight per term and
dimension by logistic regression on pairs whose relation is known (the synthetic world's training split, or any
labelled hierarchy): ``P(a is included in b) = sigmoid(sum_k sum_d W[k, d] F_k[d](a, b) + bias)``, with ``a`` the
more specific side and ``b`` the more general one, and the per-dimension terms (``s = exp(lv)`` the variance,
``p = 1 / s``, ``mu`` the mean)::

    F = [(mu_a - mu_b)^2 p_b, (mu_a - mu_b)^2 p_a, mu_a mu_b, s_a, s_b, p_a, p_b]

Each term is linear in the item features the search already stores for the inclusion candidates
(``[mu, mu^2, s, mu p, mu^2 p, p, sum lv]``, :func:`probclip.search.vectors.inclusion_item_features`), whichever side
the item takes, so a search can find the head's top items with an exact inner-product search
(:meth:`HierarchyHead.query_weights`).

A head has one weight table per pair of modalities it was fitted on, keyed ``"<inner>_in_<outer>"``:
``text_in_text`` (a caption included in a more general caption) and ``image_in_text`` (an image included in a
caption that is true of it). It is stored beside the model as ``hierarchy_head.safetensors``.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from .embedding import ProbEmbedding
from .errors import InputError

__all__ = ["HEAD_FILE", "PAIR_KINDS", "TERMS", "HierarchyHead", "pair_terms", "fit_pair_weights",
           "load_hierarchy_head", "find_hierarchy_head"]

#: File name of a head stored beside a model.
HEAD_FILE = "hierarchy_head.safetensors"
#: Pairs of modalities a head may hold weights for: ``"<inner>_in_<outer>"``.
PAIR_KINDS = ("text_in_text", "image_in_text")
#: The per-dimension terms, in the order of the weight table's rows.
TERMS = ("sq_dist_p_outer", "sq_dist_p_inner", "mean_product", "s_inner", "s_outer", "p_inner", "p_outer")
_FORMAT = "probclip-hierarchy-head-1"
#: Pairs per block when scoring many pairs at once (bounds the ``[block, G, 7, D]`` intermediate).
_BLOCK_ELEMENTS = 2**24


def _sides(embedding: ProbEmbedding | tuple) -> tuple[torch.Tensor, torch.Tensor]:
    if isinstance(embedding, ProbEmbedding):
        return embedding.mean.double(), embedding.logvar.double()
    mean, logvar = embedding
    return torch.as_tensor(mean).double(), torch.as_tensor(logvar).double()


def pair_terms(inner: ProbEmbedding, outer: ProbEmbedding) -> torch.Tensor:
    """The head's terms of every pair: ``[Ni, No, 7, D]`` float64 for ``inner`` ``[Ni, D]`` and ``outer`` ``[No, D]``
    (``TERMS`` order)."""
    mu_a, lv_a = _sides(inner)
    mu_b, lv_b = _sides(outer)
    s_a, s_b, p_a, p_b = lv_a.exp(), lv_b.exp(), (-lv_a).exp(), (-lv_b).exp()
    d2 = (mu_a[:, None] - mu_b[None]) ** 2
    n_a, n_b = len(mu_a), len(mu_b)
    return torch.stack([d2 * p_b[None], d2 * p_a[:, None], mu_a[:, None] * mu_b[None],
                        s_a[:, None].expand(n_a, n_b, -1), s_b[None].expand(n_a, n_b, -1),
                        p_a[:, None].expand(n_a, n_b, -1), p_b[None].expand(n_a, n_b, -1)], dim=2)


@dataclass(frozen=True)
class PairWeights:
    """The fitted weights of one pair kind: ``weights`` ``[7, D]`` float64 (rows in ``TERMS`` order), ``bias``."""

    weights: np.ndarray
    bias: float
    fitted_on: str = ""

    def logits(self, inner: ProbEmbedding, outer: ProbEmbedding) -> torch.Tensor:
        """``[Ni, No]`` float64 logits of ``P(inner_i included in outer_j)``."""
        w = torch.as_tensor(self.weights, dtype=torch.float64)
        n_o = max(1, len(outer))
        rows = max(1, _BLOCK_ELEMENTS // (n_o * w.numel()))
        parts = [torch.einsum("ijkd,kd->ij", pair_terms(inner[s: s + rows], outer), w)
                 for s in range(0, len(inner), rows)]
        return (torch.cat(parts) if parts else torch.zeros(0, len(outer), dtype=torch.float64)) + self.bias


@dataclass(frozen=True)
class HierarchyHead:
    """Fitted inclusion weights per pair kind (``pairs``: ``{"text_in_text": PairWeights, ...}``)."""

    pairs: dict = field(default_factory=dict)

    @property
    def dim(self) -> int:
        """The embedding dimension ``D`` the head was fitted for."""
        return next(iter(self.pairs.values())).weights.shape[1]

    def kind(self, inner: str, outer: str) -> PairWeights | None:
        """The weights for ``inner`` included in ``outer`` (modalities ``text`` / ``image``), or None."""
        return self.pairs.get(f"{inner}_in_{outer}")

    def query_weights(self, kind: str, mean: np.ndarray, logvar: np.ndarray, query_side: str) -> np.ndarray:
        """float64 ``[Q, 6D + 1]`` weights over the stored item features ``[mu, mu^2, s, mu p, mu^2 p, p, sum lv]``:
        ``features @ weights.T`` is the head's logit up to a per-query constant, exactly.

        ``query_side``: ``"inner"`` (the items are the more general side: search "more general") or ``"outer"``
        (the items are the more specific side: "more specific").
        """
        if query_side not in ("inner", "outer"):
            raise ValueError(f"query_side must be 'inner' or 'outer'; got {query_side!r}")
        w = self.pairs[kind].weights
        mu, p = np.asarray(mean, np.float64), np.exp(-np.asarray(logvar, np.float64))
        w_d2_item_p, w_d2_query_p = (w[0], w[1]) if query_side == "inner" else (w[1], w[0])
        w_s_item, w_p_item = (w[4], w[6]) if query_side == "inner" else (w[3], w[5])
        # (mu_q - mu_x)^2 p_x = mu_q^2 p_x - 2 mu_q (mu p)_x + (mu^2 p)_x ; (mu_q - mu_x)^2 p_q: on mu_x and mu_x^2
        on_mu = -2 * w_d2_query_p * p * mu + w[2] * mu
        on_sq = w_d2_query_p * p
        on_s = np.broadcast_to(w_s_item, mu.shape)
        on_mp = -2 * w_d2_item_p * mu
        on_sqp = np.broadcast_to(w_d2_item_p, mu.shape)
        on_p = w_d2_item_p * mu * mu + w_p_item
        return np.concatenate([on_mu, on_sq, on_s, on_mp, on_sqp, on_p, np.zeros((mu.shape[0], 1))], axis=1)

    def to_file(self, path: str | Path) -> Path:
        """Write the head as safetensors (float64 tables, the fit's description in the metadata)."""
        from safetensors.numpy import save_file

        path = Path(path)
        tensors = {f"{k}.weights": np.ascontiguousarray(v.weights, np.float64) for k, v in self.pairs.items()}
        tensors.update({f"{k}.bias": np.array([v.bias], np.float64) for k, v in self.pairs.items()})
        meta = {"format": _FORMAT, "terms": json.dumps(TERMS),
                "fitted_on": json.dumps({k: v.fitted_on for k, v in self.pairs.items()})}
        save_file(tensors, str(path), metadata=meta)
        return path


def load_hierarchy_head(path: str | Path, dim: int | None = None) -> HierarchyHead:
    """Read a head written by :meth:`HierarchyHead.to_file`; ``dim``: the embedding dimension it must have.

    Raises ``InputError`` naming the file for anything but a well-formed head.
    """
    from safetensors import SafetensorError, safe_open

    path = Path(path)
    try:
        with safe_open(str(path), framework="numpy") as f:
            meta, tensors = f.metadata() or {}, {k: f.get_tensor(k) for k in f.keys()}
    except (OSError, SafetensorError) as err:
        raise InputError(f"{path} is not a readable hierarchy head ({err}); delete it or fit it again") from err
    if meta.get("format") != _FORMAT:
        raise InputError(f"{path} is not a hierarchy head: format {meta.get('format')!r}, expected {_FORMAT!r}")
    try:
        fitted_on = json.loads(meta.get("fitted_on", "{}"))
    except json.JSONDecodeError as err:
        raise InputError(f"{path}: its 'fitted_on' metadata is not valid JSON ({err})") from err
    kinds = sorted({k.split(".")[0] for k in tensors})
    unknown = [k for k in kinds if k not in PAIR_KINDS]
    if unknown or not kinds or set(tensors) != {f"{k}.{t}" for k in kinds for t in ("weights", "bias")}:
        raise InputError(f"{path} holds tensors {sorted(tensors)}; expected '<kind>.weights' and '<kind>.bias' for "
                         f"kinds among {list(PAIR_KINDS)}")
    pairs = {}
    for k in kinds:
        w, b = tensors[f"{k}.weights"].astype(np.float64), tensors[f"{k}.bias"].astype(np.float64)
        if w.ndim != 2 or w.shape[0] != len(TERMS) or b.shape != (1,):
            raise InputError(f"{path}: {k} has weights {w.shape} and bias {b.shape}; expected "
                             f"({len(TERMS)}, D) and (1,)")
        if dim is not None and w.shape[1] != dim:
            raise InputError(f"{path}: {k} was fitted for {w.shape[1]}-dimensional embeddings; this model's are "
                             f"{dim}-dimensional")
        if not (np.isfinite(w).all() and np.isfinite(b).all()):
            raise InputError(f"{path}: {k} holds non-finite weights")
        pairs[k] = PairWeights(w, float(b[0]), str(fitted_on.get(k, "")) if isinstance(fitted_on, dict) else "")
    return HierarchyHead(pairs)


def find_hierarchy_head(model_dir: str | Path | None, dim: int | None = None) -> HierarchyHead | None:
    """The head stored in ``model_dir`` (``HEAD_FILE``), or None when the directory has none."""
    if model_dir is None:
        return None
    path = Path(model_dir) / HEAD_FILE
    return load_hierarchy_head(path, dim) if path.is_file() else None


def fit_pair_weights(inner: ProbEmbedding, outer: ProbEmbedding, truth: np.ndarray, fitted_on: str = "",
                     negatives_per_positive: float = 8.0, seed: int = 0, l2: float = 1e-4) -> PairWeights:
    """Fit one pair kind by logistic regression on ``truth`` ``[Ni, No]`` (``inner_i`` included in ``outer_j``).

    Every positive pair is used, and a seeded sample of ``negatives_per_positive`` negatives per positive (all of
    them when there are fewer); the two classes are weighted equally. L-BFGS on standardised terms with an L2
    penalty ``l2``; the result is folded back into raw-term weights.
    """
    truth = np.asarray(truth, dtype=bool)
    if truth.shape != (len(inner), len(outer)) or truth.all() or not truth.any():
        raise ValueError(f"truth must be a [inner, outer] = [{len(inner)}, {len(outer)}] boolean matrix holding both "
                         f"related and unrelated pairs; got shape {truth.shape}")
    rng = np.random.default_rng(seed)
    pos = np.flatnonzero(truth)
    neg = np.flatnonzero(~truth)
    take = min(neg.size, int(round(negatives_per_positive * pos.size)))
    neg = np.sort(rng.choice(neg, size=take, replace=False))
    chosen = np.concatenate([pos, neg])
    rows, cols = np.divmod(chosen, truth.shape[1])
    mu_a, lv_a = _sides(inner)
    mu_b, lv_b = _sides(outer)
    x = _terms_of_pairs(mu_a, lv_a, mu_b, lv_b, rows, cols)
    x = x.reshape(len(chosen), -1)
    y = torch.as_tensor(truth.ravel()[chosen], dtype=torch.float64)
    weight = torch.where(y > 0, 0.5 / max(1, pos.size), 0.5 / max(1, take)).double()
    mean, std = x.mean(0), x.std(0).clamp_min(1e-12)
    z = (x - mean) / std
    w = torch.zeros(z.shape[1] + 1, dtype=torch.float64, requires_grad=True)
    optimizer = torch.optim.LBFGS([w], max_iter=500, line_search_fn="strong_wolfe")

    def closure():
        optimizer.zero_grad()
        logits = z @ w[:-1] + w[-1]
        loss = (torch.nn.functional.binary_cross_entropy_with_logits(logits, y, reduction="none") * weight).sum()
        loss = loss + l2 * w[:-1].pow(2).sum()
        loss.backward()
        return loss

    optimizer.step(closure)
    w = w.detach()
    raw = w[:-1] / std
    bias = float(w[-1] - (mean / std) @ w[:-1])
    return PairWeights(raw.reshape(len(TERMS), -1).numpy(), bias, fitted_on)


def _terms_of_pairs(mu_a, lv_a, mu_b, lv_b, rows: np.ndarray, cols: np.ndarray) -> torch.Tensor:
    """``[P, 7, D]`` terms of the pairs ``(rows[i], cols[i])``."""
    ra, cb = torch.as_tensor(rows), torch.as_tensor(cols)
    ma, la, mb, lb = mu_a[ra], lv_a[ra], mu_b[cb], lv_b[cb]
    d2 = (ma - mb) ** 2
    return torch.stack([d2 * (-lb).exp(), d2 * (-la).exp(), ma * mb, la.exp(), lb.exp(), (-la).exp(), (-lb).exp()], 1)
