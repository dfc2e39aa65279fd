"""Numbers are checked and inputs are bounded: non-finite weights, embeddings and queries are refused; search options
that mean nothing are refused, and so is a filter that keeps nothing; files, images, captions, model configs and
shard counts are bounded by ``probclip.limits`` in every reader; the listing readers are shared by eval and embed."""

from __future__ import annotations

import json
import re
import struct
import subprocess
import sys
import zlib
from pathlib import Path

import numpy as np
import pytest
import torch
from fastapi.testclient import TestClient
from PIL import Image

import probclip
from probclip.data import expand_shard_urls
from probclip.data.listings import ListingError, read_caption_table, read_karpathy_entries
from probclip.embedding import ProbEmbedding
from probclip.errors import InputError, UsageError
from probclip.eval.benchmark_wds import list_shards
from probclip.eval.readers import read_retrieval
from probclip.image_decoding import decode_image
from probclip.limits import DEFAULT_LIMITS, LimitExceededError, set_limits
from probclip.models.config import ProbCLIPConfig
from probclip.search import SearchIndex, build_index, embed_collection
from probclip.search.inputs import list_inputs
from probclip.search.search_cli import format_table
from probclip.search.writer import write_collection
from probclip.serve.app import create_app
from probclip.serve.limits import ImageTooLargeError, ServiceLimits, decode_image_bytes
from probclip.textfiles import TextFileError, read_json_file
from search_helpers import MODEL_RECORD, random_gaussians

REPO = Path(__file__).resolve().parents[1]


def long_png(width: int = 100_000, height: int = 1) -> bytes:
    """A valid greyscale PNG of ``width x height`` black pixels, compressed to a few hundred bytes."""
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    raw = b"".join(b"\x00" + bytes(width) for _ in range(height))
    header = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(raw, 9))
            + chunk(b"IEND", b""))


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    """A tiny model folder and a text+image collection embedded with it, flat-indexed."""
    root = tmp_path_factory.mktemp("checked")
    torch.manual_seed(0)
    model = probclip.create_model("ProLIP-Tiny").eval()
    model.save_pretrained(root / "model")
    data = root / "data"
    data.mkdir()
    rng = np.random.default_rng(0)
    for i in range(12):
        Image.fromarray(rng.integers(0, 256, (20, 24, 3), dtype=np.uint8)).save(data / f"im{i:02d}.png")
        (data / f"im{i:02d}.txt").write_text(f"picture {i}\n")
    out = embed_collection(model, data, root / "c", num_workers=0, progress=False)
    build_index(out, kind="flat", progress=False)
    return root, model


# ------------------------------------------------------------------------------------------------ numbers
def test_nan_weights_are_refused_before_anything_is_embedded(tiny, tmp_path):
    root, model = tiny
    broken = probclip.create_model("ProLIP-Tiny").eval()
    broken.load_state_dict(model.state_dict())
    with torch.no_grad():
        next(broken.parameters()).view(-1)[0] = float("nan")
    name = next(n for n, _ in broken.named_parameters())
    with pytest.raises(InputError, match=f"parameter '{name}' holds 1 NaN"):
        embed_collection(broken, root / "data", tmp_path / "c", num_workers=0, progress=False)
    assert not (tmp_path / "c" / "manifest.json").exists()


def test_a_non_finite_embedding_stops_the_job(tiny, tmp_path, monkeypatch):
    root, model = tiny
    original = type(model).encode_text

    def poisoned(self, tokens):
        emb = original(self, tokens)
        mean = emb.mean.clone()
        mean[0, 0] = float("inf")
        return ProbEmbedding(mean, emb.logvar)

    monkeypatch.setattr(type(model), "encode_text", poisoned)
    with pytest.raises(InputError, match="non-finite text embedding for 1 of"):
        embed_collection(model, root / "data", tmp_path / "c", modality="text", num_workers=0, progress=False)
    assert not (tmp_path / "c" / "manifest.json").exists()


def test_index_refuses_stored_rows_that_are_not_finite(tmp_path):
    mean, logvar = random_gaussians(50, 16, 0)
    mean[7, 3] = np.nan  # stored as written (an edited shard file would be refused for its fingerprint first)
    path = write_collection(tmp_path / "c", {"image": (mean, logvar)}, model=dict(MODEL_RECORD), shard_rows=64)
    with pytest.raises(InputError, match=r"1 stored image row\(s\) hold NaN or infinite values \(first: row 7\)"):
        build_index(path, kind="flat", progress=False)


