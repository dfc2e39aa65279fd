"""What hiding duplicates adds to a k = 24 search, as a ratio to the search itself, measured in the same run.

For each collection size, writes ``rows`` random Gaussian image rows (unit means, log-variances ~ N(-6, 0.5),
ProLIP-Tiny's D = 64, or ``--dim``) of which 2% are exact copies of other rows, and a flat (exact) CSD index. Then,
for ``--queries`` query embeddings (stored rows), times in alternating order

- the plain search: ``index.search(query, k=24)``;
- the de-duplicated search as the service runs it: ``index.search(query, k=fetch_k(24))`` and
  ``hide_duplicates(index, results, 24)``;

and prints the median time of each and the overhead ratio ``(dedup - plain) / plain``. Then, for the same
collections, the same comparison as a client sees it: ``POST /search`` with a text query and ``k = 24``, with and
without ``"deduplicate": true`` (in-process ASGI calls, no network).

    .venv/bin/python benchmarks/bench_dedup.py [--rows 500,100000] [--queries 300] [--dim 64] [--threads 1]
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

import faiss
import numpy as np
import torch

import probclip
from probclip.search import SearchIndex, build_index
from probclip.search.model_id import model_record
from probclip.search.writer import write_collection
from probclip.serve.dedup import fetch_k, hide_duplicates

K = 24


def make_collection(root: Path, rows: int, dim: int | None, copies: float = 0.02, seed: int = 0) -> SearchIndex:
    """A flat-indexed random Gaussian collection in which ``copies`` of the rows repeat other rows exactly."""
    torch.manual_seed(seed)
    model = probclip.create_model("ProLIP-Tiny").eval()
    model.save_pretrained(root / "model")
    dim = dim or model.config.embed_dim
    rng = np.random.default_rng(seed)
    mean = rng.standard_normal((rows, dim), dtype=np.float32)
    mean /= np.linalg.norm(mean, axis=1, keepdims=True)
    logvar = (rng.standard_normal((rows, dim), dtype=np.float32) * 0.5 - 6).astype(np.float32)
    n_copies = int(rows * copies)
    targets = rng.choice(rows, size=n_copies, replace=False)
    sources = rng.choice(np.setdiff1d(np.arange(rows), targets), size=n_copies)
    mean[targets], logvar[targets] = mean[sources], logvar[sources]
    record = model_record(model, str(root / "model"))
    record["embed_dim"] = dim
    out = write_collection(root / f"collection-{rows}", {"image": (mean, logvar)}, model=record,
                           captions={"image": [f"row {i}" for i in range(rows)]})
    build_index(out, kind="flat", progress=False)
    return SearchIndex.load(out, modality="image")


def measure(index: SearchIndex, queries: np.ndarray) -> tuple[float, float, float, int]:
    """Median seconds of the plain search, of the larger search a de-duplicated one starts with, and of the
    de-duplicated search (that search and ``hide_duplicates``); and the duplicates hidden over all queries."""
    def plain_search(query):
        index.search(query, k=K)
        return 0

    def fetch_only(query):
        index.search(query, k=fetch_k(K, index.rows))
        return 0

    def deduplicated(query):
        return hide_duplicates(index, index.search(query, k=fetch_k(K, index.rows))[0], K)[1]

    runs = (plain_search, fetch_only, deduplicated)
    for rows in (queries[:20], queries):  # the first pass warms caches and is not kept
        seconds, hidden = {run: [] for run in runs}, 0
        for i, row in enumerate(rows):
            query = index.embedding([int(row)])
            for run in runs if i % 2 == 0 else runs[::-1]:  # alternate the order: no run always goes first
                t0 = time.perf_counter()
                n = run(query)
                seconds[run].append(time.perf_counter() - t0)
                hidden += n
    return tuple(float(np.median(seconds[run])) for run in runs) + (hidden,)


def measure_service(index: SearchIndex, count: int) -> tuple[float, float]:
    """Median seconds of ``POST /search`` (text, k = 24) without and with ``deduplicate``, in alternating order."""
    from fastapi.testclient import TestClient

    from probclip.serve import create_app

    texts = [f"row {i} of the collection, number {i % 7}" for i in range(count)]
    with TestClient(create_app([index]), base_url="http://localhost") as client:
        for rows in (texts[:20], texts):
            seconds: dict[bool, list[float]] = {False: [], True: []}
            for i, text in enumerate(rows):
                for dedup in (False, True) if i % 2 == 0 else (True, False):  # alternate the order
                    t0 = time.perf_counter()
                    answer = client.post("/search", json={"text": text, "k": K, "deduplicate": dedup})
                    seconds[dedup].append(time.perf_counter() - t0)
                    assert answer.status_code == 200
    return float(np.median(seconds[False])), float(np.median(seconds[True]))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", default="500,100000", help="collection sizes, comma-separated")
    parser.add_argument("--queries", type=int, default=300)
    parser.add_argument("--dim", type=int, default=None, help="embedding size (default: ProLIP-Tiny's 64)")
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    faiss.omp_set_num_threads(args.threads)
    worst, service = 0.0, []
    with tempfile.TemporaryDirectory(prefix="bench-dedup-") as tmp:
        for rows in (int(r) for r in args.rows.split(",")):
            index = make_collection(Path(tmp), rows, args.dim)
            queries = np.random.default_rng(1).choice(rows, size=args.queries, replace=rows < args.queries)
            plain, fetched, dedup, hidden = measure(index, queries)
            ratio = (dedup - plain) / plain
            worst = max(worst, ratio)
            print(f"{rows} rows, D={index.dim}: k={K} search {plain * 1000:.3f} ms; k={fetch_k(K, rows)} search "
                  f"{fetched * 1000:.3f} ms; de-duplicated k={K} search {dedup * 1000:.3f} ms ({hidden} copies "
                  f"hidden over {len(queries)} queries); overhead ratio {ratio:+.3f} (of which the larger search "
                  f"{(fetched - plain) / plain:+.3f})", flush=True)
            if args.dim is None:
                service.append((rows, *measure_service(index, args.queries)))
    served = 0.0
    for rows, plain, dedup in service:
        served = max(served, (dedup - plain) / plain)
        print(f"{rows} rows, POST /search (text, k={K}): {plain * 1000:.3f} ms; with deduplicate "
              f"{dedup * 1000:.3f} ms; overhead ratio {(dedup - plain) / plain:+.3f}", flush=True)
    print(f"largest overhead ratio: POST /search {served:+.3f} (target <= +0.10); bare index search {worst:+.3f}")
    return 0 if served <= 0.10 else 1


if __name__ == "__main__":
    sys.exit(main())
