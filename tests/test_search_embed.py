"""``probclip embed``: input layouts, skipped inputs, the stored layout, SIGKILL + restart, torchrun with 2 gloo
processes against 1, and the ``embed`` / ``index`` / ``search`` commands end to end."""

from __future__ import annotations

import io
import json
import os
import signal
import subprocess
import sys
import tarfile
import time
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest
import torch
from PIL import Image

import probclip
from probclip.cli import main as cli_main
from probclip.errors import InputError, UsageError
from probclip.search import SearchIndex, build_index, embed_collection

REPO = Path(__file__).resolve().parents[1]
PYTHON = sys.executable
ENV = dict(os.environ, PYTHONPATH=str(REPO / "src"), OMP_NUM_THREADS="1", HF_HUB_OFFLINE="1")


def _image(i: int) -> Image.Image:
    rng = np.random.default_rng(i)
    return Image.fromarray(rng.integers(0, 256, (24 + i % 5, 20, 3), dtype=np.uint8))


@pytest.fixture(scope="module")
def folder(tmp_path_factory) -> Path:
    """24 images with side-car captions, and one file that is not an image."""
    root = tmp_path_factory.mktemp("folder") / "images"
    root.mkdir()
    for i in range(24):
        _image(i).save(root / f"im{i:02d}.png")
        (root / f"im{i:02d}.txt").write_text(f"picture number {i}\na picture\n")
    (root / "im10.png").write_bytes(b"this is not a png")
    return root


def _arrays(out: Path) -> dict[str, bytes]:
    """Every shard file's content (npy bytes, parquet as a table dict) and the manifest."""
    found = {}
    for path in sorted(out.rglob("*")):
        rel = str(path.relative_to(out))
        if path.suffix == ".npy":
            found[rel] = np.load(path).tobytes()
        elif path.suffix == ".parquet":
            found[rel] = json.dumps(pq.read_table(path).to_pydict(), sort_keys=True).encode()
        elif path.name == "manifest.json":
            found[rel] = path.read_bytes()
    return found


def test_embed_folder_layout_skips_and_metadata(tmp_path, tiny_model_dir, folder):
    model = probclip.create_model_from_pretrained(str(tiny_model_dir))
    model = model[0] if isinstance(model, tuple) else model
    out = embed_collection(model, folder, tmp_path / "c", shard_rows=10, batch_size=4, num_workers=0,
                           progress=False, model_source=str(tiny_model_dir))
    manifest = json.loads((out / "manifest.json").read_text())
    image, text = manifest["modalities"]["image"], manifest["modalities"]["text"]
    assert (image["inputs"], image["rows"], image["skipped"]) == (24, 23, 1)
    assert image["skipped_inputs"][0]["source"].endswith("im10.png")
    assert "cannot identify image" in image["skipped_inputs"][0]["error"]
    assert (text["rows"], text["skipped"]) == (24 - 1 + 1 + 1, 0)  # 23 numbered captions + im10's + "a picture"
    assert [s["rows"] for s in image["shards"]] == [10, 9, 4]  # im10 (shard 1) skipped
    assert [s["first_row"] for s in image["shards"]] == [0, 10, 19]
    assert manifest["model"]["fingerprint"] and manifest["model"]["source"] == str(tiny_model_dir)
    mean = np.load(out / "img_emb" / "img_emb_1.npy")
    logvar = np.load(out / "img_logvar" / "img_logvar_1.npy")
    assert mean.dtype == np.float16 and mean.shape == (9, 64)
    table = pq.read_table(out / "metadata" / "metadata_1.parquet").to_pydict()
    assert table["row_id"] == list(range(10, 19))
    assert table["source"][0].endswith("im11.png") and table["caption"][0] == "picture number 11"
    np.testing.assert_allclose(table["u"], np.exp(logvar.astype(np.float64)).sum(1), rtol=2e-3)
    assert pq.read_table(out / "metadata" / "metadata_1.parquet").schema.field("u").type == "float"
    # the stored means are the model's embeddings of those images
    expected = model.encode_image(torch.stack([probclip.image_transform(model.config.vision)(_image(11))]))
    np.testing.assert_allclose(mean[0], expected.mean[0].detach().numpy(), atol=2e-3)
    assert (out / "text_emb" / "text_emb_0.npy").is_file() and (out / "metadata" / "text_metadata_0.parquet").is_file()


