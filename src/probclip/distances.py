"""Distances and match scores between diagonal Gaussians, pairwise and memory-bounded.

Every pairwise function takes ``a`` with N embeddings and ``b`` with M embeddings (``[N, D]`` and
``[M, D]``) and returns an ``[N, M]`` tensor. None of them builds an ``[N, M, D]`` tensor at once:
CSD and 2-Wasserstein reduce to matrix products (memory O(N*M)); the inclusion test and the Monte-Carlo
match probability, which do not separate over dimensions, run in row chunks whose size is set by
``max_chunk_elements`` (elements of the temporary ``[n, M, D]`` block).

Inputs of different dtypes are promoted to a common one; float16 and bfloat16 inputs are computed and returned in
float32 (:func:`computation_dtype`), so half-precision embeddings never overflow silently. Non-finite inputs raise.
"""

from __future__ import annotations

import torch

from .embedding import ProbEmbedding

__all__ = [
    "computation_dtype",
    "csd",
    "csd_paired",
    "inclusion_score",
    "inclusion_score_paired",
    "match_probability",
    "wasserstein2",
]

#: Elements per temporary block of every pairwise computation (distances, scores, ranks): 32M floats = 128 MiB
#: of float32. Results do not depend on it; memory does.
DEFAULT_MAX_CHUNK_ELEMENTS = 2**25


def computation_dtype(a: torch.dtype, b: torch.dtype) -> torch.dtype:
    """The dtype distances are computed (and returned) in: the promoted dtype of both sides, at least float32, so
    that float16 / bfloat16 embeddings neither overflow (``exp(logvar)`` exceeds float16's 65504 at logvar 11.1)
    nor lose the small differences between close distances."""
    dtype = torch.promote_types(a, b)
    return torch.float32 if dtype in (torch.float16, torch.bfloat16) else dtype


def _check_pair(a: ProbEmbedding, b: ProbEmbedding, fn: str,
                paired: bool = False) -> tuple[ProbEmbedding, ProbEmbedding]:
    """Validate two embedding batches; returns both cast to :func:`computation_dtype`."""
    for name, e in (("a", a), ("b", b)):
        if not isinstance(e, ProbEmbedding):
            raise TypeError(f"{fn}: argument {name} must be a ProbEmbedding, got {type(e).__name__}")
        if e.mean.dim() != 2:
            raise ValueError(f"{fn}: argument {name} must have shape [N, D]; got {tuple(e.mean.shape)}")
        e.check_finite(f"{fn} argument {name}")
    if a.dim != b.dim:
        raise ValueError(f"{fn}: embedding sizes differ: a has D={a.dim}, b has D={b.dim}")
    if paired and a.shape[0] != b.shape[0]:
        raise ValueError(f"{fn}: paired inputs need the same batch size; got {a.shape[0]} and {b.shape[0]}")
    if a.device != b.device:
        raise ValueError(f"{fn}: a is on {a.device} and b on {b.device}; move both to one device")
    dtype = computation_dtype(a.dtype, b.dtype)
    return a.to(dtype), b.to(dtype)


