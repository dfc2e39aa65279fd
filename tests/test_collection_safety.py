"""A finished collection is immutable: re-runs and resumes with other data or another model are refused (naming the
difference) unless --overwrite; the manifest is checked value by value and names only files inside the collection;
an index file or a shard file of another collection is refused; Milvus names are unique per folder; a service
notices a collection rebuilt under it; ``probclip index`` on a read-only collection and non-UTF-8 file names are
one-line errors."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest
import torch
from PIL import Image

import probclip
from probclip.cli import main
from probclip.errors import InputError, UsageError
from probclip.search import SearchIndex, build_index, embed_collection
from probclip.search.input_digest import fingerprint, read_digests
from probclip.search.layout import ShardFileError, file_fingerprint, shard_files
from probclip.search.manifest import read_manifest
from probclip.search.milvus import collection_name
from search_helpers import make_collection


@pytest.fixture(scope="module")
def models(tmp_path_factory) -> tuple[Path, Path]:
    """Two ProLIP-Tiny checkpoints with different weights."""
    root = tmp_path_factory.mktemp("models")
    for seed in (0, 1):
        torch.manual_seed(seed)
        probclip.create_model("ProLIP-Tiny").save_pretrained(root / f"m{seed}")
    return root / "m0", root / "m1"


def _folder(path: Path, count: int = 5) -> Path:
    path.mkdir(parents=True)
    for i in range(count):
        Image.fromarray(np.random.default_rng(i).integers(0, 256, (20, 20, 3), dtype=np.uint8)).save(path / f"{i}.png")
        (path / f"{i}.txt").write_text(f"picture {i}\n")
    return path


def _embed(model: Path, data: Path, out: Path, **kwargs) -> Path:
    return embed_collection(str(model), data, out, shard_rows=2, batch_size=2, num_workers=0, progress=False,
                            **kwargs)


def _files(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def test_a_finished_collection_copied_without_progress_refuses_another_model(tmp_path, models):
    data = _folder(tmp_path / "data")
    _embed(models[0], data, tmp_path / "c")
    shutil.rmtree(tmp_path / "c" / ".progress")
    before = _files(tmp_path / "c")
    with pytest.raises(UsageError, match=r"differs in \['model_fingerprint'\]\): a finished collection, embedded "
                                         r"with another model \(fingerprint \w+; --model gives \w+\); give "
                                         r"--overwrite"):
        _embed(models[1], data, tmp_path / "c")
    assert _files(tmp_path / "c") == before  # nothing replaced
    _embed(models[0], data, tmp_path / "c")  # the same job: finished already, nothing rewritten
    assert _files(tmp_path / "c") == before
    _embed(models[1], data, tmp_path / "c", overwrite=True)
    manifest = read_manifest(tmp_path / "c")
    assert manifest.model.source == str(models[1].resolve())
    assert manifest.job.model_fingerprint == manifest.model.fingerprint != json.loads(
        before["manifest.json"])["model"]["fingerprint"]


def test_a_rerun_after_the_data_changed_is_refused_naming_the_row(tmp_path, models):
    data = _folder(tmp_path / "data")
    _embed(models[0], data, tmp_path / "c")
    manifest = read_manifest(tmp_path / "c")
    assert manifest.job.inputs_fingerprint and manifest.job.inputs_fingerprint == fingerprint(
        {m: read_digests(tmp_path / "c", m) for m in ("image", "text")})
    assert {m: info.inputs for m, info in manifest.modalities.items()} == {"image": 5, "text": 5}
    assert "inputs" not in json.loads((tmp_path / "c" / "manifest.json").read_text())
    before = _files(tmp_path / "c")
    Image.new("RGB", (20, 20), (1, 2, 3)).save(data / "3.png")  # same name, new content
    with pytest.raises(UsageError, match=r"image row 3 \(.*3\.png\) changed since the collection was embedded"):
        _embed(models[0], data, tmp_path / "c")
    (data / "5.png").write_bytes((data / "0.png").read_bytes())  # one image more
    with pytest.raises(UsageError, match="the data now lists 6 image rows, 5 when the collection was embedded"):
        _embed(models[0], data, tmp_path / "c")
    (data / "5.png").unlink()
    (data / "1.txt").write_text("an edited caption\n")
    code = main(["embed", "--model", str(models[0]), "--data", str(data), "--out", str(tmp_path / "c"),
                 "--num-workers", "0", "--no-progress", "--shard-rows", "2", "--batch-size", "2"])
    assert code == 2
    assert _files(tmp_path / "c") == before
    assert main(["embed", "--model", str(models[0]), "--data", str(data), "--out", str(tmp_path / "c"),
                 "--num-workers", "0", "--no-progress", "--shard-rows", "2", "--batch-size", "2", "--overwrite"]) == 0
    captions = [c for p in sorted((tmp_path / "c" / "metadata").glob("text_metadata_*.parquet"))
                for c in pq.read_table(p)["caption"].to_pylist()]
    assert "an edited caption" in captions and "picture 1" not in captions
    assert not (tmp_path / "c" / "img_emb" / "img_emb_3.npy").exists()  # no shard of the old run is left


def test_resuming_a_killed_run_after_the_data_changed_is_refused(tmp_path, models):
    data = _folder(tmp_path / "data")
    _embed(models[0], data, tmp_path / "ref")
    killed = tmp_path / "killed"
    shutil.copytree(tmp_path / "ref", killed)
    # what a run killed after its first shards leaves: no manifest, some shards done
    (killed / "manifest.json").unlink()
    for record in ("image_1.json", "image_2.json", "text_2.json"):
        (killed / ".progress" / record).unlink()
    (data / "4.txt").write_text("a caption written while the run was down\n")
    with pytest.raises(UsageError, match=r"an unfinished embedding run, image row 4 \(.*4\.png\) changed"):
        _embed(models[0], data, killed)
    assert not (killed / "manifest.json").exists()
    (data / "4.txt").write_text("picture 4\n")
    (data / "4.png").touch()  # the same content, but a new modification time: not the inputs it began with
    with pytest.raises(UsageError, match=r"image row 4 .* changed"):
        _embed(models[0], data, killed)
    assert not (killed / "manifest.json").exists()


def test_an_unchanged_resume_finishes_like_an_uninterrupted_run(tmp_path, models):
    data = _folder(tmp_path / "data")
    _embed(models[0], data, tmp_path / "ref")
    killed = tmp_path / "killed"
    shutil.copytree(tmp_path / "ref", killed)
    (killed / "manifest.json").unlink()
    (killed / ".progress" / "image_1.json").unlink()
    (killed / "img_emb" / "img_emb_1.npy").unlink()
    _embed(models[0], data, killed)
    assert _files(killed) == _files(tmp_path / "ref")


def test_damaged_job_records_and_foreign_folders_are_one_line_errors(tmp_path, models):
    data = _folder(tmp_path / "data")
    _embed(models[0], data, tmp_path / "c")
    (tmp_path / "c" / "manifest.json").write_text("{not json")
    with pytest.raises(InputError, match="manifest.json .* is not valid JSON .* give --overwrite"):
        _embed(models[0], data, tmp_path / "c")
    (tmp_path / "c" / "manifest.json").unlink()
    (tmp_path / "c" / ".progress" / "job.json").write_text("[1, 2]")
    with pytest.raises(InputError, match=r"job.json \(the unfinished run's job\) holds a list"):
        _embed(models[0], data, tmp_path / "c")
    _embed(models[0], data, tmp_path / "c", overwrite=True)
    assert read_manifest(tmp_path / "c").modalities["image"].rows == 5
    (tmp_path / "mine").mkdir()
    (tmp_path / "mine" / "notes.txt").write_text("keep")
    for overwrite in (False, True):
        with pytest.raises(UsageError, match="holds files that are not a probclip collection"):
            _embed(models[0], data, tmp_path / "mine", overwrite=overwrite)
    assert (tmp_path / "mine" / "notes.txt").read_text() == "keep"
    shutil.rmtree(tmp_path / "c" / ".progress")
    (tmp_path / "c" / "manifest.json").unlink()
    with pytest.raises(UsageError, match="holds collection files but neither manifest.json"):
        _embed(models[0], data, tmp_path / "c")


def test_a_damaged_shard_record_or_metadata_met_on_resume_names_the_file(tmp_path, models):
    data = _folder(tmp_path / "data")
    _embed(models[0], data, tmp_path / "c")
    (tmp_path / "c" / "manifest.json").unlink()
    (tmp_path / "c" / ".progress" / "text_1.json").write_text("{")
    with pytest.raises(InputError, match=r"text_1.json is not a valid shard record .* delete .*text_1.json"):
        _embed(models[0], data, tmp_path / "c")
    (tmp_path / "c" / ".progress" / "text_1.json").write_text('{"rows": 2, "skipped": []}')
    meta = tmp_path / "c" / "metadata" / "metadata_0.parquet"
    meta.write_bytes(meta.read_bytes()[:50])
    with pytest.raises(InputError, match="metadata_0.parquet is truncated or corrupt"):
        _embed(models[0], data, tmp_path / "c")


def test_a_file_name_that_is_not_utf8_is_a_one_line_error(tmp_path, models, capsys):
    data = _folder(tmp_path / "data", count=2)
    os.rename(data / "1.png", os.fsencode(data) + b"/caf\xe9.png")
    code = main(["embed", "--model", str(models[0]), "--data", str(data), "--out", str(tmp_path / "c"),
                 "--num-workers", "0", "--no-progress"])
    err = capsys.readouterr().err
    assert code == 1 and err.count("\n") == 1 and "Traceback" not in err
    assert "caf\\udce9.png' is not valid UTF-8" in err


# ------------------------------------------------------------------------------------------------ the manifest
def _edit(root: Path, edit) -> None:
    manifest = json.loads((root / "manifest.json").read_text())
    edit(manifest)
    (root / "manifest.json").write_text(json.dumps(manifest))


TAMPERED = [
    ("rows-text", lambda m: m["modalities"]["image"].update(rows="many"), "modalities.image.rows is 'many'"),
    ("rows-sum", lambda m: m["modalities"]["image"].update(rows=999), "the sum of its shards' rows"),
    ("shard-offset", lambda m: m["modalities"]["image"]["shards"][1].update(first_row=3),
     r"shards\[1\].first_row is 3"),
    ("shard-index", lambda m: m["modalities"]["image"]["shards"][0].update(index="../x"), "shards.0..index is '../x'"),
    ("shards-not-list", lambda m: m["modalities"]["image"].update(shards=5), "shards is 'int'; expected a list"),
    ("no-model", lambda m: m.pop("model"), "model is None; expected an object"),
    ("embed-dim", lambda m: m["model"].update(embed_dim=-3), "model.embed_dim is -3"),
    ("embed-dim-bool", lambda m: m["model"].update(embed_dim=True), "model.embed_dim is True"),
    ("dtype", lambda m: m.update(dtype="complex64"), "dtype is 'complex64'"),
    ("modalities-list", lambda m: m.update(modalities=[]), "modalities is 'list'"),
    ("index-kind", lambda m: m["indexes"]["image"].update(kind="lsh"), "indexes.image.kind is 'lsh'"),
    ("index-rows", lambda m: m["indexes"]["image"].update(rows="x"), "indexes.image.rows is 'x'"),
    ("index-absolute", lambda m: m["indexes"]["image"].update(file="/etc/passwd"), "must be a path relative"),
    ("index-outside", lambda m: m["indexes"]["image"].update(file="../other/index/image.flat.npy"),
     "lies outside the collection"),
    ("index-unknown-modality", lambda m: m["indexes"].update(text=m["indexes"]["image"]), "a key of indexes"),
    ("index-fingerprints-list", lambda m: m["indexes"]["image"].update(fingerprints=[]), "fingerprints is 'list'"),
    ("shard-fingerprints-list", lambda m: m["modalities"]["image"]["shards"][0].update(fingerprints=[]),
     r"shards\[0\].fingerprints is 'list'"),
    ("shard-fingerprints-keys", lambda m: m["modalities"]["image"]["shards"][1]["fingerprints"].pop("logvars"),
     r"shards\[1\].fingerprints is \['means', 'metadata'\]; expected the keys \['means', 'logvars', 'metadata'\]"),
    ("shard-fingerprint-number", lambda m: m["modalities"]["image"]["shards"][2]["fingerprints"].update(means=7),
     r"shards\[2\].fingerprints.means is 7; expected a non-empty string"),
]


@pytest.mark.parametrize("edit, named", [t[1:] for t in TAMPERED], ids=[t[0] for t in TAMPERED])
def test_a_tampered_manifest_value_is_named(tmp_path, edit, named):
    path, _, _ = make_collection(tmp_path / "c", n=300, shard_rows=100)
    make_collection(tmp_path / "other", n=300, shard_rows=100, seed=1)
    build_index(path, kind="flat", progress=False)
    build_index(tmp_path / "other", kind="flat", progress=False)
    _edit(path, edit)
    with pytest.raises(InputError, match=named):
        SearchIndex.load(path, "image")


def test_a_deeply_nested_manifest_is_one_line(tmp_path, capsys):
    path, _, _ = make_collection(tmp_path / "c", n=20)
    text = (path / "manifest.json").read_text()
    (path / "manifest.json").write_text(text[:-2] + ', "nested": ' + "[" * 100000 + "]" * 100000 + "}")
    code = main(["index", str(path), "--no-progress"])
    err = capsys.readouterr().err
    assert code == 1 and err.count("\n") == 1 and "manifest.json is not valid JSON" in err, err


def test_a_symbolic_link_out_of_the_collection_is_refused(tmp_path):
    path, _, _ = make_collection(tmp_path / "c", n=50)
    other, _, _ = make_collection(tmp_path / "other", n=50, seed=1)
    build_index(path, kind="flat", progress=False)
    build_index(other, kind="flat", progress=False)
    (path / "index" / "image.flat.npy").unlink()
    (path / "index" / "image.flat.npy").symlink_to(other / "index" / "image.flat.npy")
    with pytest.raises(InputError, match="lies outside the collection"):
        SearchIndex.load(path, "image")


def test_an_index_file_of_another_collection_with_the_same_rows_is_refused(tmp_path):
    path, _, _ = make_collection(tmp_path / "c", n=300, shard_rows=100)
    other, _, _ = make_collection(tmp_path / "other", n=300, shard_rows=100, seed=1)
    for root in (path, other):
        build_index(root, kind="flat", progress=False)
    SearchIndex.load(path, "image")  # intact: loads
    for name in ("image.flat.npy", "image.inclusion.npy", "image.mean_variance.npy"):
        shutil.copy(path / "index" / name, tmp_path / name)
        shutil.copy(other / "index" / name, path / "index" / name)
        with pytest.raises(InputError, match=f"index file .*{name} is not the file `probclip index` wrote for this "
                                             "collection"):
            SearchIndex.load(path, "image")
        shutil.copy(tmp_path / name, path / "index" / name)
    flat = path / "index" / "image.flat.npy"
    flat.write_bytes(flat.read_bytes()[:-8])  # truncated
    with pytest.raises(InputError, match="image.flat.npy is not the file"):
        SearchIndex.load(path, "image")
    _edit(path, lambda m: m["indexes"]["image"].pop("fingerprints"))
    with pytest.raises(InputError, match="records no fingerprint of index file"):
        SearchIndex.load(path, "image")


def _query(mean: np.ndarray, logvar: np.ndarray, row: int) -> probclip.ProbEmbedding:
    return probclip.ProbEmbedding(torch.from_numpy(mean[[row]]), torch.from_numpy(logvar[[row]]))


def _search_every_row(root: Path, query: probclip.ProbEmbedding) -> tuple[np.ndarray, np.ndarray]:
    """The ids and scores of a CSD search and an inclusion search (``includes``, exhaustive) over all 300 rows: they
    read every shard's means, log-variances and metadata."""
    index = SearchIndex.load(root, "image")
    csd, inclusion = (index.search(query, k=300, score=score)[0] for score in ("csd", "includes"))
    return np.concatenate([csd.ids, inclusion.ids]), np.concatenate([csd.scores, inclusion.scores])