def _write_tar(path: Path, samples: list[tuple[str, bytes, str]]) -> None:
    with tarfile.open(path, "w") as tar:
        for key, png, caption in samples:
            for name, payload in ((f"{key}.png", png), (f"{key}.txt", caption.encode())):
                info = tarfile.TarInfo(name)
                info.size = len(payload)
                tar.addfile(info, io.BytesIO(payload))


def _png(i: int) -> bytes:
    buffer = io.BytesIO()
    _image(i).save(buffer, format="PNG")
    return buffer.getvalue()


def test_embed_csv_karpathy_webdataset_and_captions_file(tmp_path, tiny_model_dir, folder):
    csv_path = tmp_path / "pairs.csv"
    csv_path.write_text("image,caption\n" + "".join(f"{folder}/im{i:02d}.png,caption {i}\n" for i in range(5))
                        + "missing.png,a lost image\n")
    karpathy = tmp_path / "karpathy.json"
    karpathy.write_text(json.dumps({"images": [
        {"filename": f"im{i:02d}.png", "split": "test" if i < 3 else "train",
         "sentences": [{"raw": f"k {i} a"}, {"raw": f"k {i} b"}]} for i in range(6)]}))
    shards = tmp_path / "shards"
    shards.mkdir()
    _write_tar(shards / "00000.tar", [(f"s{i}", _png(i), f"shard caption {i}") for i in range(3)])
    _write_tar(shards / "00001.tar", [(f"s{i}", _png(i), f"shard caption {i}") for i in range(3, 5)])
    captions = tmp_path / "captions.txt"
    captions.write_text("a red square\n\na blue circle\na red square\n")
    common = dict(shard_rows=4, num_workers=0, progress=False)
    cases = [(csv_path, {}, (6, 5, 1, 6)), (karpathy, {"image_root": folder, "split": "test"}, (3, 3, 0, 6)),
             (shards, {}, (5, 5, 0, 5)), (captions, {}, (0, 0, 0, 2))]
    for data, extra, (inputs, rows, skipped, texts) in cases:
        out = embed_collection(str(tiny_model_dir), data, tmp_path / f"out-{data.name}", **common, **extra)
        manifest = json.loads((out / "manifest.json").read_text())
        got = manifest["modalities"].get("image", {"inputs": 0, "rows": 0, "skipped": 0})
        assert (got["inputs"], got["rows"], got["skipped"], manifest["modalities"]["text"]["rows"]) == (
            inputs, rows, skipped, texts), data
    build_index(tmp_path / "out-shards", kind="flat", progress=False)
    index = SearchIndex.load(tmp_path / "out-shards", "image")
    meta = index.metadata([3])[0]
    assert meta["source"].endswith("00001.tar::s3") and meta["caption"] == "shard caption 3"
    assert np.array_equal(np.asarray(index.open_image(3)), np.asarray(_image(3)))
    assert SearchIndex.load(tmp_path / "out-shards", "text").open_image(0) is None
    with pytest.raises(InputError, match="holds no image and no caption"):
        (tmp_path / "empty").mkdir()
        embed_collection(str(tiny_model_dir), tmp_path / "empty", tmp_path / "out-empty", **common)
    with pytest.raises(InputError, match="holds no image"):
        embed_collection(str(tiny_model_dir), captions, tmp_path / "out-img", modality="image", **common)
    with pytest.raises(UsageError, match="dtype must be one of"):
        embed_collection(str(tiny_model_dir), captions, tmp_path / "out-x", dtype="int8", **common)


def _embed_cmd(tiny_model_dir, data, out, *extra) -> list[str]:
    return ["-m", "probclip.embed", "--model", str(tiny_model_dir), "--data", str(data), "--out", str(out),
            "--shard-rows", "3", "--batch-size", "3", "--num-workers", "0", "--no-progress", *extra]


