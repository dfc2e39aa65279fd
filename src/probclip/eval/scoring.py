"""Retrieval scores between embeddings and exact ranks of the positives, computed in query chunks.

Two scores (higher ranks first):

- ``"csd"``: ranking by the closed-form sampled distance. The score of gallery item g for query q is
  ``mu_q.mu_g - u_g / 2 - (||mu_g||^2 - 1) / 2``, i.e. ``-CSD / 2`` up to a per-query constant (the
  query's own uncertainty does not change its ranking). With unit means it is ``mu_q.mu_g - u_g / 2``.
- ``"mean"``: cosine similarity of the means, ignoring the variances (the only score for deterministic
  embeddings).

Scores are computed in the embeddings' dtype (float32 at least). No ``[Q, G]`` matrix is held at once: scores are produced for ``step`` queries at a time and reduced to
ranks immediately, so memory is bounded by the chunk size.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import torch

from ..embedding import ProbEmbedding
from .metrics import DEFAULT_MAX_CHUNK_ELEMENTS, _at_least_float32, positive_ranks

__all__ = ["SCORE_METHODS", "PositiveLists", "gallery_terms", "ranking_scores", "rank_positives", "available_methods"]

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
    def from_lists(cls, lists: Sequence[Sequence[int]], n_gallery: int) -> "PositiveLists":
        counts = torch.tensor([len(x) for x in lists], dtype=torch.long)
        offsets = torch.zeros(len(lists) + 1, dtype=torch.long)
        offsets[1:] = torch.cumsum(counts, 0)
        flat = [int(j) for x in lists for j in x]
        indices = torch.tensor(flat, dtype=torch.long)
        return cls(offsets, indices, n_gallery)._checked()

    @classmethod
    def from_labels(cls, query_labels: torch.Tensor, gallery_labels: torch.Tensor) -> "PositiveLists":
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
    def single(cls, gallery_index: torch.Tensor, n_gallery: int) -> "PositiveLists":
        """One positive per query: ``gallery_index[q]``."""
        q = gallery_index.numel()
        return cls(torch.arange(q + 1), gallery_index.long().clone(), n_gallery)._checked()

    def _checked(self) -> "PositiveLists":
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

    def subset(self, queries: torch.Tensor) -> "PositiveLists":
        """The lists of the given query indices, in that order."""
        lists = [self.indices[int(self.offsets[q]) : int(self.offsets[q + 1])].tolist() for q in queries.tolist()]
        return PositiveLists.from_lists(lists, self.n_gallery)


def available_methods(query, gallery) -> tuple[str, ...]:
    """Score methods that apply: ``("csd", "mean")`` for ProbEmbedding galleries, ``("mean",)`` otherwise."""
    return SCORE_METHODS if isinstance(gallery, ProbEmbedding) else ("mean",)


def gallery_terms(gallery, method: str) -> tuple[torch.Tensor, torch.Tensor | None]:
    """``(G_means [G, D], per-item offset [G] or None)`` so that score = q_mean @ G_means.T + offset."""
    if method not in SCORE_METHODS:
        raise ValueError(f"unknown score method {method!r}; expected one of {SCORE_METHODS}")
    if method == "mean":
        mean = gallery.mean if isinstance(gallery, ProbEmbedding) else gallery
        return torch.nn.functional.normalize(_at_least_float32(mean), dim=-1), None
    if not isinstance(gallery, ProbEmbedding):
        raise TypeError(f"score method 'csd' needs a ProbEmbedding gallery; got {type(gallery).__name__}")
    mean = _at_least_float32(gallery.mean)
    offset = -(_at_least_float32(gallery.uncertainty) + mean.pow(2).sum(-1) - 1.0) / 2
    return mean, offset


def _query_means(query, method: str) -> torch.Tensor:
    mean = query.mean if isinstance(query, ProbEmbedding) else query
    mean = _at_least_float32(mean)
    return torch.nn.functional.normalize(mean, dim=-1) if method == "mean" else mean


def ranking_scores(query, gallery, method: str = "csd") -> torch.Tensor:
    """Full ``[Q, G]`` score matrix (small inputs; use :func:`rank_positives` for large ones)."""
    g_mean, offset = gallery_terms(gallery, method)
    scores = _query_means(query, method) @ g_mean.T
    return scores if offset is None else scores + offset[None, :]


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
    q_mean = _query_means(query, method)
    g_mean, offset = gallery_terms(gallery, method)
    if len(positives) != q_mean.shape[0] or positives.n_gallery != g_mean.shape[0]:
        raise ValueError(
            f"positives describe {len(positives)} queries x {positives.n_gallery} gallery items; "
            f"embeddings are {q_mean.shape[0]} x {g_mean.shape[0]}"
        )
    n_query, n_gallery = q_mean.shape[0], g_mean.shape[0]
    counts = positives.counts
    r_max = int(counts.max())
    out = torch.full((n_query, r_max), n_gallery, dtype=torch.long)
    top1 = torch.empty(n_query, dtype=torch.long)
    step = max(1, max_chunk_elements // max(1, n_gallery))
    for start in range(0, n_query, step):
        stop = min(start + step, n_query)
        scores = q_mean[start:stop] @ g_mean.T
        if offset is not None:
            scores += offset[None, :]
        ranks = positive_ranks(scores, positives.dense(start, stop), max_chunk_elements, depth=depth,
                               n_pos=counts[start:stop])
        out[start:stop, : ranks.shape[1]] = ranks
        if return_top1:
            top1[start:stop] = scores.argmax(1)  # first maximal index: ties go to the lower index
    return (out, top1) if return_top1 else out
