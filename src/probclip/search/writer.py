"""Writing a collection: shard files (written to temporary names, then renamed), per-shard done-records, the manifest.

``write_shard`` writes one shard of one modality and then its done-record (``.progress/<modality>_<s>.json``, naming
the skipped inputs); ``merge_manifest`` turns the done-records into ``manifest.json``, fixing row ids after skipped
rows and recording each shard file's fingerprint. ``write_collection`` writes ready-made embeddings (e.g. computed
elsewhere) as a collection.
"""

from __future__ import annotations

import json
import math
import os
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from ..errors import InputError, UsageError
from .layout import emb_path, file_fingerprint, logvar_path, metadata_path, shard_files, write_json_atomic
from .manifest import FORMAT, FORMAT_VERSION, JobRecord, write_manifest

__all__ = ["MAX_NAMED_SKIPS", "METADATA_SCHEMA", "PROGRESS_DIR", "done_path", "merge_manifest", "save_npy",
           "save_parquet", "shard_done", "shard_ranges", "write_collection", "write_shard"]

#: Skipped inputs named in the manifest per modality (all of them are counted).
MAX_NAMED_SKIPS = 1000
PROGRESS_DIR = ".progress"
METADATA_SCHEMA = pa.schema([("row_id", pa.int64()), ("source", pa.string()), ("caption", pa.string()),
                             ("u", pa.float32()), ("offset", pa.int64()), ("size", pa.int64())])


def shard_ranges(n: int, shard_rows: int) -> list[tuple[int, int]]:
    return [(s * shard_rows, min(n, (s + 1) * shard_rows)) for s in range(math.ceil(n / shard_rows))]


def done_path(out: Path, modality: str, shard: int) -> Path:
    return out / PROGRESS_DIR / f"{modality}_{shard}.json"


def shard_done(out: Path, modality: str, shard: int) -> bool:
    return (done_path(out, modality, shard).is_file() and emb_path(out, modality, shard).is_file()
            and logvar_path(out, modality, shard).is_file() and metadata_path(out, modality, shard).is_file())


def save_npy(path: Path, array: np.ndarray) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    with open(tmp, "wb") as handle:
        np.save(handle, array)
    os.replace(tmp, path)


def save_parquet(path: Path, table: pa.Table) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    pq.write_table(table, tmp)
    os.replace(tmp, path)


def write_shard(out: Path, modality: str, shard: int, first_row: int, mean: np.ndarray, logvar: np.ndarray,
                 ok: np.ndarray, sources: list[str], captions: list[str | None], offsets: list[int],
                 sizes: list[int], errors: list[str], dtype: str) -> None:
    """Write one shard's kept rows (``ok``), then its done-record naming the skipped ones."""
    keep = np.nonzero(ok)[0]
    mean, logvar = mean[keep], logvar[keep]
    u = np.exp(logvar.astype(np.float64)).sum(-1).astype(np.float32)
    save_npy(emb_path(out, modality, shard), mean.astype(dtype))
    save_npy(logvar_path(out, modality, shard), logvar.astype(dtype))
    table = pa.table({
        "row_id": pa.array(first_row + np.arange(keep.size, dtype=np.int64)),
        "source": pa.array([sources[i] for i in keep], pa.string()),
        "caption": pa.array([captions[i] for i in keep], pa.string()),
        "u": pa.array(u),
        "offset": pa.array([offsets[i] for i in keep], pa.int64()),
        "size": pa.array([sizes[i] for i in keep], pa.int64()),
    }, schema=METADATA_SCHEMA)
    save_parquet(metadata_path(out, modality, shard), table)
    skipped = [{"source": sources[i], "error": errors[i]} for i in np.nonzero(~ok)[0]]
    write_json_atomic(done_path(out, modality, shard), {"rows": int(keep.size), "skipped": skipped})


