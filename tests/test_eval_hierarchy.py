"""The hierarchy task: metrics against known truth, the HierarCaps truth, the scores, the synthetic world's truth
and the command line."""

import json
import math

import numpy as np
import pytest
import torch

from probclip.embedding import ProbEmbedding
from probclip.eval.cli import main
from probclip.eval.hierarchy import (
    HIERARCHY_METRICS,
    MatchCalibration,
    denotation_scores,
    evaluate_hierarchy,
    fit_match_calibration,
    hierarcaps_truth,
    hierarchy_metrics,
    hierarchy_results,
    hierarchy_scores,
    match_logits,
    per_query_metrics,
)
from probclip.eval.options import EvalOptions
from probclip.synthetic.evaluation import build_evaluation_set
from probclip.synthetic.hierarchy import strictly_more_general, synthetic_hierarchy_truth
from probclip.synthetic.world import caption_is_true, entails, parse_caption
from test_eval_fixtures import build_hierarcaps, colour_eval_model


def test_metrics_of_a_hand_ranked_list():
    # gallery levels 0..4; the query's right items are 0, 1, 2 (R = 3)
    levels = np.array([0, 1, 2, 3, 4])
    truth = np.array([[True, True, True, False, False]])
    scores = torch.tensor([[5.0, 1.0, 4.0, 3.0, -math.inf]])  # ranked 0, 2, 3, 1; item 4 not returned
    m = per_query_metrics(scores, truth, levels)
    assert m["r_precision"][0] == pytest.approx(2 / 3)
    assert m["map_at_r"][0] == pytest.approx((1 + 1) / 3)  # P@1 = 1, P@2 = 1, the third is wrong
    assert (m["r1"][0], m["r5"][0], m["r10"][0]) == (1.0, 1.0, 1.0)
    assert m["order"][0] == pytest.approx(1.0)  # right items in the first R: levels 0 then 2, general first


def test_items_not_returned_are_never_found_and_the_query_itself_is_left_out():
    levels = np.array([0, 1, 2])
    truth = np.array([[True, True, True]])
    scores = torch.tensor([[-math.inf, 2.0, 1.0]])
    m = per_query_metrics(scores, truth, levels, exclude=np.array([2]))  # item 2 is the query: R = 2
    assert m["r_precision"][0] == pytest.approx(0.5)
    assert m["r1"][0] == 1.0
    none = per_query_metrics(torch.tensor([[-math.inf] * 3]), truth, levels)
    assert none["r_precision"][0] == 0.0 and none["r10"][0] == 0.0
    no_truth = per_query_metrics(scores, np.zeros((1, 3), bool), levels)
    assert math.isnan(no_truth["r_precision"][0])


def test_order_is_minus_one_for_specific_to_general():
    levels = np.array([0, 1, 2, 3])
    truth = np.ones((1, 4), bool)
    m = per_query_metrics(torch.tensor([[1.0, 2.0, 3.0, 4.0]]), truth, levels)
    assert m["order"][0] == pytest.approx(-1.0) and m["r_precision"][0] == 1.0


def test_metrics_grouped_by_query_level():
    levels = np.array([0, 1])
    truth = np.array([[False, False], [True, False], [True, True]])
    scores = {"s": torch.tensor([[1.0, 0.0], [1.0, 0.0], [0.0, 1.0]])}
    out = hierarchy_metrics(scores, truth, ["0", "1", "image"], levels, exclude=np.array([0, 1, -1]))
    assert set(out["s"]) == {"1", "image", "captions"}  # level 0 has no right item here
    assert out["s"]["1"]["r_precision"] == 1.0 and out["s"]["1"]["queries"] == 1
    assert out["s"]["image"]["r_precision"] == 1.0
    assert set(HIERARCHY_METRICS) <= set(out["s"]["image"])


