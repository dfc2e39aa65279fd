"""The noisy pool of the synthetic world (exact counts, each kind's truth, determinism), the noise table and the
``probclip curate demo`` pipeline at a tiny scale (a 2-step quickstart, a 120-pair pool, 2-step training)."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pyarrow as pa
import pytest

from probclip.cli import main as cli_main
from probclip.curate.demo import noise_table, run_demo, standard_filters, tune
from probclip.curate.noisy_pool import build_noisy_pool, read_truth
from probclip.data.webdataset import iter_tar_records
from probclip.errors import UsageError
from probclip.quickstart import run_quickstart
from probclip.synthetic.world import Scene, SceneObject, caption_is_true, parse_caption


def _scene(meta: dict) -> Scene:
    scene = meta["scene"]
    return Scene(tuple(SceneObject(**o) for o in scene["objects"]), scene["degradation"], scene["degradation_kind"])


def test_noisy_pool_kinds_rates_and_truth(tmp_path):
    info = build_noisy_pool(tmp_path / "a", size=200, samples_per_shard=80, seed=3)
    assert info["counts"] == {"clean": 120, "mismatch": 20, "wrong_attribute": 20, "degraded": 20, "vague": 20}
    assert info["shards"] == ["00000000.tar", "00000001.tar", "00000002.tar"]
    records = [r for s in info["shards"] for r in iter_tar_records(str(tmp_path / "a" / s))]
    assert len(records) == 200 and all({"png", "txt", "json"} <= set(r) for r in records)
    truth = read_truth(tmp_path / "a")
    for record in records:
        meta = json.loads(record["json"])
        caption = parse_caption(record["txt"].decode())
        scene = _scene(meta)
        assert truth[meta["uid"]] == meta["noise"] and meta["caption"] == record["txt"].decode()
        true = caption_is_true(scene, caption)
        assert true == (meta["noise"] not in ("mismatch", "wrong_attribute")), meta
        assert (caption.level <= 1) == (meta["noise"] == "vague"), meta
        assert (scene.degradation == 4) == (meta["noise"] == "degraded") and scene.degradation in (0, 4)
        if meta["noise"] == "wrong_attribute":  # one attribute word replaced: same shape of caption
            assert caption.level >= 2
    again = build_noisy_pool(tmp_path / "b", size=200, samples_per_shard=80, seed=3)
    assert again["counts"] == info["counts"]
    for shard in info["shards"]:
        assert (tmp_path / "a" / shard).read_bytes() == (tmp_path / "b" / shard).read_bytes()
    with pytest.raises(UsageError, match="already holds .tar shards"):
        build_noisy_pool(tmp_path / "a", size=10)
    with pytest.raises(UsageError, match="sum to at most 1"):
        build_noisy_pool(tmp_path / "c", size=10, rates={"mismatch": 0.7, "vague": 0.7})


def test_noise_table_counts_precision_and_recall():
    labels = ["clean"] * 6 + ["mismatch"] * 2 + ["vague"] * 2
    kept = np.array([1, 1, 1, 1, 1, 0, 0, 1, 0, 0], dtype=bool)  # removes 1 clean, 1 mismatch, 2 vague
    table = noise_table(labels, kept)
    assert table["removed"] == 4 and table["kept_fraction"] == pytest.approx(0.6)
    assert table["mismatch"] == {"precision": 0.25, "recall": 0.5, "removed": 1, "total": 2}
    assert table["vague"] == {"precision": 0.5, "recall": 1.0, "removed": 2, "total": 2}
    assert table["degraded"]["recall"] == 0.0 and table["any"]["precision"] == 0.75 and table["any"]["recall"] == 0.75


def test_every_standard_filter_keeps_the_same_fraction():
    filters = standard_filters(0.3)
    names = [f["name"] for f in filters]
    assert len(set(names)) == len(names) and "cosine (SigLIP)" in names and "CSD" in names
    assert not any("," in n for n in names)  # --filters is a comma-separated list
    for filt in filters:
        assert filt["candidates"] and all(rules[-1].split()[:2] in (["top", "30%"], ["bottom", "30%"])
                                          for rules in filt["candidates"]), filt["name"]
    tuned = [f["name"] for f in filters if len(f["candidates"]) > 1]
    assert tuned and all(f["kind"] == "combination" for f in filters if f["name"] in tuned)


def _scores_table(**columns) -> pa.Table:
    n = len(next(iter(columns.values())))
    return pa.table({"shard": ["s"] * n, "key": [str(i) for i in range(n)], "uid": [str(i) for i in range(n)],
                     "caption": ["c"] * n, **{k: np.asarray(v, dtype=np.float64) for k, v in columns.items()}})


def test_tune_applies_the_candidate_that_removes_the_most_noise_on_the_validation_pool():
    # 6 clean pairs, 2 vague captions (high text_u, high cosine), 2 mismatched ones (low cosine)
    labels = ["clean"] * 6 + ["vague"] * 2 + ["mismatch"] * 2
    cosine = [0.90, 0.85, 0.80, 0.75, 0.70, 0.65, 0.95, 0.92, 0.10, 0.20]
    text_u = [0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 5.0, 6.0, 0.1, 0.2]
    table = _scores_table(cosine=cosine, text_u=text_u, image_u=[0.0] * 10)
    filters = [{"name": "f", "model": "prolip", "kind": "combination",
                "candidates": [["top 60% cosine"], ["text_u <= q80", "top 60% cosine"], ["text_u <= q80",
                                                                                          "top 60% cosine"]]},
               {"name": "g", "model": "prolip", "kind": "clip score", "candidates": [["top 60% cosine"]]}]
    tuned = tune(filters, {"prolip": table, "siglip": table}, labels)
    assert tuned[0]["rules"] == ["text_u <= q80", "top 60% cosine"]  # the first of two equal candidates
    assert tuned[0]["validation"]["any"]["recall"] == 1.0 and tuned[0]["validation"]["vague"]["recall"] == 1.0
    assert tuned[1]["rules"] == ["top 60% cosine"]
    assert tuned[1]["validation"]["any"]["recall"] == 0.5 and tuned[1]["validation"]["vague"]["recall"] == 0.0


@pytest.fixture(scope="module")
def quickstart_dir(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("qs")
    run_quickstart(out, 2, seed=0)
    return out


def test_demo_end_to_end_at_tiny_scale(tmp_path, quickstart_dir, capsys):
    filters = ("cosine (SigLIP)", "best combination")
    record = run_demo(tmp_path / "demo", pool_size=120, validation_size=60, kept=0.6, quickstart=quickstart_dir,
                      train_steps=2, seeds=2, downstream=filters, log=lambda *_: None)
    assert [r["name"] for r in record["filters"]] == [f["name"] for f in standard_filters(0.6)]
    for row in record["filters"]:
        assert row["table"]["removed"] == 48 and row["table"]["kept_fraction"] == pytest.approx(0.6)
    table = (tmp_path / "demo" / "noise_table.md").read_text()
    assert "| cosine (SigLIP) | `top 60% cosine` |" in table and "(best)" in table and "clean 72, mismatch 12" in table
    assert record["best"] in [f["name"] for f in standard_filters(0.6) if f["kind"] == "combination"]
    candidates = {f["name"]: f["candidates"] for f in standard_filters(0.6)}
    assert all(row["rules"] in candidates[row["name"]] for row in record["filters"])
    best_row = next(row for row in record["filters"] if row["name"] == record["best"])
    assert best_row["validation_any_recall"] == max(row["validation_any_recall"] for row in record["filters"]
                                                    if row["kind"] == "combination")
    assert set(record["downstream"]) == {"cosine (SigLIP)", record["best"]}
    for name in record["downstream"]:
        runs = record["downstream"][name]["runs"]
        assert [r["seed"] for r in runs] == [0, 1]
        assert all(0 <= r["metrics"]["retrieval.t2i.map_at_r"] <= 1 and "zeroshot.acc1" in r["metrics"] for r in runs)
        assert record["downstream"][name]["kept"] == 72
    shards = sorted((tmp_path / "demo" / "subsets" / "cosine-siglip" / "shards").glob("*.tar"))
    assert sum(1 for s in shards for _ in iter_tar_records(str(s))) == 72
    assert f"| {record['best']} | 2 |" in (tmp_path / "demo" / "downstream.md").read_text()
    assert json.loads((tmp_path / "demo" / "validation" / "pool.json").read_text())["seed"] == 1
    assert json.loads((tmp_path / "demo" / "demo.json").read_text())["kept"] == 0.6
    # the command line: tables only (no training), reusing the pool and the scores
    code = cli_main(["curate", "demo", "--out", str(tmp_path / "demo"), "--quickstart", str(quickstart_dir),
                     "--pool-size", "120", "--validation-size", "60"])
    assert code == 0 and "noise_table.md" in capsys.readouterr().out
    code = cli_main(["curate", "demo", "--out", str(tmp_path / "demo"), "--quickstart", str(quickstart_dir),
                     "--pool-size", "130", "--validation-size", "60"])
    assert code == 2 and "holds a pool of 120 pairs" in capsys.readouterr().err
    # two trainings at a time, each in its own process: the same seeded models, the same metrics
    shutil.copytree(tmp_path / "demo", tmp_path / "parallel",
                    ignore=shutil.ignore_patterns("runs", "subsets", "scores-*"))
    code = cli_main(["curate", "demo", "--out", str(tmp_path / "parallel"), "--quickstart", str(quickstart_dir),
                     "--pool-size", "120", "--validation-size", "60", "--train-steps", "2", "--seeds", "2",
                     "--filters", ",".join(filters), "--jobs", "2"])
    assert code == 0
    parallel = json.loads((tmp_path / "parallel" / "demo.json").read_text())["downstream"]
    assert {name: [r["metrics"] for r in result["runs"]] for name, result in parallel.items()} == {
        name: [r["metrics"] for r in result["runs"]] for name, result in record["downstream"].items()}
    code = cli_main(["curate", "demo", "--out", str(tmp_path / "parallel"), "--jobs", "0"])
    assert code == 2 and "--jobs must be >= 1; got 0" in capsys.readouterr().err
