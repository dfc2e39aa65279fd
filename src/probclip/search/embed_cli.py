"""``probclip embed`` (and ``torchrun -m probclip.embed``): embed a collection's images and texts into shards."""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Sequence

from ..cli import run_command
from ..terminal import printable
from .embed import DEFAULT_SHARD_ROWS, DTYPES, MODALITY_CHOICES, default_num_workers, embed_collection
from .layout import MANIFEST_NAME
from .manifest import read_manifest

__all__ = ["build_parser", "main"]


def build_parser() -> argparse.ArgumentParser:
    """The argument parser of ``probclip embed``."""
    parser = argparse.ArgumentParser(
        prog="probclip embed",
        description="Embed images and captions with a probabilistic model into shards of means (img_emb/, "
                    "text_emb/), log-variances (img_logvar/, text_logvar/) and Parquet metadata, plus manifest.json. "
                    "Rerun the same command to continue an interrupted run; under torchrun every rank embeds its "
                    "share of the shards.")
    parser.add_argument("--model", required=True, help="checkpoint folder (e.g. quickstart-out/model) or hf-hub:id")
    parser.add_argument("--data", required=True, help="image folder, .csv/.tsv, Karpathy .json, webdataset .tar "
                                                      "shard(s) or folder of them, or a .txt of captions")
    parser.add_argument("--out", required=True, help="collection folder to write")
    parser.add_argument("--modality", choices=MODALITY_CHOICES, default="both", help="what to embed (default both)")
    parser.add_argument("--batch-size", type=int, default=64, help="rows per batch (default 64)")
    parser.add_argument("--num-workers", type=int, default=None,
                        help=f"DataLoader workers decoding images (default {default_num_workers()} here)")
    parser.add_argument("--shard-rows", type=int, default=DEFAULT_SHARD_ROWS,
                        help=f"rows per shard file (default {DEFAULT_SHARD_ROWS})")
    parser.add_argument("--dtype", choices=DTYPES, default="float16", help="storage dtype (default float16)")
    parser.add_argument("--image-root", default=None, help="folder that CSV / Karpathy image paths are relative to")
    parser.add_argument("--split", default=None, help="Karpathy JSON split to embed (default: every split)")
    parser.add_argument("--overwrite", action="store_true",
                        help="replace the collection in --out when it was made from other data, another model or "
                             "other options (without it such a run is refused); rerun without it to resume")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")
    return parser


def _run(argv: list[str]) -> int:
    """Run ``probclip embed``; returns the exit status."""
    args = build_parser().parse_args(argv)

    def body() -> int:
        out = embed_collection(args.model, args.data, args.out, modality=args.modality, batch_size=args.batch_size,
                               num_workers=args.num_workers, shard_rows=args.shard_rows, dtype=args.dtype,
                               progress=not args.no_progress, image_root=args.image_root, split=args.split,
                               overwrite=args.overwrite)
        manifest_path = out / MANIFEST_NAME
        if manifest_path.is_file() and os.environ.get("RANK", "0") == "0":  # rank 0 reports for all
            for modality, info in read_manifest(out).modalities.items():
                print(f"{modality}: {info.rows} rows in {len(info.shards)} shards, {info.skipped} skipped")
                for skipped in info.skipped_inputs[:5]:
                    print(printable(f"  skipped {skipped.source}: {skipped.error}"))
            print(printable(f"collection: {out}"))
        return 0

    return body()


def main(argv: Sequence[str] | None = None) -> int:
    """Run ``probclip embed``; returns the exit status (a user error: one line on stderr)."""
    return run_command("embed", _run, sys.argv[1:] if argv is None else list(argv))
