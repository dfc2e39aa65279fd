"""Retrieval, zero-shot, BPRW and Urban-1k end to end on the colour world."""

import json
import math

import pytest
import torch

from probclip.embedding import ProbEmbedding
from probclip.eval.metrics import ranking_metrics
from probclip.eval.options import EvalOptions
from probclip.eval.retrieval import (
    evaluate_retrieval,
    evaluate_urban1k,
    retrieval_metrics,
)
from probclip.eval.scoring import PositiveLists, ranking_scores
from probclip.eval.zeroshot import combine_templates, evaluate_zeroshot
from test_eval_fixtures import (
    build_image_folder,
    build_karpathy,
    build_urban1k,
    build_wds_classification,
    colour_eval_model,
    open_clip_eval_model,
)


def _random_prob(n, d, g):
    return ProbEmbedding(torch.nn.functional.normalize(torch.randn(n, d, generator=g), dim=-1),
                         torch.randn(n, d, generator=g) - 2)


def test_retrieval_metrics_equal_dense_metrics_both_ways():
    g = torch.Generator().manual_seed(0)
    images, texts = _random_prob(12, 6, g), _random_prob(36, 6, g)
    caption_image = torch.arange(12).repeat_interleave(3)[torch.randperm(36, generator=g)]
    out = retrieval_metrics(images, texts, caption_image, n_bins=4)
    for method in ("csd", "mean"):
        s = ranking_scores(images, texts, method)
        pos = caption_image[None, :] == torch.arange(12)[:, None]
        assert out[method]["i2t"] == pytest.approx(ranking_metrics(s, pos))
        s = ranking_scores(texts, images, method)
        assert out[method]["t2i"] == pytest.approx(ranking_metrics(s, pos.T.contiguous()))
    # CSD ranking must differ from mean ranking when uncertainties differ.
    assert not torch.equal(
        ranking_scores(images, texts, "csd").argsort(1), ranking_scores(images, texts, "mean").argsort(1)
    )
    assert len(out["uncertainty"]["csd"]["i2t"]["bin_metric"]) == 4


def test_ranks_of_all_methods_from_one_product_equal_separate_dense_ranks():
    from probclip.eval.metrics import positive_ranks
    from probclip.eval.scoring import rank_positives, rank_positives_by_method

    g = torch.Generator().manual_seed(3)
    query = _random_prob(9, 5, g)
    gallery = ProbEmbedding(torch.randn(14, 5, generator=g), torch.randn(14, 5, generator=g) - 2)  # not unit norm
    positives = PositiveLists.from_labels(torch.arange(9) % 4, torch.arange(14) % 4)
    both = rank_positives_by_method(query, gallery, positives, ("csd", "mean"), max_chunk_elements=30,
                                    return_top1=True)
    for method in ("csd", "mean"):
        scores = ranking_scores(query, gallery, method)
        ranks, top1 = both[method]
        assert torch.equal(ranks, positive_ranks(scores, positives.dense(0, 9)))
        assert torch.equal(top1, scores.argmax(1))
        assert torch.equal(ranks, rank_positives(query, gallery, positives, method))
    cosine = torch.nn.functional.normalize(query.mean, dim=-1) @ torch.nn.functional.normalize(gallery.mean, dim=-1).T
    assert torch.allclose(ranking_scores(query, gallery, "mean"), cosine, atol=1e-6)
    assert not torch.equal(both["csd"][0], both["mean"][0])
    with pytest.raises(ValueError, match="unknown score method 'cos'"):
        rank_positives_by_method(query, gallery, positives, ("cos",))


def test_csd_score_is_minus_half_csd_up_to_query_constant():
    from probclip import csd

    g = torch.Generator().manual_seed(1)
    a, b = _random_prob(5, 4, g), _random_prob(7, 4, g)
    diff = ranking_scores(a, b, "csd") + csd(a, b) / 2
    assert torch.allclose(diff, diff[:, :1].expand_as(diff), atol=1e-5)


def test_positive_lists_from_labels():
    pos = PositiveLists.from_labels(torch.tensor([2, 0]), torch.tensor([0, 2, 2, 1, 0]))
    assert pos.dense(0, 2).tolist() == [[False, True, True, False, False], [True, False, False, False, True]]


