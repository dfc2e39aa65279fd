"""Retrieval scores between embeddings and exact ranks of the positives, computed in query chunks.

Two scores (higher ranks first):

- ``"csd"``: ranking by the closed-form sampled distance. The score of gallery item g for query q is
  ``mu_q.mu_g - u_g / 2 - (||mu_g||^2 - 1) / 2``, i.e. ``-CSD / 2`` up to a per-query constant (the
  query's own uncertainty does not change its ranking). With unit means it is ``mu_q.mu_g - u_g / 2``.
- ``"mean"``: cosine similarity of the means, ignoring the variances (the only score for deterministic
  embeddings).

Scores are computed in the embeddings' dtype (float32 at least). No ``[Q, G]`` matrix is held at once: scores
are produced for ``step`` queries at a time and reduced to ranks immediately, so memory is bounded by the chunk
size.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch

from ..embedding import ProbEmbedding
from .metrics import DEFAULT_MAX_CHUNK_ELEMENTS, at_least_float32, positive_ranks

__all__ = ["SCORE_METHODS", "PositiveLists", "gallery_terms", "ranking_scores", "rank_positives",
           "rank_positives_by_method", "available_methods"]

SCORE_METHODS = ("csd", "mean")


@dataclass
class PositiveLists:
    """Positive gallery indices per query, stored as CSR (``offsets`` ``[Q+1]``, ``indices``).

    Build it with :meth:`from_lists`, :meth:`from_labels` (query q's positives are the gallery items
    with the same label) or :meth:`single` (exactly one positive per query).
    """

    offsets: torch.Tensor
    indices: torch.Tensor
    n_gallery: int

    @classmethod
    def from_lists(cls, lists: Sequence[Sequence[int]], n_gallery: int) -> PositiveLists:
        counts = torch.tensor([len(x) for x in lists], dtype=torch.long)
        offsets = torch.zeros(len(lists) + 1, dtype=torch.long)
        offsets[1:] = torch.cumsum(counts, 0)
        flat = [int(j) for x in lists for j in x]
        indices = torch.tensor(flat, dtype=torch.long)
        return cls(offsets, indices, n_gallery)._checked()

    @classmethod
    def from_labels(cls, query_labels: torch.Tensor, gallery_labels: torch.Tensor) -> PositiveLists:
        """Query q's positives: every gallery item g with ``gallery_labels[g] == query_labels[q]``."""
        order = torch.sort(gallery_labels, stable=True)
        n_labels = int(max(int(query_labels.max()), int(gallery_labels.max()))) + 1
        label_counts = torch.bincount(gallery_labels, minlength=n_labels)
        label_start = torch.cumsum(label_counts, 0) - label_counts
        counts = label_counts[query_labels]
        offsets = torch.zeros(query_labels.numel() + 1, dtype=torch.long)
        offsets[1:] = torch.cumsum(counts, 0)
        # positions of each query's block inside the sorted gallery
        rel = torch.arange(int(offsets[-1])) - torch.repeat_interleave(offsets[:-1], counts)
        src = torch.repeat_interleave(label_start[query_labels], counts) + rel
        return cls(offsets, order.indices[src], gallery_labels.numel())._checked()

    @classmethod
    def single(cls, gallery_index: torch.Tensor, n_gallery: int) -> PositiveLists:
        """One positive per query: ``gallery_index[q]``."""
        q = gallery_index.numel()
        return cls(torch.arange(q + 1), gallery_index.long().clone(), n_gallery)._checked()

    def _checked(self) -> PositiveLists:
        if self.indices.numel() and (int(self.indices.min()) < 0 or int(self.indices.max()) >= self.n_gallery):
            raise ValueError(f"positive indices must lie in [0, {self.n_gallery - 1}]")
        return self

    def __len__(self) -> int:
        return self.offsets.numel() - 1

    @property
    def counts(self) -> torch.Tensor:
        """``[Q]`` number of positives per query."""
        return self.offsets[1:] - self.offsets[:-1]

    def dense(self, start: int, stop: int) -> torch.Tensor:
        """Bool ``[stop - start, n_gallery]`` mask of the positives of queries ``start..stop-1``."""
        stop = min(stop, len(self))
        lo, hi = int(self.offsets[start]), int(self.offsets[stop])
        rows = torch.repeat_interleave(torch.arange(stop - start), self.counts[start:stop])
        mask = torch.zeros(stop - start, self.n_gallery, dtype=torch.bool)
        mask[rows, self.indices[lo:hi]] = True
        return mask

    def subset(self, queries: torch.Tensor) -> PositiveLists:
        """The lists of the given query indices, in that order."""
        lists = [self.indices[int(self.offsets[q]) : int(self.offsets[q + 1])].tolist() for q in queries.tolist()]
        return PositiveLists.from_lists(lists, self.n_gallery)


def available_methods(query, gallery) -> tuple[str, ...]:
    """Score methods that apply: ``("csd", "mean")`` for ProbEmbedding galleries, ``("mean",)`` otherwise."""
    return SCORE_METHODS if isinstance(gallery, ProbEmbedding) else ("mean",)


def _inverse_norm(x: torch.Tensor) -> torch.Tensor:
    return 1.0 / x.norm(dim=-1).clamp_min(1e-12)


