"""``probclip curate demo``: filtering with uncertainty against CLIP-score filtering where the noise is known.

1. Build a noisy pool of the synthetic world (:mod:`probclip.curate.noisy_pool`: 10% each of mismatched captions,
   one wrong attribute word, strongly degraded images and vague captions by default).
2. Score it with a ProLIP model and with its SigLIP baseline (a quickstart folder's ``model/`` and
   ``runs/siglip`` checkpoint; ``--quickstart``, or a quickstart trained here).
3. Apply every filter of :func:`standard_filters` at the same kept fraction and measure, per noise kind, the
   precision (share of the removed pairs that are of that kind) and recall (share of that kind removed):
   ``noise_table.md`` / ``demo.json``.
4. Optionally (``--train-steps``), train the quickstart's ProLIP recipe on the subsets of some filters for the same
   number of steps and seeds, and evaluate each model on the held-out test split: ``downstream.md``.
"""

from __future__ import annotations

import json
import math
import statistics
import time
from pathlib import Path

import numpy as np
import pyarrow as pa

from ..errors import InputError, UsageError
from ..quickstart import BATCH_SIZE, EVAL_DEGRADATION_KIND, quickstart_config, run_quickstart, steps_for_budget
from ..search.layout import write_json_atomic
from ..synthetic import build_evaluation_set, evaluate_synthetic
from ..tokenizers import get_tokenizer
from ..train import train
from ..train.checkpoint import latest_checkpoint
from ..train.config import TrainConfig
from ..transforms import image_transform
from .noisy_pool import CLEAN, NOISE_KINDS, build_noisy_pool, read_truth
from .rules import apply_rules, parse_rule
from .score import read_scores, score_pool
from .subset import reshard

__all__ = ["DOWNSTREAM_FILTERS", "noise_table", "quickstart_models", "run_demo", "standard_filters",
           "train_on_subset"]

#: The filters trained on downstream by default (names of :func:`standard_filters`).
DOWNSTREAM_FILTERS = ("cosine (SigLIP)", "cosine (ProLIP means)", "uncertainty + CSD")


def standard_filters(kept: float) -> list[dict]:
    """The compared filters at kept fraction ``kept``: ``{"name", "model" ("prolip" / "siglip"), "rules"}``.

    Every filter keeps exactly ``kept`` of the pool: its last rule is a ranking, the rules before it remove the most
    uncertain images / captions first (at the pool's 90th percentile unless named otherwise).
    """
    pct = f"{100 * kept:g}%"
    return [
        {"name": "cosine (SigLIP)", "model": "siglip", "rules": [f"top {pct} cosine"]},
        {"name": "cosine (ProLIP means)", "model": "prolip", "rules": [f"top {pct} cosine"]},
        {"name": "CSD", "model": "prolip", "rules": [f"bottom {pct} csd"]},
        {"name": "match probability", "model": "prolip", "rules": [f"top {pct} match_prob"]},
        {"name": "uncertainty only", "model": "prolip", "rules": ["image_u <= q90", f"bottom {pct} text_u"]},
        {"name": "uncertainty + cosine", "model": "prolip",
         "rules": ["image_u <= q90", "text_u <= q90", f"top {pct} cosine"]},
        {"name": "uncertainty + CSD", "model": "prolip",
         "rules": ["image_u <= q90", "text_u <= q90", f"bottom {pct} csd"]},
        {"name": "uncertainty (q80) + CSD", "model": "prolip",
         "rules": ["image_u <= q80", "text_u <= q80", f"bottom {pct} csd"]},
        {"name": "uncertainty (q95) + CSD", "model": "prolip",
         "rules": ["image_u <= q95", "text_u <= q95", f"bottom {pct} csd"]},
        {"name": "uncertainty + SigLIP cosine", "model": "siglip+prolip",
         "rules": ["image_u <= q90", "text_u <= q90", f"top {pct} siglip_cosine"]},
    ]


def noise_table(labels: list[str], kept: np.ndarray) -> dict:
    """Per noise kind (and ``any`` noise): ``{"precision", "recall", "removed"}`` of the removed pairs.

    ``labels``: each pair's kind (``clean`` or a noise kind); ``kept``: bool ``[n]``, the pairs the filter keeps.
    """
    labels_arr = np.asarray(labels, dtype=object)
    removed = ~np.asarray(kept, dtype=bool)
    out = {"kept_fraction": float(np.mean(~removed)), "removed": int(removed.sum())}
    for kind in (*NOISE_KINDS, "any"):
        is_kind = labels_arr != CLEAN if kind == "any" else labels_arr == kind
        hit = int((removed & is_kind).sum())
        out[kind] = {"precision": hit / max(1, int(removed.sum())), "recall": hit / max(1, int(is_kind.sum())),
                     "removed": hit, "total": int(is_kind.sum())}
    return out