def _reference_run(tiny_model_dir, data, out) -> None:
    """The same job in this process, on one thread like the subprocesses (OMP_NUM_THREADS=1)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        embed_collection(str(tiny_model_dir), data, out, shard_rows=3, batch_size=3, num_workers=0, progress=False)
    finally:
        torch.set_num_threads(threads)


def test_sigkill_and_restart_equals_uninterrupted_run(tmp_path, tiny_model_dir, folder):
    _reference_run(tiny_model_dir, folder, tmp_path / "ref")
    killed_out = tmp_path / "killed"
    process = subprocess.Popen([PYTHON, *_embed_cmd(tiny_model_dir, folder, killed_out)], env=ENV,
                               stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    first_shard = killed_out / ".progress" / "image_0.json"
    deadline = time.time() + 240
    while not first_shard.exists() and process.poll() is None and time.time() < deadline:
        time.sleep(0.005)
    process.send_signal(signal.SIGKILL)
    process.wait()
    assert first_shard.exists() and not (killed_out / "manifest.json").exists()
    done_before = sorted(p.name for p in (killed_out / ".progress").glob("image_*.json"))
    assert len(done_before) < 8  # killed part-way: 23 images in 8 shards of 3
    resumed = subprocess.run([PYTHON, *_embed_cmd(tiny_model_dir, folder, killed_out)], env=ENV,
                             capture_output=True, text=True, timeout=300)
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    assert "image: 23 rows in 8 shards, 1 skipped" in resumed.stdout
    assert _arrays(killed_out) == _arrays(tmp_path / "ref")
    with pytest.raises(UsageError, match=r"holds a different embedding job \(differs in \['dtype'\]\)"):
        embed_collection(str(tiny_model_dir), folder, tmp_path / "ref", shard_rows=3, batch_size=3, num_workers=0,
                         dtype="float32", progress=False)


def test_torchrun_two_gloo_processes_equal_one(tmp_path, tiny_model_dir, folder):
    _reference_run(tiny_model_dir, folder, tmp_path / "one")
    torchrun = Path(PYTHON).with_name("torchrun")
    two = subprocess.run([str(torchrun), "--standalone", "--nproc_per_node", "2",
                          *_embed_cmd(tiny_model_dir, folder, tmp_path / "two")], env=ENV, capture_output=True,
                         text=True, timeout=300)
    assert two.returncode == 0, two.stderr[-3000:]
    assert _arrays(tmp_path / "two") == _arrays(tmp_path / "one")
    manifest = json.loads((tmp_path / "two" / "manifest.json").read_text())
    assert manifest["modalities"]["image"]["skipped"] == 1 and manifest["modalities"]["image"]["rows"] == 23


def _cli(capsys, *argv) -> tuple[int, str, str]:
    code = cli_main(list(argv))
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def test_index_and_search_commands(tmp_path, tiny_model_dir, folder, capsys):
    out = tmp_path / "c"
    code, stdout, _ = _cli(capsys, "embed", "--model", str(tiny_model_dir), "--data", str(folder), "--out", str(out),
                           "--shard-rows", "3", "--num-workers", "0", "--no-progress")
    assert code == 0 and "image: 23 rows in 8 shards, 1 skipped" in stdout and "im10.png" in stdout
    code, stdout, _ = _cli(capsys, "index", str(out), "--kind", "flat", "--no-progress")
    assert code == 0 and "image: flat index of 23 rows" in stdout
    code, stdout, _ = _cli(capsys, "search", str(out), "--text", "picture number 3", "--k", "4")
    lines = stdout.splitlines()
    assert code == 0 and lines[0].startswith("c/image: 23 rows, flat index") and "rank" in lines[3]
    assert len(lines) == 8 and lines[4].split()[0] == "1"
    code, stdout, _ = _cli(capsys, "search", str(out), "--image", str(folder / "im03.png"), "--k", "3",
                           "--score", "included", "--json")
    result = json.loads(stdout)
    assert result["index"] == "c/text" and result["score"] == "included" and len(result["results"]) == 3
    api = SearchIndex.load(out, "text")
    expected = api.search(api.encode(probclip.load_image(folder / "im03.png")), k=3, score="included")[0]
    assert [r["row_id"] for r in result["results"]] == expected.ids.tolist()
    # bad inputs: one line on stderr, the right exit status
    (out / "img_emb" / "img_emb_2.npy").write_bytes(b"\x93NUMPY")
    code, _, err = _cli(capsys, "search", str(out), "--image", str(folder / "im03.png"), "--modality", "image")
    assert code == 1 and err.count("\n") == 1 and "img_emb_2.npy is truncated" in err
    code, _, err = _cli(capsys, "search", str(out), "--image", str(tmp_path / "nope.png"))
    assert code == 1 and err.count("\n") == 1 and "nope.png" in err
    code, _, err = _cli(capsys, "index", str(tmp_path / "nowhere"))
    assert code == 1 and err.count("\n") == 1 and "does not exist" in err
    code, _, err = _cli(capsys, "index", str(out), "--memory-budget", "lots")
    assert code == 2 and err.count("\n") == 1 and "'lots'" in err
    torch.manual_seed(1)
    other = probclip.create_model("ProLIP-Tiny")
    with pytest.raises(UsageError, match="fingerprint .* differs from the collection's"):
        SearchIndex.load(out, "text", model=other)
