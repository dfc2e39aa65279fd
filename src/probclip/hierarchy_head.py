"""The hierarchy head: an inclusion test whose per-dimension terms are weighted as fitted on known hierarchies.

ProLIP's inclusion test ``test(a in b)`` (:func:`probclip.inclusion_score`) adds, over the embedding dimensions, a
fixed function of the two Gaussians' means and variances, with equal weight per dimension. The head keeps the same
ingredients and fits how they combine, per dimension, by logistic regression on pairs whose relation is known (the
synthetic world's training split, or any labelled hierarchy)::

    P(a is included in b) = sigmoid(sum_d sum_(k, l) W[(k, l), d] f_k(a)[d] f_l(b)[d] + bias)

with ``a`` the more specific side ("inner"), ``b`` the more general one ("outer") and the per-dimension functions
``f`` in ``BASIS = (1, mu, mu^2, s, p)`` (``s = exp(lv)`` the variance, ``p = 1 / s``): every product of one
function of each side (``TERMS``, 24 of them; the constant ``1 x 1`` is the bias). The test's own terms are such
products (``(mu_a - mu_b)^2 p_b = mu_a^2 p_b - 2 mu_a mu_b p_b + mu_b^2 p_b`` needs ``mu p`` and ``mu^2 p`` too,
which the item features hold), so the test is one point of a richer family, and the head picks the point that
separates the known pairs best.

Every term is linear in the item features the search already stores for its inclusion candidates
(``[mu, mu^2, s, mu p, mu^2 p, p, sum lv]``, :func:`probclip.search.vectors.inclusion_item_features`), whichever
side the item takes, so a search finds the head's top items with an exact inner-product search
(:meth:`HierarchyHead.query_weights`).

A head has one weight table per pair of modalities it was fitted on, keyed ``"<inner>_in_<outer>"``:
``text_in_text`` (a caption included in a more general caption) and ``image_in_text`` (an image included in a
caption that is true of it). It is stored beside the model as ``hierarchy_head.safetensors``.

"More specific" ranks by the logit plus ``generality`` times the item's mean log-variance
(:meth:`PairWeights.specific_rank`): among the items the query includes, the nearer, more general specialisations
come first. ``generality`` is chosen on held-out pairs (:func:`probclip.eval.hierarchy.fit_specific_generality`); 0
ranks by the logit alone. It is linear in the stored feature ``sum lv``, so the exact search keeps working. It
changes the order only, never which items pass the direction check nor their probability.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from .embedding import ProbEmbedding
from .errors import InputError

__all__ = ["HEAD_FILE", "PAIR_KINDS", "BASIS", "TERMS", "HierarchyHead", "pair_kind", "pair_terms", "fit_pair_weights",
           "load_hierarchy_head", "find_hierarchy_head"]

#: File name of a head stored beside a model.
HEAD_FILE = "hierarchy_head.safetensors"
#: Pairs of modalities a head may hold weights for: ``"<inner>_in_<outer>"``.
PAIR_KINDS = ("text_in_text", "image_in_text")
#: The per-dimension functions of one side: 1, the mean, its square, the variance, the precision.
BASIS = ("1", "mu", "mu2", "s", "p")
#: The terms ``(inner function, outer function)``, in the order of the weight table's rows (``1 x 1`` is the bias).
TERMS = tuple((inner, outer) for inner in BASIS for outer in BASIS if (inner, outer) != ("1", "1"))
#: Where each function of ``BASIS`` (but the constant) sits among the stored item features
#: ``[mu, mu^2, s, mu p, mu^2 p, p, sum lv]``: the block index.
_FEATURE_BLOCK = {"mu": 0, "mu2": 1, "s": 2, "p": 5}
_FORMAT = "probclip-hierarchy-head-3"
#: Earlier formats this version reads: format 2 has no ``generality`` (read as 0).
_READ_FORMATS = ("probclip-hierarchy-head-2", _FORMAT)
#: Pairs per block when scoring many pairs at once (bounds the ``[block, G, len(TERMS), D]`` intermediate).
_BLOCK_ELEMENTS = 2**24


def pair_kind(inner: str, outer: str) -> str:
    """The key of the weights for modality ``inner`` included in modality ``outer``: ``"<inner>_in_<outer>"``."""
    return f"{inner}_in_{outer}"


def _sides(embedding: ProbEmbedding | tuple) -> tuple[torch.Tensor, torch.Tensor]:
    if isinstance(embedding, ProbEmbedding):
        return embedding.mean.double(), embedding.logvar.double()
    mean, logvar = embedding
    return torch.as_tensor(mean).double(), torch.as_tensor(logvar).double()


def _basis(mean: torch.Tensor, logvar: torch.Tensor) -> torch.Tensor:
    """``[N, len(BASIS), D]`` float64: the functions of ``BASIS`` of each row."""
    return torch.stack([torch.ones_like(mean), mean, mean * mean, logvar.exp(), (-logvar).exp()], dim=1)


def _products(inner_basis: torch.Tensor, outer_basis: torch.Tensor) -> torch.Tensor:
    """``[..., len(TERMS), D]``: the ``TERMS`` of broadcast ``[..., K, D]`` bases of the two sides."""
    products = inner_basis[..., :, None, :] * outer_basis[..., None, :, :]  # [..., K, K, D]
    return products.flatten(-3, -2)[..., 1:, :]


def pair_terms(inner: ProbEmbedding, outer: ProbEmbedding) -> torch.Tensor:
    """The head's terms of every pair: ``[Ni, No, len(TERMS), D]`` float64 for ``inner`` ``[Ni, D]`` and ``outer``
    ``[No, D]`` (``TERMS`` order)."""
    return _products(_basis(*_sides(inner))[:, None], _basis(*_sides(outer))[None])


@dataclass(frozen=True)
class PairWeights:
    """The fitted weights of one pair kind: ``weights`` ``[len(TERMS), D]`` float64 (``TERMS`` order), ``bias``;
    ``generality``: weight of the inner item's mean log-variance in the "more specific" ranking
    (:meth:`specific_rank`)."""

    weights: np.ndarray
    bias: float
    fitted_on: str = ""
    generality: float = 0.0

    def specific_rank(self, logits, inner_logvar):
        """The "more specific" ranking key of inner items ``[..., N]`` (torch or numpy, float64): their logits plus
        ``generality`` times their mean log-variance (``inner_logvar`` ``[N, D]``)."""
        if not self.generality:
            return logits
        return logits + self.generality * inner_logvar.mean(-1)

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
        return self.pairs.get(pair_kind(inner, outer))

    def query_form(self, kind: str, mean: np.ndarray, logvar: np.ndarray,
                   query_side: str) -> tuple[np.ndarray, np.ndarray]:
        """The head's logit for queries ``[Q, D]`` as a linear function of the stored item features
        ``[mu, mu^2, s, mu p, mu^2 p, p, sum lv]``: ``(weights [Q, 6D + 1], constants [Q])``, float64, with
        ``logit = features @ weights.T + constants``, exactly.

        ``query_side``: ``"inner"`` (the items are the more general side: search "more general") or ``"outer"``
        (the items are the more specific side: "more specific").
        """
        if query_side not in ("inner", "outer"):
            raise ValueError(f"query_side must be 'inner' or 'outer'; got {query_side!r}")
        w = np.concatenate([np.zeros((1, self.pairs[kind].weights.shape[1])), self.pairs[kind].weights])
        w = w.reshape(len(BASIS), len(BASIS), -1)  # [inner function, outer function, D]
        if query_side == "outer":
            w = w.transpose(1, 0, 2)  # [query function, item function, D]
        mean, logvar = torch.as_tensor(mean).double(), torch.as_tensor(logvar).double()
        query = _basis(mean, logvar).numpy()  # [Q, K, D]
        on_item = np.einsum("qkd,kld->qld", query, w)  # [Q, item function, D]
        out = np.zeros((mean.shape[0], 6 * mean.shape[1] + 1))
        dim = mean.shape[1]
        for function, block in _FEATURE_BLOCK.items():
            out[:, block * dim:(block + 1) * dim] = on_item[:, BASIS.index(function)]
        constants = on_item[:, BASIS.index("1")].sum(-1) + self.pairs[kind].bias  # the terms of the query alone
        return out, constants

    def query_weights(self, kind: str, mean: np.ndarray, logvar: np.ndarray, query_side: str) -> np.ndarray:
        """float64 ``[Q, 6D + 1]``: the weights of :meth:`query_form` (``features @ weights.T`` is the head's logit
        up to a per-query constant, exactly)."""
        return self.query_form(kind, mean, logvar, query_side)[0]

    def to_file(self, path: str | Path) -> Path:
        """Write the head as safetensors (float64 tables, the fit's description in the metadata)."""
        from safetensors.numpy import save_file

        path = Path(path)
        tensors = {f"{k}.weights": np.ascontiguousarray(v.weights, np.float64) for k, v in self.pairs.items()}
        tensors.update({f"{k}.bias": np.array([v.bias], np.float64) for k, v in self.pairs.items()})
        tensors.update({f"{k}.generality": np.array([v.generality], np.float64) for k, v in self.pairs.items()})
        meta = {"format": _FORMAT, "terms": json.dumps(["x".join(t) for t in TERMS]),
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
    if meta.get("format") not in _READ_FORMATS:
        raise InputError(f"{path} is not a hierarchy head this probclip reads: format {meta.get('format')!r}, "
                         f"expected one of {list(_READ_FORMATS)}")
    parts = ("weights", "bias") if meta["format"] == _READ_FORMATS[0] else ("weights", "bias", "generality")
    try:
        fitted_on = json.loads(meta.get("fitted_on", "{}"))
    except json.JSONDecodeError as err:
        raise InputError(f"{path}: its 'fitted_on' metadata is not valid JSON ({err})") from err
    kinds = sorted({k.split(".")[0] for k in tensors})
    unknown = [k for k in kinds if k not in PAIR_KINDS]
    if unknown or not kinds or set(tensors) != {f"{k}.{t}" for k in kinds for t in parts}:
        expected = " and ".join(f"'<kind>.{t}'" for t in parts)
        raise InputError(f"{path} holds tensors {sorted(tensors)}; expected {expected} for kinds among "
                         f"{list(PAIR_KINDS)}")
    pairs = {}
    for k in kinds:
        w, b = tensors[f"{k}.weights"].astype(np.float64), tensors[f"{k}.bias"].astype(np.float64)
        if w.ndim != 2 or w.shape[0] != len(TERMS) or b.shape != (1,):
            raise InputError(f"{path}: {k} has weights {w.shape} and bias {b.shape}; expected "
                             f"({len(TERMS)}, D) and (1,)")
        if dim is not None and w.shape[1] != dim:
            raise InputError(f"{path}: {k} was fitted for {w.shape[1]}-dimensional embeddings; this model's are "
                             f"{dim}-dimensional")
        g = tensors.get(f"{k}.generality", np.zeros(1)).astype(np.float64)
        if g.shape != (1,):
            raise InputError(f"{path}: {k} has generality of shape {g.shape}; expected (1,)")
        if not (np.isfinite(w).all() and np.isfinite(b).all() and np.isfinite(g).all()):
            raise InputError(f"{path}: {k} holds non-finite weights")
        pairs[k] = PairWeights(w, float(b[0]), str(fitted_on.get(k, "")) if isinstance(fitted_on, dict) else "",
                               float(g[0]))
    return HierarchyHead(pairs)


def find_hierarchy_head(model_dir: str | Path | None, dim: int | None = None) -> HierarchyHead | None:
    """The head stored in ``model_dir`` (``HEAD_FILE``), or None when it holds none (or is not a local folder)."""
    if model_dir is None:
        return None
    path = Path(model_dir) / HEAD_FILE
    return load_hierarchy_head(path, dim) if path.is_file() else None


def fit_pair_weights(inner: ProbEmbedding, outer: ProbEmbedding, truth: np.ndarray, fitted_on: str = "",
                     negatives_per_positive: float = 4.0, seed: int = 0, l2: float = 1e-4,
                     hard_negative_rounds: int = 0, hard_negatives_per_positive: float = 1.0) -> PairWeights:
    """Fit one pair kind by logistic regression on ``truth`` ``[Ni, No]`` (``inner_i`` included in ``outer_j``).

    Every positive pair is used, and a seeded sample of ``negatives_per_positive`` negatives per positive (all of
    them when there are fewer); the two classes are weighted equally. L-BFGS on standardised terms with an L2
    penalty ``l2`` (float32: the terms of ``P`` pairs take ``P x 24 x D x 4`` bytes); the result is folded back into
    raw-term weights (float64).

    ``hard_negative_rounds``: after the first fit, this many times score every pair with the current weights, add
    the ``hard_negatives_per_positive`` x positives highest-scoring negatives (the unrelated pairs the head takes
    for related ones: a sibling caption, a caption that binds the image's attributes wrongly) to the random sample,
    and fit again from the current weights. A search ranks items against each other, and random negatives are
    mostly easy; the hard ones teach the ranking. A pair of the same item (the diagonal when ``inner`` is
    ``outer``) is never taken as a negative.
    """
    truth = np.asarray(truth, dtype=bool)
    if truth.shape != (len(inner), len(outer)) or truth.all() or not truth.any():
        raise ValueError(f"truth must be a [inner, outer] = [{len(inner)}, {len(outer)}] boolean matrix holding both "
                         f"related and unrelated pairs; got shape {truth.shape}")
    if hard_negative_rounds < 0 or not hard_negatives_per_positive > 0:
        raise ValueError(f"hard_negative_rounds must be >= 0 and hard_negatives_per_positive > 0; got "
                         f"{hard_negative_rounds} and {hard_negatives_per_positive}")
    rng = np.random.default_rng(seed)
    pos = np.flatnonzero(truth)
    neg = np.flatnonzero(~truth)
    take = min(neg.size, int(round(negatives_per_positive * pos.size)))
    neg = np.sort(rng.choice(neg, size=take, replace=False))
    sides = (*_sides(inner), *_sides(outer))
    weights = _fit_logistic(sides, truth, pos, neg, l2)
    same_items = inner is outer
    for _ in range(hard_negative_rounds):
        current = PairWeights(*_raw_weights(weights))
        scores = current.logits(inner, outer).numpy()
        scores[truth] = -np.inf
        if same_items:
            np.fill_diagonal(scores, -np.inf)
        scores = scores.ravel()
        hard_count = min(int(np.isfinite(scores).sum()), int(round(hard_negatives_per_positive * pos.size)))
        hard = np.argpartition(-scores, hard_count - 1)[:hard_count] if hard_count else np.zeros(0, np.int64)
        weights = _fit_logistic(sides, truth, pos, np.union1d(neg, hard), l2, start=weights)
    raw, bias = _raw_weights(weights)
    return PairWeights(raw, bias, fitted_on)


def _raw_weights(fit: tuple[torch.Tensor, torch.Tensor, torch.Tensor]) -> tuple[np.ndarray, float]:
    """``(weights [len(TERMS), D], bias)`` float64 on the raw terms from a fit on standardised terms."""
    w, mean, std = fit
    raw = w[:-1] / std
    bias = float(w[-1] - (mean / std) @ w[:-1])
    return raw.reshape(len(TERMS), -1).numpy(), bias


def _fit_logistic(sides, truth: np.ndarray, pos: np.ndarray, neg: np.ndarray, l2: float,
                  start: tuple | None = None) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Weighted logistic regression on the pairs ``pos`` and ``neg`` (flat indices into ``truth``): ``(w, mean,
    std)``, float64, ``w`` ``[F + 1]`` on the standardised terms (the last entry the bias). ``start``: an earlier
    fit to continue from (its weights are carried over to this fit's standardisation)."""
    chosen = np.concatenate([pos, neg])
    rows, cols = np.divmod(chosen, truth.shape[1])
    x = _terms_of_pairs(*sides, rows, cols)
    x = x.reshape(len(chosen), -1)
    y = torch.as_tensor(truth.ravel()[chosen], dtype=torch.float32)
    weight = torch.where(y > 0, 0.5 / max(1, pos.size), 0.5 / max(1, neg.size))
    mean, std = x.double().mean(0), x.double().std(0).clamp_min(1e-12)
    z = ((x - mean.float()) / std.float()).contiguous()
    del x
    initial = torch.zeros(z.shape[1] + 1, dtype=torch.float64)
    if start is not None:  # the same raw-term function, on this fit's standardised terms
        w0, mean0, std0 = start
        initial[:-1] = w0[:-1] / std0 * std
        initial[-1] = w0[-1] - (mean0 / std0) @ w0[:-1] + (mean / std0) @ w0[:-1]
    w = initial.float().requires_grad_(True)
    optimizer = torch.optim.LBFGS([w], max_iter=300, line_search_fn="strong_wolfe")

    def closure():
        optimizer.zero_grad()
        logits = z @ w[:-1] + w[-1]
        loss = (torch.nn.functional.binary_cross_entropy_with_logits(logits, y, reduction="none") * weight).sum()
        loss = loss + l2 * w[:-1].pow(2).sum()
        loss.backward()
        return loss

    optimizer.step(closure)
    return w.detach().double(), mean, std


def _terms_of_pairs(mu_a, lv_a, mu_b, lv_b, rows: np.ndarray, cols: np.ndarray) -> torch.Tensor:
    """``[P, len(TERMS), D]`` float32 terms of the pairs ``(rows[i], cols[i])``."""
    ra, cb = torch.as_tensor(rows), torch.as_tensor(cols)
    return _products(_basis(mu_a, lv_a).float()[ra], _basis(mu_b, lv_b).float()[cb])
