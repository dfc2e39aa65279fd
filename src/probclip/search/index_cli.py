"""``probclip index DIR``: build the search indexes of an embedded collection."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

from ..cli import run_command
from ..terminal import printable
from .index import BACKENDS, KINDS, build_index
from .layout import read_manifest

__all__ = ["build_parser", "main"]


def build_parser() -> argparse.ArgumentParser:
    """The argument parser of ``probclip index``."""
    parser = argparse.ArgumentParser(
        prog="probclip index",
        description="Build the CSD index (FAISS flat / HNSW / IVF-PQ over [mu, sqrt(u)], or Milvus) and the "
                    "inclusion candidate index of every modality of a collection written by `probclip embed`.")
    parser.add_argument("collection", help="collection folder")
    parser.add_argument("--kind", choices=KINDS, default="auto",
                        help="index kind (default auto: from the row count and --memory-budget)")
    parser.add_argument("--memory-budget", default=None, help="RAM the index may use, e.g. 4GB (default: half the RAM)")
    parser.add_argument("--backend", choices=BACKENDS, default="faiss", help="faiss (default) or milvus")
    parser.add_argument("--uri", default=None, help="Milvus URI: a Milvus Lite file (./collection.db) or "
                                                    "http://host:19530 for a Milvus server or cluster")
    parser.add_argument("--no-inclusion", action="store_true", help="skip the inclusion candidate index")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")
    return parser


def _run(argv: list[str]) -> int:
    """Run ``probclip index``; returns the exit status."""
    args = build_parser().parse_args(argv)

    def body() -> int:
        root = build_index(args.collection, kind=args.kind, memory_budget=args.memory_budget, backend=args.backend,
                           uri=args.uri, progress=not args.no_progress, inclusion=not args.no_inclusion)
        for modality, entry in read_manifest(root)["indexes"].items():
            where = entry.get("file") or f"{entry.get('uri')} ({entry.get('collection')})"
            print(printable(f"{modality}: {entry['kind']} index of {entry['rows']} rows: {where}"))
        return 0

    return body()


def main(argv: Sequence[str] | None = None) -> int:
    """Run ``probclip index``; returns the exit status (a user error: one line on stderr)."""
    return run_command("index", _run, sys.argv[1:] if argv is None else list(argv))