def _shard_records(root: Path, modality: str = "image") -> list[dict]:
    return json.loads((root / "manifest.json").read_text())["modalities"][modality]["shards"]


def test_every_shard_file_has_its_fingerprint_recorded_and_indexing_keeps_them(tmp_path, models):
    written, _, _ = make_collection(tmp_path / "written", n=300, shard_rows=100)  # write_collection
    data = _folder(tmp_path / "data")
    embedded = _embed(models[0], data, tmp_path / "embedded")  # probclip embed (merge_manifest)
    for root, modality, shards in ((written, "image", 3), (embedded, "image", 3), (embedded, "text", 3)):
        records = _shard_records(root, modality)
        assert len(records) == shards
        for record in records:
            files = shard_files(root, modality, record["index"])
            assert record["fingerprints"] == {name: file_fingerprint(path) for name, path in files.items()}
        assert len({fp for r in records for fp in r["fingerprints"].values()}) == 3 * shards  # all differ
        build_index(root, kind="flat", progress=False)  # rewrites the manifest: the fingerprints stay
        assert _shard_records(root, modality) == records
        assert all(s.fingerprints == r["fingerprints"]
                   for s, r in zip(read_manifest(root).modalities[modality].shards, records, strict=True))


@pytest.mark.parametrize("name", ["means", "logvars", "metadata"])
def test_a_shard_file_of_another_collection_of_the_same_shape_is_refused(tmp_path, name):
    path, mean, logvar = make_collection(tmp_path / "c", n=300, shard_rows=100)
    query = _query(mean, logvar, 150)
    other, _, _ = make_collection(tmp_path / "other", n=300, shard_rows=100, seed=1)  # same captions, other rows
    for root in (path, other):
        build_index(root, kind="flat", progress=False)
    expected = _search_every_row(path, query)
    mine, theirs = shard_files(path, "image", 1)[name], shard_files(other, "image", 1)[name]
    shutil.copy(mine, tmp_path / "kept")
    shutil.copy(theirs, mine)  # the same shape, dtype and row count: only the fingerprint tells
    recorded = _shard_records(path)[1]["fingerprints"][name]
    with pytest.raises(ShardFileError) as caught:
        _search_every_row(path, query)
    message = str(caught.value)
    assert "\n" not in message and message.startswith(f"shard file {mine} is not the file `probclip embed` wrote")
    assert (f"(fingerprint {file_fingerprint(theirs)}, the manifest records {recorded})" in message
            and f"--out {path} --overwrite" in message), message
    shutil.copy(tmp_path / "kept", mine)  # put back: searched as before
    got = _search_every_row(path, query)
    assert np.array_equal(got[0], expected[0]) and np.array_equal(got[1], expected[1])