def _row_chunk(n_cols: int, dim: int, max_chunk_elements: int) -> int:
    if max_chunk_elements < 1:
        raise ValueError(f"max_chunk_elements must be a positive integer; got {max_chunk_elements}")
    return max(1, max_chunk_elements // max(1, n_cols * dim))


def csd(a: ProbEmbedding, b: ProbEmbedding) -> torch.Tensor:
    """Pairwise closed-form sampled distance (PCME++), ``[N, M]``.

    ``CSD(a_i, b_j) = ||mu_i - mu_j||^2 + sum_d (exp(lv_i,d) + exp(lv_j,d))``; with unit means this is
    ``2 - 2 mu_i.mu_j + u_i + u_j``. Computed with one matrix product: memory O(N*M).
    """
    a, b = _check_pair(a, b, "csd")
    sq_a = a.mean.pow(2).sum(-1)
    sq_b = b.mean.pow(2).sum(-1)
    dist = (sq_a + a.uncertainty)[:, None] + (sq_b + b.uncertainty)[None, :] - 2.0 * a.mean @ b.mean.T
    return dist


def csd_paired(a: ProbEmbedding, b: ProbEmbedding) -> torch.Tensor:
    """CSD between matching rows of ``a`` and ``b`` (both ``[N, D]``), ``[N]``."""
    a, b = _check_pair(a, b, "csd_paired", paired=True)
    return (a.mean - b.mean).pow(2).sum(-1) + a.uncertainty + b.uncertainty


def _inclusion_terms(mu1, lv1, mu2, lv2, eps: float) -> torch.Tensor:
    """Per-dimension inclusion test 'distribution 1 is included in distribution 2' (broadcasting)."""
    p1 = torch.exp(-lv1 + eps)
    p2 = torch.exp(-lv2 + eps)
    a = p1 + p2 / 2
    b = 2 * mu1 * p1 + mu2 * p2
    c = mu1.pow(2) * p1 + mu2.pow(2) * p2 / 2
    return -2 * lv1 - lv2 - torch.log(a) / 2 + b.pow(2) / (4 * a) - c


def inclusion_score_paired(a: ProbEmbedding, b: ProbEmbedding, eps: float = 0.0) -> torch.Tensor:
    """ProLIP's inclusion test 'a_i is included in b_i' for matching rows, ``[N]`` (mean over dimensions).

    Per dimension, with ``P = exp(-lv + eps)``: ``a = P1 + P2/2``, ``b = 2 mu1 P1 + mu2 P2``,
    ``c = mu1^2 P1 + mu2^2 P2 / 2`` and ``test = -2 lv1 - lv2 - log(a)/2 + b^2/(4a) - c``.
    Larger means "more included". ``eps`` is the log-precision offset (0 in analyses, -10..-100 in training).
    """
    a, b = _check_pair(a, b, "inclusion_score_paired", paired=True)
    return _inclusion_terms(a.mean, a.logvar, b.mean, b.logvar, eps).mean(-1)


def inclusion_score(
    a: ProbEmbedding, b: ProbEmbedding, eps: float = 0.0, max_chunk_elements: int = DEFAULT_MAX_CHUNK_ELEMENTS
) -> torch.Tensor:
    """Pairwise inclusion test 'a_i is included in b_j', ``[N, M]`` (mean over dimensions).

    Same per-dimension formula as :func:`inclusion_score_paired`. The terms coupling both sides
    (``log(a)`` and ``b^2/(4a)``) are evaluated in row chunks: two ``[n, M, D]`` blocks of at most
    ``max_chunk_elements`` elements each, so besides the ``[N, M]`` result the temporaries stay bounded
    (10,000 x 10,000 pairs at D = 768: 2 x 128 MiB of float32 at the default bound, never the 230 GiB of a
    full ``[N, M, D]`` tensor). A scoring function: its intermediates are updated in place, so it is not
    meant for backpropagation (the losses use their own inclusion term).
    """
    a, b = _check_pair(a, b, "inclusion_score")
    mu1, lv1, mu2, lv2 = a.mean, a.logvar, b.mean, b.logvar
    dim = mu1.shape[-1]
    p1 = torch.exp(-lv1 + eps)  # [N, D]
    p2 = torch.exp(-lv2 + eps)  # [M, D]
    # Separable parts: -2 lv1 - lv2 - c, averaged over D.
    sep_a = (-2 * lv1 - mu1.pow(2) * p1).mean(-1)  # [N]
    sep_b = (-lv2 - mu2.pow(2) * p2 / 2).mean(-1)  # [M]
    out = torch.empty(mu1.shape[0], mu2.shape[0], dtype=mu1.dtype, device=mu1.device)
    step = _row_chunk(mu2.shape[0], dim, max_chunk_elements)
    half_p2 = (p2 / 2)[None]  # [1, M, D]
    mp2 = (mu2 * p2)[None]
    for start in range(0, mu1.shape[0], step):
        sl = slice(start, start + step)
        # Two [n, M, D] blocks, updated in place: b^2 / (4a) - log(a) / 2.
        qa = p1[sl, None, :] + half_p2  # [n, M, D]
        qb = (2 * mu1[sl] * p1[sl])[:, None, :] + mp2
        qb.pow_(2).div_(qa).mul_(0.25).sub_(qa.log_().mul_(0.5))
        out[sl] = qb.mean(-1)
    return out.add_(sep_a[:, None]).add_(sep_b[None, :])


def match_probability(
    a: ProbEmbedding,
    b: ProbEmbedding,
    scale: float = 1.0,
    shift: float = 0.0,
    n_samples: int = 7,
    generator: torch.Generator | None = None,
    max_chunk_elements: int = DEFAULT_MAX_CHUNK_ELEMENTS,
) -> torch.Tensor:
    """PCME's Monte-Carlo match probability, ``[N, M]``.

    Draws ``n_samples`` samples ``z ~ N(mu, diag(exp(lv)))`` per embedding and returns
    ``mean_{s, s'} sigmoid(-scale * ||z_a,s - z_b,s'||_2 + shift)``. Deterministic for a given ``generator``.
    """
    a, b = _check_pair(a, b, "match_probability")
    if n_samples < 1:
        raise ValueError(f"match_probability: n_samples must be >= 1; got {n_samples}")
    std_a = (a.logvar / 2).exp()
    std_b = (b.logvar / 2).exp()
    za = a.mean[:, None] + std_a[:, None] * torch.randn(
        (*a.mean.shape[:1], n_samples, a.dim), generator=generator, dtype=a.dtype, device=a.device
    )  # [N, S, D]
    zb = b.mean[:, None] + std_b[:, None] * torch.randn(
        (*b.mean.shape[:1], n_samples, b.dim), generator=generator, dtype=b.dtype, device=b.device
    )  # [M, S, D]
    n, m, s = za.shape[0], zb.shape[0], n_samples
    zb_flat = zb.reshape(m * s, -1)
    out = torch.empty(n, m, dtype=a.dtype, device=a.device)
    step = _row_chunk(m * s * s, 1, max_chunk_elements)
    for start in range(0, n, step):
        za_flat = za[start : start + step].reshape(-1, za.shape[-1])  # [n*S, D]
        dist = torch.cdist(za_flat, zb_flat).clamp_min_(0)  # [n*S, M*S]
        prob = torch.sigmoid(-scale * dist + shift)
        out[start : start + step] = prob.reshape(-1, s, m, s).mean(dim=(1, 3))
    return out


def wasserstein2(a: ProbEmbedding, b: ProbEmbedding, squared: bool = False) -> torch.Tensor:
    """Pairwise 2-Wasserstein distance between diagonal Gaussians, ``[N, M]``.

    ``W2^2 = ||mu_a - mu_b||^2 + ||sigma_a - sigma_b||^2`` with ``sigma = exp(lv / 2)``. Returns ``W2``,
    or ``W2^2`` when ``squared``. Computed with matrix products: memory O(N*M).
    """
    a, b = _check_pair(a, b, "wasserstein2")
    sa, sb = (a.logvar / 2).exp(), (b.logvar / 2).exp()
    xa = torch.cat([a.mean, sa], dim=-1)
    xb = torch.cat([b.mean, sb], dim=-1)
    sq = xa.pow(2).sum(-1)[:, None] + xb.pow(2).sum(-1)[None, :] - 2.0 * xa @ xb.T
    sq = sq.clamp_min(0)
    return sq if squared else sq.sqrt()

