"""The scoring job: one Parquet row of pair scores per sample of a pool of webdataset shards.

``score_pool`` runs the embedding job (:func:`probclip.search.embed_collection`) on the pool into
``DIR/embeddings`` (a collection ``probclip index`` / ``search`` can use too), then scores each sample's image
against its caption (the sample's first caption, the one ``probclip embed`` stores with the image row) and writes
``DIR/scores/part-NNNNN.parquet``, one file per source shard, in shard order. Both steps resume: the embedding job
redoes only its unfinished shards, and a scores part is written to a temporary name and renamed into place, so a
run killed at any moment (kill -9 included) and started again with the same command ends with the files of an
uninterrupted run. Under ``torchrun`` each rank embeds its share of the embedding shards and scores the source
shards ``s % world_size == rank``; rank 0 then writes ``DIR/scores.json``.

Samples that cannot be scored (no image member, an image that cannot be decoded, no caption, a key repeated in a
shard) are skipped, counted and named in ``scores.json`` (``skipped``, ``skipped_samples``).
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import torch
from torch import nn

from ..errors import InputError, UsageError
from ..search.embed import DEFAULT_SHARD_ROWS, embed_collection, load_model
from ..search.layout import StoredRows, write_json_atomic
from ..search.manifest import read_manifest
from ..search.model_id import model_record
from ..search.writer import MAX_NAMED_SKIPS, done_path, save_parquet
from ..textfiles import TextFileError, read_json_file
from ..train.distributed import barrier, init_distributed
from .pair_scores import SCORE_COLUMNS, pair_scores
from .pool import iter_pool_samples, pool_shards, shard_record

__all__ = ["SCORES_FORMAT", "SCORES_MANIFEST", "SCORES_SCHEMA", "read_scores", "read_scores_manifest", "score_pool"]

SCORES_FORMAT = "probclip-curate-scores"
SCORES_MANIFEST = "scores.json"
JOB_NAME = "job.json"
EMBEDDINGS = "embeddings"
PARTS = "scores"
SCORES_SCHEMA = pa.schema([("shard", pa.string()), ("key", pa.string()), ("uid", pa.string()),
                           ("caption", pa.string()), *[(c, pa.float64()) for c in SCORE_COLUMNS]])


def _part_path(out: Path, index: int) -> Path:
    return out / PARTS / f"part-{index:05d}.parquet"


def _skips_path(out: Path, index: int) -> Path:
    return out / PARTS / f"part-{index:05d}.skipped.json"


def _check_job(out: Path, job: dict, record: dict) -> None:
    """Refuse an ``out`` folder that holds another model's scores or another job; record the job otherwise."""
    path = out / JOB_NAME
    if not path.is_file():
        write_json_atomic(path, job)
        return
    try:
        previous = read_json_file(path)
    except TextFileError as err:
        raise InputError(f"{err}: the scoring job record is damaged; delete {str(out)!r} to start again") from err
    if not isinstance(previous, dict):
        raise InputError(f"{path} holds no scoring job record (a JSON object); delete {str(out)!r} to start again")
    if previous.get("model_fingerprint") != job["model_fingerprint"]:
        raise UsageError(f"--out {str(out)!r} holds the scores of another model (fingerprint "
                         f"{previous.get('model_fingerprint')}, {previous.get('model_name')!r}); --model has "
                         f"fingerprint {job['model_fingerprint']} ({record['name']!r}): use another --out, or "
                         "delete the folder")
    if previous != job:
        diff = sorted(k for k in set(job) | set(previous) if job.get(k) != previous.get(k))
        raise UsageError(f"--out {str(out)!r} holds a different scoring job (differs in {diff}); use another --out, "
                         "or delete the folder to start again")


