"""Ranking and classification metrics against direct, loop-based definitions."""

import math

import pytest
import torch

from probclip.eval.metrics import (
    mean_per_class_recall,
    per_query_ranking_metrics,
    ranking_metrics,
    topk_accuracy,
    uncertainty_bins,
)


def _ranked_list(row_scores):
    # Decreasing score, ties by increasing index (stable sort of the negated scores).
    return sorted(range(len(row_scores)), key=lambda j: (-float(row_scores[j]), j))


def _reference(scores, positives, ks=(1, 5, 10)):
    out = {f"r{k}": [] for k in ks}
    out["map_at_r"], out["r_precision"] = [], []
    for q in range(scores.shape[0]):
        ranked = _ranked_list(scores[q])
        gt = {j for j in range(scores.shape[1]) if positives[q, j]}
        r = len(gt)
        for k in ks:
            out[f"r{k}"].append(1.0 if set(ranked[:k]) & gt else 0.0)
        precisions = [len(set(ranked[:i]) & gt) / i for i in range(1, r + 1)]
        out["map_at_r"].append(sum(p for i, p in enumerate(precisions) if ranked[i] in gt) / r)
        out["r_precision"].append(precisions[-1])
    return {k: sum(v) / len(v) for k, v in out.items()}


@pytest.mark.parametrize("n_levels", [None, 3])  # None: continuous scores; 3: heavy ties
def test_ranking_metrics_match_definitions(n_levels):
    g = torch.Generator().manual_seed(1)
    scores = torch.randn(40, 30, generator=g)
    if n_levels:
        scores = torch.randint(0, n_levels, (40, 30), generator=g).float()
    positives = torch.rand(40, 30, generator=g) < 0.15
    positives[torch.arange(40), torch.randint(0, 30, (40,), generator=g)] = True
    got = ranking_metrics(scores, positives)
    want = _reference(scores, positives)
    assert set(got) == {"r1", "r5", "r10", "map_at_r", "r_precision"}
    for key in want:
        assert got[key] == pytest.approx(want[key], abs=1e-6), key


def test_many_positives_and_ties():
    g = torch.Generator().manual_seed(2)
    scores = torch.randint(0, 5, (6, 300), generator=g).float()
    many = torch.rand(6, 300, generator=g) < 0.5
    few = torch.zeros(6, 300, dtype=torch.bool)
    few[:, :3] = True
    for positives in (many, few):
        got = ranking_metrics(scores, positives, ks=(1, 2, 50))
        want = _reference(scores, positives, ks=(1, 2, 50))
        for key in want:
            assert got[key] == pytest.approx(want[key], abs=1e-6)


@pytest.mark.parametrize("depth", [None, 4, 12])
def test_positive_ranks_exact_with_ties(depth):
    from probclip.eval.metrics import positive_ranks

    g = torch.Generator().manual_seed(5)
    scores = torch.randint(0, 4, (30, 25), generator=g).float()
    positives = torch.rand(30, 25, generator=g) < 0.15
    positives[:, 3] = True
    got = positive_ranks(scores, positives, depth=depth)
    for q in range(30):
        ranked = _ranked_list(scores[q])
        want = sorted(ranked.index(j) for j in range(25) if positives[q, j])
        if depth is not None:
            want = [min(r, depth) for r in want]
        assert got[q, : len(want)].tolist() == want


def test_chunking_does_not_change_results():
    g = torch.Generator().manual_seed(3)
    scores = torch.randn(50, 20, generator=g)
    positives = torch.rand(50, 20, generator=g) < 0.2
    positives[:, 0] = True
    full = per_query_ranking_metrics(scores, positives)
    tiny = per_query_ranking_metrics(scores, positives, max_chunk_elements=1)
    for key in full:
        assert torch.equal(full[key], tiny[key])


def test_cross_check_with_eccv_caption_package_functions():
    from eccv_caption._metrics import compute_eccv_metrics, compute_r_at_k

    g = torch.Generator().manual_seed(4)
    scores = torch.randn(25, 40, generator=g)
    positives = torch.rand(25, 40, generator=g) < 0.1
    positives[:, 5] = True
    ranked = {q: _ranked_list(scores[q]) for q in range(25)}
    gts = {q: [j for j in range(40) if positives[q, j]] for q in range(25)}
    pkg = compute_eccv_metrics(ranked, gts)
    ours = ranking_metrics(scores, positives)
    assert ours["map_at_r"] == pytest.approx(pkg["eccv_map_at_r"], abs=1e-9)
    assert ours["r_precision"] == pytest.approx(pkg["eccv_rprecision"], abs=1e-9)
    assert ours["r1"] == pytest.approx(pkg["eccv_r1"], abs=1e-9)
    assert ours["r5"] == pytest.approx(compute_r_at_k(ranked, gts, K=5), abs=1e-9)


def test_ranking_metrics_rejects_queries_without_positives():
    scores = torch.randn(3, 4)
    positives = torch.zeros(3, 4, dtype=torch.bool)
    positives[0, 1] = True
    with pytest.raises(ValueError, match="no positive"):
        ranking_metrics(scores, positives)
    with pytest.raises(TypeError, match="bool"):
        ranking_metrics(scores, positives.float())


def test_uncertainty_bins_equal_count_and_correlation():
    u = torch.arange(100, dtype=torch.float32).flip(0)  # query i has uncertainty 99 - i
    metric = (torch.arange(100) >= 50).float()  # the 50 most certain queries are right
    out = uncertainty_bins(u, metric, n_bins=10)
    assert out["bin_count"] == [10] * 10
    assert out["bin_metric"] == [1.0] * 5 + [0.0] * 5
    assert out["pearson"] == pytest.approx(-12.5 / math.sqrt(82.5 * 2.5), abs=1e-9)
    assert out["bin_uncertainty"][0] == [0.0, 9.0]
    flat = uncertainty_bins(u, torch.ones(100), n_bins=4)
    assert math.isnan(flat["pearson"])
    with pytest.raises(ValueError, match="n_bins"):
        uncertainty_bins(u[:5], metric[:5], n_bins=10)


def test_topk_accuracy_and_mean_per_class_recall():
    logits = torch.tensor([[3.0, 2.0, 1.0], [1.0, 1.0, 0.0], [0.0, 1.0, 2.0], [5.0, 0.0, 0.0]])
    labels = torch.tensor([0, 1, 0, 2])
    acc = topk_accuracy(logits, labels, ks=(1, 2))
    # sample 1: tie between class 0 and 1 is ordered by class index, so class 1 is second.
    assert acc["acc1"].tolist() == [1.0, 0.0, 0.0, 0.0]
    # sample 3: class 2 ties with class 1 at 0.0 and comes after it, so it is third.
    assert acc["acc2"].tolist() == [1.0, 1.0, 0.0, 0.0]
    pred = logits.argmax(1)
    # class 0: 1/2, class 1: 0/1, class 2: 0/1
    assert mean_per_class_recall(pred, labels, 3) == pytest.approx((0.5 + 0 + 0) / 3)
