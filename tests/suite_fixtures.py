"""Tiny data sets in the CLIP_benchmark / DataComp webdataset layout (``nshards.txt``, ``0..n-1.tar``).

Images are the colour world's noisy solid colours (see ``test_eval_fixtures``): classification sets
have the classes red, green, blue; retrieval sets have captions naming each image's colour.
"""

from __future__ import annotations

import io
import tarfile
from pathlib import Path

import numpy as np
import torch
from PIL import Image

import probclip
from test_eval_fixtures import COLOURS, image_bytes

TEMPLATES = "a photo of a {c}.\na {c} thing.\nitap of a {c}.\n"


def _member(tar: tarfile.TarFile, name: str, data: bytes) -> None:
    info = tarfile.TarInfo(name)
    info.size = len(data)
    tar.addfile(info, io.BytesIO(data))


def _npy(row: np.ndarray) -> bytes:
    buf = io.BytesIO()
    np.save(buf, row)
    return buf.getvalue()


def build_benchmark_classification(root: Path, per_class: int = 4, n_shards: int = 2, metadata: bool = False,
                                   fmt: str = "WEBP", nshards_file: bool = True) -> Path:
    """``root/{classnames.txt, zeroshot_classification_templates.txt, test/nshards.txt, test/<i>.tar}``.

    With ``metadata``, each sample has a ``.npy`` row ``[group, 7]`` where group = sample index % 3.
    """
    (root / "test").mkdir(parents=True, exist_ok=True)
    (root / "classnames.txt").write_text("\n".join(COLOURS) + "\n")
    (root / "zeroshot_classification_templates.txt").write_text(TEMPLATES)
    if nshards_file:
        (root / "test" / "nshards.txt").write_text(f"{n_shards}\n")
    ext = {"WEBP": "webp", "PNG": "png", "JPEG": "jpg"}[fmt]
    samples = [(c, colour, i) for i in range(per_class) for c, colour in enumerate(COLOURS)]
    for shard in range(n_shards):
        with tarfile.open(root / "test" / f"{shard}.tar", "w") as tar:
            for n, (c, colour, _) in enumerate(samples):
                if n * n_shards // len(samples) != shard:
                    continue
                key = f"s{n:05d}"
                _member(tar, f"{key}.{ext}", image_bytes(colour, 4.0 + 40.0 * (n % 5), 300 + n, fmt, size=16))
                _member(tar, f"{key}.cls", f"{c}".encode())
                if metadata:
                    _member(tar, f"{key}.npy", _npy(np.array([n % 3, 7], dtype=np.int64)))
    return root


def build_benchmark_retrieval(root: Path, n_images: int = 12, n_shards: int = 11) -> Path:
    """``root/{dataset_type.txt = retrieval, test/nshards.txt, test/0..n-1.tar}``: one image per key with a
    ``.txt`` of two captions. With 11 shards, ``10.tar`` sorts before ``2.tar`` by name, not by number."""
    (root / "test").mkdir(parents=True, exist_ok=True)
    (root / "dataset_type.txt").write_text("retrieval\n")
    (root / "test" / "nshards.txt").write_text(f"{n_shards}")
    colours = list(COLOURS)
    for shard in range(n_shards):
        with tarfile.open(root / "test" / f"{shard}.tar", "w") as tar:
            for n in range(n_images):
                if n * n_shards // n_images != shard:
                    continue
                colour = colours[n % 3]
                _member(tar, f"r{n:04d}.jpg", image_bytes(colour, 4.0 + 30.0 * (n % 4), 900 + n, "JPEG", size=16))
                _member(tar, f"r{n:04d}.txt", f"a {colour} square\nsomething {colour} number {n}".encode())
    return root


def build_datacomp_root(root: Path) -> Path:
    """A data root with four DataComp tasks: cifar10 (CLIP_benchmark name), vtab/caltech101 (DataComp's
    ``_test`` name), fairness/geode (with metadata) and Flickr (``wds_flickr30k``)."""
    build_benchmark_classification(root / "wds_cifar10")
    build_benchmark_classification(root / "wds_vtab-caltech101_test", per_class=5, n_shards=3, fmt="PNG")
    build_benchmark_classification(root / "wds_geode_test", metadata=True, fmt="JPEG")
    build_benchmark_retrieval(root / "wds_flickr30k")
    return root


def save_tiny_model(path: Path, seed: int = 1) -> Path:
    """A ProLIP-Tiny checkpoint whose matrices are redrawn with std ``fan_in ** -0.5``: unlike the default
    small initialisation, its embeddings differ from image to image, so its predictions vary."""
    torch.manual_seed(seed)
    model = probclip.create_model("ProLIP-Tiny")
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for param in model.parameters():
            if param.dim() >= 2:
                param.copy_(torch.randn(param.shape, generator=g) * param.shape[-1] ** -0.5)
    model.save_pretrained(path)
    return path


def build_random_classification(root: Path, n_classes: int = 10, n_images: int = 40, n_shards: int = 2) -> Path:
    """CLIP_benchmark classification layout with random-texture PNG images, labels ``i % n_classes``."""
    names = ["red", "green", "blue", "yellow", "purple", "orange", "black", "white", "gray", "pink", "brown", "cyan"]
    (root / "test").mkdir(parents=True, exist_ok=True)
    (root / "classnames.txt").write_text("\n".join(names[:n_classes]) + "\n")
    (root / "zeroshot_classification_templates.txt").write_text("a photo of a {c}.\na {c} thing.\n")
    (root / "test" / "nshards.txt").write_text(str(n_shards))
    rng = np.random.default_rng(0)
    for shard in range(n_shards):
        with tarfile.open(root / "test" / f"{shard}.tar", "w") as tar:
            for n in range(n_images):
                if n * n_shards // n_images != shard:
                    continue
                pixels = (rng.random((32, 32, 3)) * rng.random(3) * 255).astype(np.uint8)
                buf = io.BytesIO()
                Image.fromarray(pixels).save(buf, format="PNG")
                _member(tar, f"k{n:04d}.png", buf.getvalue())
                _member(tar, f"k{n:04d}.cls", str(n % n_classes).encode())
    return root