def test_a_manifest_without_shard_fingerprints_still_loads_unchecked(tmp_path):
    path, mean, logvar = make_collection(tmp_path / "c", n=300, shard_rows=100)
    query = _query(mean, logvar, 7)
    other, _, _ = make_collection(tmp_path / "other", n=300, shard_rows=100, seed=1)
    build_index(path, kind="flat", progress=False)
    expected = SearchIndex.load(path, "image").search(query, k=10)[0]
    _edit(path, lambda m: [shard.pop("fingerprints") for shard in m["modalities"]["image"]["shards"]])
    assert all(s.fingerprints is None for s in read_manifest(path).modalities["image"].shards)
    got = SearchIndex.load(path, "image").search(query, k=10)[0]  # as written by an earlier release: loads
    assert got.ids.tolist() == expected.ids.tolist() and np.array_equal(got.scores, expected.scores)
    build_index(path, kind="flat", progress=False)  # re-indexing records none (nor an empty record)
    assert all("fingerprints" not in shard for shard in _shard_records(path))
    shutil.copy(shard_files(other, "image", 0)["means"], shard_files(path, "image", 0)["means"])
    _search_every_row(path, query)  # nothing recorded, nothing checked


def test_the_fingerprint_of_a_large_file_samples_it(tmp_path, monkeypatch):
    from probclip.search import layout

    monkeypatch.setattr(layout, "_WHOLE_BYTES", 4096)
    monkeypatch.setattr(layout, "_END_BYTES", 1024)
    monkeypatch.setattr(layout, "_SAMPLE_BYTES", 64)
    rows = np.random.default_rng(0).standard_normal((2000, 17)).astype(np.float32)
    path = tmp_path / "a.bin"
    path.write_bytes(rows.tobytes())
    first = file_fingerprint(path)
    other = rows.copy()
    other[1000] += 1e-3  # one row in the middle of the file
    path.write_bytes(other.tobytes())
    assert file_fingerprint(path) != first
    shutil.copy(path, tmp_path / "b.bin")  # a copy (new modification time) keeps its fingerprint
    assert file_fingerprint(tmp_path / "b.bin") == file_fingerprint(path)


