"""``probclip synth``: write the synthetic world as webdataset shards (img2dataset layout)."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

from .shards import write_shards
from .world import (
    DEGRADATION_KINDS,
    DEGRADATION_LEVELS,
    NUM_LEVELS,
    SPLITS,
    SyntheticDataset,
)

__all__ = ["build_parser", "main"]


def build_parser() -> argparse.ArgumentParser:
    """The argument parser of ``probclip synth``."""
    parser = argparse.ArgumentParser(
        prog="probclip synth",
        description="Write the synthetic world (shapes, colours, sizes, positions; captions at six levels of "
                    "specificity with exact truth) as webdataset shards: NNNNN.tar with <key>.png, <key>.txt "
                    "(full-scene caption) and <key>.json (all captions, levels, scene).",
    )
    parser.add_argument("--out", required=True, help="output directory for the shards")
    parser.add_argument("--count", type=int, default=10_000, help="number of samples (default 10000)")
    parser.add_argument("--split", choices=SPLITS, default="train", help="split (default train)")
    parser.add_argument("--seed", type=int, default=0, help="world seed (default 0)")
    parser.add_argument("--per-shard", type=int, default=1000, help="samples per shard (default 1000)")
    parser.add_argument("--max-objects", type=int, default=2, help="objects per scene, 1..N (default 2)")
    parser.add_argument("--levels", default=",".join(str(i) for i in range(NUM_LEVELS)),
                        help="comma-separated caption levels listed per sample (default 0,...,5)")
    parser.add_argument("--degradation-probs", default="1,0,0,0,0",
                        help=f"comma-separated probabilities of the {DEGRADATION_LEVELS} degradation levels")
    parser.add_argument("--degradation-kind", choices=DEGRADATION_KINDS, default="noise")
    return parser


def _numbers(text: str, kind, name: str) -> list:
    try:
        return [kind(part) for part in text.split(",") if part.strip()]
    except ValueError as err:
        raise SystemExit(f"probclip synth: {name} must be comma-separated numbers; got {text!r} ({err})") from err


def main(argv: Sequence[str] | None = None) -> int:
    """Run ``probclip synth``; returns the exit status."""
    args = build_parser().parse_args(argv)
    if args.count < 1:
        print(f"probclip synth: --count must be >= 1; got {args.count}", file=sys.stderr)
        return 2
    try:
        dataset = SyntheticDataset(
            seed=args.seed, split=args.split, size=args.count, levels=_numbers(args.levels, int, "--levels"),
            max_objects=args.max_objects, degradation_kind=args.degradation_kind,
            degradation_probs=_numbers(args.degradation_probs, float, "--degradation-probs"),
        )
        paths = write_shards(dataset, args.out, args.per_shard,
                             progress=lambda done, total: print(f"synth: {done}/{total} samples", flush=True))
    except ValueError as err:
        print(f"probclip synth: {err}", file=sys.stderr)
        return 2
    last = len(paths) - 1
    print(f"wrote {len(paths)} shard(s): {args.out}/{{00000..{last:05d}}}.tar")
    return 0
