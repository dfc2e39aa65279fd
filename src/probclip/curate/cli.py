"""``probclip curate``: score a pool of image-text shards with a probabilistic model, and filter it.

    probclip curate score --model M --data SHARDS --out SCORES      (torchrun -m probclip.curate score ... too)
    probclip curate filter SCORES --out SUBSET --rule 'top 30% cosine' [--rule ...] [--reshard NEW_SHARDS]
    probclip curate demo --out DIR [--quickstart QS] [--pool-size 50000] [--kept 0.6] [--train-steps N --seeds 3]
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Sequence

from ..cli import run_command
from ..errors import UsageError
from ..search.embed import DEFAULT_SHARD_ROWS, DTYPES, default_num_workers
from . import rules as rules_module
from .demo import BEST, DOWNSTREAM_FILTERS, run_demo, standard_filters
from .score import read_scores_manifest, score_pool
from .subset import FORMATS, filter_pool

__all__ = ["build_parser", "main"]


def build_parser() -> argparse.ArgumentParser:
    """The argument parser of ``probclip curate``."""
    parser = argparse.ArgumentParser(prog="probclip curate", description=__doc__.split("\n\n")[0].split(": ", 1)[1])
    commands = parser.add_subparsers(dest="action", required=True, metavar="{score,filter,demo}")
    score = commands.add_parser(
        "score", prog="probclip curate score",
        help="one Parquet row of pair scores per sample of a pool of shards",
        description="Embed every sample's image and caption (the embedding job of `probclip embed`, kept in "
                    "OUT/embeddings) and write one Parquet row per pair to OUT/scores/: key, uid, caption, cosine, "
                    "csd, match_prob, image_u, text_u, image_in_text, text_in_image. Rerun the same command to "
                    "continue an interrupted run; under torchrun every rank scores its share.")
    score.add_argument("--model", required=True, help="checkpoint folder (e.g. quickstart-out/model) or hf-hub:id")
    score.add_argument("--data", required=True, help="webdataset .tar shard or folder of them (DataComp's layout: "
                                                     "<key>.jpg, <key>.txt, <key>.json with a uid, a .parquet beside)")
    score.add_argument("--out", required=True, help="scores folder to write")
    score.add_argument("--batch-size", type=int, default=64, help="rows per batch (default 64)")
    score.add_argument("--num-workers", type=int, default=None,
                       help=f"DataLoader workers decoding images (default {default_num_workers()} here)")
    score.add_argument("--shard-rows", type=int, default=DEFAULT_SHARD_ROWS,
                       help=f"rows per embedding shard file (default {DEFAULT_SHARD_ROWS})")
    score.add_argument("--dtype", choices=DTYPES, default="float32", help="storage dtype of the embeddings "
                                                                          "(default float32)")
    score.add_argument("--no-progress", action="store_true", help="no progress bar")
    grammar = rules_module.__doc__.split("::", 1)[1].split("Examples:")[0]
    filt = commands.add_parser(
        "filter", prog="probclip curate filter", formatter_class=argparse.RawDescriptionHelpFormatter,
        help="apply rules to a scores folder; write the subset (uids .npy, key list) and optionally new shards",
        description="Keep the scored pairs that pass every --rule (applied in order) and write OUT/keys.txt, "
                    "OUT/uids.npy (DataComp's subset format, when the pool has uids), OUT/subset.parquet and "
                    "OUT/filter.json (the counts each rule removed). Source shards are never modified.\n\nRule "
                    f"grammar:\n{grammar}\nExamples: --rule 'top 30% cosine'; --rule 'text_u <= q90' --rule "
                    "'top 30% cosine'; --rule 'image_u <= q95 and text_u <= q90'.")
    filt.add_argument("scores", help="scores folder written by `probclip curate score`")
    filt.add_argument("--out", required=True, help="subset folder to write")
    filt.add_argument("--rule", action="append", default=[], required=True,
                      help="a rule (repeat: applied in order), e.g. 'top 30%% cosine' or 'text_u <= q90'")
    filt.add_argument("--format", choices=FORMATS, default="auto", dest="fmt",
                      help="auto (default): keys.txt, and uids.npy when every kept sample has a uid; datacomp: "
                           "uids.npy required (exit 1 without uids); keys: no uids.npy")
    filt.add_argument("--reshard", default=None, metavar="OUT", help="also write new webdataset shards of the kept "
                                                                     "samples to this folder")
    filt.add_argument("--shard-size", type=int, default=10_000, help="samples per new shard (default 10000)")
    filt.add_argument("--overwrite", action="store_true", help="replace the files of an existing --out / --reshard")
    filt.add_argument("--model", default=None, help="check that the scores were made by this model (fingerprint)")
    demo = commands.add_parser(
        "demo", prog="probclip curate demo", help="filters compared on a synthetic pool with known noise",
        description="Build a pool of the synthetic world with known noise (mismatched captions, a wrong attribute "
                    "word, strongly degraded images, vague captions), score it with a quickstart's ProLIP model and "
                    "SigLIP baseline, and write the precision / recall of removing each kind of noise for every "
                    "filter at the same kept fraction (OUT/noise_table.md, OUT/demo.json); with --train-steps, "
                    "also train the quickstart's ProLIP recipe on some filters' subsets (OUT/downstream.md).")
    demo.add_argument("--out", required=True, help="folder to write (pool, scores, tables, runs)")
    demo.add_argument("--quickstart", default=None, help="a finished `probclip quickstart` folder (default: train "
                                                         "one into OUT/quickstart)")
    demo.add_argument("--minutes", type=float, default=8.0, help="budget of the quickstart trained here (default 8)")
    demo.add_argument("--pool-size", type=int, default=50_000, help="pairs in the pool (default 50000)")
    demo.add_argument("--validation-size", type=int, default=10_000,
                      help="pairs of the validation pool that picks the best combination (default 10000)")
    demo.add_argument("--kept", type=float, default=0.6, help="kept fraction of every filter (default 0.6)")
    demo.add_argument("--train-steps", type=int, default=0,
                      help="train on the subsets for this many steps of 128 pairs (default 0: no training)")
    demo.add_argument("--seeds", type=int, default=3, help="training seeds per subset (default 3)")
    demo.add_argument("--filters", default=",".join(DOWNSTREAM_FILTERS),
                      help=f"comma-separated filters to train on (default {','.join(DOWNSTREAM_FILTERS)}; "
                           f"'{BEST}' is the combination chosen on the validation pool; the names: "
                           f"{'; '.join(f['name'] for f in standard_filters(0.5))})")
    demo.add_argument("--seed", type=int, default=0, help="world seed of the pool (default 0)")
    demo.add_argument("--threads", type=int, default=1, help="torch CPU threads for training (default 1)")
    demo.add_argument("--jobs", type=int, default=1,
                      help="trainings on the subsets run at a time, each in its own process (default 1; on a "
                           "machine with C cores, --jobs C with --threads 1 is the fastest)")
    return parser


def _score(args) -> int:
    out = score_pool(args.model, args.data, args.out, batch_size=args.batch_size, num_workers=args.num_workers,
                     shard_rows=args.shard_rows, dtype=args.dtype, progress=not args.no_progress)
    if os.environ.get("RANK", "0") == "0":  # rank 0 reports for all
        manifest = read_scores_manifest(out)
        print(f"scored {manifest['scored']} of {manifest['samples']} samples in {len(manifest['shards'])} shards, "
              f"{manifest['skipped']} skipped")
        for skipped in manifest["skipped_samples"][:5]:
            print(f"  skipped {os.path.basename(skipped['shard'])}:{skipped['key']}: {skipped['reason']}")
        print(f"scores: {out}")
    return 0


def _filter(args) -> int:
    record = filter_pool(args.scores, args.out, args.rule, fmt=args.fmt, reshard_dir=args.reshard,
                         shard_size=args.shard_size, overwrite=args.overwrite, model=args.model)
    width = max(len(c["rule"]) for c in record["rules"])
    print(f"pool: {record['pool']} scored pairs")
    print(f"{'rule'.ljust(width)}  removed  rejects  kept")
    for count in record["rules"]:
        print(f"{count['rule'].ljust(width)}  {count['removed']:>7}  {count['rejects']:>7}  {count['kept']}")
    print(f"kept {record['kept']} of {record['pool']} ({100 * record['kept_fraction']:.1f}%): "
          f"{', '.join(record['files'])} in {args.out}")
    if "reshard" in record:
        print(f"new shards: {record['reshard']['shards']} with {record['reshard']['samples']} samples in "
              f"{args.reshard}")
    return 0


def _demo(args) -> int:
    for name, value in (("--pool-size", args.pool_size), ("--validation-size", args.validation_size),
                        ("--seeds", args.seeds), ("--threads", args.threads), ("--jobs", args.jobs)):
        if value < 1:
            raise UsageError(f"{name} must be >= 1; got {value}")
    if args.train_steps < 0:
        raise UsageError(f"--train-steps must be >= 0; got {args.train_steps}")
    run_demo(args.out, pool_size=args.pool_size, validation_size=args.validation_size, kept=args.kept,
             quickstart=args.quickstart, minutes=args.minutes,
             train_steps=args.train_steps, seeds=args.seeds,
             downstream=tuple(n.strip() for n in args.filters.split(",") if n.strip()), seed=args.seed,
             threads=args.threads, jobs=args.jobs)
    print(f"tables: {args.out}/noise_table.md" + (f", {args.out}/downstream.md" if args.train_steps else ""))
    return 0


def _run(argv: list[str]) -> int:
    args = build_parser().parse_args(argv)
    return {"score": _score, "filter": _filter, "demo": _demo}[args.action](args)


def main(argv: Sequence[str] | None = None) -> int:
    """Run ``probclip curate``; returns the exit status (a user error: one line on stderr)."""
    return run_command("curate", _run, sys.argv[1:] if argv is None else list(argv))
