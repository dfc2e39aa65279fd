"""HierarCaps walk and RoCOCO-style stress test."""

import json
import random

import pytest
import torch

from probclip.embedding import ProbEmbedding
from probclip.eval.hierarcaps import evaluate_hierarcaps, hierarchical_walk
from probclip.eval.options import EvalOptions
from probclip.eval.rococo import (
    derangement,
    evaluate_rococo,
    replace_one_word,
    rococo_metrics,
)
from test_eval_fixtures import (
    build_hierarcaps,
    build_retrieval_csv,
    colour_eval_model,
    open_clip_eval_model,
)


def test_walk_visits_gallery_in_order_from_start_to_root():
    e = torch.eye(3)
    gallery = torch.stack([e[0], (e[0] + e[1]) / 2**0.5, e[1], e[2]])
    walk = hierarchical_walk(e[0][None], e[1][None], gallery, n_steps=9)
    assert walk[0, 0] == 0 and walk[0, -1] == 2
    assert set(walk[0].tolist()) == {0, 1, 2}
    assert walk[0].tolist() == sorted(walk[0].tolist())  # monotone: never goes back to a specific caption


def test_hierarcaps_end_to_end(tmp_path):
    csv_path = build_hierarcaps(tmp_path)
    res = evaluate_hierarcaps(colour_eval_model(), csv_path, EvalOptions(
        out_dir=tmp_path / "out", image_root=tmp_path / "imgs", progress=False))
    m = res["metrics"]
    assert set(m) == {"empty", "inclusion", "uncertainty"}
    for root in ("empty", "inclusion"):
        assert 0 < m[root]["precision"] <= 1 and 0 < m[root]["recall"] <= 1
    assert m["empty"]["f1"] == pytest.approx(
        2 * m["empty"]["precision"] * m["empty"]["recall"] / (m["empty"]["precision"] + m["empty"]["recall"]))
    assert json.loads((tmp_path / "out" / "results.json").read_text())["n_images"] == 12
    assert (tmp_path / "out" / "hierarcaps.png").exists()
    det = evaluate_hierarcaps(
        open_clip_eval_model(), csv_path, EvalOptions(image_root=tmp_path / "imgs", progress=False)
    )
    assert set(det["metrics"]) == {"empty"}


def test_replace_one_word_and_derangement():
    rng = random.Random(0)
    assert replace_one_word("A red car.", {"red": ["blue"]}, rng) == "A blue car."
    assert replace_one_word("A car.", {"red": ["blue"]}, rng) is None
    out = replace_one_word("a red car", ["zebra"], random.Random(1))
    assert out in ("a red zebra",) or out.count("zebra") == 1 and len(out.split()) == 3
    perm = derangement(7, seed=3)
    assert sorted(perm.tolist()) == list(range(7)) and (perm != torch.arange(7)).all()


def test_rococo_metrics_false_rate_extremes():
    g = torch.Generator().manual_seed(0)
    img = ProbEmbedding(torch.nn.functional.normalize(torch.randn(6, 5, generator=g), dim=-1), torch.full((6, 5), -4.0))
    txt = ProbEmbedding(img.mean.clone(), torch.full((6, 5), -4.0))
    caption_image = torch.arange(6)
    # Exact copies placed after the originals lose every tie: nothing is falsely retrieved.
    same = rococo_metrics(img, txt, caption_image, txt, img)
    assert same["csd"]["i2t"] == {"r1_clean": 1.0, "r1_attacked": 1.0, "r1_drop": 0.0, "false_rate": 0.0}
    assert same["mean"]["t2i"]["false_rate"] == 0.0
    # Adversarial captions that are more certain than the originals win under CSD, not under cosine.
    sure = ProbEmbedding(txt.mean.clone(), torch.full((6, 5), -9.0))
    res = rococo_metrics(img, txt, caption_image, sure, None)
    assert res["csd"]["i2t"]["false_rate"] == 1.0 and res["csd"]["i2t"]["r1_drop"] == 1.0
    assert res["mean"]["i2t"]["false_rate"] == 0.0
    assert "t2i" not in res["csd"]


def test_rococo_end_to_end(tmp_path):
    csv_path = build_retrieval_csv(tmp_path / "csv")
    (tmp_path / "swap.json").write_text(json.dumps({"red": ["green"], "green": ["blue"], "blue": ["red"]}))
    res = evaluate_rococo(colour_eval_model(), csv_path, tmp_path / "swap.json",
                          EvalOptions(out_dir=tmp_path / "out", progress=False))
    assert res["n_adversarial_captions"] == 18 and res["n_mixed_images"] == 6
    for method in ("csd", "mean"):
        for direction in ("i2t", "t2i"):
            entry = res["metrics"][method][direction]
            assert 0 <= entry["false_rate"] <= 1
            assert entry["r1_drop"] == pytest.approx(entry["r1_clean"] - entry["r1_attacked"])
        # Colour-swapped captions point along another colour axis: never the top match.
        assert res["metrics"][method]["i2t"]["false_rate"] == 0.0
    assert (tmp_path / "out" / "rococo_r1.png").exists()


def test_hierarcaps_metrics_exact_on_a_planar_gallery():
    import math

    from probclip.eval.hierarcaps import hierarcaps_metrics

    def at(deg):
        return torch.tensor([math.cos(math.radians(deg)), math.sin(math.radians(deg)), 0.0])

    # Levels general -> specific at 85, 60, 30, 0 degrees, the empty caption at 100; "x" at -40, and
    # an unrelated caption off the plane that no walk reaches.
    texts = ["general", "mid", "fine", "finest", "x", "other"]
    gallery = torch.stack([at(85), at(60), at(30), at(0), at(-40), torch.tensor([0.0, 0.0, 1.0])])
    images = torch.stack([at(2), at(-38)])
    chains = [["general", "mid", "fine", "finest"], ["general", "x"]]
    out = hierarcaps_metrics(images, gallery, texts, chains, at(100)[None], n_steps=50, n_bins=2)
    # Image 0 walks finest -> general: all 4 levels, nothing else (precision 1, recall 1).
    # Image 1 walks x -> finest -> ... -> general: 5 captions, 2 of its 2 levels (precision 2/5, recall 1).
    assert out["empty"]["precision"] == pytest.approx((1 + 2 / 5) / 2)
    assert out["empty"]["recall"] == 1.0
    assert set(out) == {"empty"}  # deterministic embeddings: no inclusion root, no uncertainty bins
    short = hierarcaps_metrics(images, gallery, texts, chains, at(100)[None], n_steps=2, n_bins=2)
    assert short["empty"]["recall"] == pytest.approx((2 / 4 + 2 / 2) / 2)  # only the two ends are visited
    with pytest.raises(ValueError, match="not in the gallery"):
        hierarcaps_metrics(images, gallery, texts, [["general", "missing"], ["x"]], at(100)[None])