def test_milvus_collection_names_are_unique_per_folder(tmp_path):
    assert collection_name(tmp_path / "a" / "c", "image") != collection_name(tmp_path / "b" / "c", "image")
    assert collection_name(tmp_path / "a" / "c", "image") == collection_name(tmp_path / "a" / ".." / "a" / "c", "image")
    assert collection_name(tmp_path / "a" / "c", "text").startswith("probclip_c_text_")
    pytest.importorskip("pymilvus", reason="the Milvus backend is the optional extra probclip[milvus]")
    first, _, _ = make_collection(tmp_path / "a" / "c", n=60, seed=0)
    second, _, _ = make_collection(tmp_path / "b" / "c", n=60, seed=1)
    uri = str(tmp_path / "milvus.db")
    for root in (first, second):
        build_index(root, backend="milvus", uri=uri, progress=False)
    for root in (first, second):
        index = SearchIndex.load(root, "image")
        got = index.search(index.embedding([7]), k=1)[0]
        assert got.ids.tolist() == [7]  # each folder searches its own rows


# ------------------------------------------------------------------------------------------------ index
def test_index_on_a_read_only_collection_is_one_line(tmp_path, capsys):
    path, _, _ = make_collection(tmp_path / "c", n=50)
    blocker = path / "index" / "image.hnsw.faiss.tmp"
    blocker.mkdir(parents=True)  # FAISS cannot open it for writing
    with pytest.raises(InputError, match="cannot write the index file .*image.hnsw.faiss.tmp"):
        build_index(path, kind="hnsw", memory_budget="1GB", progress=False)
    shutil.rmtree(path / "index")
    mount = tmp_path / "ro"
    mount.mkdir()
    if os.geteuid() != 0 or subprocess.run(["mount", "-t", "tmpfs", "-o", "size=2m", "tmpfs", str(mount)],
                                           capture_output=True).returncode != 0:
        os.chmod(path, 0o555)  # as a user, a folder without write permission
        target = path
    else:
        shutil.copytree(path, mount / "c")
        subprocess.run(["mount", "-o", "remount,ro", str(mount)], check=True)
        target = mount / "c"
    try:
        code = main(["index", str(target), "--no-progress"])
        err = capsys.readouterr().err
    finally:
        os.chmod(path, 0o755)
        subprocess.run(["umount", str(mount)], capture_output=True)
    assert code == 1 and err.count("\n") == 1 and "Traceback" not in err, err
    assert f"cannot write in the collection folder '{target}'" in err


