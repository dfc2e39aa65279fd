"""A pool of image-text pairs from the synthetic world with noise of known kinds and rates, in DataComp's layout.

Every sample starts clean: a scene of the ``train`` split (never degraded) and one true caption at specificity
level 2..5. A seeded permutation then gives exactly ``round(rate x size)`` samples each kind of noise:

- ``mismatch``: the caption of another scene (checked false for this one);
- ``wrong_attribute``: the true caption with one attribute word replaced (colour, shape, size or position; checked
  false);
- ``degraded``: the image at the strongest degradation level (4), cycling through noise, blur and occlusion; the
  caption is true;
- ``vague``: a true caption of level 0 or 1 ("a shape", "a red shape").

Shards ``NNNNNNNN.tar`` hold ``<key>.png``, ``<key>.txt`` (the caption) and ``<key>.json`` (``uid``, ``key``,
``caption``, ``noise``, ``scene``, ``index``), with ``NNNNNNNN.parquet`` beside (``uid``, ``key``, ``text``,
``noise``): the layout ``probclip curate score`` reads, and the truth of every sample.
"""

from __future__ import annotations

import dataclasses
import hashlib
import io
import json
import tarfile
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from ..data.webdataset import write_tar_member
from ..errors import InputError, UsageError
from ..synthetic.world import (
    COLOURS,
    DEGRADATION_KINDS,
    POSITIONS,
    SHAPES,
    SIZES,
    SyntheticDataset,
    caption_is_true,
    parse_caption,
    render_scene,
    sample_captions,
)

__all__ = ["CLEAN", "DEFAULT_RATES", "NOISE_KINDS", "build_noisy_pool", "read_truth"]

NOISE_KINDS = ("mismatch", "wrong_attribute", "degraded", "vague")
CLEAN = "clean"
DEFAULT_RATES = {"mismatch": 0.1, "wrong_attribute": 0.1, "degraded": 0.1, "vague": 0.1}
CLEAN_LEVELS = (2, 3, 4, 5)
VAGUE_LEVELS = (0, 1)
STRONGEST_DEGRADATION = 4
_VALUES = {"colour": tuple(COLOURS), "shape": SHAPES, "size": SIZES, "position": POSITIONS}
_TRIES = 50


def _uid(seed: int, index: int) -> str:
    return hashlib.md5(f"noisy-pool:{seed}:{index}".encode()).hexdigest()


def _wrong_attribute(scene, caption, rng: np.random.Generator) -> str | None:
    """The caption text with one attribute value replaced so that it is false for ``scene`` (None if none found)."""
    exclusive = caption.text.startswith("only ")
    parts = (caption.text[5:] if exclusive else caption.text).split(" and ")
    for _ in range(_TRIES):
        d = int(rng.integers(len(caption.descriptions)))
        pairs = caption.descriptions[d]
        if not pairs:
            return None
        attribute, value = pairs[int(rng.integers(len(pairs)))]
        others = [v for v in _VALUES[attribute] if v != value]
        new_value = others[int(rng.integers(len(others)))]
        changed = list(parts)
        changed[d] = changed[d].replace(f" {value}", f" {new_value}", 1)
        text = ("only " if exclusive else "") + " and ".join(changed)
        try:
            new = parse_caption(text)
        except ValueError:
            continue
        if not caption_is_true(scene, new):
            return new.text
    return None


def _sample(ds: SyntheticDataset, index: int, kind: str, seed: int) -> tuple:
    """``(PIL image, caption text, scene)`` of pool item ``index`` with noise ``kind``."""
    scene = ds.scene(index)
    rng = np.random.default_rng([seed % 2**63, 7919, index])
    level = int(rng.choice(VAGUE_LEVELS if kind == "vague" else CLEAN_LEVELS))
    caption = sample_captions(scene, rng, [level])[0]
    text = caption.text
    if kind == "mismatch":
        for _ in range(_TRIES):
            other = ds.scene(int(rng.integers(len(ds))))
            candidate = sample_captions(other, rng, [level])[0]
            if not caption_is_true(scene, candidate):
                text = candidate.text
                break
        else:
            raise RuntimeError(f"no false caption found for pool item {index}")
    elif kind == "wrong_attribute":
        for _ in range(_TRIES):
            found = _wrong_attribute(scene, caption, rng)
            if found is not None:
                text = found
                break
            caption = sample_captions(scene, rng, [int(rng.choice(CLEAN_LEVELS))])[0]
        else:
            raise RuntimeError(f"no wrong-attribute caption found for pool item {index}")
    elif kind == "degraded":
        degradation_kind = DEGRADATION_KINDS[index % len(DEGRADATION_KINDS)]
        scene = dataclasses.replace(scene, degradation=STRONGEST_DEGRADATION, degradation_kind=degradation_kind)
    return render_scene(scene), text, scene


