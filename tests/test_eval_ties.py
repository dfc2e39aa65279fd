"""Ranks under heavy ties (against a stable sort) and float64 metrics (0.1 stays 0.1 in results.json)."""

import json

import pytest
import torch

from probclip.eval.metrics import positive_ranks, ranking_metrics
from probclip.eval.options import EvalOptions
from probclip.eval.readers import ClassificationData, read_image_folder
from probclip.eval.zeroshot import evaluate_zeroshot
from test_eval_fixtures import build_image_folder, colour_eval_model


def _stable_sort_ranks(scores, positives):
    order = torch.sort(scores, dim=1, descending=True, stable=True).indices
    place = torch.empty_like(order)
    place.scatter_(1, order, torch.arange(scores.shape[1]).expand_as(order))
    return torch.sort(torch.where(positives, place, scores.shape[1]), dim=1).values


@pytest.mark.parametrize("levels", [1, 2, 3, 7, 1000])
@pytest.mark.parametrize("depth", [None, 1, 2, 5, 17, 40, 64])
def test_positive_ranks_equal_stable_sort_under_ties(levels, depth):
    g = torch.Generator().manual_seed(levels * 100 + (depth or 0))
    scores = torch.randint(0, levels, (33, 40), generator=g).double() / 4
    positives = torch.rand(33, 40, generator=g) < 0.2
    positives[torch.arange(33), torch.randint(0, 40, (33,), generator=g)] = True
    positives[0] = True  # a row where everything is a positive
    want = _stable_sort_ranks(scores, positives)[:, : int(positives.sum(1).max())]
    if depth is not None:
        want = want.clamp_max(depth)
    for chunk in (2**23, 40 * 3):
        got = positive_ranks(scores, positives, max_chunk_elements=chunk, depth=depth)
        assert torch.equal(got, want)


def test_tie_straddling_the_cut_off_counts_the_whole_row():
    # 30 items share the top score; positives inside that block rank by gallery index, also past the top-k.
    scores = torch.zeros(1, 50)
    scores[0, 10:40] = 1.0
    positives = torch.zeros(1, 50, dtype=torch.bool)
    positives[0, [12, 25, 39, 45]] = True
    assert positive_ranks(scores, positives, depth=20).tolist() == [[2, 15, 20, 20]]
    assert positive_ranks(scores, positives).tolist() == [[2, 15, 29, 45]]  # 30 ones, then zeros 0-9 and 40-44


def test_metrics_are_float64_so_one_tenth_stays_one_tenth(tmp_path):
    scores = torch.eye(10)
    positives = torch.zeros(10, 10, dtype=torch.bool)
    positives[0, 0] = True
    positives[1:, 0] = True  # queries 1..9: their positive (item 0) ranks second
    assert ranking_metrics(scores, positives, ks=(1,))["r1"] == 0.1
    folder = build_image_folder(tmp_path / "f", per_class=4)
    data = read_image_folder(folder)  # 12 images; the colour model classifies each right
    wrong = [(y + 1) % 3 for y in data.labels]
    labels = [data.labels[0]] + wrong[1:10]
    subset = ClassificationData(data.items[:10], labels, data.classnames, data.templates)
    results = evaluate_zeroshot(colour_eval_model(), subset, EvalOptions(out_dir=tmp_path / "out", progress=False))
    assert results["metrics"]["mean"]["mean"]["acc1"] == 0.1
    text = (tmp_path / "out" / "results.json").read_text()
    assert '"acc1": 0.1,' in text and "0.10000000149011612" not in text
    assert json.loads(text)["metrics"]["mean"]["csd"]["acc1"] == 0.1
