"""What checking the shard files' fingerprints costs: opening a collection and its first search, with and without.

One float16 collection of ``--n`` random Gaussian rows of ``--dim`` dimensions (shards of 50,000 rows) with a flat
index is searched in two ways that differ only in the manifest: ``checked``, the manifest ``probclip embed`` writes
(every shard record holds its files' fingerprints, checked the first time each file is opened), and
``unchecked``, the same manifest without them (as written by an earlier release: nothing is checked). The second
folder holds hard links to the first one's files, so both read the same bytes from the same page cache.

Each measurement is a fresh Python process (the check runs once per file and process), timing
``SearchIndex.load`` + the first CSD search (k = 10, with result metadata), then a second search, then
``StoredRows.check_files()`` (what ``probclip serve`` runs at start: every shard file opened and, when recorded,
fingerprinted). The two sides alternate repeat by repeat after one warm-up each; medians of ``--repeats``.

    python benchmarks/bench_shard_check.py [--n 200000] [--dim 256] [--repeats 7]
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np

from probclip.search import build_index
from probclip.search.writer import write_collection

MODEL = {"name": "random-gaussians", "config_hash": "0" * 16, "fingerprint": "f" * 16, "source": None}

#: Run in a fresh process per measurement: prints the times (seconds) as JSON.
MEASURE = """
import json, sys, time
import numpy as np, torch
from probclip import ProbEmbedding
from probclip.search import SearchIndex
root, dim = sys.argv[1], int(sys.argv[2])
rng = np.random.default_rng(1)
mean = rng.standard_normal((1, dim)).astype(np.float32)
query = ProbEmbedding(torch.from_numpy(mean / np.linalg.norm(mean)), torch.full((1, dim), -3.0))
start = time.perf_counter()
index = SearchIndex.load(root, "image")
first = index.search(query, k=10)[0]
assert len(first.metadata) == 10
loaded = time.perf_counter()
index.search(query, k=10)
second = time.perf_counter()
index.stored.check_files()
checked = time.perf_counter()
print(json.dumps({"load_first": loaded - start, "second": second - loaded, "check_files": checked - second}))
"""


def make_collections(work: Path, n: int, dim: int) -> tuple[Path, Path]:
    """``work/checked`` (as embedded and indexed) and ``work/unchecked`` (hard links, shard fingerprints dropped)."""
    checked, unchecked = work / "checked", work / "unchecked"
    rng = np.random.default_rng(0)
    mean = rng.standard_normal((n, dim)).astype(np.float32)
    mean /= np.linalg.norm(mean, axis=1, keepdims=True)
    logvar = (rng.standard_normal((n, dim)) * 0.5 - 3).astype(np.float32)
    write_collection(checked, {"image": (mean, logvar)}, model=dict(MODEL, embed_dim=dim), shard_rows=50_000)
    build_index(checked, kind="flat", inclusion=False, progress=False)
    shutil.copytree(checked, unchecked, copy_function=os.link)
    manifest = json.loads((checked / "manifest.json").read_text())
    for shard in manifest["modalities"]["image"]["shards"]:
        shard.pop("fingerprints")
    (unchecked / "manifest.json").unlink()  # a hard link: write a file of its own
    (unchecked / "manifest.json").write_text(json.dumps(manifest))
    return checked, unchecked


def measure(root: Path, dim: int) -> dict:
    out = subprocess.run([sys.executable, "-c", MEASURE, str(root), str(dim)], check=True, capture_output=True,
                         text=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--n", type=int, default=200_000)
    parser.add_argument("--dim", type=int, default=256)
    parser.add_argument("--repeats", type=int, default=7)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        checked, unchecked = make_collections(Path(tmp), args.n, args.dim)
        sides = {"unchecked": unchecked, "checked": checked}
        bytes_ = sum(p.stat().st_size for p in checked.rglob("*") if p.is_file() and "index" not in p.parts
                     and p.suffix in (".npy", ".parquet") and p.parent.name != "inputs")
        for root in sides.values():
            measure(root, args.dim)  # warm-up: the files in the page cache
        times: dict[str, list[dict]] = {name: [] for name in sides}
        for _ in range(args.repeats):
            for name, root in sides.items():
                times[name].append(measure(root, args.dim))
    print(f"{args.n} rows x {args.dim} dims, float16, {-(-args.n // 50_000)} shards; shard files {bytes_ / 2**20:.0f} "
          f"MiB; medians of {args.repeats} fresh processes (seconds)")
    medians = {name: {key: statistics.median(t[key] for t in runs) for key in runs[0]} for name, runs in times.items()}
    for key in ("load_first", "second", "check_files"):
        base, with_check = medians["unchecked"][key], medians["checked"][key]
        print(f"{key:12s} unchecked {base:.4f}  checked {with_check:.4f}  ratio {with_check / base:.2f}x  "
              f"(+{(with_check - base) * 1000:.0f} ms)")


if __name__ == "__main__":
    main()
