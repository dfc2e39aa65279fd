"""Bayesian prompt re-weighting (BPRW) of zero-shot class embeddings from a few labelled support images.

For class c with T templates, the text Gaussians ``N(W[c,t], V[c,t])`` stay fixed. From each support
image of class c (Gaussian ``N(m, v)``) ``K`` samples are drawn; EM then fits only the mixture weights
``pi_t`` of the mixture ``sum_t pi_t N(x; W[c,t], diag(V[c,t] * mult + eps))`` to these samples:

- initial weights (the prior) ``pi_t`` proportional to ``1 / mean_d V[c,t,d]``;
- E-step: responsibilities ``r_{n,t}`` proportional to ``pi_t N(x_n; W[c,t], ...)``;
- M-step, Dirichlet(alpha) MAP: ``pi_t = (N_t + alpha - 1) / (N + T (alpha - 1))`` with ``N_t = sum_n r_{n,t}``.

The class embedding is then ``w_c = sum_t pi_t W[c,t]`` (re-normalised to unit length for scoring)
with variance ``sum_t pi_t^2 V[c,t]``. Support images must come from a split that is disjoint from
the evaluated images: :func:`check_disjoint` enforces it by sample key and by image content.
"""

from __future__ import annotations

import hashlib
import math
from collections.abc import Sequence

import torch

from ..embedding import ProbEmbedding
from .readers import ClassificationData, ImageItem

__all__ = ["BPRWSettings", "bprw_class_embeddings", "check_disjoint", "select_support"]


class BPRWSettings:
    """Settings of BPRW (defaults are the reference few-shot settings).

    Attributes: ``shots`` support images per class, ``n_samples`` (K) samples per image, ``alpha``
    Dirichlet concentration, ``variance_mult`` and ``variance_eps`` for the component variances,
    ``n_iter`` maximum EM iterations, ``tol`` stop when no weight moves more than this, ``seed``.
    """

    def __init__(self, shots: int = 5, n_samples: int = 20, alpha: float = 2.0, variance_mult: float = 1.0,
                 variance_eps: float = 0.02, n_iter: int = 100, tol: float = 1e-6, seed: int = 0):
        if shots < 1 or n_samples < 1 or n_iter < 1:
            raise ValueError(f"shots, n_samples and n_iter must be >= 1; got {shots}, {n_samples}, {n_iter}")
        if alpha < 1:
            raise ValueError(
                f"alpha must be >= 1 (a Dirichlet MAP with alpha < 1 can give negative weights); got {alpha}"
            )
        if variance_mult <= 0 or variance_eps < 0:
            raise ValueError(f"variance_mult must be > 0 and variance_eps >= 0; got {variance_mult}, {variance_eps}")
        self.shots, self.n_samples, self.alpha = shots, n_samples, alpha
        self.variance_mult, self.variance_eps = variance_mult, variance_eps
        self.n_iter, self.tol, self.seed = n_iter, tol, seed

    def to_dict(self) -> dict:
        return dict(vars(self))


def _digest(item: ImageItem) -> str:
    return hashlib.sha1(item.read_bytes()).hexdigest()


def check_disjoint(evaluated: Sequence[ImageItem], support: Sequence[ImageItem]) -> None:
    """Raise ``ValueError`` if any support image is also an evaluated image (same key or same bytes)."""
    eval_keys = {item.key for item in evaluated}
    same_key = [item.key for item in support if item.key in eval_keys]
    if same_key:
        raise ValueError(
            f"{len(same_key)} support images are evaluated images too (e.g. {same_key[0]!r}); "
            f"support images must come from a separate split"
        )
    support_digests = {_digest(item): item.key for item in support}
    for item in evaluated:
        key = support_digests.get(_digest(item))
        if key is not None:
            raise ValueError(
                f"support image {key!r} has the same content as evaluated image {item.key!r}; "
                f"support images must come from a separate split"
            )


def select_support(
    data: ClassificationData, shots: int, n_classes: int, seed: int = 0
) -> tuple[list[ImageItem], torch.Tensor]:
    """Pick ``shots`` images per class (seeded, without replacement); returns ``(items, labels [S])``.

    Every class needs at least one support image; a class with fewer than ``shots`` uses all it has.
    """
    generator = torch.Generator().manual_seed(seed)
    labels = torch.tensor(data.labels)
    chosen_items, chosen_labels, missing = [], [], []
    for c in range(n_classes):
        idx = (labels == c).nonzero().flatten()
        if idx.numel() == 0:
            missing.append(c)
            continue
        pick = idx[torch.randperm(idx.numel(), generator=generator)[:shots]].sort().values
        chosen_items.extend(data.items[int(i)] for i in pick)
        chosen_labels.extend([c] * pick.numel())
    if missing:
        names = [data.classnames[c] if c < len(data.classnames) else str(c) for c in missing[:5]]
        raise ValueError(
            f"{len(missing)} classes have no support image (e.g. {names}); BPRW needs at least one per class"
        )
    return chosen_items, torch.tensor(chosen_labels)


