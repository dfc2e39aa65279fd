"""Filtering a scored pool: apply rules, write the kept subset (DataComp's uid ``.npy``, a key list, a table) and,
on request, new webdataset shards of the kept samples.

The subset folder holds ``keys.txt`` (one key a line, pool order), ``uids.npy`` (when the kept samples have uids:
DataComp's subset format, a sorted structured array of dtype ``u8,u8`` holding each 128-bit uid as (high, low)
64-bit halves, what DataComp's ``resharder.py --subset-file`` reads), ``subset.parquet`` (the kept rows of the
scores) and ``filter.json`` (the rules and the counts each removed). Source shards are only read.
"""

from __future__ import annotations

import tarfile
import warnings
from pathlib import Path

import numpy as np
import pyarrow as pa

from ..data.webdataset import iter_tar_records, write_tar_member
from ..errors import InputError, UsageError
from ..search.embed import load_model
from ..search.layout import write_json_atomic
from ..search.model_id import model_fingerprint
from ..search.writer import save_parquet
from .pair_scores import SCORE_COLUMNS
from .pool import check_unchanged
from .rules import Rule, apply_rules, parse_rule
from .score import read_scores

__all__ = ["FORMATS", "SUBSET_FILES", "filter_pool", "reshard", "uids_to_datacomp"]

FORMATS = ("auto", "datacomp", "keys")
SUBSET_FILES = ("keys.txt", "uids.npy", "subset.parquet", "filter.json")
DATACOMP_UID = np.dtype("u8,u8")


def uids_to_datacomp(uids: list[str]) -> np.ndarray:
    """DataComp's subset array: each hex uid (at most 32 digits) as ``(high 64 bits, low 64 bits)``, sorted."""
    pairs = []
    for uid in uids:
        try:
            value = int(uid, 16)
        except (TypeError, ValueError):
            value = -1
        if not isinstance(uid, str) or len(uid) > 32 or value < 0:
            raise InputError(f"uid {uid!r} is not a 128-bit hexadecimal number (DataComp's uid format: 32 hex digits)")
        pairs.append(divmod(value, 2**64))
    array = np.array(pairs, dtype=DATACOMP_UID) if pairs else np.zeros(0, dtype=DATACOMP_UID)
    array.sort()
    return array


def _prepare_folder(path: Path, overwrite: bool, option: str, owned: tuple[str, ...] | None) -> None:
    """Create ``path``; refuse one that holds files unless ``overwrite`` (then remove what this command writes)."""
    if path.exists() and not path.is_dir():
        raise UsageError(f"{option} {str(path)!r} is a file; expected a folder")
    existing = sorted(p.name for p in path.iterdir()) if path.is_dir() else []
    if existing and not overwrite:
        raise UsageError(f"{option} {str(path)!r} already holds files ({', '.join(existing[:3])}"
                         f"{', ...' if len(existing) > 3 else ''}); pass --overwrite to replace them, or use another "
                         "folder")
    path.mkdir(parents=True, exist_ok=True)
    for name in existing:
        target = path / name
        if target.is_file() and (owned is None and name.endswith((".tar", ".parquet")) or name in (owned or ())):
            target.unlink()


def _check_model(manifest: dict, model) -> None:
    if model is None:
        return
    loaded = load_model(str(model))[0] if isinstance(model, (str, Path)) else model
    theirs = manifest["model"]["fingerprint"]
    ours = model_fingerprint(loaded)
    if ours != theirs:
        raise UsageError(f"the scores were made by another model: fingerprint {theirs} "
                         f"({manifest['model']['name']!r}); --model has fingerprint {ours}")