# ------------------------------------------------------------------------------------------------ serving
def test_a_served_collection_rebuilt_in_place_is_refused_with_503(tmp_path, models):
    from fastapi.testclient import TestClient

    from probclip.serve import create_app

    data = _folder(tmp_path / "data")
    out = _embed(models[0], data, tmp_path / "c")
    build_index(out, kind="flat", progress=False)
    index = SearchIndex.load(out, "text")
    with TestClient(create_app([index]), base_url="http://localhost") as client:
        body = {"text": "picture 1", "k": 2}
        assert client.post("/search", json=body).status_code == 200
        os.utime(out / "manifest.json")  # touched, same content: still served
        assert client.post("/search", json=body).status_code == 200
        _embed(models[1], data, out, overwrite=True)  # rebuilt in place with another model, not yet indexed
        answer = client.post("/search", json=body)
        assert answer.status_code == 503, answer.text
        detail = answer.json()["detail"]
        assert "changed on disk since the service loaded it" in detail and "restart the service" in detail
        assert str(tmp_path) not in detail  # no server path in an answer
        assert client.get(f"/items/{index.name}/0").status_code == 503
        shutil.rmtree(out / ".progress")
        (out / "manifest.json").unlink()
        assert "manifest.json was removed" in client.post("/search", json=body).json()["detail"]