class _EmbeddedPool:
    """The embedded rows of a pool, found by the image's source (``<shard>::<key>``) and the caption text."""

    def __init__(self, root: Path):
        manifest = read_manifest(root)
        self.images = StoredRows(root, manifest, "image")
        self.texts = StoredRows(root, manifest, "text")
        self.image_rows: dict[str, tuple[int, str | None]] = {}
        for k in range(len(self.images.shards)):
            table = self.images.read_metadata(k, columns=["row_id", "source", "caption"])
            for row_id, source, caption in zip(*(table.column(c).to_pylist() for c in ("row_id", "source", "caption")),
                                               strict=True):
                self.image_rows[source] = (row_id, caption)
        self.text_rows: dict[str, int] = {}
        for k in range(len(self.texts.shards)):
            table = self.texts.read_metadata(k, columns=["row_id", "caption"])
            for row_id, caption in zip(table.column("row_id").to_pylist(), table.column("caption").to_pylist(),
                                       strict=True):
                self.text_rows.setdefault(caption, row_id)
        self.image_errors: dict[str, str] = {}  # every skipped image of the embedding job, from its done-records
        for s in range(len(manifest.modalities["image"].shards)):
            done = json.loads(done_path(root, "image", s).read_text(encoding="utf-8"))
            self.image_errors.update((d["source"], d["error"]) for d in done["skipped"])


def _score_shard(pool: _EmbeddedPool, shard: Path, scale: float, bias: float) -> tuple[pa.Table, list[dict]]:
    """The scores table of one source shard and its skipped samples (``{"shard", "key", "reason"}``)."""
    rows: dict[str, list] = {"key": [], "uid": [], "caption": [], "image": [], "text": []}
    skipped, seen = [], set()
    prefix = f"{shard.resolve()}::"
    for sample in iter_pool_samples(shard):
        reason = None
        found = pool.image_rows.get(prefix + sample.key)
        if sample.key in seen:
            reason = "its key is repeated in the shard (the first sample with it is scored)"
        elif not sample.has_image:
            reason = "no image member"
        elif found is None:
            reason = pool.image_errors.get(prefix + sample.key, "its image was not embedded")
        elif not found[1]:
            reason = "no caption"
        seen.add(sample.key)
        if reason is not None:
            skipped.append({"shard": str(shard.resolve()), "key": sample.key, "reason": reason})
            continue
        row_id, caption = found
        for name, value in (("key", sample.key), ("uid", sample.uid), ("caption", caption), ("image", row_id),
                            ("text", pool.text_rows[caption])):
            rows[name].append(value)
    image_ids = np.asarray(rows["image"], dtype=np.int64)
    text_ids = np.asarray(rows["text"], dtype=np.int64)
    if image_ids.size:
        scores = pair_scores(pool.images.means(image_ids), pool.images.logvars(image_ids), pool.images.u[image_ids],
                             pool.texts.means(text_ids), pool.texts.logvars(text_ids), pool.texts.u[text_ids],
                             scale, bias)
    else:
        scores = {c: np.zeros(0) for c in SCORE_COLUMNS}
    table = pa.table({"shard": pa.array([str(shard.resolve())] * image_ids.size, pa.string()),
                      "key": pa.array(rows["key"], pa.string()), "uid": pa.array(rows["uid"], pa.string()),
                      "caption": pa.array(rows["caption"], pa.string()),
                      **{c: pa.array(scores[c], pa.float64()) for c in SCORE_COLUMNS}}, schema=SCORES_SCHEMA)
    return table, skipped


def _logit_parameters(model: nn.Module) -> tuple[float, float]:
    scale = getattr(model, "logit_scale", None)
    bias = getattr(model, "logit_bias", None)
    return (0.0 if scale is None else float(scale.detach().float()),
            0.0 if bias is None else float(bias.detach().float()))


