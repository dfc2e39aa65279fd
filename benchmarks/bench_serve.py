"""Load test of ``probclip serve`` on loopback: throughput and latency against in-process search, same batches.

Writes a collection of ``--rows`` random Gaussian image rows (unit means, log-variances ~ N(-6, 0.5), stored in the
collection format with ``write_collection``; ProLIP-Tiny's D = 64) and a flat (exact) CSD index, starts
``probclip serve`` on 127.0.0.1 in a child process, and sends ``--queries`` distinct text queries from
``--clients`` concurrent clients (a fixed number of requests; the run stops by itself). Reports queries/s,
p50/p95/p99 latency and the status codes (no 5xx allowed), reads the service's batch sizes from ``/metrics``, then
runs the same queries in-process (``SearchIndex.search`` with the texts, grouped in batches of the sizes the
service formed) and prints the ratio of the service's throughput to the in-process one.

    .venv/bin/python benchmarks/bench_serve.py [--rows 100000] [--queries 2000] [--clients 8] [--k 10] [--threads 1]

Client and server share the machine's cores: on a small machine the load generator's own CPU time is part of
what the service competes with.
"""

from __future__ import annotations

import argparse
import http.client
import itertools
import json
import queue
import re
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import faiss
import httpx
import numpy as np
import torch
from prometheus_client.parser import text_string_to_metric_families

import probclip
from probclip.search import SearchIndex, build_index
from probclip.search.model_id import model_record
from probclip.search.writer import write_collection

COLOURS = ("red", "green", "blue", "yellow", "purple", "orange", "white", "black", "grey", "pink")
SHAPES = ("circle", "square", "triangle", "star", "cross", "ring", "diamond", "heart")
SIZES = ("tiny", "small", "large", "huge")
PLACES = ("on the left", "on the right", "at the top", "at the bottom", "in the middle")


def make_queries(n: int) -> list[str]:
    """``n`` distinct captions (the service and the in-process run encode the same ones)."""
    combos = itertools.product(SIZES, COLOURS, SHAPES, PLACES, range(1, 1000))
    return [f"{count} {size} {colour} {shape}{'s' if count > 1 else ''} {place}"
            for (size, colour, shape, place, count), _ in zip(combos, range(n), strict=False)]


def make_collection(root: Path, rows: int, seed: int = 0) -> tuple[Path, object]:
    """A random Gaussian collection of ``rows`` image rows for ProLIP-Tiny, flat-indexed; returns (dir, model)."""
    torch.manual_seed(seed)
    model = probclip.create_model("ProLIP-Tiny").eval()
    model_dir = root / "model"
    model.save_pretrained(model_dir)
    rng = np.random.default_rng(seed)
    dim = model.config.embed_dim
    mean = rng.standard_normal((rows, dim), dtype=np.float32)
    mean /= np.linalg.norm(mean, axis=1, keepdims=True)
    logvar = (rng.standard_normal((rows, dim), dtype=np.float32) * 0.5 - 6).astype(np.float32)
    captions = {"image": [f"random row {i}" for i in range(rows)]}
    out = write_collection(root / "collection", {"image": (mean, logvar)},
                           model=model_record(model, str(model_dir)), captions=captions)
    build_index(out, kind="flat", progress=False)
    return Path(out), model


