"""``probclip curate``: pair scores on shards in DataComp's layout, skipped samples, resume after SIGKILL, torchrun,
the rule grammar, the subset files (DataComp's uid .npy, key list), new shards, and the model fingerprint check."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest
import torch

import probclip
from curate_helpers import file_digests, jpeg, uid, write_datacomp_pool
from probclip.cli import main as cli_main
from probclip.curate import apply_rules, filter_pool, parse_rule, read_scores, score_pool, uids_to_datacomp
from probclip.data.webdataset import iter_tar_records
from probclip.errors import InputError, UsageError

REPO = Path(__file__).resolve().parents[1]
PYTHON = sys.executable
ENV = dict(os.environ, PYTHONPATH=str(REPO / "src"), OMP_NUM_THREADS="1", HF_HUB_OFFLINE="1")
COLUMNS = ["cosine", "csd", "match_prob", "image_u", "text_u", "image_in_text", "text_in_image"]


@pytest.fixture(scope="module")
def pool(tmp_path_factory) -> tuple[Path, dict]:
    root = tmp_path_factory.mktemp("pool") / "shards"
    return root, write_datacomp_pool(root, shards=3, per_shard=6)


@pytest.fixture(scope="module")
def scored(tmp_path_factory, tiny_model_dir, pool) -> Path:
    out = tmp_path_factory.mktemp("scores") / "scores"
    _in_one_thread(score_pool, str(tiny_model_dir), pool[0], out, shard_rows=4, batch_size=3, num_workers=0,
                   progress=False)
    return out


def _in_one_thread(fn, *args, **kwargs):
    """Run like the subprocesses (OMP_NUM_THREADS=1), so that the numbers match to the bit."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        return fn(*args, **kwargs)
    finally:
        torch.set_num_threads(threads)


def _files(out: Path) -> dict[str, bytes]:
    """The scores parts (as table dicts) and the manifests' contents that do not depend on timing."""
    found = {}
    for path in sorted((out / "scores").glob("*")):
        found[path.name] = (json.dumps(pq.read_table(path).to_pydict(), sort_keys=True).encode()
                            if path.suffix == ".parquet" else path.read_bytes())
    found["scores.json"] = (out / "scores.json").read_bytes()
    return found


def test_scores_of_a_datacomp_pool(scored, tiny_model_dir, pool):
    root, info = pool
    table, manifest = read_scores(scored)
    rows = table.to_pydict()
    good = [k for k in info["keys"] if k not in info["bad"]]
    assert rows["key"] == good and table.num_rows == 15
    assert rows["uid"] == [info["uids"][k] for k in good]
    assert rows["caption"] == [info["captions"][k] for k in good]
    assert rows["shard"][0] == str((root / "00000000.tar").resolve())
    assert (manifest["samples"], manifest["scored"], manifest["skipped"]) == (18, 15, 3)
    reasons = {s["key"]: s["reason"] for s in manifest["skipped_samples"]}
    assert set(reasons) == set(info["bad"])
    assert reasons["000000002"] == "no image member" and reasons["000000003"] == "no caption"
    assert "cannot identify image" in reasons["000000001"]
    assert [s["scored"] for s in manifest["shards"]] == [3, 6, 6]
    # each row is the model's pair scores of that image and its caption
    model = probclip.create_model_from_pretrained(str(tiny_model_dir))
    model = model[0] if isinstance(model, tuple) else model
    tokenizer = probclip.get_tokenizer(model)
    n = 9  # shard 1, sample 3: key 000010003
    position = rows["key"].index("000010003")
    with torch.no_grad():
        img = model.encode_image(torch.stack([probclip.image_transform(model.config.vision)(
            probclip.load_image(_jpeg_file(root, n)))]))
        txt = model.encode_text(tokenizer([info["captions"]["000010003"]]))
    mi, mt = img.mean.double(), txt.mean.double()
    expected = {
        "cosine": float(torch.nn.functional.cosine_similarity(mi, mt)[0]),
        "csd": float(probclip.csd(img, txt)[0, 0]),
        "image_u": float(img.uncertainty[0]), "text_u": float(txt.uncertainty[0]),
        "image_in_text": float(probclip.inclusion_score(img, txt)[0, 0]),
        "text_in_image": float(probclip.inclusion_score(txt, img)[0, 0]),
        "match_prob": float(torch.sigmoid(model.logit_scale.detach().exp() * (
            mi @ mt.T - (img.uncertainty + txt.uncertainty) / 2) + model.logit_bias.detach())[0, 0]),
    }
    for column, value in expected.items():
        assert rows[column][position] == pytest.approx(value, rel=2e-4, abs=2e-4), column
    assert manifest["model"]["fingerprint"] == json.loads(
        (scored / "embeddings" / "manifest.json").read_text())["model"]["fingerprint"]