def test_hierarcaps_truth_from_chains():
    chains = [["thing", "red thing", "red square"], ["thing", "blue thing"]]
    captions, levels, truth = hierarcaps_truth(chains)
    at = {c: j for j, c in enumerate(captions)}
    assert levels[at["thing"]] == 0 and levels[at["red square"]] == 2
    assert truth["general"][at["red square"]].nonzero()[0].tolist() == sorted([at["thing"], at["red thing"]])
    assert truth["specific"][at["thing"]].sum() == 3
    assert truth["image"][1].nonzero()[0].tolist() == sorted([at["thing"], at["blue thing"]])


def _gaussians(means, logvars):
    mean = torch.nn.functional.normalize(torch.tensor(means, dtype=torch.float64), dim=-1)
    return ProbEmbedding(mean, torch.tensor(logvars, dtype=torch.float64))


def test_scores_follow_their_definitions():
    # item 0: the query's more general neighbour (same direction, more uncertain); item 1: a less uncertain copy
    query = _gaussians([[1.0, 0.0]], [[-4.0, -4.0]])
    gallery = _gaussians([[1.0, 0.1], [1.0, 0.0], [0.0, 1.0]], [[-2.0, -2.0], [-6.0, -6.0], [-4.0, -4.0]])
    up = hierarchy_scores(query, gallery, "general", "directional")
    down = hierarchy_scores(query, gallery, "specific", "directional")
    assert torch.isfinite(up[0, 0]) and not torch.isfinite(up[0, 1])
    assert torch.isfinite(down[0, 1]) and not torch.isfinite(down[0, 0])
    cosine = hierarchy_scores(query, gallery, "general", "mean")
    assert cosine[0, 1] == pytest.approx(1.0) and cosine[0, 2] == pytest.approx(0.0, abs=1e-12)
    csd = hierarchy_scores(query, gallery, "general", "csd")
    expected = -((query.mean[0] - gallery.mean) ** 2).sum(-1) - query.uncertainty[0] - gallery.uncertainty
    assert torch.allclose(csd[0], expected)
    with pytest.raises(ValueError, match="direction"):
        hierarchy_scores(query, gallery, "up", "mean")
    with pytest.raises(ValueError, match="walk"):
        hierarchy_scores(query, gallery, "specific", "walk", empty=query)


def test_walk_score_ranks_the_root_end_first():
    e = torch.eye(3, dtype=torch.float64)
    gallery = torch.stack([e[0], (e[0] + e[1]) / 2**0.5, e[1], e[2]])
    scores = hierarchy_scores(e[0][None], gallery, "general", "walk", empty=e[1][None])
    order = torch.argsort(scores[0], descending=True)
    assert order[:3].tolist() == [2, 1, 0] and not torch.isfinite(scores[0, 3])


def test_synthetic_truth_is_the_world_truth():
    eval_set = build_evaluation_set(0, num_scenes=30, num_degraded=1, num_zeroshot=1)
    truth = synthetic_hierarchy_truth(eval_set)
    caps = eval_set.captions
    shape = next(j for j, c in enumerate(caps) if c.text == "a shape")
    for q in range(len(caps)):
        if caps[q].level > 0:
            assert truth["general"][q, shape]  # "a shape" generalises every other caption
        for j in np.nonzero(truth["general"][q])[0]:
            assert entails(caps[q], caps[j]) and not entails(caps[j], caps[q])
        assert not truth["general"][q, q] and not truth["specific"][q, q]
    assert (truth["specific"] == truth["general"].T).all()
    for i in (0, 7):
        assert [caption_is_true(eval_set.scenes[i], c) for c in caps] == truth["image"][i].tolist()
    # a level-4 description's generalisations: every drawn caption that keeps a strict subset of its attributes
    q = next(j for j, c in enumerate(caps) if c.level == 4)
    attributes = set(caps[q].descriptions[0])
    expected = [j for j, c in enumerate(caps)
                if not c.exclusive and set(c.descriptions[0]) < attributes]
    assert np.nonzero(truth["general"][q])[0].tolist() == expected


