"""Benchmark suites: the DataComp evaluation tasks in one run, with uncertainty columns.

The task table (``datacomp_tasks.json``, shipped in the package) lists DataComp's 38 tasks that have a
main metric: each task's key and name as DataComp names them, its kind (classification, retrieval, or
unsupported), its split, its main metric and the folders its data may sit in under the data root
(``wds_<name>`` as CLIP_benchmark's conversions name them, or ``wds_<name>_test`` as DataComp's download
script writes them). Classification tasks run :func:`~probclip.eval.zeroshot.evaluate_zeroshot` (the
``mean`` template combination, as CLIP_benchmark and DataComp build their classifiers); retrieval tasks
run :func:`~probclip.eval.retrieval.evaluate_retrieval` on the data read as CLIP_benchmark reads it.

Main metrics, each with the CSD score and with the cosine of the means: ``acc1``,
``mean_per_class_recall``, ``mean_recall@1`` (the mean of image-to-text and text-to-image R@1),
``F1-macro_all``, and worst-group accuracies (``acc_worst_region``, ``acc_top5_wg``, ``acc_wg``: the
lowest top-K accuracy over the groups given by a column of the samples' ``.npy`` metadata). The
average is DataComp's: the unweighted mean of the tasks' main metrics, here over the tasks evaluated,
and the suite says over how many of the table's tasks it was taken.
"""

from __future__ import annotations

import csv
import json
import sys
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass, replace
from pathlib import Path

import torch

from ..errors import InputError, UsageError
from ..jsonsafe import json_safe
from .benchmark_wds import has_split, read_benchmark_classification, read_benchmark_retrieval
from .encode import EvalModel
from .group_metrics import suite_extra_metrics
from .html_report import write_suite_report, write_task_report
from .options import EvalOptions
from .report import write_results
from .retrieval import evaluate_retrieval
from .zeroshot import evaluate_zeroshot

__all__ = ["SUITES", "SuiteTask", "load_suite", "select_tasks", "find_task_data", "locate_suite_data", "run_suite",
           "suite_markdown"]

SUITES = {"datacomp": "datacomp_tasks.json"}
SCORES = ("csd", "mean")  # column names: CSD ranking, cosine of the means


@dataclass(frozen=True)
class SuiteTask:
    """One row of a suite's task table (see the module doc)."""

    key: str
    name: str
    kind: str
    main_metric: str
    split: str
    folders: tuple[str, ...]
    size: int | None = None
    classes: int | None = None
    group: str | None = None
    group_column: int | None = None
    topk: int = 1
    reason: str | None = None

    @property
    def slug(self) -> str:
        """File-name-safe id: the key with ``/`` read as ``-`` (``vtab/caltech101`` -> ``vtab-caltech101``)."""
        return self.key.replace("/", "-")


def load_suite(name: str = "datacomp") -> list[SuiteTask]:
    """The task table of suite ``name`` (one of :data:`SUITES`)."""
    if name not in SUITES:
        raise UsageError(f"unknown suite {name!r}; expected one of: {', '.join(SUITES)}")
    raw = json.loads((Path(__file__).parent / SUITES[name]).read_text(encoding="utf-8"))
    tasks = []
    for entry in raw["tasks"]:
        entry = dict(entry, folders=tuple(entry["folders"]))
        tasks.append(SuiteTask(**entry))
    return tasks


def select_tasks(tasks: Sequence[SuiteTask], names: Sequence[str] | None) -> list[SuiteTask]:
    """The tasks named in ``names`` (key, slug, name, or data folder with or without ``wds_``; any case), in
    the table's order."""
    if not names:
        return list(tasks)
    lookup = {}
    for task in tasks:
        folder_names = [f.removeprefix("wds_") for f in task.folders]
        for alias in (task.key, task.slug, task.name, *task.folders, *folder_names):
            lookup[alias.lower()] = task
    unknown = [n for n in names if n.strip().lower() not in lookup]
    if unknown:
        raise UsageError(f"unknown suite task(s) {unknown}; accepted: {', '.join(t.key for t in tasks)}")
    wanted = {lookup[n.strip().lower()].key for n in names}
    return [t for t in tasks if t.key in wanted]


def candidate_folders(task: SuiteTask, data_root: str | Path) -> list[Path]:
    """Where the task's data may sit: ``ROOT/<folder>`` and ``ROOT/<folder>_test`` for each of its folders."""
    root = Path(data_root)
    return [root / f"{folder}{suffix}" for folder in task.folders for suffix in ("", "_test")]


def find_task_data(task: SuiteTask, data_root: str | Path) -> Path | None:
    """The first candidate folder that holds the task's split, or None."""
    for folder in candidate_folders(task, data_root):
        if has_split(folder, task.split):
            return folder
    return None