def filter_pool(scores_dir: str | Path, out_dir: str | Path, rules: list[str | Rule], *, fmt: str = "auto",
                reshard_dir: str | Path | None = None, shard_size: int = 10_000, overwrite: bool = False,
                model=None) -> dict:
    """Apply ``rules`` (in order) to the scores in ``scores_dir``; write the subset to ``out_dir``.

    Returns the ``filter.json`` record: ``pool``, ``kept``, per-rule counts (``removed`` from the pairs still kept,
    ``rejects`` of the whole pool, ``kept`` after it), the files written.
    Raises ``InputError`` (exit status 1) when the rules keep nothing.
    """
    if fmt not in FORMATS:
        raise UsageError(f"--format must be one of {list(FORMATS)}; got {fmt!r}")
    if isinstance(shard_size, bool) or not isinstance(shard_size, int) or shard_size < 1:
        raise UsageError(f"--shard-size must be a positive integer; got {shard_size!r}")
    parsed = [r if isinstance(r, Rule) else parse_rule(r) for r in rules]
    if not parsed:
        raise UsageError("give at least one --rule, e.g. --rule 'top 30% cosine'")
    table, manifest = read_scores(scores_dir)
    _check_model(manifest, model)
    out = Path(out_dir)
    sources = [Path(s["path"]).resolve() for s in manifest["shards"]]
    if reshard_dir is not None and Path(reshard_dir).resolve() in {s.parent for s in sources}:
        raise UsageError(f"--reshard {str(reshard_dir)!r} is the folder of the source shards; the sources are never "
                         "modified: write the new shards to another folder")
    columns = {c: table.column(c).to_numpy(zero_copy_only=False).astype(np.float64) for c in SCORE_COLUMNS}
    kept, counts = apply_rules(parsed, columns)
    if not kept.any():
        emptied = next((c for c in counts if c["kept"] == 0), counts[-1])
        raise InputError(f"the rules keep nothing of the {table.num_rows} scored pairs: rule {emptied['rule']!r} "
                         f"removed the last {emptied['removed']}; loosen it")
    subset = table.filter(pa.array(kept))
    uids = subset.column("uid").to_pylist()
    missing = [i for i, u in enumerate(uids) if u is None]
    if fmt == "datacomp" and missing:
        first = subset.slice(missing[0], 1).to_pylist()[0]
        raise InputError(f"the pool has no uid for {len(missing)} of the {len(uids)} kept samples (e.g. "
                         f"{Path(first['shard']).name}:{first['key']}); DataComp's .npy needs one per sample (a 'uid' "
                         "in each .json member or the .parquet beside each shard): use --format keys")
    _prepare_folder(out, overwrite, "--out", SUBSET_FILES)
    written = ["keys.txt", "subset.parquet"]
    keys = subset.column("key").to_pylist()
    (out / "keys.txt").write_text("".join(f"{k}\n" for k in keys), encoding="utf-8")
    save_parquet(out / "subset.parquet", subset)
    if fmt != "keys" and not missing:
        with open(out / "uids.npy", "wb") as handle:
            np.save(handle, uids_to_datacomp(uids))
        written.append("uids.npy")
    record = {"scores": str(Path(scores_dir).resolve()), "model": manifest["model"], "pool": table.num_rows,
              "kept": int(kept.sum()), "kept_fraction": float(kept.mean()) if kept.size else 0.0, "rules": counts,
              "files": written}
    if reshard_dir is not None:
        record["reshard"] = reshard(subset, manifest, reshard_dir, shard_size=shard_size, overwrite=overwrite)
    write_json_atomic(out / "filter.json", record)
    return record


def reshard(subset: pa.Table, manifest: dict, out_dir: str | Path, *, shard_size: int = 10_000,
            overwrite: bool = False) -> dict:
    """Write the samples of ``subset`` (rows of a scores table) as new shards ``out_dir/00000.tar, ...`` of at most
    ``shard_size`` samples, every member copied byte for byte, with a ``.parquet`` beside each (``key``, ``uid``,
    ``caption``: DataComp's layout). Returns ``{"folder", "shards", "samples"}``."""
    out = Path(out_dir)
    wanted: dict[str, dict[str, int]] = {}
    owner: dict[str, str] = {}
    for position, (shard, key) in enumerate(zip(subset.column("shard").to_pylist(), subset.column("key").to_pylist(),
                                                strict=True)):
        if key in owner and owner[key] != shard:
            raise InputError(f"key {key!r} is in two source shards ({owner[key]} and {shard}); new shards need "
                             "distinct keys")
        owner[key] = shard
        wanted.setdefault(shard, {})[key] = position
    recorded = {s["path"]: s for s in manifest["shards"]}
    _prepare_folder(out, overwrite, "--reshard", None)
    uids, captions = subset.column("uid").to_pylist(), subset.column("caption").to_pylist()
    written, rows, tar, count = [], [], None, 0

    def close() -> None:
        nonlocal tar
        if tar is None:
            return
        tar.close()
        path = out / f"{len(written):05d}.tar"
        path.with_suffix(".tar.partial").replace(path)
        save_parquet(path.with_suffix(".parquet"), pa.table({"key": [r[0] for r in rows], "uid": [r[1] for r in rows],
                                                             "caption": [r[2] for r in rows]},
                                                            schema=pa.schema([("key", pa.string()),
                                                                              ("uid", pa.string()),
                                                                              ("caption", pa.string())])))
        written.append(path.name)
        rows.clear()
        tar = None

    for shard, keys in wanted.items():
        path = check_unchanged(recorded[shard])
        for record in iter_tar_records(str(path)):
            position = keys.get(record["__key__"])
            if position is None:
                continue
            for message in record.get("__too_large__", []):
                warnings.warn(f"{message}; not copied to the new shard", RuntimeWarning, stacklevel=2)
            if tar is None:
                partial = out / f"{len(written):05d}.tar.partial"
                tar = tarfile.open(partial, "w", format=tarfile.USTAR_FORMAT)
            for extension, payload in record.items():
                if not extension.startswith("__"):
                    write_tar_member(tar, f"{record['__key__']}.{extension}", payload)
            rows.append((record["__key__"], uids[position], captions[position]))
            count += 1
            del keys[record["__key__"]]  # a key repeated in the shard: its first sample only, as it was scored
            if len(rows) == shard_size:
                close()
    close()
    if count != subset.num_rows:
        raise InputError(f"{subset.num_rows - count} kept samples were not found in their source shards; score the "
                         "pool again")
    return {"folder": str(out.resolve()), "shards": len(written), "samples": count, "files": written}