def test_hierarchy_task_on_a_hierarcaps_csv(tmp_path):
    csv_path = build_hierarcaps(tmp_path)
    res = evaluate_hierarchy(colour_eval_model(), csv_path, EvalOptions(
        out_dir=tmp_path / "out", image_root=tmp_path / "imgs", progress=False))
    m = res["metrics"]
    assert set(m) == {"general", "specific"}
    assert set(m["general"]) == {"directional", "test", "csd", "mean", "walk"}
    assert "walk" not in m["specific"]
    assert {"image", "captions", "1", "2", "3"} <= set(m["general"]["csd"])
    for by_score in m.values():
        for by_group in by_score.values():
            for entry in by_group.values():
                assert 0 <= entry["r_precision"] <= 1 and entry["queries"] >= 1
    written = json.loads((tmp_path / "out" / "results.json").read_text())
    assert written["task"] == "hierarchy" and written["n_images"] == 12
    assert (tmp_path / "out" / "hierarchy.png").read_bytes()[:4] == b"\x89PNG"


@pytest.fixture(scope="module")
def world_checkpoint(tmp_path_factory):
    """An untrained model of the quickstart's architecture (its word tokenizer reads the world's captions)."""
    from probclip.models.factory import create_model
    from probclip.quickstart import _model_overrides

    path = tmp_path_factory.mktemp("ckpt") / "world-tiny"
    overrides = _model_overrides()
    create_model("ProLIP-Tiny-Word", text=overrides["text"], vision=overrides["vision"]).save_pretrained(path)
    return path


def test_cli_hierarchy_on_the_synthetic_world_and_on_a_csv(tmp_path, world_checkpoint, capsys):
    out = tmp_path / "world"
    assert main(["--model", str(world_checkpoint), "--task", "hierarchy", "--out", str(out), "--no-progress"]) == 0
    results = json.loads((out / "results.json").read_text())
    assert results["task"] == "hierarchy" and results["n_images"] == 500
    general = results["metrics"]["general"]
    assert {"1", "2", "3", "4", "5", "captions"} <= set(general["directional"]) and "image" in general["csd"]
    assert general["mean"]["image"]["queries"] == 500
    assert set(results["match_calibration"]) == {"a", "c", "d", "fitted_on"}
    assert "training-split" in results["match_calibration"]["fitted_on"]
    assert "image" in general["denotation"] and "denotation" in results["metrics"]["specific"]
    assert "image" in general["head"] and results["hierarchy_head"]["source"].startswith("fitted on 1000 training")
    breakdown = results["breakdown"]
    assert set(breakdown) == {"head", "directional"}
    assert sum(v["queries"] for v in breakdown["head"]["general, images"].values()) == 500
    assert "binding" in breakdown["head"]["mistakes of image queries"]["all images"]["kinds"]  # an untrained model
    report = (out / "report.html").read_text()
    assert "R-precision" in report and "by kind of query" in report
    csv_path = build_hierarcaps(tmp_path / "hc")
    assert main(["--model", str(world_checkpoint), "--task", "hierarchy", "--data", str(csv_path), "--image-root",
                 str(tmp_path / "hc" / "imgs"), "--out", str(tmp_path / "hc_out"), "--no-progress"]) == 0
    assert json.loads((tmp_path / "hc_out" / "results.json").read_text())["n_images"] == 12


