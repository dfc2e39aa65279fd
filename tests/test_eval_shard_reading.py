"""Evaluation reads webdataset shards with training's tar reader: the same samples, the same skips, and a bad
sample (corrupt image, shard cut short, over-long caption) is skipped, counted and named in ``results.json``."""

from __future__ import annotations

import io
import json
import re
import tarfile
from pathlib import Path

import pytest
import torch

import probclip
from probclip.data import SampleError
from probclip.data.webdataset import iter_shard_records, record_to_sample
from probclip.errors import UsageError
from probclip.eval import readers
from probclip.eval.options import EvalOptions
from probclip.eval.retrieval import evaluate_retrieval
from probclip.limits import current_limits, set_limits
from probclip.search.inputs import list_inputs
from test_eval_fixtures import build_hierarcaps, build_wds_classification, captions_for, colour_eval_model, image_bytes

LONG = "a red square " * (current_limits().max_caption_chars // 13 + 1)  # just over the caption length limit


def _write_shard(path: Path, members: list[tuple[str, bytes]]) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    with tarfile.open(path, "w") as tar:
        for name, payload in members:
            info = tarfile.TarInfo(name)
            info.size = len(payload)
            tar.addfile(info, io.BytesIO(payload))
    return path


def _sample(key: str, colour: str, seed: int, captions: list[str]) -> list[tuple[str, bytes]]:
    return [(f"{key}.jpg", image_bytes(colour, 2.0, seed, "JPEG")), (f"{key}.txt", "\n".join(captions).encode())]


def _eval_set(root: Path) -> Path:
    """Two shards: 0.tar with 4 good samples, a corrupt image, an over-long caption beside a good one and an image
    whose only caption is over-long; 1.tar with a good sample, then a sample whose image is cut off."""
    members = []
    for i, colour in enumerate(("red", "green", "blue", "red")):
        members += _sample(f"good{i}", colour, i, captions_for(colour, i))
    members += [("corrupt.jpg", b"\xff\xd8\xff\xe0 not a jpeg"), ("corrupt.txt", b"a broken image")]
    members += _sample("longcap", "green", 7, ["a green square", LONG, "green"])
    members += _sample("onlylong", "blue", 8, [LONG])
    _write_shard(root / "test" / "0.tar", members)
    shard = _write_shard(root / "test" / "1.tar", _sample("good4", "blue", 9, captions_for("blue", 4))
                         + _sample("cut", "red", 10, ["a red square"]))
    with tarfile.open(shard) as tar:
        cut_image = tar.getmember("cut.jpg")
    data = shard.read_bytes()
    shard.write_bytes(data[: cut_image.offset_data + cut_image.size // 2])  # the shard ends inside cut.jpg
    return root


def test_a_bad_webdataset_eval_set_evaluates_to_the_end_with_its_skips_named(tmp_path):
    root = _eval_set(tmp_path / "wds")
    out = tmp_path / "out"
    results = evaluate_retrieval(colour_eval_model(), root, EvalOptions(out_dir=out, progress=False, batch_size=4))
    written = json.loads((out / "results.json").read_text())
    assert written["skipped_images"] == json.loads(json.dumps(results["skipped_images"]))
    assert results["n_images"] == 6  # good0..good4 and longcap
    assert results["n_captions"] == 5 * 3 + 2  # longcap keeps its two short captions
    skipped = {Path(entry["image"]).name: entry["error"] for entry in written["skipped_images"]["images"]}
    assert written["skipped_images"]["count"] == 3 == len(skipped)
    assert "cannot read image" in skipped["0.tar::corrupt"]
    assert "no caption left" in skipped["0.tar::onlylong"]
    assert "cut short" in skipped["1.tar"] and "cut.jpg" in skipped["1.tar"]
    captions = written["skipped_captions"]
    assert captions["count"] == 2
    assert [(Path(c["image"]).name, c["caption_index"]) for c in captions["captions"]] == [
        ("0.tar::longcap", 1), ("0.tar::onlylong", 0)]
    assert all("exceeds the limit" in c["error"] for c in captions["captions"])


def test_training_and_evaluation_read_the_same_samples_from_a_shard(tmp_path):
    members = _sample("a", "red", 1, ["a red square", "red"])
    members += [("__meta__.json", b"{}"), ("README", b"no extension"), ("dir/", b"")]
    leaf = json.dumps({"captions": ["green", "a leaf"]}).encode()
    members += [("b.png", image_bytes("green", 2.0, 2)), ("b.json", leaf)]
    members += [("nocap.jpg", image_bytes("blue", 2.0, 3, "JPEG"))]
    members += _sample("c", "blue", 4, ["blue"])
    members += [("big.jpg", image_bytes("red", 2.0, 5, "JPEG") + b"\0" * 40_000), ("big.txt", b"padded")]
    shard = _write_shard(tmp_path / "s.tar", members)
    previous = set_limits(max_member_bytes=30_000)
    try:
        trained, train_skips = {}, []
        for record in iter_shard_records(str(shard)):
            try:
                image, caps = record_to_sample(record, ("jpg", "png"), ("txt", "json"), caption_separator="\n")
            except SampleError as err:
                train_skips.append(str(err))
                continue
            trained[record["__key__"]] = (caps, image.tobytes())
        data = readers.read_wds_retrieval(shard)
    finally:
        set_limits(previous)
    evaluated = {}
    for index, item in enumerate(data.items):
        caps = [c for c, owner in zip(data.captions, data.caption_image.tolist(), strict=True) if owner == index]
        evaluated[item.key.split("::")[1]] = (caps, item.open().tobytes())
    assert list(evaluated) == list(trained) == ["a", "b", "c"]
    assert evaluated == trained  # same keys, same captions, same decoded pixels
    assert [s["image"].split("::")[1] for s in data.skipped] == ["nocap", "big"]
    assert len(train_skips) == 2 and "no caption member" in train_skips[0] and "big.jpg" in train_skips[1]
    assert "no caption member" in data.skipped[0]["error"] and "exceeds the limit" in data.skipped[1]["error"]
    listed = list_inputs(shard)  # probclip embed lists leniently, but with the same grouping and skips
    assert [item.key.split("::")[1] for item in listed.images] == ["a", "b", "nocap", "c", "big"]
    assert [t.text for t in listed.texts] == ["a red square", "red", "green", "a leaf", "blue", "padded"]


def test_only_the_shared_reader_opens_tar_shards_for_reading():
    package = Path(probclip.__file__).parent
    openers = sorted(p.relative_to(package).as_posix() for p in package.rglob("*.py")
                     if re.search(r"tarfile\.open\((?![^)]*\"w)", p.read_text(encoding="utf-8")))
    assert openers == ["data/webdataset.py"]


def test_an_over_long_caption_in_a_csv_set_is_dropped_and_named(tmp_path):
    for i, colour in enumerate(("red", "green")):
        (tmp_path / f"{i}.jpg").write_bytes(image_bytes(colour, 2.0, i, "JPEG"))
    (tmp_path / "pairs.csv").write_text(f"image,caption\n0.jpg,red\n0.jpg,{LONG}\n1.jpg,green\n")
    data = readers.read_retrieval(tmp_path / "pairs.csv")
    assert data.captions == ["red", "green"] and data.caption_image.tolist() == [0, 1]
    assert [(Path(c["image"]).name, c["caption_index"]) for c in data.skipped_captions] == [("0.jpg", 1)]
    assert data.skipped == []


def test_an_over_long_template_is_a_usage_error_and_a_sample_without_label_is_skipped(tmp_path):
    root = build_wds_classification(tmp_path / "wds", per_class=2, n_shards=1)
    with tarfile.open(root / "test" / "0.tar", "a") as tar:
        payload = image_bytes("red", 2.0, 1, "WEBP")
        info = tarfile.TarInfo("nolabel.webp")
        info.size = len(payload)
        tar.addfile(info, io.BytesIO(payload))
    data = readers.read_classification(root)
    assert len(data.items) == 6 and [Path(s["image"]).name for s in data.skipped] == ["0.tar::nolabel"]
    with pytest.raises(UsageError, match="template 0: caption of .* exceeds the limit"):
        readers.read_classification(root, templates=["{c} " + LONG])


def test_a_shard_cut_short_at_a_member_boundary_keeps_its_complete_samples(tmp_path):
    shard = _write_shard(tmp_path / "s.tar", _sample("a", "red", 1, ["red"]) + _sample("b", "green", 2, ["green"]))
    with tarfile.open(shard) as tar:
        end = tar.getmember("b.txt")
    shard.write_bytes(shard.read_bytes()[: end.offset_data + 512])  # no end-of-archive block
    data = readers.read_wds_retrieval(shard)
    assert [item.key.split("::")[1] for item in data.items] == ["a", "b"]
    assert len(data.skipped) == 1 and "end-of-archive" in data.skipped[0]["error"]
    assert torch.equal(data.caption_image, torch.tensor([0, 1]))


def test_a_hierarcaps_chain_with_an_over_long_level_loses_its_image(tmp_path):
    csv_path = build_hierarcaps(tmp_path)
    lines = csv_path.read_text().splitlines()
    lines[2] = lines[2].replace("green square thing =>", f"{LONG} =>")  # row id 1
    csv_path.write_text("\n".join(lines) + "\n")
    data = readers.read_hierarcaps(csv_path, image_root=tmp_path / "imgs")
    assert len(data.items) == 11 and "1" not in data.ids
    assert len(data.skipped) == 1 and "level 2: caption of" in data.skipped[0]["error"]