def test_query_embeddings_must_look_like_the_stored_ones(tiny):
    root, model = tiny
    index = SearchIndex.load(root / "c", "image", model=model)
    good = index.embedding([3])
    assert int(index.search(good, k=1)[0].ids[0]) == 3
    with pytest.raises(UsageError, match=r"query mean has L2 norm 1e\+38"):
        index.search(ProbEmbedding(good.mean * 1e38, good.logvar), k=1)
    with pytest.raises(UsageError, match="query mean has L2 norm 2"):
        index.search(ProbEmbedding(good.mean * 2, good.logvar), k=1)
    with pytest.raises(UsageError, match="NaN or infinite"):
        index.search(ProbEmbedding(good.mean * float("nan"), good.logvar), k=1)
    with pytest.raises(UsageError, match="log-variance of 100"):
        index.search(ProbEmbedding(good.mean, good.logvar * 0 + 100), k=1)


#: (options, a literal part of the message)
BAD_OPTIONS = [
    ({"max_uncertainty": float("nan")}, "max_uncertainty must be a finite number > 0"),
    ({"max_uncertainty": -1.0}, "is positive); got -1.0"),
    ({"max_uncertainty": 0}, "is positive); got 0"),
    ({"max_uncertainty": float("inf")}, "got inf"),
    ({"max_uncertainty": "1"}, "got '1'"),
    ({"uncertainty_quantile": float("nan")}, "uncertainty_quantile must lie in (0, 1]; got nan"),
    ({"uncertainty_quantile": 0.0}, "uncertainty_quantile"),
    ({"uncertainty_quantile": 1.5}, "uncertainty_quantile"),
    ({"eps": float("nan")}, "eps must be a finite number"),
    ({"eps": float("-inf")}, "got -inf"),
    ({"eps": 1e4}, "got 10000.0"),
    ({"k": 0}, "k must be a positive integer; got 0"),
    ({"k": 2.5}, "got 2.5"),
    ({"k": True}, "got True"),
    ({"oversample": 0}, "oversample"),
]


@pytest.mark.parametrize("options, message", BAD_OPTIONS, ids=[str(o) for o, _ in BAD_OPTIONS])
def test_search_options_that_mean_nothing_are_refused(tiny, options, message):
    root, model = tiny
    index = SearchIndex.load(root / "c", "image", model=model)
    with pytest.raises(UsageError, match=re.escape(message)):
        index.search(index.embedding([0]), **{"k": 3, **options})


def test_a_filter_that_keeps_nothing_says_so(tiny):
    root, model = tiny
    index = SearchIndex.load(root / "c", "image", model=model)
    smallest = float(index.stored.u.min())
    with pytest.raises(UsageError, match=f"max_uncertainty = {smallest / 2!r} keeps no item of c/image: its "
                                         "smallest uncertainty u is"):
        index.search(index.embedding([0]), k=3, max_uncertainty=smallest / 2)
    kept = index.search(index.embedding([0]), k=20, max_uncertainty=smallest * 1.0001)[0]
    assert len(kept) >= 1 and float(kept.uncertainty.max()) <= smallest * 1.0001
    assert len(index.search(index.embedding([0]), k=20, uncertainty_quantile=1e-9)[0]) >= 1  # never empty


def test_http_refuses_the_same_numbers_with_one_line_4xx(tiny):
    root, model = tiny
    index = SearchIndex.load(root / "c", "image", model=model)
    good = index.embedding([2])
    smallest = float(index.stored.u.min())
    with TestClient(create_app([index]), base_url="http://localhost") as client:
        bodies = [
            ('{"text": "picture", "max_uncertainty": Infinity}', "max_uncertainty"),
            (json.dumps({"text": "picture", "max_uncertainty": smallest / 2}), "keeps no item"),
            (json.dumps({"embedding": {"mean": (good.mean[0] * 1e38).tolist(), "logvar": good.logvar[0].tolist()}}),
             "mean"),
            ('{"text": "picture", "uncertainty_quantile": NaN}', "uncertainty_quantile"),
        ]
        for body, named in bodies:
            answer = client.post("/search", content=body, headers={"content-type": "application/json"})
            assert 400 <= answer.status_code < 500, (body[:80], answer.status_code, answer.text)
            detail = answer.json()["detail"]
            assert named in detail and "\n" not in detail and "Traceback" not in detail, detail
        assert client.post("/search", json={"text": "picture", "k": 2}).status_code == 200  # still serving


