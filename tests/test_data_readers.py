"""Readers of training data: webdataset shards, CSV/TSV tables, deterministic and resumable batch streams."""

from __future__ import annotations

import csv
import io
import json
import tarfile
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from probclip.data import (
    PairCollator,
    ShardError,
    build_source,
    build_train_batches,
    captions_from_payload,
    expand_shard_urls,
    read_pair_table,
)
from probclip.train.config import DataSection

COLOURS = ["red", "green", "blue", "yellow"]


def image_bytes(index: int, fmt: str = "PNG") -> bytes:
    """A distinct 16x16 image whose mean red value encodes ``index``."""
    array = np.zeros((16, 16, 3), np.uint8)
    array[..., 0] = index % 256
    array[..., 1] = (index * 7) % 256
    buffer = io.BytesIO()
    options = {"lossless": True} if fmt == "WEBP" else {"quality": 100} if fmt == "JPEG" else {}
    Image.fromarray(array).save(buffer, format=fmt, **options)
    return buffer.getvalue()


def write_shard(path: Path, samples: list[tuple[str, dict[str, bytes]]]) -> Path:
    """A tar shard with members ``<key>.<ext>`` in the given order."""
    with tarfile.open(path, "w") as archive:
        for key, members in samples:
            for ext, payload in members.items():
                info = tarfile.TarInfo(f"{key}.{ext}")
                info.size = len(payload)
                archive.addfile(info, io.BytesIO(payload))
    return path


def make_csv_dataset(root: Path, count: int, corrupt: tuple[int, ...] = (), separator: str = ",",
                     name: str = "pairs.csv", image_column: str = "filepath", caption_column: str = "caption") -> Path:
    """``count`` PNG images under ``root/img`` and a table of (path, "caption A||caption B") rows; rows listed in
    ``corrupt`` point at files that are not images."""
    (root / "img").mkdir(parents=True, exist_ok=True)
    table = root / name
    with table.open("w", newline="") as handle:
        writer = csv.writer(handle, delimiter=separator)
        writer.writerow([image_column, caption_column])
        for i in range(count):
            path = root / "img" / f"{i}.png"
            path.write_bytes(b"not an image" if i in corrupt else image_bytes(i))
            colour = COLOURS[i % len(COLOURS)]
            writer.writerow([f"img/{i}.png", f"a {colour} square||a shape"])
    return table


def red_index(images: torch.Tensor) -> list[int]:
    """Recover the ``index`` encoded by ``image_bytes`` from un-normalised [B, 3, H, W] tensors in [0, 1]."""
    return [int(round(float(v) * 255)) for v in images[:, 0].mean(dim=(1, 2))]


def plain_collator() -> PairCollator:
    """Images as [0, 1] tensors (no normalisation) and captions as their lengths, to compare batches exactly."""
    import torchvision.transforms.v2 as T

    transform = T.Compose([T.PILToTensor(), T.ToDtype(torch.float32, scale=True)])
    return PairCollator(transform, lambda texts: torch.tensor([[len(t)] for t in texts]))


# --------------------------------------------------------------------------------------------- webdataset
def test_webdataset_reads_image_and_caption_formats_and_skips_corrupt(tmp_path):
    shard = write_shard(tmp_path / "000.tar", [
        ("a/0", {"jpg": image_bytes(10, "JPEG"), "txt": b"a red square"}),
        ("a/1", {"png": image_bytes(20), "json": json.dumps({"caption": "a green square"}).encode()}),
        ("a/2", {"webp": image_bytes(30, "WEBP"), "txt": b"a blue square", "json": b"{\"width\": 16}"}),
        ("a/3", {"jpg": b"\xff\xd8 truncated", "txt": b"broken"}),
        ("a/4", {"png": image_bytes(40), "json": json.dumps(["one", "two"]).encode()}),
    ])
    data = DataSection(source="webdataset", paths=[str(shard)], batch_size=4, shuffle_buffer=0, resample=False)
    data.validate()
    batches = build_train_batches(data, plain_collator(), seed=0)
    batch = next(batches)
    assert batch.images.shape == (4, 3, 16, 16)
    assert red_index(batch.images) == [10, 20, 30, 40]
    assert batch.skipped == 1
    assert "a/3" in batch.errors[0] and "000.tar" in batch.errors[0]
    assert batch.tokens[:, 0].tolist() == [len("a red square"), len("a green square"), len("a blue square"), 3]


def test_missing_shard_is_named_at_start(tmp_path):
    write_shard(tmp_path / "000.tar", [("0", {"png": image_bytes(1), "txt": b"x"})])
    data = DataSection(source="webdataset", paths=[str(tmp_path / "{000..001}.tar")], batch_size=2)
    data.validate()
    with pytest.raises(ShardError, match="001.tar"):
        build_source(data, seed=0)