def score_pool(model: nn.Module | str, data: str | Path, out_dir: str | Path, *, batch_size: int = 64,
               num_workers: int | None = None, shard_rows: int = DEFAULT_SHARD_ROWS, dtype: str = "float32",
               progress: bool = True, model_source: str | None = None) -> Path:
    """Score every image-text pair of the pool ``data`` into the scores folder ``out_dir``; returns ``out_dir``.

    Args:
        model: a loaded probclip model, or a checkpoint folder / ``hf-hub:`` id to load.
        data: a webdataset ``.tar`` shard or a folder of them (DataComp's layout included).
        shard_rows, dtype, batch_size, num_workers: passed to the embedding job (``dtype`` of the stored
            embeddings; scores are computed in float64 from them).
    """
    if isinstance(model, (str, Path)):
        model, model_source = load_model(str(model))
    model.eval()
    out = Path(out_dir)
    shards = pool_shards(data)
    dist = init_distributed("cpu" if not torch.cuda.is_available() else "auto")  # as the embedding job does
    record = model_record(model, model_source)
    job = {"data": str(Path(data).resolve()), "model_fingerprint": record["fingerprint"],
           "model_name": record["name"], "shard_rows": shard_rows, "dtype": dtype}
    if dist.is_main:
        if out.exists() and not out.is_dir():
            raise UsageError(f"--out {str(out)!r} is a file; expected a folder for the scores")
        out.mkdir(parents=True, exist_ok=True)
        _check_job(out, job, record)
    barrier()
    if not dist.is_main:
        _check_job(out, job, record)
    if (out / SCORES_MANIFEST).is_file():
        return out  # finished already
    embed_collection(model, data, out / EMBEDDINGS, modality="both", batch_size=batch_size, num_workers=num_workers,
                     shard_rows=shard_rows, dtype=dtype, progress=progress, model_source=model_source)
    scale, bias = _logit_parameters(model)
    pool = _EmbeddedPool(out / EMBEDDINGS)
    for index, shard in enumerate(shards):
        if index % dist.world_size != dist.rank or _part_path(out, index).is_file():
            continue
        table, skipped = _score_shard(pool, shard, scale, bias)
        write_json_atomic(_skips_path(out, index), {"shard": str(shard.resolve()), "skipped": skipped})
        save_parquet(_part_path(out, index), table)
    barrier()
    if dist.is_main:
        _write_manifest(out, shards, record, scale, bias)
    barrier()
    return out


def _write_manifest(out: Path, shards: list[Path], record: dict, scale: float, bias: float) -> dict:
    entries, skipped, scored = [], [], 0
    for index, shard in enumerate(shards):
        rows = pq.read_metadata(_part_path(out, index)).num_rows
        skips = json.loads(_skips_path(out, index).read_text(encoding="utf-8"))["skipped"]
        entries.append({**shard_record(shard), "part": _part_path(out, index).name, "scored": rows,
                        "skipped": len(skips)})
        skipped.extend(skips)
        scored += rows
    manifest = {"format": SCORES_FORMAT, "format_version": 1, "model": record, "columns": list(SCORE_COLUMNS),
                "match_prob": {"logit_scale": scale, "logit_bias": bias}, "embeddings": EMBEDDINGS,
                "samples": scored + len(skipped), "scored": scored, "skipped": len(skipped),
                "skipped_samples": skipped[:MAX_NAMED_SKIPS], "shards": entries}
    write_json_atomic(out / SCORES_MANIFEST, manifest)
    return manifest


def read_scores_manifest(root: str | Path) -> dict:
    """Read and check ``root/scores.json``; ``InputError`` when ``root`` is not a finished scores folder."""
    root = Path(root)
    path = root / SCORES_MANIFEST
    if not root.is_dir():
        raise InputError(f"scores folder {str(root)!r} does not exist; write one with `probclip curate score`")
    if not path.is_file():
        raise InputError(f"{path} not found: {str(root)!r} is not a finished scores folder (run `probclip curate "
                         f"score` with --out {root}, or rerun it to finish an interrupted run)")
    try:
        manifest = read_json_file(path)  # bounded in size and nesting, like every JSON file probclip reads
    except TextFileError as err:
        raise InputError(f"{err}; rerun `probclip curate score`") from err
    if not isinstance(manifest, dict) or manifest.get("format") != SCORES_FORMAT:
        raise InputError(f"{path} is not a probclip scores manifest (expected \"format\": \"{SCORES_FORMAT}\")")
    return manifest


def read_scores(root: str | Path) -> tuple[pa.Table, dict]:
    """Every scored pair of a scores folder as one table (shard order), and its manifest."""
    root = Path(root)
    manifest = read_scores_manifest(root)
    tables = []
    for entry in manifest["shards"]:
        path = root / PARTS / entry["part"]
        try:
            tables.append(pq.read_table(path, schema=SCORES_SCHEMA))
        except (OSError, ValueError) as err:
            raise InputError(f"scores part {path} is missing or corrupt ({err}); rerun `probclip curate "
                             "score`") from err
    return (pa.concat_tables(tables) if tables else SCORES_SCHEMA.empty_table()), manifest