# ------------------------------------------------------------------------------------------------ bounds
def _peak_rss_mb(code: str) -> float:
    """Peak resident memory (MB) of a fresh interpreter running ``code`` after importing probclip."""
    script = f"import resource, probclip\n{code}\nprint(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss)"
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120,
                          env={"PYTHONPATH": str(REPO / "src"), "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1"})
    assert done.returncode == 0, done.stderr[-2000:]
    return int(done.stdout.split()[-1]) / 1024


def test_a_100000x1_png_is_refused_from_its_header_everywhere(tiny, tmp_path):
    data = long_png()
    assert len(data) < 1000  # a few hundred bytes, 0.1 megapixels: under every size limit
    with pytest.raises(LimitExceededError, match=r"100000x1 has an aspect ratio of 1e\+05:1, over the limit of 50:1"):
        decode_image(data, "long.png")
    with pytest.raises(ImageTooLargeError, match="aspect ratio"):
        decode_image_bytes(data, ServiceLimits())
    base = _peak_rss_mb("")
    path = tmp_path / "long.png"
    path.write_bytes(data)
    refused = _peak_rss_mb(f"""
from probclip.image_decoding import decode_image
try:
    decode_image({str(path)!r})
except Exception as err:
    assert 'aspect ratio' in str(err)
""")
    assert refused - base < 20, (base, refused)  # the resize of the short side would have needed hundreds of MB
    square = Image.new("RGB", (500, 10))  # 50:1 is still accepted
    assert decode_image(_png_bytes(square)).size == (500, 10)
    root, model = tiny
    folder = tmp_path / "images"
    folder.mkdir()
    (folder / "long.png").write_bytes(data)
    Image.new("RGB", (16, 16), (9, 9, 9)).save(folder / "fine.png")
    out = embed_collection(model, folder, tmp_path / "c", modality="image", num_workers=0, progress=False)
    manifest = json.loads((out / "manifest.json").read_text())
    image = manifest["modalities"]["image"]
    assert (image["rows"], image["skipped"]) == (1, 1)
    assert "aspect ratio" in image["skipped_inputs"][0]["error"]


def _png_bytes(image: Image.Image) -> bytes:
    import io

    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return buffer.getvalue()


def test_files_are_read_within_their_limits(tmp_path):
    zero = Path("/dev/zero")
    with pytest.raises(LimitExceededError, match="/dev/zero: more than 33554432 bytes"):
        decode_image(zero)
    big = tmp_path / "big.png"
    big.write_bytes(b"\x89PNG" + bytes(1000))
    previous = set_limits(max_member_bytes=100, max_text_file_bytes=1000)
    try:
        with pytest.raises(LimitExceededError, match=r"big.png: 1004 bytes exceeds the limit of 100 bytes"):
            decode_image(big)
        endless = tmp_path / "captions.txt"
        endless.symlink_to(zero)
        with pytest.raises(LimitExceededError, match="captions.txt: more than 1000 bytes"):
            list_inputs(endless)
        table = tmp_path / "pairs.csv"
        table.write_text("image,caption\n" + "x.png,a caption\n" * 200)
        with pytest.raises(LimitExceededError, match=r"pairs.csv: 3214 bytes exceeds the limit of 1000 bytes "
                                                     r"\(max_text_file_bytes\)"):
            list_inputs(table)
        folder = tmp_path / "folder"
        folder.mkdir()
        Image.new("RGB", (4, 4)).save(folder / "a.png")
        (folder / "a.txt").write_text("a caption that is far too long\n" * 10)
        with pytest.raises(LimitExceededError, match=r"a.txt: 310 bytes exceeds the limit of 100 bytes"):
            list_inputs(folder)
    finally:
        set_limits(previous)


def test_overlong_captions_are_left_out_of_a_collection_and_cut_in_answers(tmp_path):
    listing = tmp_path / "captions.txt"
    listing.write_text("a short caption\n" + "w" * (DEFAULT_LIMITS.max_caption_chars + 1) + "\n")
    with pytest.warns(RuntimeWarning, match="1 caption.s. over max_caption_chars left out"):
        inputs = list_inputs(listing)
    assert [t.text for t in inputs.texts] == ["a short caption"]
    # a collection written by other means may hold longer captions: answers cut each one
    long = "word " * 3000
    mean, logvar = random_gaussians(30, 16, 0)
    write_collection(tmp_path / "d", {"text": (mean, logvar)}, model=dict(MODEL_RECORD), dtype="float32",
                     shard_rows=64, captions={"text": [long] * 30})
    build_index(tmp_path / "d", kind="flat", progress=False)
    index = SearchIndex.load(tmp_path / "d", "text")
    results = index.search(index.embedding([0]), k=30)[0]
    for meta in results.metadata:
        assert len(meta["caption"]) == DEFAULT_LIMITS.max_result_caption_chars and meta["caption"].endswith("\u2026")
        assert meta["caption_chars"] == len(long)
    assert len(json.dumps(results.to_dict())) < 30 * (DEFAULT_LIMITS.max_result_caption_chars + 400)
    table = format_table(results).splitlines()
    assert len(table) == 32 and max(map(len, table)) < DEFAULT_LIMITS.max_result_caption_chars + 60