def test_empty_shard_is_an_error_at_start(tmp_path):
    write_shard(tmp_path / "000.tar", [("0", {"cls": b"3"})])
    data = DataSection(source="webdataset", paths=[str(tmp_path / "000.tar")], batch_size=2)
    data.validate()
    with pytest.raises(ShardError, match="empty"):
        build_source(data, seed=0)


def test_brace_expansion():
    assert expand_shard_urls(["s/{00..02}.tar"]) == ["s/00.tar", "s/01.tar", "s/02.tar"]
    assert expand_shard_urls(["a.tar::b.tar"]) == ["a.tar", "b.tar"]


def test_json_caption_payloads():
    assert captions_from_payload("json", b'{"captions": ["x", "y"]}') == ["x", "y"]
    assert captions_from_payload("txt", b"p || q", separator="||") == ["p", "q"]
    with pytest.raises(ValueError, match="keys"):
        captions_from_payload("json", b'{"width": 3}')


def _stream_shards(tmp_path, shards=2, per_shard=12):
    for s in range(shards):
        write_shard(tmp_path / f"{s:03d}.tar", [
            (f"{s}_{i}", {"png": image_bytes(s * per_shard + i), "txt": f"caption {s} {i}".encode()})
            for i in range(per_shard)
        ])
    return str(tmp_path / f"{{000..{shards - 1:03d}}}.tar")


@pytest.mark.parametrize("workers", [0, 2])
def test_stream_resume_continues_exactly(tmp_path, workers):
    pattern = _stream_shards(tmp_path)
    data = DataSection(source="webdataset", paths=[pattern], batch_size=4, shuffle_buffer=5, resample=True,
                       num_workers=workers)
    data.validate()
    full = build_train_batches(data, plain_collator(), seed=3)
    reference = [red_index(next(full).images) for _ in range(6)]
    first = build_train_batches(data, plain_collator(), seed=3)
    seen = [red_index(next(first).images) for _ in range(3)]
    state = first.state()
    resumed = build_train_batches(data, plain_collator(), seed=3, resume_state=state)
    rest = [red_index(next(resumed).images) for _ in range(3)]
    assert seen == reference[:3]
    assert rest == reference[3:]
    assert len({i for b in reference for i in b}) > 4  # the shuffle buffer and resampling produce varied data


def test_stream_without_resampling_needs_a_shard_per_reader(tmp_path):
    pattern = _stream_shards(tmp_path, shards=1)
    data = DataSection(source="webdataset", paths=[pattern], batch_size=2, resample=False, num_workers=2)
    data.validate()
    with pytest.raises(ValueError, match="resample"):
        build_train_batches(data, plain_collator(), seed=0)


# --------------------------------------------------------------------------------------------- CSV / TSV
def test_csv_columns_separator_and_caption_split(tmp_path):
    table = make_csv_dataset(tmp_path, 3, separator="\t", name="pairs.tsv", image_column="path",
                             caption_column="text")
    rows = read_pair_table(table, "path", "text", caption_separator="||")
    assert rows[1] == (str(tmp_path / "img" / "1.png"), ["a green square", "a shape"])
    with pytest.raises(ValueError, match=r"no image column 'filepath'.*\['path', 'text'\]"):
        read_pair_table(table, "filepath", "text")


def test_csv_empty_and_missing_tables(tmp_path):
    empty = tmp_path / "empty.csv"
    empty.write_text("filepath,caption\n")
    with pytest.raises(ValueError, match="empty"):
        read_pair_table(empty, "filepath", "caption")
    with pytest.raises(FileNotFoundError, match="nope.csv"):
        read_pair_table(tmp_path / "nope.csv", "filepath", "caption")


def test_csv_corrupt_image_is_skipped_and_counted(tmp_path):
    table = make_csv_dataset(tmp_path, 8, corrupt=(2, 5))
    data = DataSection(source="csv", paths=[str(table)], batch_size=8, caption_separator="||")
    data.validate()
    batch = next(build_train_batches(data, plain_collator(), seed=0))
    assert batch.images.shape[0] == 8  # substitutes keep the batch full
    assert batch.skipped == 2
    assert any("2.png" in e for e in batch.errors) and any("5.png" in e for e in batch.errors)
    assert not {2, 5} & set(red_index(batch.images))


