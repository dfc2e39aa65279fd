"""``probclip index DIR``: build the search indexes of an embedded collection."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

from ..cli import run_command
from ..terminal import printable
from .backends import IndexOptions, backend_names
from .index import BACKENDS, build_index
from .manifest import read_manifest

__all__ = ["build_parser", "main"]


def build_parser() -> argparse.ArgumentParser:
    """The argument parser of ``probclip index``."""
    parser = argparse.ArgumentParser(
        prog="probclip index",
        description="Build the CSD index (FAISS flat / HNSW / IVF-PQ over [mu, sqrt(u)], or Milvus) and the "
                    "inclusion candidate index of every modality of a collection written by `probclip embed`.")
    parser.add_argument("collection", help="collection folder")
    parser.add_argument("--kind", choices=["auto", *backend_names()], default="auto",
                        help="index kind (default auto: from the row count and --memory-budget)")
    parser.add_argument("--memory-budget", default=None, help="RAM the index may use, e.g. 4GB (default: half the RAM)")
    parser.add_argument("--backend", choices=BACKENDS, default="faiss", help="faiss (default) or milvus")
    parser.add_argument("--uri", default=None, help="Milvus URI: a Milvus Lite file (./collection.db) or "
                                                    "http://host:19530 for a Milvus server or cluster")
    parser.add_argument("--no-inclusion", action="store_true", help="skip the inclusion candidate index")
    knobs = parser.add_argument_group("index knobs (defaults: probclip's own)")
    defaults = IndexOptions()
    knobs.add_argument("--hnsw-m", type=int, default=defaults.hnsw_m, help="HNSW graph degree M")
    knobs.add_argument("--ef-construction", type=int, default=defaults.ef_construction, help="HNSW efConstruction")
    knobs.add_argument("--ef-search", type=int, default=defaults.ef_search,
                       help="HNSW efSearch to start tuning from (default %(default)s)")
    knobs.add_argument("--nlist", type=int, default=None, help="IVF lists (default: 4 sqrt(rows))")
    knobs.add_argument("--nprobe", type=int, default=None, help="IVF lists probed (default: 2 sqrt(nlist))")
    knobs.add_argument("--pq-code", type=int, default=0, help="IVF-PQ code bytes (default: the largest that fits)")
    knobs.add_argument("--oversample", type=int, default=None,
                       help="candidates per result (default: 4 hnsw, 16 ivfpq, 10 otherwise)")
    knobs.add_argument("--recall-target", type=float, default=defaults.recall_target,
                       help="recall@10 that build-time tuning reaches on held-out queries (0: no tuning)")
    knobs.add_argument("--exhaustive-elements", type=int, default=defaults.exhaustive_elements,
                       help="inclusion searches scan every row up to this many rows x D")
    knobs.add_argument("--deepen-factor", type=int, default=defaults.deepen_factor,
                       help="a directional inclusion search deepens by this factor")
    knobs.add_argument("--deepen-limit", type=int, default=defaults.deepen_limit,
                       help="... up to this many times its first depth")
    knobs.add_argument("--milvus-max-candidates", type=int, default=defaults.milvus_max_candidates,
                       help="Milvus candidates a query (at most 16384, Milvus's own limit)")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")
    return parser


def _run(argv: list[str]) -> int:
    """Run ``probclip index``; returns the exit status."""
    args = build_parser().parse_args(argv)

    def body() -> int:
        options = IndexOptions(hnsw_m=args.hnsw_m, ef_construction=args.ef_construction, ef_search=args.ef_search,
                               nlist=args.nlist, nprobe=args.nprobe, pq_code=args.pq_code, oversample=args.oversample,
                               recall_target=args.recall_target, exhaustive_elements=args.exhaustive_elements,
                               deepen_factor=args.deepen_factor, deepen_limit=args.deepen_limit,
                               milvus_max_candidates=args.milvus_max_candidates)
        root = build_index(args.collection, kind=args.kind, memory_budget=args.memory_budget, backend=args.backend,
                           uri=args.uri, progress=not args.no_progress, inclusion=not args.no_inclusion,
                           options=options)
        for modality, entry in read_manifest(root).indexes.items():
            fields = entry.backend_fields
            where = entry.files.get("file") or f"{fields.get('uri')} ({fields.get('collection')})"
            tuned = entry.recall_at_10
            recall = f"; recall@10 {tuned} on held-out queries" if tuned is not None else ""
            print(printable(f"{modality}: {entry.kind} index of {entry.rows} rows: {where}{recall}"))
        return 0

    return body()


def main(argv: Sequence[str] | None = None) -> int:
    """Run ``probclip index``; returns the exit status (a user error: one line on stderr)."""
    return run_command("index", _run, sys.argv[1:] if argv is None else list(argv))