def test_a_giant_model_config_is_refused_before_allocation(tmp_path):
    config = probclip.create_model("ProLIP-Tiny").config.to_dict()
    config["vision"]["width"] = config["vision"]["head_width"] * 100_000
    with pytest.raises(LimitExceededError, match=r"describes a model of .* parameters .* over the limit of 2e\+10 "
                                                 r"\(max_model_parameters\); nothing was allocated"):
        ProbCLIPConfig.from_dict(config)
    folder = tmp_path / "giant"
    probclip.create_model("ProLIP-Tiny").save_pretrained(folder)
    (folder / "config.json").write_text(json.dumps(config))
    base = _peak_rss_mb("")
    refused = _peak_rss_mb(f"""
try:
    probclip.create_model_from_pretrained({str(folder)!r})
except ValueError as err:
    assert 'max_model_parameters' in str(err), err
""")
    assert refused - base < 50, (base, refused)


def test_the_parameter_count_of_a_config_matches_the_built_model():
    for name in ("ProLIP-Tiny", "ProLIP-Tiny-Word"):
        model = probclip.create_model(name)
        built = sum(p.numel() for p in model.parameters())
        assert abs(model.config.parameter_count() - built) <= 0.01 * built, name


def test_deeply_nested_json_is_a_one_line_error(tmp_path):
    path = tmp_path / "config.json"
    path.write_text("[" * 100_000 + "]" * 100_000)
    with pytest.raises(TextFileError, match="config.json: JSON nested too deeply"):
        read_json_file(path)


def test_shard_counts_are_bounded(tmp_path):
    (tmp_path / "test").mkdir()
    (tmp_path / "test" / "nshards.txt").write_text("10000000000\n")
    with pytest.raises(LimitExceededError, match="10000000000 shards exceeds the limit of 1000000"):
        list_shards(tmp_path)
    with pytest.raises(LimitExceededError, match=r"names 10000000000 shards, over the limit of 1000000"):
        expand_shard_urls(["shards/{0000000000..9999999999}.tar"])
    assert len(expand_shard_urls(["shards/{000..099}.tar::more/{0..9}.tar"])) == 110


# ------------------------------------------------------------------------------------------------ shared listings
def test_eval_and_embed_read_listings_with_the_same_checks(tmp_path):
    Image.new("RGB", (8, 8)).save(tmp_path / "0.png")
    bad_entries = [
        ({"images": [{"split": "test", "sentences": [{"raw": "a"}]}]}, "images\\[0\\] has no 'filename' string"),
        ({"images": ["0.png"]}, "images\\[0\\] is not an object"),
        ({"images": [{"filename": "0.png", "sentences": "a caption"}]}, "has no 'sentences' list"),
        ({"images": [{"filename": "0.png", "filepath": 3, "sentences": []}]}, "'filepath' that is not a string"),
        ({"pictures": []}, "expected an object with an 'images' list"),
    ]
    for number, (content, message) in enumerate(bad_entries):
        path = tmp_path / f"k{number}.json"
        path.write_text(json.dumps(content))
        for reader in (read_karpathy_entries, list_inputs, read_retrieval):
            with pytest.raises(ListingError, match=message):
                reader(path)
    latin = tmp_path / "pairs.csv"
    latin.write_bytes("image,caption\n0.png,caf\xe9\n".encode("latin-1"))
    for reader in (read_caption_table, list_inputs, read_retrieval):
        with pytest.raises(TextFileError, match="pairs.csv line 2: byte 0xe9 is not UTF-8"):
            reader(latin)
    ids = tmp_path / "ids.csv"
    ids.write_text("image,caption,image_id\n0.png,a,seven\n")
    for reader in (list_inputs, read_retrieval):
        with pytest.raises(ListingError, match="ids.csv line 2: column 'image_id' must hold integers; got 'seven'"):
            reader(ids)
    good = tmp_path / "good.json"
    good.write_text(json.dumps({"images": [{"filename": "0.png", "split": "test",
                                            "sentences": [{"raw": " a grey square "}]}]}))
    assert read_retrieval(good).captions == list_inputs(good).image_captions == ["a grey square"]
