"""Recall@10 of an approximate CSD index for caption queries, per caption level, on the synthetic world's images.

Writes ``--scenes`` held-out scenes of the synthetic world (``write_synthetic_test_split``), embeds them with the
quickstart model of ``--quickstart DIR`` (``DIR/model``), and builds an HNSW index twice on copies of the collection:
``tuned`` (the default: search parameters tuned at build time to ``--recall-target`` on held-out queries from the
collection itself) and ``untuned`` (``--recall-target 0``: efSearch 128, oversample 4 as given). Queries are the
distinct captions of each level (0 = "a shape" ... 5 = the full scene), up to ``--per-level`` per level, encoded with
the model; the truth is the exact CSD top-10 from a flat index of the same collection. Prints one JSON object.

    python benchmarks/bench_caption_recall.py --quickstart QUICKSTART_DIR --scenes 20000 --work /tmp/caption-recall
"""

from __future__ import annotations

import argparse
import csv
import json
import shutil
import time
from pathlib import Path

import faiss
import numpy as np
import torch

from probclip.search import SearchIndex, build_index, embed_collection
from probclip.search.backends import IndexOptions
from probclip.search.embed import load_model
from probclip.search.quickstart import write_synthetic_test_split


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quickstart", required=True, help="a `probclip quickstart --out` folder")
    parser.add_argument("--scenes", type=int, default=20_000)
    parser.add_argument("--per-level", type=int, default=200)
    parser.add_argument("--recall-target", type=float, default=0.95)
    parser.add_argument("--work", required=True)
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    faiss.omp_set_num_threads(args.threads)
    work = Path(args.work)
    table = write_synthetic_test_split(work / f"scenes-{args.scenes}", num_scenes=args.scenes)
    model, source = load_model(str(Path(args.quickstart) / "model"))
    base = work / f"collection-{args.scenes}"
    if not (base / "manifest.json").is_file():
        embed_collection(model, table, base, num_workers=1, batch_size=200, progress=False, model_source=source)
    out: dict = {"scenes": args.scenes, "recall_target": args.recall_target}
    flat = work / "flat"
    shutil.rmtree(flat, ignore_errors=True)
    shutil.copytree(base, flat)
    build_index(flat, kind="flat", progress=False, inclusion=False)
    truth_index = SearchIndex.load(flat, "image", model=model)
    by_level: dict[int, list[str]] = {}
    with open(table, newline="", encoding="utf-8") as handle:
        for row in csv.DictReader(handle):
            by_level.setdefault(int(row["level"]), [])
            if row["caption"] not in by_level[int(row["level"])]:
                by_level[int(row["level"])].append(row["caption"])
    queries = {level: texts[: args.per_level] for level, texts in sorted(by_level.items())}
    embedded = {level: truth_index.encode(texts) for level, texts in queries.items()}
    truth = {level: [r.ids for r in truth_index.search(q, k=10)] for level, q in embedded.items()}
    for name, target in (("untuned", 0.0), ("tuned", args.recall_target)):
        folder = work / name
        shutil.rmtree(folder, ignore_errors=True)
        shutil.copytree(base, folder)
        start = time.perf_counter()
        build_index(folder, kind="hnsw", progress=False, inclusion=False, options=IndexOptions(recall_target=target))
        built = time.perf_counter() - start
        index = SearchIndex.load(folder, "image", model=model)
        levels = {}
        for level, q in embedded.items():
            start = time.perf_counter()
            found = [r.ids for r in index.search(q, k=10)]
            seconds = time.perf_counter() - start
            hits = [len(np.intersect1d(f, t)) / len(t) for f, t in zip(found, truth[level], strict=True)]
            levels[str(level)] = {"queries": len(hits), "recall_at_10": round(float(np.mean(hits)), 4),
                                  "worst_query": round(float(np.min(hits)), 4), "qps": round(len(hits) / seconds, 1)}
        out[name] = {"build_s": round(built, 1), "entry_tuning": index.entry.tuning,
                     "search_params": index.entry.search_params, "oversample": index.knobs["oversample"],
                     "levels": levels}
        print(json.dumps({name: out[name]}), flush=True)
    print(json.dumps(out))


if __name__ == "__main__":
    main()