def test_cli_hierarchy_uses_the_head_stored_beside_the_model(tmp_path, world_checkpoint):
    import shutil

    from probclip.hierarchy_head import HEAD_FILE, TERMS, HierarchyHead, PairWeights

    model_dir = tmp_path / "with-head"
    shutil.copytree(world_checkpoint, model_dir)
    rng = np.random.default_rng(0)
    HierarchyHead({k: PairWeights(rng.normal(size=(len(TERMS), 64)), 0.0, "stored for the test")
                   for k in ("text_in_text", "image_in_text")}).to_file(model_dir / HEAD_FILE)
    out = tmp_path / "out"
    assert main(["--model", str(model_dir), "--task", "hierarchy", "--out", str(out), "--no-progress"]) == 0
    results = json.loads((out / "results.json").read_text())
    assert results["hierarchy_head"] == {"source": "stored beside the model",
                                         "fitted_on": {"text_in_text": "stored for the test",
                                                       "image_in_text": "stored for the test"},
                                         "generality": {"text_in_text": 0.0, "image_in_text": 0.0}}
    (model_dir / HEAD_FILE).write_bytes(b"damaged")
    assert main(["--model", str(model_dir), "--task", "hierarchy", "--out", str(tmp_path / "o2"),
                 "--no-progress"]) == 1


def test_denotation_of_the_exact_truth_finds_every_generalisation_and_specialisation():
    """Given the world's truth as the match probability, the denotation score is right for every query."""
    eval_set = build_evaluation_set(0, num_scenes=500, num_degraded=1, num_zeroshot=1)
    truth = synthetic_hierarchy_truth(eval_set)
    exact = torch.as_tensor(eval_set.truth.T, dtype=torch.float64)  # [captions, images]
    levels = np.array([c.level for c in eval_set.captions])
    own = np.arange(len(levels))
    general = denotation_scores(exact, "general")
    assert general.shape == (len(levels) + len(eval_set.scenes), len(levels))
    caption_rp = per_query_metrics(general[: len(levels)], truth["general"], levels, own)["r_precision"]
    image_rp = per_query_metrics(general[len(levels):], truth["image"], levels)["r_precision"]
    specific_rp = per_query_metrics(denotation_scores(exact, "specific"), truth["specific"], levels, own)["r_precision"]
    # a caption whose images are all described by a more specific one too (in these 500 scenes) cannot be told
    # apart from it by its images: those few queries miss; every other one is exact
    assert np.nanmean(caption_rp) > 0.99 and np.nanmean(specific_rp) > 0.98
    assert np.nanmean(image_rp) == 1.0
    # the two directions exclude each other
    both = np.isfinite(general[: len(levels)].numpy()) & np.isfinite(denotation_scores(exact, "specific").numpy())
    assert not both.any()
    with pytest.raises(ValueError, match="direction must be one of"):
        denotation_scores(exact, "sideways")


def test_match_calibration_recovers_the_weights_that_made_the_truth():
    g = torch.Generator().manual_seed(0)
    captions = ProbEmbedding(torch.nn.functional.normalize(torch.randn(300, 8, generator=g), dim=-1),
                             torch.rand(300, 8, generator=g) * 4 - 6)
    images = ProbEmbedding(torch.nn.functional.normalize(torch.randn(200, 8, generator=g), dim=-1),
                           torch.full((200, 8), -6.0))
    scale, bias = math.log(10.0), -2.0
    made = MatchCalibration(a=1.5, c=20.0, d=0.5)
    truth = torch.rand(300, 200, generator=g, dtype=torch.float64) < made.probability(captions, images, scale, bias)
    fitted = fit_match_calibration(captions, images, truth.numpy(), scale, bias)
    assert fitted.a == pytest.approx(1.5, rel=0.1) and fitted.c == pytest.approx(20.0, rel=0.15)
    assert fitted.d == pytest.approx(0.5, abs=0.25)
    logits = match_logits(captions, images, scale, bias)
    assert torch.allclose(logits[3, 4], 10.0 * (captions.mean[3].double() @ images.mean[4].double()
                          - (captions.uncertainty[3].double() + images.uncertainty[4].double()) / 2) - 2.0)
    with pytest.raises(ValueError, match="both true and false pairs"):
        fit_match_calibration(captions, images, np.ones((300, 200), bool), scale, bias)


