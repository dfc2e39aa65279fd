"""ECCV Caption / CxC / COCO 1k-5k metrics cross-checked against the eccv_caption package."""

import json
import warnings

import numpy as np
import pytest
import torch

from probclip.embedding import ProbEmbedding
from probclip.eval.eccv import (
    attach_coco_caption_ids,
    coco_eccv_metrics,
    load_coco_ground_truth,
)
from probclip.eval.options import EvalOptions
from probclip.eval.readers import ImageItem, RetrievalData
from probclip.eval.scoring import ranking_scores

with warnings.catch_warnings():
    warnings.simplefilter("ignore")  # the package warns that ujson is missing
    from eccv_caption import Metrics


def _ranked_lists(scores, query_ids, gallery_ids, length=None):
    order = torch.sort(scores, dim=1, descending=True, stable=True).indices
    if length is not None:
        order = order[:, :length]
    return {int(q): [int(gallery_ids[j]) for j in row] for q, row in zip(query_ids, order.tolist())}


def _write_gt(tmp_path, g):
    n_img, per = 20, 5
    image_ids = [100 + i for i in range(n_img)]
    caption_ids = [1000 + 5 * i + j for i in range(n_img) for j in range(per)]
    owner = {c: 100 + (c - 1000) // 5 for c in caption_ids}
    original = {"i2t": {i: [c for c in caption_ids if owner[c] == i] for i in image_ids},
                "t2i": {c: [owner[c]] for c in caption_ids}}
    cxc_i2t = {
        i: original["i2t"][i]
        + [int(c) for c in np.array(caption_ids)[torch.randperm(100, generator=g)[:2].numpy()] if owner[int(c)] != i]
        for i in image_ids
    }
    cxc_t2i = {}
    for i, caps in cxc_i2t.items():
        for c in caps:
            cxc_t2i.setdefault(c, []).append(i)
    eccv_i2t = {
        i: sorted(
            set(
                original["i2t"][i][:2]
                + [
                    caption_ids[int(k)]
                    for k in torch.randint(0, 100, (int(torch.randint(1, 7, (1,), generator=g)),), generator=g)
                ]
            )
        )
        for i in image_ids[:12]
    }
    eccv_t2i = {
        c: sorted({owner[c]} | {image_ids[int(k)] for k in torch.randint(0, n_img, (3,), generator=g)})
        for c in caption_ids[::7]
    }
    files = {"original": original, "cxc": {"i2t": cxc_i2t, "t2i": cxc_t2i}, "eccv": {"i2t": eccv_i2t, "t2i": eccv_t2i}}
    for name, gt in files.items():
        for direction, stem in (("i2t", "image_to_caption"), ("t2i", "caption_to_image")):
            (tmp_path / f"{name}_{stem}.json").write_text(json.dumps({str(k): v for k, v in gt[direction].items()}))
    order = [c for i in torch.randperm(n_img, generator=g).tolist() for c in original["i2t"][image_ids[i]]]
    np.save(tmp_path / "coco_test_ids.npy", np.array(order, dtype=np.int64))
    return image_ids, caption_ids, owner


def _package_for(tmp_path):
    pkg = Metrics()
    pkg.set_coco_gts(tmp_path / "original_image_to_caption.json", tmp_path / "original_caption_to_image.json")
    pkg.set_cxc_gts(tmp_path / "cxc_image_to_caption.json", tmp_path / "cxc_caption_to_image.json")
    pkg.set_eccv_gts(tmp_path / "eccv_image_to_caption.json", tmp_path / "eccv_caption_to_image.json")
    pkg.coco_ids = np.load(tmp_path / "coco_test_ids.npy")
    return pkg


def test_all_metrics_match_package_on_synthetic_ground_truth(tmp_path):
    g = torch.Generator().manual_seed(0)
    image_ids, caption_ids, owner = _write_gt(tmp_path, g)
    # Shuffle the row order of the embeddings so ids, not positions, carry the ground truth.
    image_ids = [image_ids[i] for i in torch.randperm(20, generator=g)]
    caption_ids = [caption_ids[i] for i in torch.randperm(100, generator=g)]
    img_mean = torch.nn.functional.normalize(torch.randn(20, 8, generator=g), dim=-1)
    row_of = {iid: r for r, iid in enumerate(image_ids)}
    txt_mean = torch.nn.functional.normalize(
        img_mean[[row_of[owner[c]] for c in caption_ids]] + 0.9 * torch.randn(100, 8, generator=g), dim=-1)
    images = ProbEmbedding(img_mean, torch.randn(20, 8, generator=g) - 1)
    texts = ProbEmbedding(txt_mean, torch.randn(100, 8, generator=g) - 1)
    ours = coco_eccv_metrics(images, texts, image_ids, caption_ids, ground_truth=load_coco_ground_truth(tmp_path),
                             n_bins=4)
    pkg = _package_for(tmp_path)
    for method in ("csd", "mean"):
        items = {"i2t": _ranked_lists(ranking_scores(images, texts, method), image_ids, caption_ids),
                 "t2i": _ranked_lists(ranking_scores(texts, images, method), caption_ids, image_ids)}
        m = ours[method]
        for k in (1, 5, 10):
            for ours_name, pkg_fn in (("coco_5k", pkg.coco_5k_recalls), ("cxc", pkg.cxc_recalls),
                                      ("coco_1k", pkg.coco_1k_recalls)):
                expected = pkg_fn(items, "all", K=k)
                for d in ("i2t", "t2i"):
                    assert m[ours_name][d][f"r{k}"] == pytest.approx(expected[d], abs=1e-9), (method, ours_name, d, k)
        eccv = pkg.eccv_metrics(items, "all")
        for d in ("i2t", "t2i"):
            assert m["eccv"][d]["map_at_r"] == pytest.approx(eccv["eccv_map_at_r"][d], abs=1e-9)
            assert m["eccv"][d]["r_precision"] == pytest.approx(eccv["eccv_rprecision"][d], abs=1e-9)
            assert m["eccv"][d]["r1"] == pytest.approx(eccv["eccv_r1"][d], abs=1e-9)
    assert set(ours["uncertainty"]["csd"]) == {
        "eccv_map_at_r/i2t",
        "eccv_map_at_r/t2i",
        "coco_5k_r1/i2t",
        "coco_5k_r1/t2i",
    }


def test_real_ground_truth_matches_package_on_top_lists():
    gt = load_coco_ground_truth()
    assert len(gt.image_ids) == 5000 and len(gt.caption_ids) == 25000
    g = torch.Generator().manual_seed(1)
    image_ids = sorted(gt.image_ids)
    caption_ids = list(gt.caption_order)
    owner = {c: gt.positives["original"]["t2i"][c][0] for c in caption_ids}
    row_of = {iid: r for r, iid in enumerate(image_ids)}
    # float64: the package sees lists from one big matrix product, ours come from chunks; in float64
    # their rounding differences are far below the gaps between neighbouring scores.
    img = torch.nn.functional.normalize(torch.randn(5000, 16, generator=g, dtype=torch.float64), dim=-1)
    noise = 0.3 * torch.randn(25000, 16, generator=g, dtype=torch.float64)
    txt = torch.nn.functional.normalize(img[[row_of[owner[c]] for c in caption_ids]] + noise, dim=-1)
    ours = coco_eccv_metrics(img, txt, image_ids, caption_ids, ground_truth=gt)["mean"]
    scores = img @ txt.T
    i2t = {}
    for start in range(0, 5000, 1000):
        top = torch.topk(scores[start:start + 1000], 50, dim=1).indices.tolist()
        i2t.update({image_ids[start + r]: [caption_ids[j] for j in row] for r, row in enumerate(top)})
    top = torch.topk(scores.T, 20, dim=1).indices.tolist()
    t2i = {caption_ids[r]: [image_ids[j] for j in row] for r, row in enumerate(top)}
    pkg = Metrics()
    got = pkg.compute_all_metrics(i2t, t2i, target_metrics=("coco_5k_recalls", "cxc_recalls", "eccv_map_at_r"),
                                  Ks=(1, 5, 10), verbose=False)
    eccv = pkg.eccv_metrics({"i2t": i2t, "t2i": t2i}, "all")
    for d in ("i2t", "t2i"):
        for k in (1, 5, 10):
            assert ours["coco_5k"][d][f"r{k}"] == pytest.approx(got[f"coco_5k_r{k}"][d], abs=1e-9)
            assert ours["cxc"][d][f"r{k}"] == pytest.approx(got[f"cxc_r{k}"][d], abs=1e-9)
        assert ours["eccv"][d]["map_at_r"] == pytest.approx(eccv["eccv_map_at_r"][d], abs=1e-9)
        assert ours["eccv"][d]["r_precision"] == pytest.approx(eccv["eccv_rprecision"][d], abs=1e-9)
    assert 0.05 < ours["coco_5k"]["i2t"]["r1"] < 0.999  # the synthetic embeddings carry signal, not a trivial 0 or 1


def test_missing_ids_are_reported(tmp_path):
    _write_gt(tmp_path, torch.Generator().manual_seed(2))
    gt = load_coco_ground_truth(tmp_path)
    img = torch.randn(19, 4)
    with pytest.raises(ValueError, match="1 missing"):
        coco_eccv_metrics(
            img, torch.randn(100, 4), [100 + i for i in range(19)], sorted(gt.caption_ids), ground_truth=gt
        )


def test_attach_coco_caption_ids(tmp_path):
    ann = {
        "annotations": [
            {"image_id": 7, "id": 70, "caption": "A dog  runs."},
            {"image_id": 7, "id": 71, "caption": "a dog runs."},
            {"image_id": 8, "id": 80, "caption": "A cat."},
        ]
    }
    (tmp_path / "captions.json").write_text(json.dumps(ann))
    item = ImageItem("k", tmp_path / "captions.json")
    data = RetrievalData(
        [item, item], ["a dog runs.", "A dog runs. ", "a cat."], torch.tensor([0, 0, 1]), image_ids=[7, 8]
    )
    attach_coco_caption_ids(data, tmp_path / "captions.json")
    assert data.caption_ids == [70, 71, 80]
    bad = RetrievalData([item], ["a bird"], torch.tensor([0]), image_ids=[7])
    with pytest.raises(ValueError, match="no matching annotation"):
        attach_coco_caption_ids(bad, tmp_path / "captions.json")


def test_benchmarks_alone_and_queries_without_retrievable_positive(tmp_path):
    g = torch.Generator().manual_seed(3)
    image_ids, caption_ids, _ = _write_gt(tmp_path, g)
    gt = load_coco_ground_truth(tmp_path)
    images = ProbEmbedding(torch.nn.functional.normalize(torch.randn(20, 8, generator=g), dim=-1),
                           torch.randn(20, 8, generator=g) - 1)
    texts = ProbEmbedding(torch.nn.functional.normalize(torch.randn(100, 8, generator=g), dim=-1),
                          torch.randn(100, 8, generator=g) - 1)
    full = coco_eccv_metrics(images, texts, image_ids, caption_ids, ground_truth=gt, n_bins=4)
    # The package's 0.1.0 evaluator returns {} for R-Precision asked alone; here every benchmark stands alone.
    alone = coco_eccv_metrics(images, texts, image_ids, caption_ids, ground_truth=gt, n_bins=4, benchmarks=("eccv",))
    assert set(alone["csd"]) == {"eccv"} and alone["csd"]["eccv"] == full["csd"]["eccv"]
    assert set(alone["csd"]["eccv"]["i2t"]) == {"map_at_r", "r_precision", "r1"}
    one_k = coco_eccv_metrics(images, texts, image_ids, caption_ids, ground_truth=gt, benchmarks=("coco_1k",))
    assert one_k["mean"] == {"coco_1k": full["mean"]["coco_1k"]}
    with pytest.raises(ValueError, match="'coco5k'"):
        coco_eccv_metrics(images, texts, image_ids, caption_ids, ground_truth=gt, benchmarks=("coco5k",))
    # An ECCV query whose only positive is not among the captions scores 0 (no crash); an empty
    # ground-truth list is no query at all.
    n_queries = len(gt.positives["eccv"]["i2t"])
    gt.positives["eccv"]["i2t"][image_ids[-1]] = [99999]
    gt.positives["eccv"]["i2t"][image_ids[-2]] = []
    changed = coco_eccv_metrics(images, texts, image_ids, caption_ids, ground_truth=gt, n_bins=4, benchmarks=("eccv",))
    for key in ("map_at_r", "r_precision", "r1"):
        want = full["csd"]["eccv"]["i2t"][key] * n_queries / (n_queries + 1)
        assert changed["csd"]["eccv"]["i2t"][key] == pytest.approx(want, abs=1e-12)
    assert changed["csd"]["eccv"]["t2i"] == full["csd"]["eccv"]["t2i"]


def _colour_gt_expectations(metrics, methods):
    for method in methods:
        m = metrics[method]
        for d in ("i2t", "t2i"):
            # Same-colour items rank first in the colour world: exact when ids are attached right.
            assert m["eccv"][d] == {"map_at_r": 1.0, "r_precision": 1.0, "r1": 1.0}, (method, d)
            assert m["cxc"][d]["r1"] == 1.0
            assert m["coco_5k"][d]["r5"] == 1.0


def test_evaluate_eccv_on_karpathy_with_coco_captions_and_on_csv_with_ids(tmp_path):
    from probclip.eval.eccv import evaluate_eccv
    from probclip.eval.readers import read_retrieval
    from probclip.eval.retrieval import encode_retrieval_data
    from test_eval_fixtures import build_coco_eccv, colour_eval_model

    karpathy, captions_json, gt_dir = build_coco_eccv(tmp_path / "coco")
    model = colour_eval_model()
    res = evaluate_eccv(model, karpathy, EvalOptions(out_dir=tmp_path / "out", progress=False),
                        coco_captions=captions_json, ground_truth=gt_dir)
    _colour_gt_expectations(res["metrics"], ("csd", "mean"))
    saved = json.loads((tmp_path / "out" / "results.json").read_text())
    assert saved["n_captions"] == 18 and "eccv_csd.png" in saved["plots"]
    # Same numbers as the embedding-level function with the ids matched by hand.
    data = read_retrieval(karpathy)
    images, texts = encode_retrieval_data(model, data, progress=False)
    direct = coco_eccv_metrics(images, texts, data.image_ids, [5000 + k for k in range(18)],
                               ground_truth=load_coco_ground_truth(gt_dir))
    assert res["metrics"]["csd"] == direct["csd"] and res["metrics"]["mean"] == direct["mean"]
    # CSV layout with image_id and caption_id columns.
    lines = ["filepath,title,image_id,caption_id"]
    lines += [
        f"val2014/img{int(data.caption_image[k])}.jpg,{cap},{data.image_ids[int(data.caption_image[k])]},{5000 + k}"
        for k, cap in enumerate(data.captions)
    ]
    (tmp_path / "coco" / "ids.csv").write_text("\n".join(lines) + "\n")
    from_csv = evaluate_eccv(model, tmp_path / "coco" / "ids.csv", EvalOptions(progress=False), ground_truth=gt_dir)
    assert from_csv["metrics"]["csd"] == direct["csd"]
    with pytest.raises(ValueError, match="COCO caption ids"):
        evaluate_eccv(model, karpathy, EvalOptions(progress=False), ground_truth=gt_dir)