def _read_done(out: Path, modality: str, shard: int) -> tuple[dict, pa.Table]:
    """A finished shard's done-record and metadata table; ``InputError`` naming the file when either is damaged."""
    path, meta = done_path(out, modality, shard), metadata_path(out, modality, shard)
    redo = f"delete {path} and rerun the same command to embed that shard again"
    try:
        done = json.loads(path.read_text(encoding="utf-8"))
        rows, skipped = int(done["rows"]), list(done["skipped"])
    except (ValueError, KeyError, TypeError, RecursionError) as err:
        raise InputError(f"{path} is not a valid shard record ({type(err).__name__}: {err}); {redo}") from err
    try:
        table = pq.read_table(meta)
    except (OSError, ValueError) as err:
        raise InputError(f"metadata shard {meta} is truncated or corrupt ({str(err).splitlines()[0][:200]}); "
                         f"{redo}") from err
    if table.num_rows != rows or table.schema.names != METADATA_SCHEMA.names:
        raise InputError(f"metadata shard {meta} holds {table.num_rows} rows ({table.schema.names}), its record "
                         f"{rows} ({METADATA_SCHEMA.names}); {redo}")
    return {"rows": rows, "skipped": skipped}, table


def merge_manifest(out: Path, job: JobRecord, record: dict, counts: dict[str, int], shard_rows: int) -> dict:
    """Rank 0: read every shard's done-record, fix row ids after skipped rows, write ``manifest.json`` (the inputs'
    fingerprint is the job's ``inputs_fingerprint``; the count of inputs listed, each modality's ``inputs``; each
    shard record the :func:`~probclip.search.layout.file_fingerprint` of its means, log-variances and metadata, taken
    once they are final)."""
    modalities = {}
    for modality, n in counts.items():
        shards, skipped, first_row = [], [], 0
        for s, _ in enumerate(shard_ranges(n, shard_rows)):
            path = done_path(out, modality, s)
            if not shard_done(out, modality, s):
                raise InputError(f"{modality} shard {s} of {out} is not finished ({path} missing); "
                                 "rerun the same command to finish it")
            done, table = _read_done(out, modality, s)
            meta = metadata_path(out, modality, s)
            if table.num_rows and table.column("row_id")[0].as_py() != first_row:
                ids = pa.array(first_row + np.arange(table.num_rows, dtype=np.int64))
                save_parquet(meta, table.set_column(0, "row_id", ids))
            fingerprints = {name: file_fingerprint(file) for name, file in shard_files(out, modality, s).items()}
            shards.append({"index": s, "first_row": first_row, "rows": int(done["rows"]), "fingerprints": fingerprints})
            skipped.extend(done["skipped"])
            first_row += int(done["rows"])
        modalities[modality] = {"rows": first_row, "inputs": n, "shards": shards, "skipped": len(skipped),
                                "skipped_inputs": skipped[:MAX_NAMED_SKIPS]}
    manifest = {"format": FORMAT, "format_version": FORMAT_VERSION, "model": record, "dtype": job.dtype,
                "shard_rows": shard_rows, "job": job.to_dict(), "modalities": modalities, "indexes": {}}
    write_manifest(out, manifest)
    return manifest



def write_collection(out_dir: str | Path, embeddings: dict, *, model: dict, dtype: str = "float16",
                     shard_rows: int = 50_000, captions: dict | None = None, sources: dict | None = None) -> Path:
    """Write ready-made embeddings as a collection (shards, metadata, manifest); returns ``out_dir``.

    Args:
        embeddings: ``{"image" | "text": (mean, logvar)}``, float32 arrays ``[n, D]``.
        model: the manifest's model record (``name``, ``config_hash``, ``fingerprint``, ``embed_dim``, ``source``).
        captions / sources: optional ``{modality: list of str}`` metadata per row.
    """
    if dtype not in ("float16", "float32"):
        raise UsageError(f"dtype must be float16 or float32; got {dtype!r}")
    out = Path(out_dir)
    counts = {}
    for modality, (mean, logvar) in embeddings.items():
        n = mean.shape[0]
        counts[modality] = n
        caps = (captions or {}).get(modality) or [None] * n
        srcs = (sources or {}).get(modality) or [""] * n
        for s, (start, stop) in enumerate(shard_ranges(n, shard_rows)):
            write_shard(out, modality, s, start, np.asarray(mean[start:stop], np.float32),
                        np.asarray(logvar[start:stop], np.float32), np.ones(stop - start, bool), srcs[start:stop],
                        caps[start:stop], [-1] * (stop - start), [-1] * (stop - start), [""] * (stop - start), dtype)
    job = JobRecord(data=None, modality="+".join(embeddings), shard_rows=shard_rows, dtype=dtype,
                    model_fingerprint=model["fingerprint"], counts=counts)
    merge_manifest(out, job, model, counts, shard_rows)
    return out