def test_evaluate_retrieval_writes_results_and_plots(tmp_path):
    model = colour_eval_model()
    res = evaluate_retrieval(
        model, build_karpathy(tmp_path / "coco"), EvalOptions(out_dir=tmp_path / "out", progress=False)
    )
    saved = json.loads((tmp_path / "out" / "results.json").read_text())
    assert saved["n_images"] == 6 and saved["n_captions"] == 18
    # Colour is the main signal and 2 images share each colour: the 6 captions of that colour come
    # first for an image (3 of them its own), and the 2 images of its colour first for a caption.
    for method in ("csd", "mean"):
        assert res["metrics"][method]["i2t"]["r5"] == 1.0
        assert res["metrics"][method]["t2i"]["r5"] == 1.0
    for name in saved["plots"]:
        assert (tmp_path / "out" / name).stat().st_size > 1000


def test_deterministic_model_runs_without_uncertainty(tmp_path):
    res = evaluate_retrieval(open_clip_eval_model(), build_karpathy(tmp_path / "coco"), EvalOptions(progress=False))
    assert set(res["metrics"]) == {"mean"}
    assert res["probabilistic"] is False
    zs = evaluate_zeroshot(
        open_clip_eval_model(), build_image_folder(tmp_path / "f", per_class=4), EvalOptions(progress=False)
    )
    assert set(zs["metrics"]) == {"mean"} and "uncertainty" not in zs


def test_combine_templates_probabilistic_weights_certain_templates():
    mean = torch.nn.functional.normalize(torch.tensor([[[1.0, 0.0], [0.0, 1.0]]]), dim=-1)  # [C=1, T=2, D=2]
    logvar = torch.log(torch.tensor([[[0.01, 0.01], [1.0, 1.0]]]))
    text = ProbEmbedding(mean, logvar)
    uniform = combine_templates(text, "mean")
    prob = combine_templates(text, "probabilistic")
    assert torch.allclose(uniform.mean, torch.tensor([[2**-0.5, 2**-0.5]]), atol=1e-6)
    assert prob.mean[0, 0] > 0.99  # the certain template dominates
    assert torch.allclose(prob.variance, torch.tensor([[1 / 101, 1 / 101]]), atol=1e-6)
    assert torch.allclose(uniform.variance, torch.tensor([[1.01 / 4, 1.01 / 4]]), atol=1e-6)


@pytest.mark.parametrize("layout", ["folder", "wds"])
def test_zeroshot_on_both_layouts(tmp_path, layout):
    root = (build_image_folder(tmp_path / "d", per_class=4) if layout == "folder"
            else build_wds_classification(tmp_path / "d", per_class=4))
    res = evaluate_zeroshot(colour_eval_model(), root, EvalOptions(out_dir=tmp_path / "out", progress=False), n_bins=4)
    for combo in ("mean", "probabilistic"):
        for method in ("csd", "mean"):
            assert res["metrics"][combo][method]["acc1"] == 1.0
            assert res["metrics"][combo][method]["mean_per_class_recall"] == 1.0
    assert res["metrics"]["mean"]["mean"]["acc5"] == 1.0
    assert set(res["uncertainty"]) == {"mean/csd", "mean/mean", "probabilistic/csd", "probabilistic/mean"}
    bins = res["uncertainty"]["mean/csd"]
    assert bins["bin_metric"] == [1.0] * 4 and bins["bin_count"] == [3] * 4
    assert math.isnan(bins["pearson"])  # a constant accuracy has no correlation (written as null)
    saved = json.loads((tmp_path / "out" / "results.json").read_text())
    assert saved["uncertainty"]["mean/csd"]["pearson"] is None
    # Bins sort images by uncertainty: in this world it grows with the pixel noise of the image.
    lows = [lo for lo, _ in bins["bin_uncertainty"]]
    assert lows == sorted(lows) and lows[0] < lows[-1]
    assert (tmp_path / "out" / "accuracy.png").exists() and (tmp_path / "out" / "uncertainty_acc1.png").exists()


def test_bprw_reports_gain_and_refuses_evaluated_images_as_support(tmp_path):
    evaluated = build_image_folder(tmp_path / "test", per_class=3, seed=0)
    support = build_image_folder(tmp_path / "train", per_class=3, seed=1)
    res = evaluate_zeroshot(colour_eval_model(), evaluated, EvalOptions(progress=False), support=support, n_bins=3)
    info = res["bprw"]
    assert info["n_support_images"] == 9
    assert set(info["gain_acc1"]) == {"csd", "mean"}
    assert info["gain_acc1"]["mean"] == res["metrics"]["bprw"]["mean"]["acc1"] - res["metrics"]["mean"]["mean"]["acc1"]
    for weights in info["template_weights"]:
        assert sum(weights) == pytest.approx(1.0)
    with pytest.raises(ValueError, match="separate split"):
        evaluate_zeroshot(colour_eval_model(), evaluated, EvalOptions(progress=False), support=evaluated)
    # A copy of the evaluated images under another folder is caught by content.
    import shutil

    shutil.copytree(evaluated, tmp_path / "copy")
    with pytest.raises(ValueError, match="same content"):
        evaluate_zeroshot(colour_eval_model(), evaluated, EvalOptions(progress=False), support=tmp_path / "copy")