def test_hierarchy_results_add_the_denotation_score_only_with_a_match_probability():
    eval_set = build_evaluation_set(0, num_scenes=20, num_degraded=1, num_zeroshot=1)
    truth = synthetic_hierarchy_truth(eval_set)
    levels = np.array([c.level for c in eval_set.captions])
    g = torch.Generator().manual_seed(1)
    captions = ProbEmbedding(torch.randn(len(levels), 8, generator=g), torch.randn(len(levels), 8, generator=g) - 5)
    images = ProbEmbedding(torch.randn(20, 8, generator=g), torch.randn(20, 8, generator=g) - 5)
    empty = ProbEmbedding(torch.randn(1, 8, generator=g), torch.zeros(1, 8) - 5)
    plain = hierarchy_results(captions, images, levels, truth, empty, True)
    assert "denotation" not in plain["general"] and "denotation" not in plain["specific"]
    exact = torch.as_tensor(eval_set.truth.T, dtype=torch.float64)
    with_evidence = hierarchy_results(captions, images, levels, truth, empty, True, exact)
    assert with_evidence["general"]["denotation"]["image"]["r_precision"] == 1.0
    assert with_evidence["general"]["directional"] == plain["general"]["directional"]
    with pytest.raises(ValueError, match="match_probability must be"):
        hierarchy_results(captions, images, levels, truth, empty, True, exact[:, :3])


def _ideal_embedding(captions) -> ProbEmbedding:
    """A caption's Gaussian in a block per attribute: a one-hot mean and a small variance in the blocks of the
    attributes it names, a zero mean and a large variance elsewhere (single-object captions only)."""
    from probclip.synthetic.world import ATTRIBUTES, COLOURS, POSITIONS, SHAPES, SIZES

    values = {"shape": SHAPES, "colour": tuple(COLOURS), "size": SIZES, "position": POSITIONS}
    mean, logvar = torch.zeros(len(captions), 16), torch.zeros(len(captions), 16)
    for row, caption in enumerate(captions):
        for attribute, value in (caption.descriptions[0] if caption.descriptions else ()):
            block = 4 * ATTRIBUTES.index(attribute)
            mean[row, block + values[attribute].index(value)] = 1.0
            logvar[row, block: block + 4] = -4.0
    return ProbEmbedding(mean, logvar)


def test_a_head_fitted_on_the_training_split_finds_the_generalisations_of_an_ideal_geometry():
    """On Gaussians that hold the hierarchy exactly, a head fitted on training-split captions ranks the test
    captions' generalisations first, and ``head_scores`` returns one direction of each pair only."""
    from probclip.eval.hierarchy import head_scores
    from probclip.hierarchy_head import HierarchyHead, fit_pair_weights
    from probclip.synthetic.evaluation import draw_scenes
    from probclip.synthetic.world import entailment_matrix

    _, drawn = draw_scenes(0, 300, "train")
    train_caps = [c for _, c in sorted({c.text: c for caps in drawn for c in caps if c.level < 5}.items())]
    entailed = entailment_matrix(train_caps)
    ideal = _ideal_embedding(train_caps)
    head = HierarchyHead({"text_in_text": fit_pair_weights(ideal, ideal, entailed & ~entailed.T, "ideal")})
    eval_set = build_evaluation_set(0, num_scenes=200, num_degraded=1, num_zeroshot=1)
    keep = np.array([c.level < 5 for c in eval_set.captions])
    captions = [c for c, k in zip(eval_set.captions, keep) if k]
    truth = synthetic_hierarchy_truth(eval_set)
    levels = np.array([c.level for c in captions])
    general = head_scores(head, _ideal_embedding(captions), None, "general")
    specific = head_scores(head, _ideal_embedding(captions), None, "specific")
    own = np.arange(len(captions))
    general_rp = per_query_metrics(general, truth["general"][keep][:, keep], levels, own)["r_precision"]
    specific_rp = per_query_metrics(specific, truth["specific"][keep][:, keep], levels, own)["r_precision"]
    assert np.nanmean(general_rp) > 0.95 and np.nanmean(specific_rp[levels <= 3]) > 0.95
    assert not (np.isfinite(general.numpy()) & np.isfinite(specific.numpy())).any()
    with pytest.raises(ValueError, match="no image_in_text weights"):
        head_scores(head, _ideal_embedding(captions), _ideal_embedding(captions[:2]), "general")