def start_server(collection: Path, threads: int, extra: list[str] | None = None) -> tuple[subprocess.Popen, str]:
    process = subprocess.Popen([sys.executable, "-m", "probclip.cli", "serve", str(collection), "--port", "0",
                                "--log-level", "warning", "--threads", str(threads), *(extra or [])],
                               stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    deadline = time.monotonic() + 300
    for line in process.stdout:
        found = re.search(r"listening on (http://127\.0\.0\.1:\d+)/", line)
        if found:
            url = found.group(1)
            threading.Thread(target=lambda: [None for _ in process.stdout], daemon=True).start()  # drain the pipe
            break
        if time.monotonic() > deadline:
            break
    else:
        raise RuntimeError(f"probclip serve did not start (exit status {process.poll()})")
    while True:
        try:
            if httpx.get(url + "/health", timeout=5).status_code == 200:
                return process, url
        except httpx.TransportError:
            time.sleep(0.1)


def load(url: str, index_name: str, queries: list[str], clients: int, k: int) -> tuple[float, list[float], dict]:
    """Send every query once from ``clients`` threads; returns (seconds, latencies in s, status counts)."""
    todo: queue.Queue = queue.Queue()
    for q in queries:
        todo.put(q)
    latencies: list[float] = []
    statuses: dict[int, int] = {}
    lock = threading.Lock()

    host, port = url.removeprefix("http://").split(":")

    def client() -> None:
        # The standard library's keep-alive HTTP client: the lightest load generator, so that it takes as little
        # as possible of the CPU the service runs on.
        connection = http.client.HTTPConnection(host, int(port), timeout=60)
        try:
            while True:
                try:
                    text = todo.get_nowait()
                except queue.Empty:
                    return
                body = json.dumps({"text": text, "k": k, "index": index_name})
                start = time.perf_counter()
                try:
                    connection.request("POST", "/search", body=body, headers={"content-type": "application/json"})
                    response = connection.getresponse()
                    response.read()
                    status = response.status
                except (OSError, http.client.HTTPException):
                    connection.close()
                    status = 599
                with lock:
                    latencies.append(time.perf_counter() - start)
                    statuses[status] = statuses.get(status, 0) + 1
        finally:
            connection.close()

    threads = [threading.Thread(target=client) for _ in range(clients)]
    start = time.perf_counter()
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return time.perf_counter() - start, latencies, statuses


def batch_sizes(metrics_text: str, index_name: str) -> dict[int, int]:
    """Exact batch sizes (up to 8) from the service's cumulative batch-size histogram (read by prometheus_client)."""
    cumulative = sorted((float(sample.labels["le"]), sample.value)
                        for family in text_string_to_metric_families(metrics_text)
                        for sample in family.samples
                        if sample.name == "probclip_search_batch_size_bucket" and sample.labels["index"] == index_name)
    sizes, previous = {}, 0.0
    for le, n in cumulative:
        if n > previous:
            if le > 8:
                raise RuntimeError(f"batches larger than 8 seen (bucket le={le}); use at most 8 clients")
            sizes[int(le)] = int(n - previous)
        previous = n
    return sizes


def in_process(index: SearchIndex, queries: list[str], sizes: dict[int, int], k: int) -> float:
    """Seconds to search ``queries`` in-process in batches of the given sizes (the service's grouping)."""
    plan = [size for size, count in sorted(sizes.items()) for _ in range(count)]
    rng = np.random.default_rng(0)
    rng.shuffle(plan)
    start, position = time.perf_counter(), 0
    for size in plan:
        batch = queries[position: position + size] or queries[:size]
        index.search(batch, k=k)
        position += size
    return time.perf_counter() - start


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=100_000)
    parser.add_argument("--queries", type=int, default=2000)
    parser.add_argument("--clients", type=int, default=8)
    parser.add_argument("--k", type=int, default=10)
    parser.add_argument("--warmup", type=int, default=50)
    parser.add_argument("--threads", type=int, default=1,
                        help="torch and FAISS threads, the same for the service and the in-process run (default 1)")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    faiss.omp_set_num_threads(args.threads)
    if not 1 <= args.clients <= 8:
        parser.error("--clients must be from 1 to 8 (batch sizes are read exactly up to 8)")
    with tempfile.TemporaryDirectory(prefix="bench-serve-") as tmp:
        t0 = time.perf_counter()
        collection, model = make_collection(Path(tmp), args.rows)
        print(f"collection: {args.rows} random Gaussian rows, D={model.config.embed_dim}, flat index "
              f"({time.perf_counter() - t0:.1f} s to write and index)", flush=True)
        queries = make_queries(args.queries + args.warmup)
        warmup, measured = queries[:args.warmup], queries[args.warmup:]
        process, url = start_server(collection, args.threads)
        try:
            index_name = httpx.get(url + "/indices", timeout=10).json()[0]["name"]
            load(url, index_name, warmup, args.clients, args.k)
            before = batch_sizes(httpx.get(url + "/metrics", timeout=10).text, index_name)
            seconds, latencies, statuses = load(url, index_name, measured, args.clients, args.k)
            after = batch_sizes(httpx.get(url + "/metrics", timeout=10).text, index_name)
        finally:
            process.terminate()
            process.wait(timeout=30)
        sizes = {s: after.get(s, 0) - before.get(s, 0) for s in after if after.get(s, 0) - before.get(s, 0) > 0}
        service_qps = len(measured) / seconds
        ms = np.percentile(np.array(latencies) * 1000, [50, 95, 99])
        server_errors = sum(n for status, n in statuses.items() if status >= 500)
        mean_batch = sum(s * n for s, n in sizes.items()) / max(1, sum(sizes.values()))
        print(f"service: {len(measured)} queries from {args.clients} clients in {seconds:.2f} s = {service_qps:.1f} "
              f"queries/s; latency p50 {ms[0]:.1f} ms, p95 {ms[1]:.1f} ms, p99 {ms[2]:.1f} ms; statuses {statuses}")
        print(f"service batches: {dict(sorted(sizes.items()))} (mean {mean_batch:.2f} queries per call)")
        index = SearchIndex.load(collection, modality="image", model=model)
        in_process(index, warmup, {1: len(warmup)}, args.k)
        base_seconds = in_process(index, measured, sizes, args.k)
        base_qps = len(measured) / base_seconds
        single_seconds = in_process(index, measured, {1: len(measured)}, args.k)
        print(f"in-process, same batches: {base_qps:.1f} queries/s; one query per call: "
              f"{len(measured) / single_seconds:.1f} queries/s")
        print(f"ratio service / in-process (same batches): {service_qps / base_qps:.2f}; 5xx answers: {server_errors}")
    return 1 if server_errors else 0


if __name__ == "__main__":
    sys.exit(main())
