"""``probclip curate demo``: filtering with uncertainty against CLIP-score filtering where the noise is known.

1. Build a noisy pool of the synthetic world (:mod:`probclip.curate.noisy_pool`: 10% each of mismatched captions,
   one wrong attribute word, strongly degraded images and vague captions by default).
2. Score it, and a smaller validation pool (another world seed), with a ProLIP model and with its SigLIP baseline
   (a quickstart folder's ``model/`` and ``runs/siglip`` checkpoint; ``--quickstart``, or a quickstart trained
   here).
3. Apply every filter of :func:`standard_filters` at the same kept fraction and measure, per noise kind, the
   precision (share of the removed pairs that are of that kind) and recall (share of that kind removed):
   ``noise_table.md`` / ``demo.json``. The percentiles and weights of the tuned combinations, and the best
   combination, are chosen on the validation pool (:func:`tune`).
4. Optionally (``--train-steps``), train the quickstart's ProLIP recipe on the subsets of some filters for the same
   number of steps and seeds, and evaluate each model on the held-out test split: ``downstream.md``.
"""

from __future__ import annotations

import concurrent.futures
import json
import math
import multiprocessing
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

__all__ = ["BEST", "DOWNSTREAM_FILTERS", "noise_table", "quickstart_models", "run_demo", "standard_filters",
           "train_on_subset", "tune"]

#: The name standing for the combination chosen on the validation pool.
BEST = "best combination"
#: The filters trained on downstream by default (names of :func:`standard_filters`, or ``BEST``).
DOWNSTREAM_FILTERS = ("cosine (SigLIP)", BEST)
#: Percentiles tried for the uncertainty cuts of the tuned combinations (100: no cut).
CUT_PERCENTILES = (85, 88, 90, 92, 95, 100)
#: Coefficients tried for the uncertainties in the tuned linear scores (log-spaced: the scales of ``u`` differ
#: between models by orders of magnitude).
TEXT_U_WEIGHTS = (0, 0.1, 0.3, 1, 3, 10, 30, 100)
IMAGE_U_WEIGHTS = (0, 1, 3, 10, 30, 100)


def _cuts_then(ranking: str) -> list[list[str]]:
    """Candidate rules: drop the captions and images above percentiles of ``text_u`` / ``image_u``, then
    ``ranking`` (a ranking rule)."""
    return [[f"image_u <= q{i}", f"text_u <= q{t}", ranking] for t in CUT_PERCENTILES for i in CUT_PERCENTILES]


def standard_filters(kept: float) -> list[dict]:
    """The compared filters at kept fraction ``kept``: ``{"name", "model", "kind", "candidates"}``.

    ``model``: whose scores the rules read (``prolip``, ``siglip``, or ``siglip+prolip``: the ProLIP columns plus
    ``siglip_cosine``); ``kind``: ``clip score`` (a cosine), ``probabilistic`` (one score of the ProLIP model) or
    ``combination`` (the candidates for the best combination). ``candidates``: lists of rules; a filter with several
    is tuned: the demo applies the candidate that removes the most noise on the validation pool. Every candidate
    keeps exactly ``kept`` of the pool: its last rule is a ranking; rules before it drop the most uncertain images or
    captions at a percentile of the pool.
    """
    pct = f"{100 * kept:g}%"
    return [
        {"name": "cosine (SigLIP)", "model": "siglip", "kind": "clip score", "candidates": [[f"top {pct} cosine"]]},
        {"name": "cosine (ProLIP means)", "model": "prolip", "kind": "clip score",
         "candidates": [[f"top {pct} cosine"]]},
        {"name": "CSD", "model": "prolip", "kind": "probabilistic", "candidates": [[f"bottom {pct} csd"]]},
        {"name": "match probability", "model": "prolip", "kind": "probabilistic",
         "candidates": [[f"top {pct} match_prob"]]},
        {"name": "uncertainty only", "model": "prolip", "kind": "probabilistic",
         "candidates": [["image_u <= q90", f"bottom {pct} text_u"]]},
        {"name": "uncertainty cuts then CSD", "model": "prolip", "kind": "combination",
         "candidates": _cuts_then(f"bottom {pct} csd")},
        {"name": "uncertainty cuts then ProLIP cosine", "model": "prolip", "kind": "combination",
         "candidates": _cuts_then(f"top {pct} cosine")},
        {"name": "CSD + a text_u + b image_u", "model": "prolip", "kind": "combination",
         "candidates": [[f"bottom {pct} csd + {a:g} * text_u + {b:g} * image_u"]
                        for a in TEXT_U_WEIGHTS for b in IMAGE_U_WEIGHTS]},
        {"name": "CSD - c image_in_text", "model": "prolip", "kind": "combination",
         "candidates": [[f"bottom {pct} csd - {c:g} * image_in_text"] for c in (0.01, 0.03, 0.1, 0.3, 1)]},
        {"name": "uncertainty cuts then SigLIP cosine", "model": "siglip+prolip", "kind": "combination",
         "candidates": _cuts_then(f"top {pct} siglip_cosine")},
        {"name": "SigLIP cosine - a text_u - b image_u", "model": "siglip+prolip", "kind": "combination",
         "candidates": [[f"top {pct} siglip_cosine - {a:g} * text_u - {b:g} * image_u"]
                        for a in TEXT_U_WEIGHTS for b in IMAGE_U_WEIGHTS]},
    ]