def _log_gaussian(x: torch.Tensor, mean: torch.Tensor, var: torch.Tensor) -> torch.Tensor:
    """``[N, T]`` log N(x_n; mean_t, diag(var_t)) for x ``[N, D]``, mean/var ``[T, D]`` (float64)."""
    inv = 1.0 / var
    quad = x.pow(2) @ inv.T - 2 * x @ (mean * inv).T + (mean.pow(2) * inv).sum(-1)[None, :]
    log_det = var.log().sum(-1)[None, :]
    return -0.5 * (quad + log_det + x.shape[1] * math.log(2 * math.pi))


def _em_weights(
    samples: torch.Tensor, mean: torch.Tensor, text_var: torch.Tensor, settings: BPRWSettings
) -> torch.Tensor:
    """EM over mixture weights only; returns ``[T]`` weights (float64).

    ``text_var`` ``[T, D]`` are the template variances V; the components use ``V * mult + eps`` and
    the initial weights are proportional to ``1 / mean_d V``.
    """
    n, t = samples.shape[0], mean.shape[0]
    var = text_var * settings.variance_mult + settings.variance_eps
    log_lik = _log_gaussian(samples, mean, var)  # [N, T], fixed across iterations
    prior = 1.0 / text_var.mean(-1)
    pi = prior / prior.sum()
    a = settings.alpha
    for _ in range(settings.n_iter):
        resp = torch.softmax(log_lik + pi.clamp_min(1e-300).log()[None, :], dim=1)
        n_t = resp.sum(0)
        new_pi = (n_t + a - 1) / (n + t * (a - 1))
        converged = float((new_pi - pi).abs().max()) < settings.tol
        pi = new_pi
        if converged:
            break
    return pi


def bprw_class_embeddings(
    text: ProbEmbedding,
    support: ProbEmbedding,
    support_labels: torch.Tensor,
    settings: BPRWSettings | None = None,
) -> tuple[ProbEmbedding, torch.Tensor]:
    """Re-weighted class embeddings.

    Args:
        text: ``[C, T, D]`` template text Gaussians per class.
        support: ``[S, D]`` support image Gaussians; ``support_labels`` ``[S]`` their classes.
        settings: :class:`BPRWSettings`.

    Returns ``(class embeddings [C, D] with unit means, weights pi [C, T])``.
    """
    settings = settings or BPRWSettings()
    if not isinstance(text, ProbEmbedding) or text.mean.dim() != 3:
        raise ValueError("BPRW needs probabilistic text embeddings of shape [C, T, D]")
    if not isinstance(support, ProbEmbedding) or support.mean.dim() != 2:
        raise ValueError("BPRW needs probabilistic support image embeddings of shape [S, D]")
    n_classes = text.mean.shape[0]
    generator = torch.Generator().manual_seed(settings.seed)
    weights = torch.empty(n_classes, text.mean.shape[1], dtype=torch.float64)
    means, variances = [], []
    for c in range(n_classes):
        idx = (support_labels == c).nonzero().flatten()
        if idx.numel() == 0:
            raise ValueError(f"class {c} has no support image; BPRW needs at least one per class")
        m = support.mean[idx].double()
        std = (support.logvar[idx].double() / 2).exp()
        noise = torch.randn(idx.numel(), settings.n_samples, m.shape[1], generator=generator, dtype=torch.float64)
        samples = (m[:, None] + std[:, None] * noise).reshape(-1, m.shape[1])
        w_ct = text.mean[c].double()
        v_ct = text.logvar[c].double().exp()
        pi = _em_weights(samples, w_ct, v_ct, settings)
        weights[c] = pi
        means.append((pi[:, None] * w_ct).sum(0))
        variances.append((pi.pow(2)[:, None] * v_ct).sum(0))
    mean = torch.nn.functional.normalize(torch.stack(means), dim=-1)
    logvar = torch.stack(variances).log()
    return ProbEmbedding(mean.to(text.dtype), logvar.to(text.dtype)), weights