def _score_terms(query, gallery, method: str):
    """``(q_raw [Q, D], g_raw [G, D], q_scale [Q] | None, g_scale [G] | None, offset [G] | None)``.

    score = ``(q_raw @ g_raw.T) * q_scale[:, None] * g_scale[None, :] + offset[None, :]``; ``q_raw`` and
    ``g_raw`` are the means for both methods, so one product serves both.
    """
    if method not in SCORE_METHODS:
        raise ValueError(f"unknown score method {method!r}; expected one of {SCORE_METHODS}")
    q_raw = at_least_float32(query.mean if isinstance(query, ProbEmbedding) else query)
    g_raw = at_least_float32(gallery.mean if isinstance(gallery, ProbEmbedding) else gallery)
    if method == "mean":
        return q_raw, g_raw, _inverse_norm(q_raw), _inverse_norm(g_raw), None
    if not isinstance(gallery, ProbEmbedding):
        raise TypeError(f"score method 'csd' needs a ProbEmbedding gallery; got {type(gallery).__name__}")
    offset = -(at_least_float32(gallery.uncertainty) + g_raw.pow(2).sum(-1) - 1.0) / 2
    return q_raw, g_raw, None, None, offset


def _finish(dot: torch.Tensor, q_scale, g_scale, offset) -> torch.Tensor:
    """Scores from the raw block ``dot`` (a new tensor; ``dot`` is left as it is)."""
    if q_scale is not None:
        return dot * q_scale[:, None] * g_scale[None, :]
    return dot + offset[None, :]


def gallery_terms(gallery, method: str) -> tuple[torch.Tensor, torch.Tensor | None]:
    """``(G_means [G, D], per-item offset [G] or None)``: for ``"csd"`` the score is
    ``q_mean @ G_means.T + offset``; for ``"mean"`` ``G_means`` are the unit-norm means (cosine)."""
    _, g_raw, _, g_scale, offset = _score_terms(gallery, gallery, method)
    return (g_raw * g_scale[:, None], None) if method == "mean" else (g_raw, offset)


def ranking_scores(query, gallery, method: str = "csd") -> torch.Tensor:
    """Full ``[Q, G]`` score matrix (small inputs; use :func:`rank_positives` for large ones).

    ``"mean"``: the product of the means divided by both norms (cosine); ``"csd"``: see the module doc.
    """
    q_raw, g_raw, q_scale, g_scale, offset = _score_terms(query, gallery, method)
    return _finish(q_raw @ g_raw.T, q_scale, g_scale, offset)


def rank_positives(
    query,
    gallery,
    positives: PositiveLists,
    method: str = "csd",
    max_chunk_elements: int = DEFAULT_MAX_CHUNK_ELEMENTS,
    return_top1: bool = False,
    depth: int | None = None,
):
    """0-based ranks of each query's positives, ``[Q, Rmax]`` ascending (padded with G).

    Ties are ordered by gallery index. With ``depth``, ranks ``>= depth`` are capped at ``depth`` (see
    :func:`~probclip.eval.metrics.positive_ranks`). With ``return_top1`` also returns the ``[Q]`` index of each
    query's top-ranked gallery item. Memory: ``O(step * G)`` with ``step`` set by
    ``max_chunk_elements``.
    """
    out = rank_positives_by_method(query, gallery, positives, (method,), max_chunk_elements, return_top1, depth)
    return out[method]


def rank_positives_by_method(
    query,
    gallery,
    positives: PositiveLists,
    methods: Sequence[str] = SCORE_METHODS,
    max_chunk_elements: int = DEFAULT_MAX_CHUNK_ELEMENTS,
    return_top1: bool = False,
    depth: int | None = None,
) -> dict:
    """:func:`rank_positives` for several score methods at once, ``{method: ranks}`` (or ``(ranks, top1)``).

    The product of the means, the costly part, is computed once per block of queries and shared.
    """
    methods = tuple(dict.fromkeys(methods))
    if not methods:
        raise ValueError(f"methods must name at least one of {SCORE_METHODS}; got none")
    terms = {m: _score_terms(query, gallery, m) for m in methods}
    q_raw, g_raw = terms[methods[0]][0], terms[methods[0]][1]
    if len(positives) != q_raw.shape[0] or positives.n_gallery != g_raw.shape[0]:
        raise ValueError(
            f"positives describe {len(positives)} queries x {positives.n_gallery} gallery items; "
            f"embeddings are {q_raw.shape[0]} x {g_raw.shape[0]}"
        )
    n_query, n_gallery = q_raw.shape[0], g_raw.shape[0]
    counts = positives.counts
    r_max = int(counts.max())
    ranks = {m: torch.full((n_query, r_max), n_gallery, dtype=torch.long) for m in methods}
    top1 = {m: torch.empty(n_query, dtype=torch.long) for m in methods}
    g_raw_t = g_raw.T
    step = max(1, max_chunk_elements // max(1, n_gallery))
    for start in range(0, n_query, step):
        stop = min(start + step, n_query)
        dot = q_raw[start:stop] @ g_raw_t
        mask = positives.dense(start, stop)
        for m in methods:
            _, _, q_scale, g_scale, offset = terms[m]
            scores = _finish(dot, None if q_scale is None else q_scale[start:stop], g_scale, offset)
            block = positive_ranks(scores, mask, max_chunk_elements, depth=depth, n_pos=counts[start:stop])
            ranks[m][start:stop, : block.shape[1]] = block
            if return_top1:
                top1[m][start:stop] = scores.argmax(1)  # first maximal index: ties go to the lower index
            del scores
    return {m: (ranks[m], top1[m]) if return_top1 else ranks[m] for m in methods}