def test_a_served_collection_with_a_replaced_shard_is_refused_at_start_and_answered_503(tmp_path, capsys):
    from fastapi.testclient import TestClient

    from probclip.serve import create_app
    from probclip.serve.cli import load_indexes

    path, mean, _ = make_collection(tmp_path / "c", n=300, shard_rows=100)
    other, _, _ = make_collection(tmp_path / "other", n=300, shard_rows=100, seed=1)
    build_index(path, kind="flat", progress=False)
    index = SearchIndex.load(path, "image")  # loaded while intact; its shard files are opened at the first search
    shutil.copy(shard_files(other, "image", 2)["means"], shard_files(path, "image", 2)["means"])
    with pytest.raises(ShardFileError, match="img_emb_2.npy is not the file `probclip embed` wrote"):
        load_indexes([path], progress=False)  # `probclip serve` checks every shard file before serving
    with TestClient(create_app([index]), base_url="http://localhost") as client:
        answer = client.post("/search", json={"embedding": {"mean": mean[250].tolist(),
                                                            "logvar": [-3.0] * mean.shape[1]}, "k": 300})
        assert answer.status_code == 503, answer.text
        detail = answer.json()["detail"]
        assert detail.startswith("the collection on disk is damaged: shard file <path> is not the file")
        assert str(tmp_path) not in detail and "\n" not in detail and "--overwrite" in detail


