"""The DataComp suite: task table, CLIP_benchmark layout reading, per-task and suite outputs, missing data."""

import csv
import json

import numpy as np
import pytest
import torch

from probclip.errors import InputError, UsageError
from probclip.eval.benchmark_wds import list_shards, read_benchmark_classification, read_benchmark_retrieval
from probclip.eval.cli import main
from probclip.eval.encode import encode_images, encode_texts, load_eval_model
from probclip.eval.group_metrics import f1_macro, worst_group_accuracy
from probclip.eval.options import EvalOptions
from probclip.eval.suite import load_suite, run_suite, select_tasks
from suite_fixtures import (
    build_benchmark_classification,
    build_benchmark_retrieval,
    build_datacomp_root,
    save_tiny_model,
)


@pytest.fixture(scope="module")
def tiny_checkpoint(tmp_path_factory):
    torch.manual_seed(0)
    return save_tiny_model(tmp_path_factory.mktemp("ckpt") / "prolip-tiny")


@pytest.fixture(scope="module")
def suite_run(tmp_path_factory, tiny_checkpoint):
    root = build_datacomp_root(tmp_path_factory.mktemp("datacomp"))
    out = tmp_path_factory.mktemp("suite-out")
    code = main(["--model", str(tiny_checkpoint), "--suite", "datacomp", "--data-root", str(root), "--out", str(out),
                 "--tasks", "cifar10,vtab/caltech101,GeoDE,wds_flickr30k", "--no-progress", "--batch-size", "8"])
    assert code == 0
    return root, out


def test_task_table_is_datacomps_38_tasks():
    tasks = load_suite("datacomp")
    assert len(tasks) == 38 and len({t.key for t in tasks}) == 38
    by_key = {t.key: t for t in tasks}
    assert {k for k, t in by_key.items() if t.main_metric == "mean_per_class_recall"} == {
        "vtab/caltech101", "fgvc_aircraft", "vtab/flowers", "vtab/pets"}
    assert {k for k, t in by_key.items() if t.kind == "retrieval"} == {
        "retrieval/flickr_1k_test_image_text_retrieval", "retrieval/mscoco_2014_5k_test_image_text_retrieval"}
    assert by_key["wilds/iwildcam"].main_metric == "F1-macro_all"
    assert by_key["fairness/dollar_street"].topk == 5
    assert sum(t.main_metric == "acc1" for t in tasks) == 27
    assert all(t.split == "test" for t in tasks)
    assert by_key["vtab/caltech101"].folders == ("wds_vtab-caltech101",)
    with pytest.raises(UsageError, match="nope"):
        select_tasks(tasks, ["cifar10", "nope"])
    assert [t.key for t in select_tasks(tasks, ["MSCOCO", "cifar10"])] == [
        "cifar10", "retrieval/mscoco_2014_5k_test_image_text_retrieval"]
    assert [t.key for t in select_tasks(tasks, ["flickr30k", "VTAB-PETS"])] == [
        "vtab/pets", "retrieval/flickr_1k_test_image_text_retrieval"]


def test_reading_follows_nshards_order_and_clip_benchmark_members(tmp_path):
    root = build_benchmark_retrieval(tmp_path / "r", n_images=12, n_shards=11)
    shards = list_shards(root)
    assert [s.name for s in shards] == [f"{i}.tar" for i in range(11)]
    data = read_benchmark_retrieval(root)
    keys = [item.key.rsplit("::", 1)[1] for item in data.items]
    assert keys == [f"r{n:04d}" for n in range(12)]  # numeric shard order: 10.tar after 9.tar
    assert len(data.captions) == 24 and data.captions[2] == "a green square"
    assert data.caption_image.tolist() == [i for i in range(12) for _ in range(2)]
    (root / "test" / "5.tar").unlink()
    with pytest.raises(InputError, match="announces 11 shards"):
        list_shards(root)
    cls = read_benchmark_classification(build_benchmark_classification(tmp_path / "c", metadata=True))
    assert cls.data.labels == [0, 1, 2] * 4 and cls.metadata.shape == (12, 2)
    assert cls.metadata[:, 0].tolist() == [n % 3 for n in range(12)]
    assert len(cls.data.templates) == 3