def tune(filters: list[dict], tables: dict[str, pa.Table], labels: list[str]) -> list[dict]:
    """Each filter with ``rules`` (its candidate that removes the most noise on the pool ``tables``, the first of
    equals) and ``validation`` (that candidate's :func:`noise_table` there)."""
    tuned = []
    for filt in filters:
        tables_of = [noise_table(labels, _apply({**filt, "rules": rules}, tables)) for rules in filt["candidates"]]
        best = max(range(len(tables_of)), key=lambda i: (tables_of[i]["any"]["recall"], -i))
        tuned.append({**filt, "rules": filt["candidates"][best], "validation": tables_of[best]})
    return tuned


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


def noise_markdown(rows: list[dict], kept: float, pool: dict, best: str, validation: dict) -> str:
    """The noise table: one row per filter, precision / recall per noise kind, and the share of all noise the
    filter removed on the validation pool (where the tuned filters chose their rules and the best was chosen)."""
    header = ("| filter | rules | " + " | ".join(NOISE_KINDS) + " | any noise | any noise (validation) |\n|---|---|"
              + "---|" * (len(NOISE_KINDS) + 2))
    counts = ", ".join(f"{k} {v}" for k, v in pool["counts"].items())
    lines = [f"Kept fraction {kept:g} of {pool['size']} pairs ({counts}); each cell: precision / recall of "
             f"removing that kind. A filter tuned over N candidates applies the one that removed the most noise on a "
             f"validation pool of {validation['size']} pairs (world seed {validation['seed']}); **best**: the "
             "combination that removed the most noise there.", "", header]
    for row in rows:
        name = f"**{row['name']}** (best)" if row["name"] == best else row["name"]
        if row.get("tuned_over", 1) > 1:
            name += f" (tuned over {row['tuned_over']})"
        rules = "; ".join(f"`{r}`" for r in row["rules"])
        cells = [f"{row['table'][k]['precision']:.2f} / {row['table'][k]['recall']:.2f}" for k in (*NOISE_KINDS, "any")]
        lines.append(f"| {name} | {rules} | " + " | ".join(cells) + f" | {row['validation_any_recall']:.2f} |")
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


def _pool(folder: Path, size: int, seed: int, log) -> dict:
    if (folder / "pool.json").is_file():
        pool = json.loads((folder / "pool.json").read_text(encoding="utf-8"))
        if (pool["size"], pool["seed"]) != (size, seed):
            raise UsageError(f"{folder} holds a pool of {pool['size']} pairs (seed {pool['seed']}); use another "
                             "--out")
        return pool
    log(f"building a noisy pool of {size} pairs (seed {seed}) in {folder}")
    return build_noisy_pool(folder, size=size, seed=seed)


def _score_both(folder: Path, models: dict, out: Path, suffix: str, batch_size: int, num_workers: int, timings: dict,
                log) -> tuple[dict, dict, list[str]]:
    """Score the pool ``folder`` with both models: ``(tables, manifests, noise label of each row)``."""
    tables, manifests = {}, {}
    for name, model in models.items():
        tick = time.perf_counter()
        log(f"scoring {folder.name} with the {name} model")
        scores = score_pool(str(model), folder, out / f"scores-{name}{suffix}", batch_size=batch_size,
                            num_workers=num_workers, progress=False)
        tables[name], manifests[name] = read_scores(scores)
        timings[f"score_{name}{suffix}_seconds"] = time.perf_counter() - tick
    uids = [tables[n].column("uid").to_pylist() for n in tables]
    if uids[0] != uids[1]:
        raise InputError(f"the scores of {folder} by the two models hold different pairs; delete them and run again")
    truth = read_truth(folder)
    return tables, manifests, [truth[u] for u in uids[0]]