def test_urban1k(tmp_path):
    res = evaluate_urban1k(
        colour_eval_model(), build_urban1k(tmp_path / "u"), EvalOptions(out_dir=tmp_path / "o", progress=False)
    )
    assert res["task"] == "urban1k" and res["n_images"] == 6
    assert res["context_length"] == 16 and res["truncated_fraction"] == 1.0
    assert (tmp_path / "o" / "results.json").exists()


def test_urban1k_long_context_sees_words_a_short_context_cuts(tmp_path):
    from probclip.eval.encode import EvalModel
    from test_eval_fixtures import RETRIEVAL_IMAGES, WordTokenizer, write_image

    root = tmp_path / "urban"
    (root / "caption").mkdir(parents=True)
    for i, (colour, seed) in enumerate(RETRIEVAL_IMAGES):
        write_image(root / "image" / f"{i}.jpg", colour, 2.0, seed)
        # The only telling word comes after 30 filler words.
        (root / "caption" / f"{i}.txt").write_text(" ".join(f"detail{j}" for j in range(30)) + f" and it is {colour}\n")
    short = colour_eval_model()
    long = EvalModel(short.model, short.preprocess, WordTokenizer(context_length=64), name="long")
    cut = evaluate_urban1k(short, root, EvalOptions(progress=False))
    full = evaluate_urban1k(long, root, EvalOptions(progress=False))
    assert cut["truncated_fraction"] == 1.0 and full["truncated_fraction"] == 0.0
    assert full["context_length"] == 64
    for method in ("csd", "mean"):
        # Cut captions are all the same text: every query sees the same ranking, one hit in six.
        assert cut["metrics"][method]["i2t"]["r1"] == pytest.approx(1 / 6)
        assert cut["metrics"][method]["t2i"]["r1"] == pytest.approx(1 / 6)
        # Full captions name the colour: the two same-colour captions (equal texts, ties by index) come first.
        assert full["metrics"][method]["i2t"]["r1"] == 0.5
        assert full["metrics"][method]["i2t"]["map_at_r"] == 0.5
        assert full["metrics"][method]["t2i"]["r1"] >= 1 / 3


def test_deterministic_model_runs_every_task(tmp_path):
    """The open_clip stand-in through urban1k, rococo and eccv (zero-shot, retrieval and HierarCaps are above
    and in test_eval_stress): mean score only, no uncertainty parts."""
    from probclip.eval.eccv import evaluate_eccv
    from probclip.eval.rococo import evaluate_rococo
    from test_eval_fixtures import build_coco_eccv

    model = open_clip_eval_model()
    urban = evaluate_urban1k(
        model, build_urban1k(tmp_path / "u"), EvalOptions(out_dir=tmp_path / "u_out", progress=False)
    )
    karpathy, captions_json, gt_dir = build_coco_eccv(tmp_path / "coco")
    (tmp_path / "words.txt").write_text("zebra\nkite\n")
    rococo = evaluate_rococo(
        model, karpathy, tmp_path / "words.txt", EvalOptions(out_dir=tmp_path / "r_out", progress=False)
    )
    eccv = evaluate_eccv(model, karpathy, EvalOptions(out_dir=tmp_path / "e_out", progress=False),
                         coco_captions=captions_json, ground_truth=gt_dir)
    for res, out in ((urban, "u_out"), (rococo, "r_out"), (eccv, "e_out")):
        assert res["probabilistic"] is False and set(res["metrics"]) == {"mean"}, res["task"]
        saved = json.loads((tmp_path / out / "results.json").read_text())
        assert "uncertainty" not in saved["metrics"] and saved["plots"]
        assert all(not name.startswith("uncertainty") for name in saved["plots"])
    assert set(rococo["metrics"]["mean"]) == {"i2t", "t2i"}
    assert set(eccv["metrics"]["mean"]) == {"eccv", "cxc", "coco_5k", "coco_1k"}