def test_the_generality_fit_prefers_nearer_specialisations_where_the_truth_asks_for_them():
    """With the truth of "more specific" restricted to the nearest specialisations (one level down), a positive
    generality ranks them above the deeper ones; the fit finds it, and its table is the R-precision of each value."""
    import dataclasses

    from probclip.eval.hierarchy import fit_specific_generality, head_scores
    from probclip.hierarchy_head import HierarchyHead, fit_pair_weights
    from probclip.synthetic.evaluation import draw_scenes
    from probclip.synthetic.world import entailment_matrix

    _, drawn = draw_scenes(0, 300, "train")
    caps = [c for _, c in sorted({c.text: c for caps in drawn for c in caps if c.level < 5}.items())]
    entailed = entailment_matrix(caps)
    ideal = _ideal_embedding(caps)
    fitted = fit_pair_weights(ideal, ideal, entailed & ~entailed.T, "ideal")
    head = HierarchyHead({"text_in_text": fitted, "image_in_text": dataclasses.replace(fitted, fitted_on="kept")})
    levels = np.array([c.level for c in caps])
    strict = (entailed & ~entailed.T).T  # [q, i]: caption i strictly more specific than caption q
    nearest = strict & (levels[None, :] == levels[:, None] + 1)
    grid = (0.0, 1.0, 2.0, 4.0, 8.0)
    tuned, table = fit_specific_generality(head, ideal, nearest, grid)
    own = np.arange(len(caps))
    for value in grid:
        trial = HierarchyHead({"text_in_text": dataclasses.replace(fitted, generality=value)})
        rp = per_query_metrics(head_scores(trial, ideal, None, "specific"), nearest, np.zeros(len(caps)), own)
        assert table[value] == pytest.approx(np.nanmean(rp["r_precision"]))
    chosen = tuned.pairs["text_in_text"].generality
    assert chosen == max(grid, key=lambda g: (table[g], -g)) and chosen > 0
    assert table[chosen] > table[0.0] + 0.1
    assert tuned.pairs["image_in_text"].fitted_on == "kept"  # the other kinds are kept as they were
    # on the full truth the logit alone already ranks every specialisation first: nothing to gain
    assert fit_specific_generality(head, ideal, strict, grid)[0].pairs["text_in_text"].generality == 0.0
    with pytest.raises(ValueError, match="grid must be"):
        fit_specific_generality(head, ideal, nearest, (0.0, float("nan")))
    with pytest.raises(ValueError, match="no text_in_text weights"):
        fit_specific_generality(HierarchyHead({"image_in_text": fitted}), ideal, nearest)


def test_strictly_more_general_is_one_way_and_never_the_caption_itself():
    texts = ["a shape", "a red shape", "a small red circle", "a small red circle"]
    strict = strictly_more_general([parse_caption(t) for t in texts])
    assert strict[1, 0] and strict[2, 0] and strict[2, 1]  # [q, i]: i is more general than q
    assert not strict[0, 1] and not strict[1, 2]
    assert not strict[2, 3] and not strict[3, 2]  # the same caption twice: neither is more general
    assert not strict.diagonal().any()


def test_in_eval_mode_gives_the_model_its_mode_back_also_after_an_error():
    from probclip.synthetic.evaluation import in_eval_mode

    model = torch.nn.Sequential(torch.nn.Linear(2, 2), torch.nn.Dropout(0.5))
    with in_eval_mode(model):
        assert not model.training and not model[1].training
    assert model.training and model[1].training
    with pytest.raises(RuntimeError, match="inside"), in_eval_mode(model):
        raise RuntimeError("inside")
    assert model.training
    model.eval()
    with in_eval_mode(model):
        pass
    assert not model.training