def quickstart_models(folder: str | Path) -> dict[str, Path]:
    """``{"prolip": folder/model, "siglip": the final checkpoint of folder/runs/siglip}`` of a quickstart folder."""
    folder = Path(folder)
    prolip = folder / "model"
    siglip = latest_checkpoint(folder / "runs" / "siglip") if (folder / "runs" / "siglip").is_dir() else None
    if not (prolip / "config.json").is_file() or siglip is None:
        raise InputError(f"{str(folder)!r} is not a finished quickstart folder (expected model/ and a checkpoint "
                         "under runs/siglip/); run `probclip quickstart --out` it first")
    return {"prolip": prolip, "siglip": siglip}


def _columns(tables: dict[str, pa.Table], model: str) -> dict[str, np.ndarray]:
    """The score columns a filter reads: the ProLIP (or SigLIP) scores, plus ``siglip_cosine`` for mixed filters."""
    base = tables["siglip" if model == "siglip" else "prolip"]
    columns = {c: base.column(c).to_numpy(zero_copy_only=False).astype(np.float64) for c in base.column_names
               if c not in ("shard", "key", "uid", "caption")}
    if model == "siglip+prolip":
        columns["siglip_cosine"] = tables["siglip"].column("cosine").to_numpy(zero_copy_only=False).astype(np.float64)
    return columns


def _apply(filt: dict, tables: dict[str, pa.Table]) -> np.ndarray:
    columns = _columns(tables, filt["model"])
    rules = [parse_rule(r, columns=tuple(columns)) for r in filt["rules"]]
    return apply_rules(rules, columns)[0]


def _fmt_row(name: str, table: dict) -> str:
    cells = [f"{table[k]['precision']:.2f} / {table[k]['recall']:.2f}" for k in (*NOISE_KINDS, "any")]
    return f"| {name} | " + " | ".join(cells) + " |"


def noise_markdown(rows: list[dict], kept: float, pool: dict) -> str:
    header = ("| filter | " + " | ".join(NOISE_KINDS) + " | any noise |\n|---|" + "---|" * (len(NOISE_KINDS) + 1))
    best = max(rows, key=lambda r: r["table"]["any"]["recall"])
    counts = ", ".join(f"{k} {v}" for k, v in pool["counts"].items())
    lines = [f"Kept fraction {kept:g} of {pool['size']} pairs ({counts}); each cell: precision / recall of "
             "removing that kind.", "", header]
    lines += [_fmt_row(r["name"] + (" **(best)**" if r is best else ""), r["table"]) for r in rows]
    return "\n".join(lines) + "\n"


def train_on_subset(shards: Path, steps: int, seed: int, out: Path, threads: int = 1) -> dict:
    """Train the quickstart's ProLIP recipe for ``steps`` steps on the webdataset ``shards`` folder and evaluate it
    on the held-out test split of world seed 0; returns the flat metrics."""
    config = quickstart_config("prolip", steps, seed, out, threads).to_dict()
    config["data"] = {**config["data"], "source": "webdataset", "paths": [str(p) for p in sorted(shards.glob("*.tar"))],
                      "caption_keys": ["txt"], "shuffle_buffer": 1000, "num_workers": 1}
    config["data"].pop("synthetic", None)
    result = train(TrainConfig.from_dict(config))
    model = result.model.eval()
    eval_set = build_evaluation_set(0, degradation_kind=EVAL_DEGRADATION_KIND)
    metrics, _ = evaluate_synthetic(model, eval_set, get_tokenizer(model), image_transform(model.config.vision))
    return {k: float(v) for k, v in metrics.items()}