def _finite(value) -> float | None:
    """A metric as a float, or None when it is missing or not finite (undefined)."""
    return None if value is None else json_safe(float(value))


def _run_classification(model: EvalModel, task: SuiteTask, folder: Path, options: EvalOptions) -> tuple[dict, dict]:
    read = read_benchmark_classification(folder, task.split)
    groups = None
    if task.group_column is not None:
        if read.metadata is None:
            raise InputError(f"task {task.key} ({task.main_metric}) needs .npy metadata in its samples; "
                             f"{folder} has none")
        if task.group_column >= read.metadata.shape[1]:
            raise InputError(f"task {task.key}: metadata rows have {read.metadata.shape[1]} columns; "
                             f"the group is column {task.group_column}")
        groups = torch.from_numpy(read.metadata[:, task.group_column].astype("int64"))
    extra = suite_extra_metrics(task.main_metric, groups, task.topk)
    results = evaluate_zeroshot(model, read.data, options, extra_metrics=extra)
    per_score = results["metrics"]["mean"]
    main = {score: _finite(per_score[score][task.main_metric]) if score in per_score else None for score in SCORES}
    bins = results.get("uncertainty", {}).get("mean/csd")
    return results, {"main": main, "pearson": _finite(bins["pearson"]) if bins else None}


def _run_retrieval(model: EvalModel, task: SuiteTask, folder: Path, options: EvalOptions) -> tuple[dict, dict]:
    data = read_benchmark_retrieval(folder, task.split)
    results = evaluate_retrieval(model, data, options, task="retrieval")
    metrics = results["metrics"]
    main = {score: 0.5 * (metrics[score]["i2t"]["r1"] + metrics[score]["t2i"]["r1"]) if score in metrics else None
            for score in SCORES}
    bins = metrics.get("uncertainty", {}).get("csd", {}).get("i2t")
    return results, {"main": main, "pearson": _finite(bins["pearson"]) if bins else None}


def locate_suite_data(data_root: str | Path, suite: str = "datacomp", tasks: Sequence[str] | None = None,
                      skip_missing: bool = False) -> tuple[list[SuiteTask], dict[str, Path | None]]:
    """``(chosen tasks, {key: data folder or None})`` for the tasks that can run (not ``unsupported``).

    Raises :class:`~probclip.errors.InputError` naming every task whose data is missing, unless
    ``skip_missing``; :class:`~probclip.errors.UsageError` for an unknown suite, task or data root.
    """
    data_root = Path(data_root)
    if not data_root.is_dir():
        raise UsageError(f"--data-root {str(data_root)!r} is not a directory")
    chosen = select_tasks(load_suite(suite), tasks)
    found = {t.key: find_task_data(t, data_root) for t in chosen if t.kind != "unsupported"}
    missing = [t for t in chosen if t.kind != "unsupported" and found[t.key] is None]
    if missing and not skip_missing:
        listed = "; ".join(f"{t.key} ({' or '.join(p.name for p in candidate_folders(t, data_root))})" for t in missing)
        raise InputError(f"{len(missing)} suite task(s) have no data under {data_root}: {listed}. "
                         f"Give --skip-missing to run the others, or --tasks to choose")
    return chosen, found