def _noise_labels(size: int, rates: dict[str, float], seed: int) -> list[str]:
    unknown = sorted(set(rates) - set(NOISE_KINDS))
    if unknown:
        raise UsageError(f"unknown noise kinds {unknown}; expected some of {list(NOISE_KINDS)}")
    counts = {k: int(round(float(rates.get(k, 0.0)) * size)) for k in NOISE_KINDS}
    if any(not 0 <= float(rates.get(k, 0.0)) <= 1 for k in NOISE_KINDS) or sum(counts.values()) > size:
        raise UsageError(f"noise rates must lie in [0, 1] and sum to at most 1; got {rates}")
    labels = np.array([CLEAN] * size, dtype=object)
    order = np.random.default_rng([seed % 2**63, 104729]).permutation(size)
    start = 0
    for kind in NOISE_KINDS:
        labels[order[start:start + counts[kind]]] = kind
        start += counts[kind]
    return labels.tolist()


def build_noisy_pool(out_dir: str | Path, size: int = 50_000, rates: dict[str, float] | None = None, seed: int = 0,
                     samples_per_shard: int = 5000, progress: Callable[[int, int], None] | None = None) -> dict:
    """Write the noisy pool (module docstring) to ``out_dir``; returns ``{"size", "counts", "shards"}``.

    ``rates``: ``{kind: fraction of the pool}`` (default 10% of each kind). Item i depends only on
    ``(seed, i, its noise kind)``: the same arguments write byte-identical shards.
    """
    if isinstance(size, bool) or not isinstance(size, int) or size < 1:
        raise UsageError(f"pool size must be a positive integer; got {size!r}")
    rates = dict(DEFAULT_RATES if rates is None else rates)
    labels = _noise_labels(size, rates, seed)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    if any(out.glob("*.tar")):
        raise UsageError(f"{str(out)!r} already holds .tar shards; write the pool to an empty folder")
    ds = SyntheticDataset(seed=seed, split="train", size=size)
    shards = []
    for shard, start in enumerate(range(0, size, samples_per_shard)):
        path = out / f"{shard:08d}.tar"
        rows = []
        partial = path.with_suffix(".tar.partial")
        with tarfile.open(partial, "w", format=tarfile.USTAR_FORMAT) as tar:
            for index in range(start, min(size, start + samples_per_shard)):
                image, text, scene = _sample(ds, index, labels[index], seed)
                key = f"{shard:05d}{index - start:04d}" if samples_per_shard <= 10_000 else f"{index:09d}"
                buffer = io.BytesIO()
                image.save(buffer, format="PNG")
                meta = {"uid": _uid(seed, index), "key": key, "caption": text, "noise": labels[index],
                        "scene": scene.to_dict(), "index": index}
                write_tar_member(tar, f"{key}.png", buffer.getvalue())
                write_tar_member(tar, f"{key}.txt", text.encode("utf-8"))
                write_tar_member(tar, f"{key}.json", json.dumps(meta, sort_keys=True).encode("utf-8"))
                rows.append({"uid": meta["uid"], "key": key, "text": text, "noise": labels[index]})
        partial.replace(path)
        pq.write_table(pa.Table.from_pylist(rows), path.with_suffix(".parquet"))
        shards.append(path.name)
        if progress is not None:
            progress(min(size, start + samples_per_shard), size)
    counts = {k: labels.count(k) for k in (CLEAN, *NOISE_KINDS)}
    info = {"size": size, "seed": seed, "rates": rates, "counts": counts, "shards": shards}
    (out / "pool.json").write_text(json.dumps(info, indent=2) + "\n", encoding="utf-8")
    return info


def read_truth(pool_dir: str | Path) -> dict[str, str]:
    """``{uid: noise kind or "clean"}`` from the ``.parquet`` beside each shard of a noisy pool."""
    paths = sorted(Path(pool_dir).glob("*.parquet"))
    if not paths:
        raise InputError(f"{str(pool_dir)!r} holds no .parquet beside its shards; build it with build_noisy_pool")
    truth = {}
    for path in paths:
        table = pq.read_table(path, columns=["uid", "noise"])
        truth.update(zip(table.column("uid").to_pylist(), table.column("noise").to_pylist(), strict=True))
    return truth
