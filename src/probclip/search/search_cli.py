"""``probclip search DIR --text ... | --image FILE``: query a collection and print a table (or JSON)."""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence

from ..cli import run_command
from ..errors import InputError, UsageError
from ..terminal import printable
from ..transforms import ImageLoadError, load_image
from .layout import MODALITIES
from .options import add_search_arguments, options_from_args
from .results import SearchResults
from .searcher import SearchIndex

__all__ = ["build_parser", "format_table", "main"]


def build_parser() -> argparse.ArgumentParser:
    """The argument parser of ``probclip search``."""
    parser = argparse.ArgumentParser(
        prog="probclip search",
        description="Search an indexed collection with a caption or an image. Scores: csd (closed-form sampled "
                    "distance, lower is closer), mean (cosine of means), includes (items included in the query: "
                    "more specific), included (items that include the query: more general); the inclusion scores "
                    "keep only items for which the test holds in the direction asked. A collection embedded with a "
                    "model folder holding a hierarchy head ranks includes / included by the head (P: its "
                    "probability; --no-hierarchy-head: by the inclusion test).")
    parser.add_argument("collection", help="collection folder (embedded and indexed)")
    query = parser.add_mutually_exclusive_group(required=True)
    query.add_argument("--text", help="a caption to search with")
    query.add_argument("--image", help="an image file to search with")
    parser.add_argument("--modality", choices=MODALITIES, default=None,
                        help="what to search: image or text rows (default: images for --text, texts for --image)")
    add_search_arguments(parser)  # --k, --score, ...: defaults, help and checks from SearchOptions
    parser.add_argument("--json", action="store_true", help="print JSON instead of a table")
    return parser


def format_table(results: SearchResults, query_u: float | None = None) -> str:
    """A readable table: rank, score, uncertainty u, caption or source (control characters escaped)."""
    arrow = "higher is better" if results.higher_is_better else "lower is closer"
    how = "exact" if results.exact else "approximate candidates, exact re-rank"
    lines = [f"score: {results.score} ({arrow}; {how}; ranked by the {results.ranked_by})"]
    if query_u is not None:
        lines.append(f"query uncertainty u = {query_u:.4g}")
    probabilities = results.probabilities  # where the hierarchy head ranked: P(more general / more specific)
    p_head = f"  {'P':>6}" if probabilities is not None else ""
    lines.append(f"{'rank':>4}  {'score':>10}{p_head}  {'u':>9}  item")
    for rank, (score, u, meta) in enumerate(
            zip(results.scores, results.uncertainty, results.metadata, strict=True), 1):
        p_cell = f"  {probabilities[rank - 1]:>6.3f}" if probabilities is not None else ""
        label = meta.get("caption") or meta.get("source") or ""
        source = meta.get("source") or ""
        if meta.get("caption") and source and meta.get("offset", -1) == -1 and "/" in source:
            label = f"{meta['caption']}  [{meta['source'].rsplit('/', 1)[-1]}]"
        lines.append(f"{rank:>4}  {score:>10.4f}{p_cell}  {u:>9.4g}  {printable(label)}")
    if not len(results):
        lines.append("(no item qualifies)")
    return "\n".join(lines)


def _run(argv: list[str]) -> int:
    """Run ``probclip search``; returns the exit status."""
    args = build_parser().parse_args(argv)

    def body() -> int:
        options = options_from_args(args)  # a bad value stops here, before the collection is opened
        modality = args.modality or ("image" if args.text is not None else "text")
        index = SearchIndex.load(args.collection, modality)
        if args.text is not None:
            if not args.text.strip():
                raise UsageError("--text must not be empty; give a caption such as 'a red square'")
            query = args.text
        else:
            try:
                query = load_image(args.image)
            except ImageLoadError as err:
                raise InputError(str(err)) from err
        embedding = index.encode(query)
        modality_of_query = "text" if args.text is not None else "image"
        results = index.search(embedding, options=options, query_modality=modality_of_query)[0]
        query_u = float(embedding.uncertainty[0])
        if args.json:
            print(json.dumps({"index": index.name, "query_u": query_u, **results.to_dict()}, indent=2))
        else:
            print(printable(f"{index.name}: {index.rows} rows, {index.kind} index, model {index.model_name}"))
            print(format_table(results, query_u))
        return 0

    return body()


def main(argv: Sequence[str] | None = None) -> int:
    """Run ``probclip search``; returns the exit status (a user error: one line on stderr)."""
    return run_command("search", _run, sys.argv[1:] if argv is None else list(argv))