def run_suite(
    model: EvalModel,
    data_root: str | Path,
    options: EvalOptions,
    *,
    suite: str = "datacomp",
    tasks: Sequence[str] | None = None,
    skip_missing: bool = False,
) -> dict:
    """Run the suite's tasks found under ``data_root``; writes ``out_dir/<task slug>/results.json`` per task
    (with its ``report.html``) and ``out_dir/suite.{json,csv,md}`` and ``out_dir/report.html`` (the suite
    page), ``out_dir`` being ``options.out_dir`` (required); returns the suite summary.

    ``options.batch_size``, ``num_workers`` and ``progress`` apply to every task; each task reads its own split
    from the table (``options.split`` and ``image_root`` are not used).

    Tasks whose data is missing are an :class:`~probclip.errors.InputError` naming them, unless
    ``skip_missing``: then they are listed with status ``missing``. Tasks probclip cannot run from a
    webdataset folder (``kind`` unsupported) are listed with status ``unsupported`` and their reason.
    """
    options = EvalOptions.of(options)
    if options.out_dir is None:
        raise UsageError("run_suite needs an output folder: EvalOptions(out_dir=...)")
    data_root, out_dir = Path(data_root), Path(options.out_dir)
    table = load_suite(suite)
    chosen, found = locate_suite_data(data_root, suite, tasks, skip_missing)
    rows = []
    for task in chosen:
        row = {"key": task.key, "name": task.name, "kind": task.kind, "main_metric": task.main_metric,
               "status": "done", "csd": None, "cosine": None, "pearson": None, "n_images": None, "seconds": None,
               "results": None, "data": None, "reason": None}
        if task.kind == "unsupported":
            row.update(status="unsupported", reason=task.reason)
        elif found[task.key] is None:
            looked = " or ".join(str(p) for p in candidate_folders(task, data_root))
            row.update(status="missing", reason=f"no data in {looked}")
        else:
            start = time.perf_counter()
            task_out = out_dir / task.slug
            run = _run_classification if task.kind == "classification" else _run_retrieval
            task_options = replace(options, out_dir=task_out, split=task.split, image_root=None)
            results, summary = run(model, task, found[task.key], task_options)
            results["suite_task"] = {"suite": suite, **asdict(task), "main_value": summary["main"]}
            write_results(task_out, results)
            write_task_report(task_out, results)
            row.update(csd=summary["main"]["csd"], cosine=summary["main"]["mean"], pearson=summary["pearson"],
                       n_images=results["n_images"], seconds=round(time.perf_counter() - start, 3),
                       results=f"{task.slug}/results.json", data=str(found[task.key]))
            if options.progress:
                print(f"suite {len(rows) + 1}/{len(chosen)} {task.key}: {task.main_metric} cosine "
                      f"{_fmt(row['cosine'])}, CSD {_fmt(row['csd'])} ({row['seconds']:.1f} s)", file=sys.stderr)
        rows.append(row)
    summary = {"suite": suite, "model": model.name, "probabilistic": model.probabilistic, "data_root": str(data_root),
               "n_tasks_in_suite": len(table), "tasks": rows, "average": _average(rows, len(table))}
    out_dir.mkdir(parents=True, exist_ok=True)
    suite_json = json.dumps(json_safe(summary), indent=2, allow_nan=False) + "\n"
    (out_dir / "suite.json").write_text(suite_json, encoding="utf-8")
    _write_csv(out_dir / "suite.csv", rows)
    (out_dir / "suite.md").write_text(suite_markdown(summary), encoding="utf-8")
    write_suite_report(out_dir, summary)
    return summary


def _average(rows: list[dict], n_suite: int) -> dict:
    """DataComp's average (unweighted mean of main metrics) over the evaluated tasks, per score."""
    done = [r for r in rows if r["status"] == "done"]
    out = {"n_tasks": len(done), "n_tasks_in_suite": n_suite}
    for column in ("csd", "cosine"):
        values = [r[column] for r in done if r[column] is not None]
        out[column] = sum(values) / len(values) if values and len(values) == len(done) else None
    return out


CSV_COLUMNS = ("key", "name", "kind", "main_metric", "status", "csd", "cosine", "pearson", "n_images", "seconds",
               "results", "reason")


def _write_csv(path: Path, rows: list[dict]) -> None:
    with open(path, "w", newline="", encoding="utf-8") as handle:
        writer = csv.DictWriter(handle, fieldnames=CSV_COLUMNS, extrasaction="ignore")
        writer.writeheader()
        for row in rows:
            writer.writerow({k: "" if row.get(k) is None else row[k] for k in CSV_COLUMNS})


def _fmt(value, digits: int = 4) -> str:
    return "–" if value is None else f"{value:.{digits}f}"


def suite_markdown(summary: dict) -> str:
    """The suite table as Markdown: one row per task, then the average."""
    lines = [f"# {summary['suite']} suite: {summary['model']}", "",
             "Main metric per task (fractions), ranked by CSD and by the cosine of the means; r = Pearson "
             "correlation between image-uncertainty bin and the metric (negative: uncertain images do worse).", "",
             "| Task | Main metric | CSD | Cosine | r (uncertainty) | Images | Seconds | Status |",
             "|---|---|---:|---:|---:|---:|---:|---|"]
    for r in summary["tasks"]:
        status = r["status"] if r["status"] == "done" else f"{r['status']}: {r['reason']}"
        lines.append(f"| {r['name']} (`{r['key']}`) | {r['main_metric']} | {_fmt(r['csd'])} | {_fmt(r['cosine'])} | "
                     f"{_fmt(r['pearson'], 2)} | {r['n_images'] if r['n_images'] is not None else '–'} | "
                     f"{_fmt(r['seconds'], 1)} | {status} |")
    avg = summary["average"]
    lines += ["", f"**Average** (DataComp: unweighted mean of the main metrics) over {avg['n_tasks']} of "
              f"{avg['n_tasks_in_suite']} tasks: CSD {_fmt(avg['csd'])}, cosine {_fmt(avg['cosine'])}.", ""]
    return "\n".join(lines)