def test_group_metrics_match_direct_counts():
    labels = torch.tensor([0, 0, 1, 1, 2, 2, 2])
    preds = torch.tensor([0, 1, 1, 1, 0, 2, 2])
    # class 0: tp 1, predicted 2, actual 2 -> 0.5; class 1: tp 2, pred 3, act 2 -> 0.8; class 2: 2/(2+3)*2 -> 0.8
    assert f1_macro(preds, labels) == pytest.approx((0.5 + 0.8 + 0.8) / 3, abs=1e-12)
    logits = torch.nn.functional.one_hot(preds, 3).double()
    groups = torch.tensor([5, 5, 5, 9, 9, 9, 9])
    assert worst_group_accuracy(logits, labels, groups) == pytest.approx(2 / 3)


def test_suite_outputs_rows_average_and_reports(suite_run, tiny_checkpoint):
    root, out = suite_run
    summary = json.loads((out / "suite.json").read_text())
    rows = {r["key"]: r for r in summary["tasks"]}
    assert list(rows) == ["vtab/caltech101", "cifar10", "retrieval/flickr_1k_test_image_text_retrieval",
                          "fairness/geode"]
    assert all(r["status"] == "done" for r in rows.values())
    assert rows["vtab/caltech101"]["n_images"] == 15 and rows["cifar10"]["n_images"] == 12
    # Each row's main metric is the one in the task's own results.json.
    cal = json.loads((out / "vtab-caltech101" / "results.json").read_text())
    assert rows["vtab/caltech101"]["csd"] == cal["metrics"]["mean"]["csd"]["mean_per_class_recall"]
    assert rows["vtab/caltech101"]["cosine"] == cal["metrics"]["mean"]["mean"]["mean_per_class_recall"]
    assert rows["vtab/caltech101"]["pearson"] == cal["uncertainty"]["mean/csd"]["pearson"]
    geode = json.loads((out / "fairness-geode" / "results.json").read_text())
    assert rows["fairness/geode"]["csd"] == geode["metrics"]["mean"]["csd"]["acc_wg"]
    # Retrieval: mean of the two R@1, recomputed here from the embeddings by brute force (cosine).
    model = load_eval_model(str(tiny_checkpoint))
    data = read_benchmark_retrieval(root / "wds_flickr30k")
    img = encode_images(model.model, data.items, model.preprocess, progress=False).mean
    txt = encode_texts(model.model, data.captions, model.tokenizer, progress=False).mean
    sims = (torch.nn.functional.normalize(img, dim=-1) @ torch.nn.functional.normalize(txt, dim=-1).T).numpy()
    owner = data.caption_image.numpy()
    i2t = np.mean([owner[np.argmax(sims[i])] == i for i in range(len(data.items))])
    t2i = np.mean([np.argmax(sims[:, c]) == owner[c] for c in range(len(data.captions))])
    flickr = rows["retrieval/flickr_1k_test_image_text_retrieval"]
    assert flickr["cosine"] == pytest.approx(0.5 * (i2t + t2i), abs=1e-12)
    # DataComp's average: the unweighted mean of the main metrics, here over 4 of 38 tasks.
    avg = summary["average"]
    assert avg["n_tasks"] == 4 and avg["n_tasks_in_suite"] == 38
    assert avg["csd"] == pytest.approx(np.mean([r["csd"] for r in rows.values()]), abs=1e-15)
    assert avg["cosine"] == pytest.approx(np.mean([r["cosine"] for r in rows.values()]), abs=1e-15)
    with open(out / "suite.csv", newline="") as handle:
        table = list(csv.DictReader(handle))
    assert [r["key"] for r in table] == list(rows) and float(table[1]["csd"]) == rows["cifar10"]["csd"]
    md = (out / "suite.md").read_text()
    assert "| CIFAR-10 (`cifar10`) | acc1 |" in md and "over 4 of 38 tasks" in md
    # `--task retrieval` on the same folder reads it the same way (CLIP_benchmark layout) and agrees.
    assert main(["--model", str(tiny_checkpoint), "--task", "retrieval", "--data", str(root / "wds_flickr30k"),
                 "--out", str(out / "single"), "--no-progress"]) == 0
    single = json.loads((out / "single" / "results.json").read_text())
    suite_flickr = json.loads((out / "retrieval-flickr_1k_test_image_text_retrieval" / "results.json").read_text())
    assert single["metrics"] == suite_flickr["metrics"] and single["n_captions"] == 24
    for task in ("vtab-caltech101", "cifar10", "retrieval-flickr_1k_test_image_text_retrieval", "fairness-geode"):
        assert (out / task / "results.json").is_file() and (out / task / "report.html").is_file()
    assert "<table class='sortable' id='suite'>" in (out / "report.html").read_text()