def run_demo(out_dir: str | Path, *, pool_size: int = 50_000, validation_size: int = 10_000, kept: float = 0.6,
             quickstart: str | Path | None = None, minutes: float = 8.0, train_steps: int = 0, seeds: int = 3,
             downstream: tuple[str, ...] = DOWNSTREAM_FILTERS, seed: int = 0, threads: int = 1,
             batch_size: int = 128, num_workers: int = 1, jobs: int = 1, log=print) -> dict:
    """Run the demo (module docstring) into ``out_dir``; returns the ``demo.json`` record.

    Each filter's rules, and the best combination, are chosen on a validation pool (``validation_size`` pairs, world
    seed ``seed + 1``): the candidate rules of each filter, then the filter (``kind == "combination"``), that remove
    the most noise there; the tables report them on the main pool.
    """
    if not 0 < kept < 1:
        raise UsageError(f"--kept must lie in (0, 1); got {kept!r}")
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    started = time.perf_counter()
    timings: dict = {}
    pool = _pool(out / "pool", pool_size, seed, log)
    validation = _pool(out / "validation", validation_size, seed + 1, log)
    timings["pool_seconds"] = time.perf_counter() - started
    if quickstart is None:
        quickstart = out / "quickstart"
        if not (quickstart / "model").is_dir():
            log(f"training a quickstart ({minutes:g} minutes) into {quickstart}")
            run_quickstart(quickstart, steps_for_budget(minutes), seed, threads)
    models = quickstart_models(quickstart)
    val_tables, _, val_labels = _score_both(out / "validation", models, out, "-validation", batch_size, num_workers,
                                            timings, log)
    tables, manifests, labels = _score_both(out / "pool", models, out, "", batch_size, num_workers, timings, log)
    filters = tune(standard_filters(kept), val_tables, val_labels)
    best = max((f["name"] for f in filters if f["kind"] == "combination"),
               key=lambda name: next(f["validation"]["any"]["recall"] for f in filters if f["name"] == name))
    rows = [{**{k: v for k, v in f.items() if k not in ("candidates", "validation")},
             "table": noise_table(labels, _apply(f, tables)), "tuned_over": len(f["candidates"]),
             "validation_any_recall": f["validation"]["any"]["recall"]} for f in filters]
    (out / "noise_table.md").write_text(noise_markdown(rows, kept, pool, best, validation), encoding="utf-8")
    log((out / "noise_table.md").read_text(encoding="utf-8"))
    record = {"pool": pool, "validation": validation, "kept": kept, "models": {k: str(v) for k, v in models.items()},
              "best": best, "filters": rows, "timings": timings}
    write_json_atomic(out / "demo.json", record)  # the tables, kept if the training below is interrupted
    if train_steps:
        names = tuple(best if n == BEST else n for n in downstream)
        record["downstream"] = _downstream(out, rows, tables, manifests, names, train_steps, seeds, threads, log,
                                           jobs)
        (out / "downstream.md").write_text(downstream_markdown(record["downstream"], train_steps, kept),
                                           encoding="utf-8")
        log((out / "downstream.md").read_text(encoding="utf-8"))
    timings["total_seconds"] = time.perf_counter() - started
    write_json_atomic(out / "demo.json", record)
    return record


def _use_start_method(method: str) -> None:
    """In a training process: start the data loader's workers as this platform's main process would (a spawned
    process otherwise inherits ``spawn``, which cannot pickle the shard readers)."""
    multiprocessing.set_start_method(method, force=True)


def _timed_training(shards: Path, steps: int, seed: int, out: Path, threads: int) -> tuple[dict, float]:
    tick = time.perf_counter()
    metrics = train_on_subset(shards, steps, seed, out, threads)
    return metrics, time.perf_counter() - tick


def _downstream(out: Path, rows: list[dict], tables: dict, manifests: dict, names, steps: int, seeds: int,
                threads: int, log, jobs: int = 1) -> dict:
    """Train on each named filter's subset, ``seeds`` seeds each, ``jobs`` trainings at a time (each in its own
    process when ``jobs > 1``, with ``threads`` torch threads: every run is seeded, so the results do not depend
    on ``jobs``)."""
    by_name = {r["name"]: r for r in rows}
    unknown = [n for n in names if n not in by_name]
    if unknown:
        raise UsageError(f"unknown filters {unknown}; expected some of {list(by_name)}")
    kept_counts, work = {}, []
    for name in names:
        kept = _apply(by_name[name], tables)
        kept_counts[name] = int(kept.sum())
        subset = out / "subsets" / _slug(name)
        reshard(tables["prolip"].filter(pa.array(kept)), manifests["prolip"], subset / "shards", shard_size=5000,
                overwrite=True)
        work += [(name, s, subset / "shards", out / "runs" / _slug(name) / f"seed{s}") for s in range(seeds)]
    log(f"training {len(work)} models of {steps} steps, {jobs} at a time")
    if jobs == 1:
        done = [_timed_training(shards, steps, s, run_dir, threads) for _, s, shards, run_dir in work]
    else:
        with concurrent.futures.ProcessPoolExecutor(jobs, mp_context=multiprocessing.get_context("spawn"),
                                                    initializer=_use_start_method,
                                                    initargs=(multiprocessing.get_start_method(),)) as pool:
            futures = [pool.submit(_timed_training, shards, steps, s, run_dir, threads)
                       for _, s, shards, run_dir in work]
            done = [f.result() for f in futures]
    results = {name: {"kept": kept_counts[name], "runs": []} for name in names}
    for (name, s, _, _), (metrics, seconds) in zip(work, done, strict=True):
        results[name]["runs"].append({"seed": s, "seconds": seconds, "metrics": metrics})
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