def _jpeg_file(root: Path, n: int) -> Path:
    """The JPEG bytes of sample ``n`` as a file (what the shard holds)."""
    path = root.parent / f"sample{n}.jpg"
    path.write_bytes(jpeg(n))
    return path


def test_uids_from_the_parquet_beside_each_shard(tmp_path, tiny_model_dir):
    root = tmp_path / "pool"
    info = write_datacomp_pool(root, shards=1, per_shard=4, uid_in_json=False, special=False)
    table, _ = read_scores(score_pool(str(tiny_model_dir), root, tmp_path / "s", num_workers=0, progress=False))
    assert table.column("uid").to_pylist() == [info["uids"][k] for k in info["keys"]]


def test_sigkill_and_restart_equals_uninterrupted_run(tmp_path, scored, tiny_model_dir, pool):
    out = tmp_path / "killed"
    cmd = [PYTHON, "-m", "probclip.curate", "score", "--model", str(tiny_model_dir), "--data", str(pool[0]), "--out",
           str(out), "--shard-rows", "4", "--batch-size", "3", "--num-workers", "0", "--no-progress"]
    process = subprocess.Popen(cmd, env=ENV, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    first = out / "embeddings" / ".progress" / "image_0.json"
    deadline = time.time() + 240
    while not first.exists() and process.poll() is None and time.time() < deadline:
        time.sleep(0.005)
    process.send_signal(signal.SIGKILL)
    process.wait()
    assert first.exists() and not (out / "scores.json").exists()
    resumed = subprocess.run(cmd, env=ENV, capture_output=True, text=True, timeout=300)
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    assert "scored 15 of 18 samples in 3 shards, 3 skipped" in resumed.stdout
    assert _files(out) == _files(scored)
    # killed while scoring: a part and the manifest missing, the other parts done
    (out / "scores" / "part-00001.parquet").unlink()
    (out / "scores.json").unlink()
    again = subprocess.run(cmd, env=ENV, capture_output=True, text=True, timeout=300)
    assert again.returncode == 0, again.stderr[-2000:]
    assert _files(out) == _files(scored)


def test_torchrun_two_processes_equal_one(tmp_path, scored, tiny_model_dir, pool):
    torchrun = Path(PYTHON).with_name("torchrun")
    two = subprocess.run([str(torchrun), "--standalone", "--nproc_per_node", "2", "-m", "probclip.curate", "score",
                          "--model", str(tiny_model_dir), "--data", str(pool[0]), "--out", str(tmp_path / "two"),
                          "--shard-rows", "4", "--batch-size", "3", "--num-workers", "0", "--no-progress"],
                         env=ENV, capture_output=True, text=True, timeout=300)
    assert two.returncode == 0, two.stderr[-3000:]
    assert _files(tmp_path / "two") == _files(scored)


def test_another_models_scores_folder_is_refused(tmp_path, scored, tiny_model_dir, pool):
    torch.manual_seed(1)
    other = probclip.create_model("ProLIP-Tiny")
    copy = tmp_path / "scores"
    shutil.copytree(scored, copy)
    with pytest.raises(UsageError, match="holds the scores of another model"):
        score_pool(other, pool[0], copy, num_workers=0, progress=False)
    with pytest.raises(UsageError, match="the scores were made by another model"):
        filter_pool(scored, tmp_path / "subset", ["top 50% cosine"], model=other)
    record = filter_pool(scored, tmp_path / "subset", ["top 50% cosine"], model=str(tiny_model_dir))
    assert record["kept"] == 7


# ------------------------------------------------------------------------------------------------------ the rules
def _columns(n: int = 200, seed: int = 0) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    return {c: rng.standard_normal(n) for c in COLUMNS}


def test_rule_semantics():
    cols = _columns()
    kept, counts = apply_rules([parse_rule("top 30% cosine")], cols)
    assert kept.sum() == 60 and cols["cosine"][kept].min() > cols["cosine"][~kept].max()
    kept, _ = apply_rules([parse_rule("bottom 0.25 csd")], cols)
    assert kept.sum() == 50 and cols["csd"][kept].max() < cols["csd"][~kept].min()
    kept, counts = apply_rules([parse_rule("text_u <= q90"), parse_rule("top 30% cosine")], cols)
    assert kept.sum() == 60 and (cols["text_u"][kept] <= np.percentile(cols["text_u"], 90)).all()
    assert counts == [{"rule": "text_u <= q90", "removed": 20, "rejects": 20, "kept": 180},
                      {"rule": "top 30% cosine", "removed": 120, "rejects": 140, "kept": 60}]
    combo = cols["cosine"] - 0.5 * cols["text_u"]
    kept, _ = apply_rules([parse_rule("top 10% cosine - 0.5 * text_u")], cols)
    assert set(np.nonzero(kept)[0]) == set(np.argsort(-combo)[:20])
    both = parse_rule("(image_u <= q95 and text_u <= q90) or not (cosine < 1.5)")
    expected = ((cols["image_u"] <= np.percentile(cols["image_u"], 95)) & (cols["text_u"] <= np.percentile(
        cols["text_u"], 90))) | (cols["cosine"] >= 1.5)
    assert np.array_equal(apply_rules([both], cols)[0], expected)
    kept, _ = apply_rules([parse_rule("-csd > -0.5")], cols)
    assert np.array_equal(kept, cols["csd"] < 0.5)
    ties = {c: np.zeros(10) for c in COLUMNS}
    assert np.nonzero(apply_rules([parse_rule("top 30% cosine")], ties)[0])[0].tolist() == [0, 1, 2]


@pytest.mark.parametrize("text, message", [
    ("top 130% cosine", "must lie in"), ("cosin > 1", "unknown score column 'cosin'"),
    ("cosine >", "expected a number or a percentile"), ("top cosine", "expected a fraction"),
    ("cosine > 3 3", "expected the end of the rule"), ("text_u <= q120", "q0 .. q100"),
    ("cosine > 30%", "write a percentile as q30"), ("(cosine > 1", "expected ')'"), ("", "non-empty"),
    ("cosine ~ 1", "cannot read '~ 1'"),
])
def test_bad_rules_name_the_problem(text, message):
    with pytest.raises(UsageError, match=message.replace("(", r"\(").replace(")", r"\)")):
        parse_rule(text)


# ------------------------------------------------------------------------------------------------ the subset files
def test_datacomp_uid_array_is_what_its_resharder_reads():
    uids = [uid(i) for i in range(50)]
    array = uids_to_datacomp(uids)
    reference = np.array([(int(u[:16], 16), int(u[16:32], 16)) for u in uids], np.dtype("u8,u8"))  # DataComp README
    reference.sort()
    assert array.dtype == np.dtype("u8,u8") and np.array_equal(array, reference)
    for u in uids:  # resharder.py: divmod(int(uid, 16), 2**64), then searchsorted in the sorted subset
        key = np.array([divmod(int(u, 16), 2**64)], np.dtype("u8,u8"))[0]
        assert np.searchsorted(array, key, "right") - np.searchsorted(array, key, "left") == 1
    with pytest.raises(InputError, match="'xyz' is not a 128-bit"):
        uids_to_datacomp(["xyz"])


def test_filter_writes_the_subset_and_new_shards(tmp_path, scored, pool, capsys):
    root, info = pool
    before = file_digests(root)
    table, _ = read_scores(scored)
    cosine = np.array(table.column("cosine").to_pylist())
    subset, shards = tmp_path / "subset", tmp_path / "new"
    code = cli_main(["curate", "filter", str(scored), "--out", str(subset), "--rule", "text_u <= q80",
                     "--rule", "top 40% cosine", "--reshard", str(shards), "--shard-size", "4"])
    out = capsys.readouterr().out
    assert code == 0, out
    record = json.loads((subset / "filter.json").read_text())
    assert record["pool"] == 15 and record["kept"] == 6
    assert [(c["rule"], c["removed"], c["kept"]) for c in record["rules"]] == [
        ("text_u <= q80", 3, 12), ("top 40% cosine", 6, 6)]
    assert "text_u <= q80" in out and "kept 6 of 15 (40.0%)" in out
    text_u = np.array(table.column("text_u").to_pylist())
    passes = text_u <= np.percentile(text_u, 80)
    order = [i for i in np.lexsort((np.arange(15), -cosine)) if passes[i]][:6]
    expected_keys = [table.column("key")[i].as_py() for i in sorted(order)]
    assert (subset / "keys.txt").read_text().split() == expected_keys
    stored = np.load(subset / "uids.npy")
    assert np.array_equal(stored, uids_to_datacomp([info["uids"][k] for k in expected_keys]))
    assert pq.read_table(subset / "subset.parquet").column("key").to_pylist() == expected_keys
    # new shards: the kept samples, member for member, 4 per shard, a parquet beside each
    assert sorted(p.name for p in shards.iterdir()) == ["00000.parquet", "00000.tar", "00001.parquet", "00001.tar"]
    copied = [r for s in ("00000.tar", "00001.tar") for r in iter_tar_records(str(shards / s))]
    assert [r["__key__"] for r in copied] == expected_keys
    originals = {r["__key__"]: r for s in sorted(root.glob("*.tar")) for r in iter_tar_records(str(s))}
    for record_ in copied:
        assert {k: v for k, v in record_.items() if k != "__url__"} == {
            k: v for k, v in originals[record_["__key__"]].items() if k != "__url__"}
    side = pq.read_table(shards / "00001.parquet").to_pydict()
    assert side["key"] == expected_keys[4:] and side["uid"] == [info["uids"][k] for k in expected_keys[4:]]
    assert file_digests(root) == before  # the sources are untouched
    # an existing output is not replaced without --overwrite
    code = cli_main(["curate", "filter", str(scored), "--out", str(subset), "--rule", "top 20% csd"])
    err = capsys.readouterr().err
    assert code == 2 and "--overwrite" in err and err.count("\n") == 1
    code = cli_main(["curate", "filter", str(scored), "--out", str(subset), "--rule", "bottom 20% csd",
                     "--overwrite", "--format", "keys"])
    assert code == 0 and len((subset / "keys.txt").read_text().split()) == 3 and not (subset / "uids.npy").exists()
    # the new shards are a pool in the same layout: they score again
    again, _ = read_scores(score_pool(_model_of(scored), shards, tmp_path / "rescored", num_workers=0,
                                      progress=False))
    assert again.column("key").to_pylist() == expected_keys
    assert again.column("uid").to_pylist() == [info["uids"][k] for k in expected_keys]


def _model_of(scored: Path) -> str:
    return json.loads((scored / "scores.json").read_text())["model"]["source"]


def test_filter_refuses_what_it_cannot_do(tmp_path, scored, pool, tiny_model_dir):
    with pytest.raises(InputError, match="the rules keep nothing of the 15 scored pairs: rule 'cosine > 5'"):
        filter_pool(scored, tmp_path / "a", ["top 50% cosine", "cosine > 5"])
    with pytest.raises(UsageError, match="is the folder of the source shards"):
        filter_pool(scored, tmp_path / "b", ["top 50% cosine"], reshard_dir=pool[0])
    root = tmp_path / "no-uids"
    write_datacomp_pool(root, shards=1, per_shard=3, uid_in_json=False, with_parquet=False, special=False)
    no_uids = score_pool(str(tiny_model_dir), root, tmp_path / "s", num_workers=0, progress=False)
    with pytest.raises(InputError, match=r"the pool has no uid for 3 of the 3 kept samples \(e.g. 00000000.tar:"):
        filter_pool(no_uids, tmp_path / "c", ["top 100% cosine"], fmt="datacomp")
    record = filter_pool(no_uids, tmp_path / "d", ["top 100% cosine"])
    assert record["files"] == ["keys.txt", "subset.parquet"]
    with pytest.raises(InputError, match="scores.json not found"):
        filter_pool(tmp_path / "d", tmp_path / "e", ["top 10% cosine"])
