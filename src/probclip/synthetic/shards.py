"""Writing the synthetic world as webdataset shards in the img2dataset layout.

Each sample ``<key>`` of a shard ``NNNNN.tar`` has ``<key>.png`` (the image), ``<key>.txt`` (its full-scene
caption, as img2dataset stores one caption) and ``<key>.json`` (``{"caption", "captions", "levels", "scene",
"degradation", "index"}``). ``probclip train --data.source webdataset --data.caption_keys '[json]'`` trains on all
caption levels; the default caption keys (``txt`` first) train on the full-scene captions only.
"""

from __future__ import annotations

import io
import json
import tarfile
from collections.abc import Callable
from pathlib import Path

from ..data.webdataset import write_tar_member
from .world import SyntheticDataset

__all__ = ["write_shards"]


def write_shards(dataset: SyntheticDataset, out_dir: str | Path, samples_per_shard: int = 1000,
                 progress: Callable[[int, int], None] | None = None) -> list[Path]:
    """Write every item of ``dataset`` into tar shards ``out_dir/00000.tar, 00001.tar, ...``.

    Args:
        dataset: the items to write (in index order).
        out_dir: created if missing; existing shards with the same names are replaced.
        samples_per_shard: items per shard (the last shard may hold fewer).
        progress: called as ``progress(items_written, total)`` after each shard.

    Returns the shard paths. Keys are ``SSSSSIIII``-style zero-padded: shard number then index within the shard.
    """
    if isinstance(samples_per_shard, bool) or not isinstance(samples_per_shard, int) or samples_per_shard < 1:
        raise ValueError(f"samples_per_shard must be a positive integer; got {samples_per_shard!r}")
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    total = len(dataset)
    width = max(4, len(str(samples_per_shard - 1)))
    paths = []
    for shard, start in enumerate(range(0, total, samples_per_shard)):
        path = out / f"{shard:05d}.tar"
        partial = path.with_suffix(".tar.partial")
        with tarfile.open(partial, "w", format=tarfile.USTAR_FORMAT) as tar:
            for offset, index in enumerate(range(start, min(start + samples_per_shard, total))):
                item = dataset[index]
                key = f"{shard:05d}{offset:0{width}d}"
                buffer = io.BytesIO()
                item["image"].save(buffer, format="PNG")
                meta = {
                    "caption": item["captions"][-1],
                    "captions": item["captions"],
                    "levels": item["levels"],
                    "scene": item["scene"],
                    "degradation": item["degradation"],
                    "index": index,
                    "split": dataset.split,
                }
                write_tar_member(tar, f"{key}.png", buffer.getvalue())
                write_tar_member(tar, f"{key}.txt", _full_scene_caption(item).encode("utf-8"))
                write_tar_member(tar, f"{key}.json", json.dumps(meta, sort_keys=True).encode("utf-8"))
        partial.replace(path)
        paths.append(path)
        if progress is not None:
            progress(min(start + samples_per_shard, total), total)
    return paths


def _full_scene_caption(item: dict) -> str:
    """The most specific caption of an item (highest level)."""
    best = max(range(len(item["levels"])), key=lambda i: item["levels"][i])
    return item["captions"][best]