def run_demo(out_dir: str | Path, *, pool_size: int = 50_000, kept: float = 0.6,
             quickstart: str | Path | None = None, minutes: float = 8.0, train_steps: int = 0, seeds: int = 3,
             downstream: tuple[str, ...] = DOWNSTREAM_FILTERS, seed: int = 0, threads: int = 1,
             batch_size: int = 128, num_workers: int = 1, log=print) -> dict:
    """Run the demo (module docstring) into ``out_dir``; returns the ``demo.json`` record."""
    if not 0 < kept < 1:
        raise UsageError(f"--kept must lie in (0, 1); got {kept!r}")
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    started = time.perf_counter()
    timings = {}
    pool_dir = out / "pool"
    if (pool_dir / "pool.json").is_file():
        pool = json.loads((pool_dir / "pool.json").read_text(encoding="utf-8"))
        if (pool["size"], pool["seed"]) != (pool_size, seed):
            raise UsageError(f"{pool_dir} holds a pool of {pool['size']} pairs (seed {pool['seed']}); use another "
                             "--out")
    else:
        log(f"building a noisy pool of {pool_size} pairs")
        pool = build_noisy_pool(pool_dir, size=pool_size, seed=seed)
    timings["pool_seconds"] = time.perf_counter() - started
    if quickstart is None:
        quickstart = out / "quickstart"
        if not (quickstart / "model").is_dir():
            log(f"training a quickstart ({minutes:g} minutes) into {quickstart}")
            run_quickstart(quickstart, steps_for_budget(minutes), seed, threads)
    models = quickstart_models(quickstart)
    tables, manifests = {}, {}
    for name, model in models.items():
        tick = time.perf_counter()
        log(f"scoring the pool with the {name} model")
        scores = score_pool(str(model), pool_dir, out / f"scores-{name}", batch_size=batch_size,
                            num_workers=num_workers, progress=False)
        tables[name], manifests[name] = read_scores(scores)
        timings[f"score_{name}_seconds"] = time.perf_counter() - tick
    keys = [tables[n].column("uid").to_pylist() for n in tables]
    if keys[0] != keys[1]:
        raise InputError("the two scores folders hold different pairs; delete them and run again")
    truth = read_truth(pool_dir)
    labels = [truth[u] for u in keys[0]]
    rows = []
    for filt in standard_filters(kept):
        rows.append({**filt, "table": noise_table(labels, _apply(filt, tables))})
    (out / "noise_table.md").write_text(noise_markdown(rows, kept, pool), encoding="utf-8")
    log((out / "noise_table.md").read_text(encoding="utf-8"))
    record = {"pool": pool, "kept": kept, "models": {k: str(v) for k, v in models.items()}, "filters": rows,
              "timings": timings}
    if train_steps:
        record["downstream"] = _downstream(out, rows, tables, manifests, downstream, train_steps, seeds, threads, log)
        (out / "downstream.md").write_text(downstream_markdown(record["downstream"], train_steps, kept),
                                           encoding="utf-8")
        log((out / "downstream.md").read_text(encoding="utf-8"))
    timings["total_seconds"] = time.perf_counter() - started
    write_json_atomic(out / "demo.json", record)
    return record


def _downstream(out: Path, rows: list[dict], tables: dict, manifests: dict, names, steps: int, seeds: int,
                threads: int, log) -> dict:
    by_name = {r["name"]: r for r in rows}
    unknown = [n for n in names if n not in by_name]
    if unknown:
        raise UsageError(f"unknown filters {unknown}; expected some of {list(by_name)}")
    results = {}
    for name in names:
        kept = _apply(by_name[name], tables)
        subset = out / "subsets" / _slug(name)
        reshard(tables["prolip"].filter(pa.array(kept)), manifests["prolip"], subset / "shards", shard_size=5000,
                overwrite=True)
        runs = []
        for s in range(seeds):
            tick = time.perf_counter()
            log(f"training on the subset of {name!r} (seed {s}, {steps} steps)")
            metrics = train_on_subset(subset / "shards", steps, s, out / "runs" / _slug(name) / f"seed{s}", threads)
            runs.append({"seed": s, "seconds": time.perf_counter() - tick, "metrics": metrics})
        results[name] = {"kept": int(kept.sum()), "runs": runs}
    return results


def _slug(name: str) -> str:
    """``"uncertainty + CSD"`` -> ``"uncertainty-csd"`` (a folder name)."""
    return "-".join("".join(c if c.isalnum() else " " for c in name.lower()).split())


def downstream_markdown(results: dict, steps: int, kept: float) -> str:
    lines = [f"ProLIP recipe trained {steps} steps of {BATCH_SIZE} pairs on each subset (kept fraction {kept:g}); "
             "mean +- standard deviation over seeds.", "",
             "| filter | seeds | t2i mAP@R | i2t mAP@R | zero-shot acc |", "|---|---|---|---|---|"]
    for name, result in results.items():
        cells = []
        for key in ("retrieval.t2i.map_at_r", "retrieval.i2t.map_at_r", "zeroshot.acc1"):
            values = [r["metrics"][key] for r in result["runs"]]
            spread = statistics.stdev(values) if len(values) > 1 else math.nan
            cells.append(f"{statistics.mean(values):.3f} +- {spread:.3f}")
        lines.append(f"| {name} | {len(result['runs'])} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"
