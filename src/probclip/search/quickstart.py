"""``prepare_quickstart_collection``: the synthetic world's test split, embedded and indexed with a quickstart model.

The only module of the search package that imports the synthetic world.
"""

from __future__ import annotations

import csv
import json
from pathlib import Path

from ..errors import InputError
from ..synthetic.evaluation import draw_scenes
from ..synthetic.world import render_scene
from .collection_head import carry_head, model_head_file
from .embed import embed_collection
from .index import build_index
from .job import finished_job, unfinished_job
from .layout import MANIFEST_NAME
from .manifest import read_manifest
from .model_id import model_fingerprint
from .model_loading import load_model

__all__ = ["QUICKSTART_SCENES", "prepare_quickstart_collection", "write_synthetic_test_split"]

#: Test scenes of the synthetic world put in the quickstart collection (the quickstart evaluates on the same 500).
QUICKSTART_SCENES = 500


def write_synthetic_test_split(out_dir: str | Path, seed: int = 0, num_scenes: int = QUICKSTART_SCENES) -> Path:
    """Write the synthetic world's held-out test scenes as PNG files and ``captions.csv`` (image, caption, level).

    Every scene is listed with the captions drawn for it, one per level from full scene (5) to general (0).
    Returns the CSV path. Idempotent: an existing ``captions.csv`` is kept.
    """
    out = Path(out_dir)
    table = out / "captions.csv"
    if table.is_file():
        return table
    (out / "images").mkdir(parents=True, exist_ok=True)
    scenes, drawn = draw_scenes(seed, num_scenes)
    rows = []
    for i, (scene, captions) in enumerate(zip(scenes, drawn, strict=True)):
        name = f"images/test_{i:05d}.png"
        render_scene(scene).save(out / name)
        # the full-scene caption first: it becomes the image row's caption
        for caption in sorted(captions, key=lambda c: -c.level):
            rows.append((name, caption.text, caption.level))
    tmp = table.with_name(table.name + ".tmp")
    with open(tmp, "w", newline="", encoding="utf-8") as handle:
        writer = csv.writer(handle)
        writer.writerow(["image", "caption", "level"])
        writer.writerows(rows)
    tmp.replace(table)
    return table


def _quickstart_seed(quickstart_dir: Path) -> int:
    metrics = quickstart_dir / "metrics.json"
    if metrics.is_file():
        return int(json.loads(metrics.read_text(encoding="utf-8")).get("config", {}).get("seed", 0))
    return 0


def prepare_quickstart_collection(quickstart_dir: str | Path, *, progress: bool = True) -> Path:
    """Make ``quickstart_dir/collection`` searchable; returns that folder. Idempotent.

    Given the folder ``probclip quickstart --out DIR`` wrote (``DIR/model`` holds the trained model), writes the
    synthetic world's test split to ``DIR/search-data`` (the quickstart's seed), embeds it with ``DIR/model`` and
    builds flat indexes for images and captions; each step is skipped when already done. A collection embedded with
    an earlier quickstart model (the quickstart was run again) is embedded again; one embedded with the same model
    gets the model folder's current hierarchy head (``model/hierarchy_head.safetensors``).
    """
    root = Path(quickstart_dir)
    model_dir = root / "model"
    if not (model_dir / "config.json").is_file():
        raise InputError(f"{str(root)!r} holds no quickstart model ({model_dir}/config.json is missing); run "
                         f"`probclip quickstart --out {root}` first")
    collection = root / "collection"
    model, source = load_model(str(model_dir))
    fingerprint = model_fingerprint(model)
    if (collection / MANIFEST_NAME).is_file():
        manifest = read_manifest(collection)
        rows = manifest.rows()
        if (rows and all(m in manifest.indexes and manifest.indexes[m].rows == n for m, n in rows.items())
                and manifest.model.fingerprint == fingerprint):
            # the model is the same; its hierarchy head may have been fitted (again) since: bring it up to date
            carry_head(collection, model_head_file(str(model_dir), int(model.config.embed_dim)))
            return collection
    data = write_synthetic_test_split(root / "search-data", seed=_quickstart_seed(root))
    # derived from the quickstart folder alone: a collection (or unfinished run) of an earlier quickstart model is
    # replaced, not refused
    recorded = finished_job(collection) or unfinished_job(collection)
    stale = recorded is not None and recorded.model_fingerprint not in (None, fingerprint)
    embed_collection(model, data, collection, num_workers=0, batch_size=100, progress=progress, model_source=source,
                     overwrite=stale)
    build_index(collection, kind="flat", progress=progress)
    return collection
