"""Peak memory of ``probclip index`` on a synthetic collection (default 1,000,000 x 768, float16, 50,000-row shards).

Writes the collection once (clustered Gaussians, as in ``bench_search.py``) into ``--work``, then runs
``probclip index DIR --kind KIND`` in a child process and reports its peak resident memory (``ru_maxrss`` of the
child), its wall time and the bytes of the files it wrote, as JSON on stdout.

    python benchmarks/bench_index_memory.py --work /tmp/index-1m [--n 1000000] [--dim 768] [--kind flat]
"""

from __future__ import annotations

import argparse
import json
import resource
import shutil
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from bench_search import make_collection  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--work", required=True, help="folder for the collection (kept between runs)")
    parser.add_argument("--n", type=int, default=1_000_000)
    parser.add_argument("--dim", type=int, default=768)
    parser.add_argument("--kind", default="flat")
    parser.add_argument("--no-inclusion", action="store_true")
    args = parser.parse_args()
    root = make_collection(Path(args.work) / f"collection-{args.n}x{args.dim}", args.n, args.dim)
    shutil.rmtree(root / "index", ignore_errors=True)
    command = [sys.executable, "-m", "probclip.cli", "index", str(root), "--kind", args.kind, "--no-progress"]
    command += ["--no-inclusion"] if args.no_inclusion else []
    start = time.perf_counter()
    subprocess.run(command, check=True)
    wall = time.perf_counter() - start
    peak_kib = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
    files = {p.name: p.stat().st_size for p in sorted((root / "index").iterdir())}
    print(json.dumps({"n": args.n, "dim": args.dim, "kind": args.kind, "inclusion": not args.no_inclusion,
                      "peak_rss_mib": round(peak_kib / 1024, 1), "wall_s": round(wall, 1), "files": files}))


if __name__ == "__main__":
    main()
