"""The hierarchy head: its terms, its fit, its exact inner-product form for the search, and its file."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from probclip.embedding import ProbEmbedding
from probclip.errors import InputError
from probclip.hierarchy_head import (
    HEAD_FILE,
    TERMS,
    HierarchyHead,
    PairWeights,
    find_hierarchy_head,
    fit_pair_weights,
    load_hierarchy_head,
    pair_terms,
)
from probclip.search.vectors import inclusion_item_features


def _embeddings(n: int, d: int, seed: int) -> ProbEmbedding:
    g = torch.Generator().manual_seed(seed)
    mean = torch.nn.functional.normalize(torch.randn(n, d, generator=g), dim=-1)
    return ProbEmbedding(mean, torch.randn(n, d, generator=g) - 3.0)


def _head(d: int = 8, seed: int = 0) -> HierarchyHead:
    rng = np.random.default_rng(seed)
    return HierarchyHead({"text_in_text": PairWeights(rng.normal(size=(len(TERMS), d)), 0.3, "random", 1.5),
                          "image_in_text": PairWeights(rng.normal(size=(len(TERMS), d)), -0.2, "random")})


def test_terms_follow_their_definition():
    a, b = _embeddings(3, 5, 0), _embeddings(4, 5, 1)
    t = pair_terms(a, b)
    assert t.shape == (3, 4, len(TERMS), 5) and len(TERMS) == 24
    i, j = 2, 1

    def functions(e, row):
        mu, lv = e.mean[row].double(), e.logvar[row].double()
        return {"1": torch.ones_like(mu), "mu": mu, "mu2": mu * mu, "s": lv.exp(), "p": (-lv).exp()}

    inner, outer = functions(a, i), functions(b, j)
    for n, (k, m) in enumerate(TERMS):
        assert torch.allclose(t[i, j, n], inner[k] * outer[m]), (k, m)
    # ProLIP's own per-dimension distance term is one combination of them
    d2_p_outer = (a.mean[i].double() - b.mean[j].double()) ** 2 / b.logvar[j].double().exp()
    combo = t[i, j, TERMS.index(("mu2", "p"))] - 2 * t[i, j, TERMS.index(("mu", "mu"))] * outer["p"] \
        + t[i, j, TERMS.index(("1", "mu2"))] * outer["p"]
    assert torch.allclose(combo, d2_p_outer)


@pytest.mark.parametrize("side", ["inner", "outer"])
def test_query_weights_are_the_logits_as_an_exact_inner_product(side):
    head, q, items = _head(), _embeddings(3, 8, 2), _embeddings(50, 8, 3)
    features = inclusion_item_features(items.mean.numpy(), items.logvar.numpy()).astype(np.float64)
    weights = head.query_weights("text_in_text", q.mean.numpy(), q.logvar.numpy(), side)
    found = features @ weights.T  # [items, Q], up to a per-query constant
    kind = head.kind("text", "text")
    exact = (kind.logits(q, items) if side == "inner" else kind.logits(items, q).T).numpy().T
    scale = np.abs(exact).max()  # the stored features are float32
    assert np.allclose(found - found[:1], exact - exact[:1], rtol=0, atol=1e-5 * scale)
    assert np.array_equal(np.argsort(-found[:, 0]), np.argsort(-exact[:, 0]))
    # with the query's constant the form gives the logit itself
    weights, constants = head.query_form("text_in_text", q.mean.numpy(), q.logvar.numpy(), side)
    assert np.array_equal(weights, head.query_weights("text_in_text", q.mean.numpy(), q.logvar.numpy(), side))
    assert np.allclose(features @ weights.T + constants, exact, rtol=0, atol=1e-5 * scale)


def test_fit_recovers_a_known_relation():
    # "a in b" holds when b is wider than a in every dimension and a's mean lies close to b's
    rng = np.random.default_rng(0)
    d, n = 6, 120
    mean = torch.as_tensor(rng.normal(scale=0.3, size=(n, d)))
    logvar = torch.as_tensor(rng.uniform(-4, 0, size=(n, 1)).repeat(d, 1))
    e = ProbEmbedding(mean, logvar)
    s = logvar[:, 0].exp().numpy()
    dist = ((mean[:, None] - mean[None]) ** 2).sum(-1).numpy()
    truth = (s[None, :] > 2 * s[:, None]) & (dist < s[None, :] * d)
    np.fill_diagonal(truth, False)
    fitted = fit_pair_weights(e, e, truth, "toy", seed=0)
    logits = fitted.logits(e, e).numpy()
    accuracy = ((logits > 0) == truth).mean()
    balanced = 0.5 * ((logits[truth] > 0).mean() + (logits[~truth] <= 0).mean())
    assert balanced > 0.9, (accuracy, balanced)
    assert fitted.weights.shape == (len(TERMS), d) and fitted.fitted_on == "toy"
    again = fit_pair_weights(e, e, truth, "toy", seed=0)
    assert np.array_equal(again.weights, fitted.weights)


def test_fit_refuses_a_truth_without_both_classes():
    e = _embeddings(4, 3, 0)
    with pytest.raises(ValueError, match="both related and unrelated"):
        fit_pair_weights(e, e, np.zeros((4, 4), bool))
    with pytest.raises(ValueError, match=r"\[4, 4\]"):
        fit_pair_weights(e, e, np.ones((4, 3), bool))


def test_file_round_trip_and_checks(tmp_path):
    head = _head()
    path = head.to_file(tmp_path / HEAD_FILE)
    loaded = find_hierarchy_head(tmp_path, dim=8)
    assert set(loaded.pairs) == {"text_in_text", "image_in_text"} and loaded.dim == 8
    for k, v in head.pairs.items():
        assert np.array_equal(loaded.pairs[k].weights, v.weights) and loaded.pairs[k].bias == v.bias
        assert loaded.pairs[k].fitted_on == "random" and loaded.pairs[k].generality == v.generality
    assert loaded.pairs["text_in_text"].generality == 1.5
    assert find_hierarchy_head(tmp_path / "none") is None and find_hierarchy_head(None) is None
    with pytest.raises(InputError, match="fitted for 8-dimensional embeddings; this model's are 16"):
        load_hierarchy_head(path, dim=16)
    bad = tmp_path / "bad.safetensors"
    bad.write_bytes(b"not a safetensors file")
    with pytest.raises(InputError, match="not a readable hierarchy head"):
        load_hierarchy_head(bad)
    from safetensors.numpy import save_file
    save_file({"x": np.zeros(2)}, str(bad), metadata={"format": "something else"})
    with pytest.raises(InputError, match="is not a hierarchy head"):
        load_hierarchy_head(bad)
    save_file({"text_in_text.weights": np.full((len(TERMS), 8), np.nan), "text_in_text.bias": np.zeros(1)},
              str(bad), metadata={"format": "probclip-hierarchy-head-2"})
    with pytest.raises(InputError, match="non-finite"):
        load_hierarchy_head(bad)
    weights = np.ones((len(TERMS), 8))
    save_file({"text_in_text.weights": weights, "text_in_text.bias": np.zeros(1),
               "text_in_text.generality": np.array([np.inf])}, str(bad),
              metadata={"format": "probclip-hierarchy-head-3"})
    with pytest.raises(InputError, match="non-finite"):
        load_hierarchy_head(bad)
    # format 3 needs the generality; format 2 (written before it) is read with generality 0
    save_file({"text_in_text.weights": weights, "text_in_text.bias": np.zeros(1)}, str(bad),
              metadata={"format": "probclip-hierarchy-head-3"})
    with pytest.raises(InputError, match="'<kind>.generality'"):
        load_hierarchy_head(bad)
    save_file({"text_in_text.weights": weights, "text_in_text.bias": np.zeros(1)}, str(bad),
              metadata={"format": "probclip-hierarchy-head-2", "fitted_on": "{}"})
    assert load_hierarchy_head(bad).pairs["text_in_text"].generality == 0.0


def test_the_specific_rank_adds_the_generality_times_the_mean_log_variance():
    pair = _head().pairs["text_in_text"]
    logits = torch.tensor([[0.5, -1.0, 2.0]], dtype=torch.float64)
    logvar = torch.tensor([[-1.0, -3.0], [0.0, 0.0], [-2.0, -4.0]], dtype=torch.float64)
    assert torch.allclose(pair.specific_rank(logits, logvar), logits + 1.5 * torch.tensor([-2.0, 0.0, -3.0]))
    plain = _head().pairs["image_in_text"]
    assert plain.specific_rank(logits, logvar) is logits


def _toy_relation(n: int = 150, d: int = 6, seed: int = 0, radius: float = 0.4):
    """Embeddings and a truth where "a in b" needs b at least twice as wide as a *and* a's mean within ``radius``
    (squared distance) of b's: 2% of the pairs are related; most unrelated pairs fail on width (easy), a few are
    wide enough but too far (hard)."""
    rng = np.random.default_rng(seed)
    mean = torch.as_tensor(rng.normal(scale=0.3, size=(n, d)))
    logvar = torch.as_tensor(rng.uniform(-4, 0, size=(n, 1)).repeat(d, 1))
    s = logvar[:, 0].exp().numpy()
    dist = ((mean[:, None] - mean[None]) ** 2).sum(-1).numpy()
    truth = (s[None, :] > 2 * s[:, None]) & (dist < radius)
    np.fill_diagonal(truth, False)
    return ProbEmbedding(mean, logvar), truth


def _r_precision(logits: np.ndarray, truth: np.ndarray) -> float:
    """Mean over rows with a related item of the share of related items among the row's top R."""
    values = []
    for row, right in zip(logits, truth):
        if right.any():
            values.append(right[np.argsort(-row)[: right.sum()]].mean())
    return float(np.mean(values))


