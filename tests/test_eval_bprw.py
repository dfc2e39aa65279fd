"""BPRW against a direct loop implementation of the EM of method-facts section 4."""

import math

import pytest
import torch

from probclip.embedding import ProbEmbedding
from probclip.eval.bprw import BPRWSettings, bprw_class_embeddings


def _reference_em(x, means, text_var, alpha, mult, eps, n_iter):
    """EM over mixture weights only, one loop per sample and component (float64)."""
    n, t = len(x), len(means)
    var = [[v * mult + eps for v in row] for row in text_var]
    prior = [1.0 / (sum(row) / len(row)) for row in text_var]
    pi = [p / sum(prior) for p in prior]
    log_lik = [
        [
            sum(-0.5 * ((xd - md) ** 2 / vd + math.log(2 * math.pi * vd)) for xd, md, vd in zip(x[i], means[k], var[k]))
            for k in range(t)
        ]
        for i in range(n)
    ]
    for _ in range(n_iter):
        n_t = [0.0] * t
        for i in range(n):
            logs = [math.log(pi[k]) + log_lik[i][k] for k in range(t)]
            top = max(logs)
            w = [math.exp(v - top) for v in logs]
            for k in range(t):
                n_t[k] += w[k] / sum(w)
        pi = [(n_t[k] + alpha - 1) / (n + t * (alpha - 1)) for k in range(t)]
    return pi


def test_bprw_weights_follow_the_reference_em():
    g = torch.Generator().manual_seed(0)
    n_classes, n_templates, dim = 2, 3, 4
    base = torch.randn(n_classes, 1, dim, generator=g, dtype=torch.float64)
    w = torch.nn.functional.normalize(base + 0.3 * torch.randn(n_classes, n_templates, dim, generator=g,
                                                                dtype=torch.float64), dim=-1)
    # Very different template variances, so initialising from V or from V * mult + eps gives other weights.
    v = torch.tensor([0.001, 0.05, 0.3], dtype=torch.float64)[None, :, None].expand(n_classes, n_templates, dim) * (
        1 + torch.rand(n_classes, n_templates, dim, generator=g, dtype=torch.float64))
    text = ProbEmbedding(w, v.log())
    # Support images of class c sit near template 2 of c; all templates overlap (so the initial weights
    # matter after a few iterations); logvar -40 makes the K samples the means.
    labels = torch.tensor([0, 0, 1, 1, 1])
    support_mean = w[labels, 2] + 0.05 * torch.randn(5, dim, generator=g, dtype=torch.float64)
    support = ProbEmbedding(support_mean, torch.full((5, dim), -40.0, dtype=torch.float64))
    settings = BPRWSettings(n_samples=2, alpha=2.0, variance_mult=1.5, variance_eps=0.02, n_iter=4, tol=0.0)
    classes, weights = bprw_class_embeddings(text, support, labels, settings)
    for c in range(n_classes):
        x = support_mean[labels == c].repeat_interleave(2, 0).tolist()
        want = _reference_em(x, w[c].tolist(), v[c].tolist(), 2.0, 1.5, 0.02, 4)
        assert weights[c].tolist() == pytest.approx(want, abs=1e-9)
        mean = torch.nn.functional.normalize((weights[c][:, None] * w[c]).sum(0), dim=-1)
        assert torch.allclose(classes.mean[c], mean, atol=1e-9)
        assert torch.allclose(classes.variance[c], (weights[c].pow(2)[:, None] * v[c]).sum(0), atol=1e-12)


def test_bprw_alpha_one_is_maximum_likelihood_and_large_alpha_flattens():
    g = torch.Generator().manual_seed(1)
    w = torch.nn.functional.normalize(torch.randn(1, 2, 3, generator=g), dim=-1)
    text = ProbEmbedding(w, torch.full((1, 2, 3), math.log(0.01)))
    support = ProbEmbedding(w[0, :1].clone(), torch.full((1, 3), -30.0))
    _, ml_w = bprw_class_embeddings(text, support, torch.tensor([0]), BPRWSettings(n_samples=5, alpha=1.0))
    _, flat_w = bprw_class_embeddings(text, support, torch.tensor([0]), BPRWSettings(n_samples=5, alpha=1000.0))
    assert float(ml_w[0, 0]) > 0.999  # all samples on template 0
    assert abs(float(flat_w[0, 0]) - 0.5) < 0.01  # the Dirichlet prior dominates 5 samples
    with pytest.raises(ValueError, match="alpha must be >= 1"):
        BPRWSettings(alpha=0.5)