def test_indexed_batches_split_exactly_across_ranks_and_workers(tmp_path):
    table = make_csv_dataset(tmp_path, 10)
    data = DataSection(source="csv", paths=[str(table)], batch_size=4, caption_separator="||")
    data.validate()
    single = build_train_batches(data, plain_collator(), seed=1)
    whole = [red_index(next(single).images) for _ in range(5)]  # crosses an epoch boundary (10 images)
    ranks = [build_train_batches(data, plain_collator(), seed=1, rank=r, world_size=2) for r in range(2)]
    split = [red_index(next(ranks[0]).images) + red_index(next(ranks[1]).images) for _ in range(5)]
    assert split == whole
    data.num_workers = 2
    with_workers = build_train_batches(data, plain_collator(), seed=1, start_step=2)
    assert [red_index(next(with_workers).images) for _ in range(3)] == whole[2:]
    assert sorted(whole[0] + whole[1] + whole[2][:2]) == list(range(10))  # one epoch = a permutation


# --------------------------------------------------------------------------------------------- shuffling, captions
def test_shuffle_buffer_permutes_within_its_reach():
    import random

    from probclip.data.webdataset import shuffled

    assert list(shuffled(iter(range(50)), 0, random.Random(0))) == list(range(50))
    out = list(shuffled(iter(range(200)), 10, random.Random(0)))
    assert sorted(out) == list(range(200)) and out != list(range(200))
    position = {item: index for index, item in enumerate(out)}
    assert all(position[item] >= item - 10 for item in range(200))  # an item waits in a buffer of 10 at most
    assert out == list(shuffled(iter(range(200)), 10, random.Random(0)))  # seeded


def test_several_captions_one_drawn_per_step(tmp_path):
    (tmp_path / "img").mkdir()
    for i in range(4):
        (tmp_path / "img" / f"{i}.png").write_bytes(image_bytes(i))
    table = tmp_path / "pairs.csv"
    table.write_text("filepath,caption\n" + "".join(f"img/{i}.png,x||yy||zzz\n" for i in range(4)))
    data = DataSection(source="csv", paths=[str(table)], batch_size=4, caption_separator="||")
    data.validate()
    batches = build_train_batches(data, plain_collator(), seed=0)
    drawn: dict[int, list[int]] = {i: [] for i in range(4)}
    for _ in range(12):  # one epoch per step: every image once per step
        batch = next(batches)
        assert batch.tokens.shape == (4, 1) and sorted(red_index(batch.images)) == [0, 1, 2, 3]
        for index, length in zip(red_index(batch.images), batch.tokens[:, 0].tolist()):
            drawn[index].append(length)
    for index, lengths in drawn.items():
        assert set(lengths) == {1, 2, 3}, (index, lengths)  # each caption is drawn, one per image and step
    again = build_train_batches(data, plain_collator(), seed=0)
    assert [next(again).tokens[:, 0].tolist() for _ in range(3)] == [
        [drawn[i][s] for i in red_index(b.images)] for s, b in enumerate(
            next(build_train_batches(data, plain_collator(), seed=0, start_step=s)) for s in range(3))]


def test_a_shard_cut_short_is_counted_and_the_stream_goes_on(tmp_path):
    write_shard(tmp_path / "000.tar", [(f"a{i}", {"png": image_bytes(i), "txt": b"a square"}) for i in range(6)])
    write_shard(tmp_path / "001.tar", [(f"b{i}", {"png": image_bytes(100 + i), "txt": b"a shape"}) for i in range(6)])
    whole = (tmp_path / "001.tar").read_bytes()
    (tmp_path / "001.tar").write_bytes(whole[:10240])  # ends at a member boundary: b5 and the end block are lost
    data = DataSection(source="webdataset", paths=[str(tmp_path / "{000..001}.tar")], batch_size=4,
                       shuffle_buffer=0, resample=False)
    data.validate()
    batches = build_train_batches(data, plain_collator(), seed=0)
    seen, skipped, errors = [], 0, []
    for _ in range(6):  # several passes over the two shards
        batch = next(batches)
        seen += red_index(batch.images)
        skipped += batch.skipped
        errors += batch.errors
    assert skipped >= 2 and all("001.tar" in e and "unreadable" in e for e in errors)
    assert set(range(6)) <= set(seen) and {100, 101, 102, 103, 104} <= set(seen)  # records before the cut
    assert 105 not in seen


def test_a_shard_cut_inside_a_member_keeps_the_records_before_it(tmp_path):
    from probclip.data import iter_tar_records

    write_shard(tmp_path / "000.tar", [(f"b{i}", {"png": image_bytes(i), "txt": b"a shape"}) for i in range(6)])
    whole = (tmp_path / "000.tar").read_bytes()
    (tmp_path / "cut.tar").write_bytes(whole[:10240 + 512 + 40])  # inside the data of b5.png
    records = []
    with pytest.raises(tarfile.ReadError):
        for record in iter_tar_records(str(tmp_path / "cut.tar")):
            records.append(record["__key__"])
    assert records == ["b0", "b1", "b2", "b3", "b4"]
    assert [r["__key__"] for r in iter_tar_records(str(tmp_path / "000.tar"))] == [f"b{i}" for i in range(6)]