def test_hard_negative_rounds_sharpen_the_ranking():
    e, truth = _toy_relation()
    scarce = {"negatives_per_positive": 1.0, "seed": 0}
    plain = fit_pair_weights(e, e, truth, **scarce)
    hard = fit_pair_weights(e, e, truth, hard_negative_rounds=1, **scarce)
    before, after = plain.logits(e, e).numpy(), hard.logits(e, e).numpy()
    # the plain fit's hardest negatives (as many as the related pairs) are what the round adds
    hardest = before.copy()
    hardest[truth] = -np.inf
    np.fill_diagonal(hardest, -np.inf)
    hardest = np.argsort(-hardest.ravel())[: truth.sum()]

    def ordered(logits):  # share of (related, hard unrelated) pairs the logits put in the right order
        return (logits.ravel()[np.flatnonzero(truth)][:, None] > logits.ravel()[hardest][None]).mean()

    assert ordered(after) > ordered(before) + 0.04, (ordered(before), ordered(after))
    assert _r_precision(after, truth) > _r_precision(before, truth) + 0.01
    again = fit_pair_weights(e, e, truth, hard_negative_rounds=1, **scarce)
    assert np.array_equal(again.weights, hard.weights) and again.bias == hard.bias
    # no round: the plain fit exactly
    assert np.array_equal(fit_pair_weights(e, e, truth, hard_negative_rounds=0, **scarce).weights, plain.weights)


def test_hard_negative_arguments_are_checked():
    e, truth = _toy_relation(20)
    with pytest.raises(ValueError, match="hard_negative_rounds must be >= 0"):
        fit_pair_weights(e, e, truth, hard_negative_rounds=-1)
    with pytest.raises(ValueError, match="hard_negatives_per_positive > 0; got 1 and 0"):
        fit_pair_weights(e, e, truth, hard_negative_rounds=1, hard_negatives_per_positive=0)
