"""Bounded resources and one way to read data: decompression bombs refused before decoding (and the peak memory of a
training step with them), oversized tar members and captions skipped, unreadable evaluation images skipped, counted
and named in results.json, the same decoding for training and evaluation, and numerics at the edges."""

from __future__ import annotations

import io
import json
import os
import subprocess
import sys
import tarfile
from pathlib import Path

import pytest
import torch
import yaml
from PIL import Image

import probclip
from probclip.data import SampleError, decode_image_bytes
from probclip.data.webdataset import iter_tar_records, record_to_sample
from probclip.eval.readers import read_classification, read_retrieval
from probclip.image_decoding import decode_image
from probclip.limits import LimitExceededError, current_limits, set_limits
from probclip.models.inputs import NonFiniteInputError
from test_data_readers import image_bytes

REPO = Path(__file__).resolve().parents[1]
BOMB_SIZE = (10_000, 10_001)  # 100.01 megapixels in a 12 kB PNG


@pytest.fixture(scope="module")
def bomb(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("bomb") / "bomb.png"
    Image.new("1", BOMB_SIZE).save(path)
    assert path.stat().st_size < 100_000
    return path


def test_a_decompression_bomb_is_refused_from_its_header(bomb):
    import tracemalloc

    tracemalloc.start()
    with pytest.raises(LimitExceededError, match=r"bomb.png: image of 10000x10001 = 100.0 megapixels exceeds"):
        decode_image(bomb)
    _, peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    assert peak < 5_000_000  # nothing near the 12.5 MB (1 bit) or 300 MB (RGB) of the decoded image
    with pytest.raises(SampleError, match="shard.tar:key.png: image of 10000x10001"):
        decode_image_bytes(bomb.read_bytes(), "shard.tar:key.png")
    previous = set_limits(max_image_pixels=200_000_000)
    try:
        assert decode_image(bomb, draft=(64, 64)).mode == "RGB"  # the limit is configurable
    finally:
        set_limits(previous)


def _write_shard(path: Path, members: list[tuple[str, bytes]]) -> Path:
    with tarfile.open(path, "w") as tar:
        for name, payload in members:
            info = tarfile.TarInfo(name)
            info.size = len(payload)
            tar.addfile(info, io.BytesIO(payload))
    return path


def test_oversized_tar_members_and_captions_are_skipped_and_named(tmp_path):
    shard = _write_shard(tmp_path / "s.tar", [
        ("a.png", image_bytes(1)), ("a.txt", b"a small square"),
        ("b.png", image_bytes(2) + b"\0" * 5000), ("b.txt", b"an image padded past the limit"),
        ("c.png", image_bytes(3)), ("c.txt", b"x" * 300),
    ])
    previous = set_limits(max_member_bytes=4000, max_caption_chars=200)
    try:
        records = list(iter_tar_records(str(shard)))
        outcomes = []
        for record in records:
            try:
                outcomes.append(record_to_sample(record, ["png"], ["txt"])[1])
            except SampleError as err:
                outcomes.append(str(err))
    finally:
        set_limits(previous)
    assert outcomes[0] == ["a small square"]
    assert "s.tar:b.png" in outcomes[1] and "exceeds the limit of 4000 bytes" in outcomes[1]
    assert "caption of 300 characters exceeds the limit of 200" in outcomes[2]
    assert "png" not in records[1]  # the oversized member was never read into memory
    assert current_limits().max_member_bytes == 32 * 1024 * 1024


def test_training_skips_counts_and_names_a_bomb(tmp_path, bomb):
    from probclip.train import TrainConfig, train
    from test_train_loop import read_log, tiny_config

    table = _table_with_bombs(tmp_path, normal=6, bombs=2, bomb=bomb)
    result = train(TrainConfig.from_dict(tiny_config(tmp_path, table, run={"steps": 2, "save_every": 0},
                                                     data={"batch_size": 4})))
    _, events = read_log(result.log_path)
    named = [e for event in events if event["event"] == "bad_samples" for e in event["errors"]]
    assert result.skipped_samples >= 1 and any("bomb0.png" in e and "megapixels" in e for e in named), named


def _table_with_bombs(root: Path, normal: int, bombs: int, bomb: Path, size: int = 256) -> Path:
    (root / "img").mkdir(parents=True, exist_ok=True)
    rows = ["filepath,caption"]
    for i in range(normal):
        Image.new("RGB", (size, size), (i * 30 % 256, 90, 160)).save(root / "img" / f"{i}.png")
        rows.append(f"img/{i}.png,a square number {i}")
    for i in range(bombs):
        target = root / "img" / f"bomb{i}.png"
        target.write_bytes(bomb.read_bytes())
        rows.insert(1 + 2 * i, f"img/bomb{i}.png,a huge empty picture")
    table = root / "pairs.csv"
    table.write_text("\n".join(rows) + "\n")
    return table


_PEAKS_OF_TRAINING_STEPS = """
import json, re, sys, yaml
from probclip.train import TrainConfig, train

def peak_kb():  # the process's peak resident memory since the last reset
    return int(re.search(r"VmHWM:\\s+(\\d+)", open("/proc/self/status").read()).group(1))

peaks = []
for path in sys.argv[1:]:
    config = TrainConfig.from_dict(yaml.safe_load(open(path)))
    with open("/proc/self/clear_refs", "w") as handle:
        handle.write("5")  # reset the peak to the current resident size
    train(config)
    peaks.append(peak_kb() * 1024)
print(json.dumps(peaks))
"""


def _step_config(root: Path, table: Path, max_pixels: int) -> Path:
    config = {
        "model": {"name": "ProLIP-Tiny-Word", "overrides": {"vision": {"layers": 1}, "text": {"layers": 1}}},
        "data": {"source": "csv", "paths": [str(table)], "batch_size": 8, "max_image_pixels": max_pixels},
        "run": {"steps": 1, "output_dir": str(root / "run"), "save_every": 0, "tensorboard": False,
                "progress": "none", "cpu_threads": 1, "precision": "fp32", "seed": 1},
    }
    root.mkdir(parents=True, exist_ok=True)
    path = root / "config.yaml"
    path.write_text(yaml.safe_dump(config))
    return path


def test_peak_memory_of_a_step_with_bombs_stays_within_1_5x_of_normal_images(tmp_path, bomb):
    """One training step (batch 8) over 256x256 images, then over a table holding 100-megapixel PNGs, then the same
    with the limit lifted: the peak resident memory of each step, in one process (the peak is reset between steps,
    and the warm-up step makes the first one comparable)."""
    limit = current_limits().max_image_pixels
    normal_table = _table_with_bombs(tmp_path / "normal", 12, 0, bomb)
    bombs_table = _table_with_bombs(tmp_path / "bombs", 12, 2, bomb)
    configs = [_step_config(tmp_path / "warm-up", normal_table, limit),
               _step_config(tmp_path / "normal", normal_table, limit),
               _step_config(tmp_path / "bombs", bombs_table, limit),
               _step_config(tmp_path / "unguarded", bombs_table, 200_000_000)]
    env = dict(os.environ, PYTHONPATH=str(REPO / "src"), OMP_NUM_THREADS="1", HF_HUB_OFFLINE="1")
    done = subprocess.run([sys.executable, "-c", _PEAKS_OF_TRAINING_STEPS, *map(str, configs)], env=env,
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    _, normal, with_bombs, unguarded = json.loads(done.stdout.strip().splitlines()[-1])
    print(f"peak RSS of a step: normal {normal / 2**20:.0f} MiB, with bombs {with_bombs / 2**20:.0f} MiB "
          f"({with_bombs / normal:.2f}x), limit lifted {unguarded / 2**20:.0f} MiB ({unguarded / normal:.2f}x)")
    assert with_bombs <= 1.5 * normal
    # without the check the same batch decodes each bomb to 300 MB of RGB pixels: the check is what bounds it
    assert unguarded - normal > 200 * 2**20


# ------------------------------------------------------------------------------------------------- evaluation
def _jpeg_with_orientation(path: Path) -> None:
    image = Image.new("RGB", (40, 20), (255, 0, 0))
    image.paste((0, 0, 255), (0, 0, 20, 20))  # left half blue
    exif = Image.Exif()
    exif[0x0112] = 6  # rotate 90 degrees clockwise when displayed
    image.save(path, exif=exif.tobytes())


def test_evaluation_decodes_like_training(tmp_path):
    _jpeg_with_orientation(tmp_path / "turned.jpg")
    (tmp_path / "alpha.png").write_bytes(_png_with_alpha())
    for name in ("turned.jpg", "alpha.png"):
        payload = (tmp_path / name).read_bytes()
        from probclip.eval.readers import ImageItem

        evaluated = ImageItem(key=name, path=tmp_path / name).open()
        trained = decode_image_bytes(payload, name)
        assert evaluated.size == trained.size and evaluated.tobytes() == trained.tobytes()
    assert decode_image(tmp_path / "turned.jpg").size == (20, 40)  # EXIF orientation applied
    assert decode_image(tmp_path / "alpha.png").getpixel((0, 0)) == (255, 255, 255)  # alpha over white


def _png_with_alpha() -> bytes:
    buffer = io.BytesIO()
    Image.new("RGBA", (8, 8), (10, 20, 30, 0)).save(buffer, format="PNG")
    return buffer.getvalue()


def test_unreadable_evaluation_images_are_skipped_counted_and_named(tmp_path, bomb):
    root = tmp_path / "classes"
    for label, colour, side in (("red", (220, 10, 10), 24), ("blue", (10, 10, 220), 16)):
        (root / label).mkdir(parents=True)
        for i in range(3):
            Image.new("RGB", (side, side), colour).save(root / label / f"{i}.png")
    (root / "red" / "3.png").write_bytes(b"\x89PNG\r\n\x1a\n truncated")
    (root / "blue" / "9.png").write_bytes(bomb.read_bytes())
    data = read_classification(root)
    assert len(data.items) == 6 and data.labels == [0, 0, 0, 1, 1, 1]
    assert sorted(Path(s["image"]).name for s in data.skipped) == ["3.png", "9.png"]
    model_dir = tmp_path / "model"
    probclip.create_model("ProLIP-Tiny").save_pretrained(model_dir)
    from probclip.cli import main

    assert main(["eval", "--model", str(model_dir), "--task", "zeroshot", "--data", str(root), "--out",
                 str(tmp_path / "out"), "--no-progress"]) == 0
    results = json.loads((tmp_path / "out" / "results.json").read_text())
    assert results["skipped_images"]["count"] == 2
    assert main(["eval", "--model", str(model_dir), "--task", "zeroshot", "--data", str(root), "--out",
                 str(tmp_path / "out2"), "--no-progress", "--max-image-pixels", "400"]) == 0  # red: 24x24 = 576 pixels
    assert json.loads((tmp_path / "out2" / "results.json").read_text())["skipped_images"]["count"] == 5
    assert current_limits().max_image_pixels == 50_000_000  # the option holds for that evaluation only
    reasons = {Path(s["image"]).name: s["error"] for s in results["skipped_images"]["images"]}
    assert "truncated" in reasons["3.png"] or "cannot" in reasons["3.png"]
    assert "megapixels" in reasons["9.png"]


def test_a_retrieval_set_loses_the_captions_of_its_unreadable_images(tmp_path):
    for i in range(3):
        Image.new("RGB", (16, 16), (i * 80, 0, 0)).save(tmp_path / f"{i}.png")
    (tmp_path / "1.png").write_bytes(b"broken")
    (tmp_path / "pairs.csv").write_text("image,caption\n0.png,zero a\n0.png,zero b\n1.png,one\n2.png,two\n")
    data = read_retrieval(tmp_path / "pairs.csv")
    assert data.captions == ["zero a", "zero b", "two"] and data.caption_image.tolist() == [0, 0, 1]
    assert [Path(s["image"]).name for s in data.skipped] == ["1.png"]


def test_an_empty_class_folder_warns(tmp_path):
    (tmp_path / "cat").mkdir()
    Image.new("RGB", (8, 8)).save(tmp_path / "cat" / "0.png")
    (tmp_path / "dog").mkdir()
    with pytest.warns(RuntimeWarning, match="dog holds no image"):
        read_classification(tmp_path)


# --------------------------------------------------------------------------------------------------- numerics
def test_half_precision_distances_do_not_overflow():
    from probclip import ProbEmbedding, csd, inclusion_score, wasserstein2

    mean = torch.nn.functional.normalize(torch.randn(3, 16), dim=-1)
    logvar = torch.full((3, 16), 11.5)  # exp(11.5) * 16 = 1.6e6: far beyond float16's 65504
    full = ProbEmbedding(mean, logvar)
    half = full.to(torch.float16)
    for fn in (csd, inclusion_score, wasserstein2):
        got, expected = fn(half, half), fn(full, full)
        assert got.dtype == torch.float32 and torch.isfinite(got).all(), fn.__name__
        assert torch.allclose(got, expected, rtol=1e-2, atol=1e-2), fn.__name__
    mixed = csd(half, full.to(torch.float64))
    assert mixed.dtype == torch.float64 and torch.isfinite(mixed).all()


def test_encoders_refuse_non_finite_pixels_and_float_tokens():
    model = probclip.create_model("ProLIP-Tiny").eval()
    images = torch.zeros(2, 3, 32, 32)
    images[1, 0, 0, 0] = float("nan")
    with pytest.raises(NonFiniteInputError, match="1 of 2 image"):
        model.encode_image(images)
    with pytest.raises(probclip.errors.InputError, match="integer token ids"):
        model.encode_text(torch.zeros(1, 8))
    with pytest.raises(ValueError, match="not finite|non-finite|NaN"):
        probclip.csd(probclip.ProbEmbedding(torch.full((1, 4), float("nan")), torch.zeros(1, 4)),
                     probclip.ProbEmbedding(torch.ones(1, 4), torch.zeros(1, 4)))
