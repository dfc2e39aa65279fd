"""One decoder: the same awkward images (an EXIF-rotated JPEG, a transparent PNG, a CMYK JPEG, a 16-bit PNG) give the
same embedding through ``probclip embed``, ``probclip search --image``, an HTTP upload and the training reader."""

from __future__ import annotations

import io
import tarfile
from pathlib import Path

import numpy as np
import pytest
import torch
from fastapi.testclient import TestClient
from PIL import Image

import probclip
from probclip.cli import main as cli_main
from probclip.data.webdataset import iter_tar_records, record_to_sample
from probclip.embedding import ProbEmbedding
from probclip.search import SearchIndex
from probclip.serve.app import create_app
from probclip.transforms import image_transform

TOLERANCE = 1e-6


def _pattern(width: int, height: int) -> np.ndarray:
    """An asymmetric colour pattern ``[H, W, 3]`` uint8: a rotation or a lost alpha changes its embedding."""
    y, x = np.mgrid[0:height, 0:width]
    return np.stack([x * 255 // width, y * 255 // height, (x * y) % 256], axis=-1).astype(np.uint8)


def _awkward_images(folder: Path) -> dict[str, Path]:
    folder.mkdir(parents=True)
    rotated = Image.fromarray(_pattern(48, 24))
    exif = Image.Exif()
    exif[0x0112] = 6  # orientation: rotate 90 degrees clockwise to display
    rotated.save(folder / "exif_rotated.jpg", exif=exif.tobytes(), quality=95)
    rgba = np.concatenate([_pattern(32, 32), np.tile(np.linspace(0, 255, 32, dtype=np.uint8), (32, 1))[..., None]],
                          axis=-1)
    Image.fromarray(rgba, mode="RGBA").save(folder / "transparent.png")
    Image.fromarray(_pattern(40, 30)).convert("CMYK").save(folder / "cmyk.jpg", quality=95)
    deep = (np.mgrid[0:28, 0:36][1] * 1800).astype(np.uint16)
    Image.fromarray(deep).save(folder / "deep16.png")
    paths = {p.name: p for p in sorted(folder.iterdir())}
    assert Image.open(paths["cmyk.jpg"]).mode == "CMYK" and Image.open(paths["deep16.png"]).mode.startswith("I")
    assert Image.open(paths["transparent.png"]).mode == "RGBA"
    assert Image.open(paths["exif_rotated.jpg"]).getexif()[0x0112] == 6
    return paths


@pytest.fixture(scope="module")
def setting(tmp_path_factory):
    root = tmp_path_factory.mktemp("one-decoder")
    torch.manual_seed(0)
    probclip.create_model("ProLIP-Tiny").save_pretrained(root / "model")
    paths = _awkward_images(root / "data")
    assert cli_main(["embed", "--model", str(root / "model"), "--data", str(root / "data"), "--out",
                     str(root / "c"), "--modality", "image", "--dtype", "float32", "--num-workers", "0",
                     "--no-progress"]) == 0
    assert cli_main(["index", str(root / "c"), "--kind", "flat", "--no-progress"]) == 0
    index = SearchIndex.load(root / "c", "image")
    stored = {Path(m["source"]).name: index.embedding([m["row_id"]])
              for m in index.metadata(np.arange(index.rows))}
    assert sorted(stored) == sorted(paths)
    return root, paths, stored, index.model


def _assert_same(found: ProbEmbedding, expected: ProbEmbedding, what: str) -> None:
    mean_diff = float((found.mean.reshape(-1) - expected.mean.reshape(-1)).abs().max())
    logvar_diff = float((found.logvar.reshape(-1) - expected.logvar.reshape(-1)).abs().max())
    assert mean_diff <= TOLERANCE and logvar_diff <= TOLERANCE, (what, mean_diff, logvar_diff)


class _Recorder:
    """Wraps ``SearchIndex.encode`` to keep every query embedding it returns."""

    def __init__(self, monkeypatch):
        self.seen: list[ProbEmbedding] = []
        original = SearchIndex.encode

        def encode(index, query):
            emb = original(index, query)
            self.seen.append(emb)
            return emb

        monkeypatch.setattr(SearchIndex, "encode", encode)


def test_search_image_gives_the_stored_embedding(setting, monkeypatch, capsys):
    root, paths, stored, _ = setting
    recorder = _Recorder(monkeypatch)
    for name, path in paths.items():
        recorder.seen.clear()
        assert cli_main(["search", str(root / "c"), "--image", str(path), "--modality", "image", "--k", "1"]) == 0
        assert name in capsys.readouterr().out  # the image finds its own entry first
        _assert_same(recorder.seen[0], stored[name], f"search --image {name}")


def test_an_http_upload_gives_the_stored_embedding(setting, monkeypatch):
    root, paths, stored, model = setting
    recorder = _Recorder(monkeypatch)
    index = SearchIndex.load(root / "c", "image", model=model)
    with TestClient(create_app([index]), base_url="http://localhost") as client:
        for name, path in paths.items():
            recorder.seen.clear()
            answer = client.post("/search", files={"image": (name, path.read_bytes(), "application/octet-stream")},
                                 data={"k": "1"})
            assert answer.status_code == 200, answer.text
            assert Path(answer.json()["results"][0]["metadata"]["source"]).name == name
            _assert_same(recorder.seen[0], stored[name], f"HTTP upload {name}")


def test_the_training_reader_gives_the_stored_embedding(setting, tmp_path):
    _, paths, stored, model = setting
    shard = tmp_path / "00000.tar"
    with tarfile.open(shard, "w") as tar:
        for i, path in enumerate(paths.values()):
            for member, payload in ((f"{i:03d}{path.suffix}", path.read_bytes()), (f"{i:03d}.txt", b"a caption")):
                info = tarfile.TarInfo(member)
                info.size = len(payload)
                tar.addfile(info, io.BytesIO(payload))
    transform = image_transform(model.config.vision)  # the collator's transform without train_augment
    names = list(paths)
    for record in iter_tar_records(str(shard)):
        image, _ = record_to_sample(record, ("jpg", "png"), ("txt",))
        with torch.inference_mode():
            emb = model.encode_image(transform(image)[None])
        name = names[int(record["__key__"])]
        _assert_same(emb, stored[name], f"training reader {name}")


def test_a_bare_decoder_would_differ(setting):
    """The check above can fail: decoding without EXIF orientation or alpha handling changes the embedding."""
    _, paths, stored, model = setting
    transform = image_transform(model.config.vision)
    for name in ("exif_rotated.jpg", "transparent.png"):
        with Image.open(paths[name]) as image, torch.inference_mode():
            emb = model.encode_image(transform(image.convert("RGB"))[None])
        assert float((emb.mean.reshape(-1) - stored[name].mean.reshape(-1)).abs().max()) > 1e-3, name