def test_missing_tasks_are_named_or_skipped(tmp_path, tiny_checkpoint, capsys):
    root = tmp_path / "root"
    build_benchmark_classification(root / "wds_cifar10")
    args = ["--model", str(tiny_checkpoint), "--suite", "datacomp", "--data-root", str(root), "--no-progress",
            "--tasks", "cifar10,imagenet1k,mscoco,misc/winogavil"]
    assert main(args + ["--out", str(tmp_path / "a")]) == 1
    err = capsys.readouterr().err
    assert "imagenet1k (wds_imagenet1k or wds_imagenet1k_test)" in err and "mscoco" in err and "cifar10 (" not in err
    assert main(args + ["--out", str(tmp_path / "b"), "--skip-missing"]) == 0
    summary = json.loads((tmp_path / "b" / "suite.json").read_text())
    status = {r["key"]: r["status"] for r in summary["tasks"]}
    assert status == {"cifar10": "done", "imagenet1k": "missing", "misc/winogavil": "unsupported",
                      "retrieval/mscoco_2014_5k_test_image_text_retrieval": "missing"}
    assert summary["average"]["n_tasks"] == 1
    assert summary["average"]["csd"] == summary["tasks"][0]["csd"]
    assert "over 1 of 38 tasks" in (tmp_path / "b" / "suite.md").read_text()
    # Usage errors: exit status 2 with one line naming the option.
    assert main(["--model", str(tiny_checkpoint), "--suite", "datacomp"]) == 2
    assert "--data-root" in capsys.readouterr().err
    assert main(["--model", str(tiny_checkpoint), "--suite", "datacomp", "--data-root", str(root),
                 "--tasks", "cifar11"]) == 2
    assert "cifar11" in capsys.readouterr().err
    with pytest.raises(InputError, match="imagenet1k"):
        run_suite(load_eval_model(str(tiny_checkpoint)), root, EvalOptions(out_dir=tmp_path / "c", progress=False),
                  tasks=["imagenet1k"])


def test_deterministic_model_has_cosine_column_only(tmp_path):
    from test_eval_fixtures import open_clip_eval_model

    root = tmp_path / "root"
    build_benchmark_classification(root / "wds_cifar10")
    summary = run_suite(open_clip_eval_model(), root, EvalOptions(out_dir=tmp_path / "out", progress=False),
                        tasks=["cifar10"])
    row = summary["tasks"][0]
    results = json.loads((tmp_path / "out" / "cifar10" / "results.json").read_text())
    assert row["csd"] is None and row["pearson"] is None
    assert row["cosine"] == results["metrics"]["mean"]["mean"]["acc1"]
    assert summary["average"] == {"n_tasks": 1, "n_tasks_in_suite": 38, "csd": None, "cosine": row["cosine"]}
    assert "| CIFAR-10 (`cifar10`) | acc1 | – |" in (tmp_path / "out" / "suite.md").read_text()


def test_run_suite_needs_options_with_an_output_folder(tmp_path):
    from test_eval_fixtures import open_clip_eval_model

    root = tmp_path / "root"
    build_benchmark_classification(root / "wds_cifar10")
    model = open_clip_eval_model()
    with pytest.raises(UsageError, match="out_dir"):
        run_suite(model, root, EvalOptions(progress=False), tasks=["cifar10"])
    with pytest.raises(UsageError, match="EvalOptions"):
        run_suite(model, root, tmp_path / "out", tasks=["cifar10"])
    assert not (tmp_path / "out").exists()