def test_a_quickstart_collection_follows_its_quickstart_model(tmp_path, models):
    from probclip.search.quickstart import prepare_quickstart_collection

    shutil.copytree(models[0], tmp_path / "q" / "model")
    collection = prepare_quickstart_collection(tmp_path / "q", progress=False)
    first = read_manifest(collection).model.fingerprint
    assert prepare_quickstart_collection(tmp_path / "q", progress=False) == collection  # idempotent
    shutil.rmtree(tmp_path / "q" / "model")
    shutil.copytree(models[1], tmp_path / "q" / "model")  # the quickstart was run again: a new model
    prepare_quickstart_collection(tmp_path / "q", progress=False)
    manifest = read_manifest(collection)
    assert manifest.model.fingerprint != first
    index = SearchIndex.load(collection, "image")
    assert len(index.search(index.encode("a red circle"), k=3)[0]) == 3  # the new model encodes its queries


def test_a_quickstart_collection_takes_up_a_head_fitted_after_it_was_built(tmp_path, models):
    from probclip.hierarchy_head import HEAD_FILE, TERMS, HierarchyHead, PairWeights
    from probclip.search.quickstart import prepare_quickstart_collection

    shutil.copytree(models[0], tmp_path / "q" / "model")
    collection = prepare_quickstart_collection(tmp_path / "q", progress=False)
    assert read_manifest(collection).hierarchy_head is None
    dim = read_manifest(collection).model.embed_dim
    weights = np.random.default_rng(0).normal(size=(len(TERMS), dim))
    HierarchyHead({"text_in_text": PairWeights(weights, 0.0, "later")}).to_file(tmp_path / "q" / "model" / HEAD_FILE)
    prepare_quickstart_collection(tmp_path / "q", progress=False)  # same model: nothing embedded again
    record = read_manifest(collection).hierarchy_head
    assert record is not None and record.kinds == ("text_in_text",) and record.fitted_on == {"text_in_text": "later"}
    assert (collection / HEAD_FILE).read_bytes() == (tmp_path / "q" / "model" / HEAD_FILE).read_bytes()
