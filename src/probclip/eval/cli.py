"""``probclip eval``: evaluate a model on one task and write ``DIR/results.json`` and PNG plots.

    probclip eval --model M --task T --data PATH [--out DIR] [task options]
    probclip eval --model M --task hierarchy [--data HIERARCAPS_CSV] [--seed S] [--out DIR]
    probclip eval --model M --suite datacomp --data-root ROOT [--out DIR] [--tasks a,b] [--skip-missing]

``M`` is anything :func:`probclip.create_model_from_pretrained` accepts (a checkpoint folder,
``hf-hub:<repo>``), or ``open_clip:<name>[@<pretrained>]`` for a deterministic open_clip model.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from ..cli import run_command
from ..devices import check_device
from ..errors import InputError, ProbclipError, UsageError
from ..hierarchy_head import find_hierarchy_head
from ..limits import current_limits, set_limits
from ..synthetic.hierarchy import evaluate_synthetic_hierarchy
from ..terminal import printable
from ..textfiles import read_text_file
from .bprw import BPRWSettings
from .eccv import evaluate_eccv
from .encode import load_eval_model
from .hierarcaps import evaluate_hierarcaps
from .hierarchy import evaluate_hierarchy
from .html_report import write_task_report
from .options import EvalOptions
from .output_folder import fresh_output_folder
from .retrieval import evaluate_retrieval, evaluate_urban1k
from .rococo import evaluate_rococo
from .suite import locate_suite_data, run_suite, suite_markdown
from .zeroshot import evaluate_zeroshot

TASKS = ("zeroshot", "retrieval", "eccv", "urban1k", "hierarcaps", "hierarchy", "rococo")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="probclip eval",
        description="Evaluate a probabilistic (probclip) or deterministic (open_clip) model on a benchmark task.",
    )
    parser.add_argument("--model", required=True,
                        help="checkpoint folder, hf-hub:<repo>, or open_clip:<name>[@<pretrained>]")
    parser.add_argument("--task", choices=TASKS, help="one task (needs --data); or give --suite")
    parser.add_argument("--data", type=Path,
                        help="data set: image folder / webdataset root (zeroshot), Karpathy JSON / CSV / webdataset "
                             "(retrieval, eccv, rococo), Urban-1k folder, HierarCaps CSV (hierarcaps, hierarchy; "
                             "without --data, hierarchy runs on the synthetic world's test split)")
    parser.add_argument("--out", type=Path, default=None,
                        help="output folder (default: ./eval-<task or suite>); written whole when the run succeeds, "
                             "refused when not empty unless --overwrite")
    parser.add_argument("--overwrite", action="store_true",
                        help="replace a non-empty --out (the previous results are removed only once the run succeeded)")
    suite = parser.add_argument_group("suite")
    suite.add_argument("--suite", choices=("datacomp",), default=None,
                       help="run a benchmark suite's tasks from webdataset folders under --data-root")
    suite.add_argument("--data-root", type=Path, default=None,
                       help="folder holding the suite's data sets (wds_<name> or wds_<name>_test folders)")
    suite.add_argument("--tasks", default=None,
                       help="comma-separated task keys or names to run (default: all of the suite's tasks)")
    suite.add_argument("--skip-missing", action="store_true",
                       help="list tasks without data as missing instead of stopping with an error")
    parser.add_argument("--split", default="test", help="split of a Karpathy JSON or webdataset (default: test)")
    parser.add_argument(
        "--image-root", type=Path, default=None, help="folder the image paths of --data are relative to"
    )
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--workers", type=int, default=0, help="data loader worker processes")
    parser.add_argument("--device", default="cpu", help="torch device, e.g. cpu or cuda")
    parser.add_argument("--no-progress", action="store_true", help="hide progress bars")
    parser.add_argument("--max-image-pixels", type=int, default=None,
                        help="refuse (skip, count and name) images with more pixels, checked before decoding "
                             "(default 50000000)")
    zs = parser.add_argument_group("zeroshot")
    zs.add_argument(
        "--templates",
        type=Path,
        default=None,
        help="text file of prompt templates with {c} (default: the data set's own, else 'a photo of a {c}.')",
    )
    zs.add_argument("--support", type=Path, default=None,
                    help="labelled support images from another split: enables BPRW prompt re-weighting")
    zs.add_argument("--support-split", default="train", help="webdataset split of --support (default: train)")
    zs.add_argument("--shots", type=int, default=5, help="BPRW support images per class (default: 5)")
    eccv = parser.add_argument_group("eccv")
    eccv.add_argument("--coco-captions", type=Path, default=None,
                      help="COCO captions_val2014.json, to find the COCO caption ids of a Karpathy JSON")
    eccv.add_argument("--ground-truth", type=Path, default=None,
                      help="folder of ground-truth id maps in the eccv-caption layout "
                           "(default: the data shipped in the eccv-caption package)")
    hc = parser.add_argument_group("hierarcaps")
    hc.add_argument("--steps", type=int, default=50, help="interpolation points of the walk (default: 50)")
    rc = parser.add_argument_group("rococo")
    rc.add_argument("--replacements", type=Path, default=None,
                    help="JSON {word: [replacements]} or a text file of words, one per line")
    rc.add_argument("--mix-weight", type=float, default=0.1, help="weight of the other image in mixed images")
    rc.add_argument("--seed", type=int, default=0, help="random seed (rococo); world seed (hierarchy on the "
                                                        "synthetic world: the quickstart's --seed)")
    return parser


def run(args: argparse.Namespace, out: Path | None = None) -> dict:
    """Run the task described by parsed ``args``, writing into ``out`` (default ``args.out``); returns the results
    dict (also written to disk)."""

    out = out or args.out or Path(f"eval-{args.task}")
    model = load_eval_model(args.model, device=args.device)
    options = EvalOptions(out_dir=out, image_root=args.image_root, split=args.split, batch_size=args.batch_size,
                          num_workers=args.workers, progress=not args.no_progress)
    if args.task == "zeroshot":
        templates = None
        if args.templates is not None:
            templates = [t.strip() for t in read_text_file(args.templates).splitlines() if t.strip()]
        return evaluate_zeroshot(model, args.data, options, support=args.support, bprw=BPRWSettings(shots=args.shots),
                                 support_split=args.support_split, templates=templates)
    if args.task == "retrieval":
        return evaluate_retrieval(model, args.data, options)
    if args.task == "eccv":
        return evaluate_eccv(model, args.data, options, coco_captions=args.coco_captions,
                             ground_truth=args.ground_truth)
    if args.task == "urban1k":
        return evaluate_urban1k(model, args.data, options)
    if args.task == "hierarcaps":
        return evaluate_hierarcaps(model, args.data, options, n_steps=args.steps)
    if args.task == "hierarchy":
        # a local model directory may hold its head (a hub id holds none here)
        head = find_hierarchy_head(args.model, int(model.model.config.embed_dim)) if model.probabilistic else None
        if args.data is None:
            return evaluate_synthetic_hierarchy(model.model, model.tokenizer, model.preprocess, seed=args.seed,
                                                out_dir=out, name=model.name, probabilistic=model.probabilistic,
                                                head=head)
        return evaluate_hierarchy(model, args.data, options, head=head)
    if args.replacements is None:
        raise ValueError("--task rococo needs --replacements FILE (JSON {word: [replacements]} or a word list)")
    return evaluate_rococo(model, args.data, args.replacements, options, mix_weight=args.mix_weight, seed=args.seed)


def _summary(results: dict) -> str:
    tables = results.get("tables")
    if tables:  # a task with its own tables: the first one, as aligned text
        heading, rows = next(iter(tables.items()))
        cells = [[f"{v:.3f}" if isinstance(v, float) else "-" if v is None else str(v) for v in row] for row in rows]
        widths = [max(len(row[i]) for row in cells) for i in range(len(cells[0]))]
        return "\n".join([heading, *("  ".join(v.rjust(w) for v, w in zip(row, widths)) for row in cells)])
    metrics = results.get("metrics", {})
    return json.dumps({k: v for k, v in metrics.items() if k != "uncertainty"}, indent=1)[:2000]


def _check_args(args: argparse.Namespace) -> None:
    if args.suite is not None:
        if args.task is not None or args.data is not None:
            raise UsageError("--suite runs its own tasks: give --data-root, not --task or --data")
        if args.data_root is None:
            raise UsageError("--suite needs --data-root FOLDER (the folder holding the wds_<name> data sets)")
        return
    if args.task is None or (args.data is None and args.task != "hierarchy"):
        raise UsageError("give --task TASK and --data PATH, or --suite datacomp and --data-root FOLDER "
                         "(--task hierarchy without --data runs on the synthetic world)")
    if args.data_root is not None or args.tasks is not None or args.skip_missing:
        raise UsageError("--data-root, --tasks and --skip-missing go with --suite")
    if args.data is not None and not args.data.exists():
        raise UsageError(f"--data {str(args.data)!r} does not exist")


def run_suite_from_args(args: argparse.Namespace, out: Path | None = None) -> dict:
    """Run ``--suite`` as described by parsed ``args``, writing into ``out`` (default ``args.out``); returns the suite
    summary (also written to disk)."""
    tasks = [t for t in args.tasks.split(",") if t.strip()] if args.tasks else None
    locate_suite_data(args.data_root, args.suite, tasks, args.skip_missing)  # data errors before the model loads
    model = load_eval_model(args.model, device=args.device)
    options = EvalOptions(out_dir=out or args.out or Path(f"eval-{args.suite}"), batch_size=args.batch_size,
                          num_workers=args.workers, progress=not args.no_progress)
    return run_suite(model, args.data_root, options, suite=args.suite, tasks=tasks, skip_missing=args.skip_missing)


def main(argv: list[str] | None = None) -> int:
    """Entry point of ``probclip eval``; returns the process exit code (errors: one line on stderr)."""
    return run_command("eval", _eval_command, sys.argv[1:] if argv is None else argv)


def _eval_command(argv: list[str]) -> int:
    args = build_parser().parse_args(argv)
    _check_args(args)
    for option, value in (("--batch-size", args.batch_size), ("--shots", args.shots), ("--steps", args.steps)):
        if value < 1:
            raise UsageError(f"{option} must be an integer >= 1; got {value}")
    if args.workers < 0:
        raise UsageError(f"--workers must be an integer >= 0; got {args.workers}")
    check_device(args.device, "--device")
    pixels = current_limits().max_image_pixels if args.max_image_pixels is None else args.max_image_pixels
    if pixels < 1:
        raise UsageError(f"--max-image-pixels must be an integer >= 1; got {pixels}")
    previous = set_limits(current_limits(), max_image_pixels=pixels)
    out = args.out or Path(f"eval-{args.suite or args.task}")
    try:
        with fresh_output_folder(out, args.overwrite) as work:
            if args.suite is not None:
                summary = run_suite_from_args(args, work)
            else:
                results = run(args, work)
                write_task_report(work, results)
        if args.suite is not None:
            print(printable(suite_markdown(summary), keep_newlines=True))
            print(printable(f"suite: {out / 'suite.json'}, {out / 'suite.md'}, {out / 'report.html'}"))
            return 0
    except ProbclipError:
        raise
    except ValueError as err:  # the readers and tasks report unusable data sets as ValueError
        raise InputError(str(err)) from err
    finally:
        set_limits(previous)
    print(_summary(results))
    print(printable(f"results: {out / 'results.json'}, report: {out / 'report.html'}"))
    return 0


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
