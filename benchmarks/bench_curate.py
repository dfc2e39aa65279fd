"""``probclip curate score`` pairs/s against ``probclip embed`` on the same shards, measured in the same run.

Both jobs run in this process on the same pool (a noisy pool of the synthetic world in DataComp's layout: one
caption per image), the same model, batch size and DataLoader workers, each into a fresh output folder; the runs
alternate (embed, score, embed, score, ...) and the median of ``--repeats`` is reported. ``probclip embed`` embeds
the pool's images and captions; ``curate score`` does the same through the same job and then reads the shards'
keys and uids with the tar reader and scores every pair.

    python benchmarks/bench_curate.py --pairs 2048 --model ProLIP-Small-Word [--model-dir DIR] [--repeats 3]
"""

from __future__ import annotations

import argparse
import json
import shutil
import statistics
import tempfile
import time
from pathlib import Path

import torch

import probclip
from probclip.curate import score_pool
from probclip.curate.noisy_pool import build_noisy_pool
from probclip.search import embed_collection


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--pairs", type=int, default=2048)
    parser.add_argument("--model", default="ProLIP-Small-Word", help="registered architecture (random weights)")
    parser.add_argument("--model-dir", default=None, help="a checkpoint folder instead (e.g. a quickstart model)")
    parser.add_argument("--batch", type=int, default=64)
    parser.add_argument("--workers", type=int, default=1)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's)")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    work = Path(tempfile.mkdtemp(prefix="bench-curate-"))
    try:
        pool = work / "pool"
        build_noisy_pool(pool, size=args.pairs, samples_per_shard=1000)
        if args.model_dir:
            model, name = args.model_dir, Path(args.model_dir).name
        else:
            torch.manual_seed(0)
            model_path = work / "model"
            probclip.create_model(args.model).save_pretrained(model_path)
            model, name = str(model_path), args.model
        common = dict(batch_size=args.batch, num_workers=args.workers, progress=False)
        times: dict[str, list[float]] = {"embed": [], "score": []}
        for repeat in range(args.repeats):
            start = time.perf_counter()
            embed_collection(model, pool, work / f"embed-{repeat}", **common)
            times["embed"].append(time.perf_counter() - start)
            start = time.perf_counter()
            score_pool(model, pool, work / f"score-{repeat}", **common)
            times["score"].append(time.perf_counter() - start)
        rates = {k: args.pairs / statistics.median(v) for k, v in times.items()}
        result = {"model": name, "pairs": args.pairs, "batch": args.batch, "workers": args.workers,
                  "threads": torch.get_num_threads(), "seconds": times, "embed_pairs_per_s": rates["embed"],
                  "score_pairs_per_s": rates["score"], "ratio": rates["score"] / rates["embed"]}
        print(json.dumps(result, indent=1))
        print(f"| {name} | {args.pairs} | {args.batch} | {args.workers} | {rates['embed']:.1f} pairs/s | "
              f"{rates['score']:.1f} pairs/s | **{rates['score'] / rates['embed']:.2f}** |")
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
