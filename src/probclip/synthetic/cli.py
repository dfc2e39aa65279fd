"""``probclip synth``: write the synthetic world as webdataset shards (img2dataset layout)."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from pathlib import Path

from ..cli import run_command
from ..errors import UsageError
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
    parser.add_argument("--overwrite", action="store_true",
                        help="remove the .tar shards already in --out first (without it such a folder is refused)")
    return parser


def _numbers(text: str, kind, name: str) -> list:
    try:
        return [kind(part) for part in text.split(",") if part.strip()]
    except ValueError as err:
        raise UsageError(f"{name} must be comma-separated numbers; got {text!r} ({err})") from err


def main(argv: Sequence[str] | None = None) -> int:
    """Run ``probclip synth``; returns the exit status (errors: one line on stderr)."""
    return run_command("synth", _synth_command, sys.argv[1:] if argv is None else list(argv))


def _older_shards(out: Path) -> list[Path]:
    return sorted(out.glob("*.tar")) if out.is_dir() else []


def _synth_command(argv: list[str]) -> int:
    args = build_parser().parse_args(argv)
    counts = (("--count", args.count), ("--per-shard", args.per_shard), ("--max-objects", args.max_objects))
    for option, value in counts:
        if value < 1:
            raise UsageError(f"{option} must be an integer >= 1; got {value}")
    out = Path(args.out)
    if out.exists() and not out.is_dir():
        raise UsageError(f"--out {str(out)!r} is a file; give a folder for the shards")
    older = _older_shards(out)
    if older and not args.overwrite:
        raise UsageError(f"--out {str(out)!r} already holds {len(older)} shard(s) ({older[0].name}, ...) that a "
                         "brace pattern would mix with the new ones; choose an empty folder or pass --overwrite")
    try:
        dataset = SyntheticDataset(
            seed=args.seed, split=args.split, size=args.count, levels=_numbers(args.levels, int, "--levels"),
            max_objects=args.max_objects, degradation_kind=args.degradation_kind,
            degradation_probs=_numbers(args.degradation_probs, float, "--degradation-probs"),
        )
    except ValueError as err:
        raise UsageError(str(err)) from err
    for path in older:
        path.unlink()
    paths = write_shards(dataset, args.out, args.per_shard,
                         progress=lambda done, total: print(f"synth: {done}/{total} samples", flush=True))
    last = len(paths) - 1
    print(f"wrote {len(paths)} shard(s): {args.out}/{{00000..{last:05d}}}.tar")
    return 0
