"""Search speed and recall, each part against its baseline measured in the same run (ratios).

Parts (``--parts``, default all):

- ``flat``: exact CSD search (``probclip.search`` flat index over ``[mu, sqrt(u)]``, memory-mapped, with the exact
  re-rank and result metadata) vs FAISS ``IndexFlatIP`` on the means alone (what a deterministic CLIP user runs),
  same N, D and query batch: queries/s ratio.
- ``hnsw``: the HNSW index (re-rank of ``k x oversample`` candidates) vs the flat index: recall@10 against the exact
  CSD top-10 and queries/s ratio.
- ``inclusion``: inclusion search from candidates (inner-product index over the approximation + CSD index, exact
  re-rank) vs a brute-force inclusion scan (``probclip.inclusion_score`` over every row): recall@10 and speed
  ratio, both directions, on random Gaussians and on the synthetic world's embeddings (``--quickstart DIR``: the
  collection ``prepare_quickstart_collection`` builds from a quickstart model).
- ``head``: the hierarchy head's ranking of ``included`` / ``includes`` (with the direction check) from the candidate
  path (exact inner products of the head's logit and margin over the stored inclusion features, the CSD index and
  the rows nearest in ``u``, exact re-rank) vs an exhaustive head scan (every row's exact float64 logits):
  recall@10 and speed ratio, on a text collection of random Gaussians with a random head whose weights are
  standard normal divided by each term's spread over the collection, and a generality of 2 for ``includes``
  (:func:`random_head`).
- ``embed``: ``probclip embed`` images/s (decoding in DataLoader workers, writing shards) vs bare ``encode_image``
  on the same images, preprocessed in advance, same batch size.

Galleries are clustered random Gaussians (unit means around ``--clusters`` centres, log-variances ``N(-3, 0.5)``
plus a per-item offset; queries drawn the same way), written as a float16 collection.

    python benchmarks/bench_search.py --n 200000 --dim 768 [--hnsw-n 100000] [--inclusion-n 50000] \
        [--quickstart DIR] [--parts flat,hnsw,inclusion,head,embed]
"""

from __future__ import annotations

import argparse
import json
import shutil
import statistics
import tempfile
import time
from pathlib import Path

import faiss
import numpy as np
import torch

import probclip
from probclip.search import SearchIndex, build_index, embed_collection
from probclip.search.writer import write_collection


def clustered_gaussians(n: int, dim: int, seed: int, clusters: int = 1000, spread: float = 0.6):
    """float32 unit means ``[n, D]`` around random centres and log-variances ``[n, D]``."""
    rng = np.random.default_rng(seed)
    centres = rng.standard_normal((clusters, dim)).astype(np.float32)
    mean = np.empty((n, dim), np.float32)
    logvar = np.empty((n, dim), np.float32)
    for start in range(0, n, 50_000):
        m = min(50_000, n - start)
        c = centres[rng.integers(0, clusters, m)]
        block = c / np.linalg.norm(c, axis=1, keepdims=True) + spread * rng.standard_normal((m, dim)) / np.sqrt(dim)
        mean[start:start + m] = block / np.linalg.norm(block, axis=1, keepdims=True)
        logvar[start:start + m] = (-3 + 0.5 * rng.standard_normal((m, dim)) + rng.standard_normal((m, 1)))
    return mean, logvar


def make_collection(root: Path, n: int, dim: int, seed: int = 0, modality: str = "image") -> Path:
    if (root / "manifest.json").is_file():  # kept in a --work folder by an earlier run
        return root
    record = {"name": "bench", "config_hash": "0" * 16, "fingerprint": "b" * 16, "embed_dim": dim, "source": None}
    mean, logvar = clustered_gaussians(n, dim, seed)
    write_collection(root, {modality: (mean, logvar)}, model=record, dtype="float16", shard_rows=50_000)
    return root


def queries(count: int, dim: int) -> probclip.ProbEmbedding:
    mean, logvar = clustered_gaussians(count, dim, seed=12345)
    return probclip.ProbEmbedding(torch.from_numpy(mean), torch.from_numpy(logvar))


def timed(fn, repeats: int = 3) -> float:
    """Median seconds of ``fn()`` over ``repeats`` runs after one warm-up."""
    fn()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def timed_pair(first, second, repeats: int = 5) -> tuple[float, float]:
    """Median seconds of ``first()`` and ``second()``, alternating which runs first, so load hits both alike."""
    first(), second()
    a, b = [], []
    for i in range(repeats):
        pair = [(first, a), (second, b)]
        for fn, sink in pair if i % 2 == 0 else reversed(pair):
            start = time.perf_counter()
            fn()
            sink.append(time.perf_counter() - start)
    return statistics.median(a), statistics.median(b)


#: Relative score tolerance of the near-tie recall of the inclusion comparison.
EPSILON = 1e-3


def recall(found: list, truth: list) -> float:
    """Pooled recall: true items found over true items (NaN when there are none)."""
    total = sum(len(b) for b in truth)
    hits = sum(len(set(a.tolist()) & set(b.tolist())) for a, b in zip(found, truth, strict=True))
    return hits / total if total else float("nan")


def part_flat(work: Path, n: int, dim: int, q: int) -> dict:
    root = make_collection(work / f"flat-{n}", n, dim)
    start = time.perf_counter()
    build_index(root, kind="flat", progress=False, inclusion=False)
    build_s = time.perf_counter() - start
    index = SearchIndex.load(root, "image")
    query = queries(q, dim)
    means = np.ascontiguousarray(np.concatenate([index.stored.means(np.arange(s.first_row, s.first_row + s.rows))
                                                 for s in index.stored.shards]))
    baseline = faiss.IndexFlatIP(dim)
    baseline.add(means)
    qm = np.ascontiguousarray(query.mean.numpy())
    t_ours, t_base = timed_pair(lambda: index.search(query, k=10), lambda: baseline.search(qm, 10))
    out = {"n": n, "dim": dim, "queries": q, "build_s": round(build_s, 1), "probclip_csd_qps": q / t_ours,
           "faiss_flatip_means_qps": q / t_base, "ratio": t_base / t_ours}
    print(f"flat  N={n} D={dim} Q={q}: probclip exact CSD {q / t_ours:8.1f} q/s   FAISS IndexFlatIP(means) "
          f"{q / t_base:8.1f} q/s   ratio {t_base / t_ours:.3f}   (index built in {build_s:.0f} s)", flush=True)
    return out


def part_hnsw(work: Path, n: int, dim: int, q: int, oversample: int) -> dict:
    root = make_collection(work / f"hnsw-{n}", n, dim)
    build_index(root, kind="flat", progress=False, inclusion=False)
    flat = SearchIndex.load(root, "image")
    query = queries(q, dim)
    truth = [r.ids for r in flat.search(query, k=10)]
    graph = work / f"hnsw-{n}-graph"
    build_s = float("nan")
    if not (graph / "index" / "image.hnsw.faiss").is_file():  # a --work folder of an earlier run keeps its graph
        shutil.copytree(root, graph, dirs_exist_ok=True)
        start = time.perf_counter()
        build_index(graph, kind="hnsw", progress=False, inclusion=False)
        build_s = time.perf_counter() - start
    hnsw = SearchIndex.load(work / f"hnsw-{n}-graph", "image")
    found = [r.ids for r in hnsw.search(query, k=10, oversample=oversample)]
    t_hnsw, t_flat = timed_pair(lambda: hnsw.search(query, k=10, oversample=oversample),
                                lambda: flat.search(query, k=10))
    out = {"n": n, "dim": dim, "queries": q, "oversample": oversample, "recall_at_10": recall(found, truth),
           "hnsw_qps": q / t_hnsw, "flat_qps": q / t_flat, "speedup": t_flat / t_hnsw, "build_s": round(build_s, 1)}
    print(f"hnsw  N={n} D={dim} Q={q}: recall@10 {out['recall_at_10']:.3f}   HNSW {q / t_hnsw:8.1f} q/s   flat "
          f"{q / t_flat:8.1f} q/s   speed-up {t_flat / t_hnsw:.1f}x   (built in {build_s:.0f} s)", flush=True)
    return out


def _inclusion_compare(label: str, index: SearchIndex, query: probclip.ProbEmbedding, oversample: int) -> dict:
    gallery = index.stored.embedding(np.arange(index.rows))
    results = {}
    for direction in ("includes", "included"):
        def brute(direction=direction):
            """The directional ranking over every row: the test where it beats the reverse test, else -inf."""
            item_in_query = probclip.inclusion_score(gallery, query).T  # [Q, N]
            query_in_item = probclip.inclusion_score(query, gallery)
            asked, reverse = ((item_in_query, query_in_item) if direction == "includes"
                              else (query_in_item, item_in_query))
            return torch.where(asked > reverse, asked, torch.tensor(float("-inf")))

        scores = brute().numpy()
        ids = np.arange(index.rows)
        truth = [top[np.isfinite(s[top])] for s in scores for top in [np.lexsort((ids, -s))[:10]]]
        answers = index.search(query, k=10, score=direction, exhaustive=False, oversample=oversample)
        found = [r.ids for r in answers]
        # near-tie recall (ann-benchmarks' epsilon recall): a result counts when its score is within a relative
        # EPSILON of the 10th true score; near-duplicate items make id recall a lottery among equal scores
        near = sum(min(len(t), int((r.scores >= s[t[-1]] - EPSILON * abs(s[t[-1]])).sum()))
                   for r, t, s in zip(answers, truth, scores, strict=True) if len(t))
        total = sum(len(t) for t in truth)
        t_brute = timed(brute, repeats=1)
        t_ours = timed(lambda d=direction: index.search(query, k=10, score=d, exhaustive=False,
                                                        oversample=oversample), repeats=1)
        results[direction] = {"recall_at_10": recall(found, truth), "speedup": t_brute / t_ours,
                              "true_items": int(total), "near_tie_recall": near / total if total else float("nan"),
                              "probclip_qps": len(query) / t_ours, "brute_force_qps": len(query) / t_brute}
        print(f"inclusion {label} N={index.rows} D={index.dim} Q={len(query)} {direction:8s}: recall@10 "
              f"{results[direction]['recall_at_10']:.3f} (of {results[direction]['true_items']} items passing the "
              f"check; near-tie {results[direction]['near_tie_recall']:.3f})   "
              f"candidates+re-rank {len(query) / t_ours:8.1f} q/s   "
              f"brute force {len(query) / t_brute:8.1f} q/s   speed-up {t_brute / t_ours:.1f}x", flush=True)
    return results


def part_inclusion(work: Path, n: int, dim: int, q: int, oversample: int, quickstart: str | None,
                   synthetic_scenes: int = 0) -> dict:
    root = make_collection(work / f"incl-{n}", n, dim)
    build_index(root, kind="flat", progress=False)
    out = {"random": _inclusion_compare("random", SearchIndex.load(root, "image"), queries(q, dim), oversample)}
    if quickstart:
        from probclip.search import embed_collection
        from probclip.search.quickstart import prepare_quickstart_collection, write_synthetic_test_split

        collections = {"": prepare_quickstart_collection(quickstart, progress=False)}
        if synthetic_scenes:  # a larger test split of the same world, embedded with the same model
            data = write_synthetic_test_split(work / f"synth-{synthetic_scenes}", num_scenes=synthetic_scenes)
            collection = work / f"synth-{synthetic_scenes}-collection"
            if not (collection / "manifest.json").is_file():
                embed_collection(str(Path(quickstart) / "model"), data, collection, batch_size=256, progress=False)
                build_index(collection, kind="flat", progress=False)
            collections[f"-{synthetic_scenes}"] = collection
        for suffix, collection in collections.items():
            galleries = {m: SearchIndex.load(collection, m) for m in ("text", "image")}
            spread = {m: g.embedding(np.arange(0, g.rows, max(1, g.rows // q))[:q]) for m, g in galleries.items()}
            for gallery, asking in (("text", "text"), ("image", "text"), ("image", "image")):
                out[f"synthetic{suffix}-{gallery}-by-{asking}"] = _inclusion_compare(
                    f"synthetic {gallery}s by {asking}s", galleries[gallery], spread[asking], oversample)
    return out


def random_head(sample: probclip.ProbEmbedding, seed: int = 0, generality: float = 2.0):
    """A hierarchy head with random weights (``text_in_text`` and ``image_in_text``): standard normal, each divided
    by the spread of its term over pairs of ``sample`` and by ``sqrt(len(TERMS) D)``, so every term and dimension weighs
    alike and the logits are of order 1; ``generality`` for "more specific" (the quickstart's heads chose 2-3 with
    word-dropped text views, 0.25 with phrase views)."""
    from probclip.hierarchy_head import TERMS, HierarchyHead, PairWeights, pair_terms

    spread = pair_terms(sample, sample).reshape(-1, len(TERMS), sample.dim).std(0).clamp_min(1e-12).numpy()
    rng = np.random.default_rng(seed)
    scale = np.sqrt(len(TERMS) * sample.dim)
    return HierarchyHead({kind: PairWeights(rng.normal(size=(len(TERMS), sample.dim)) / spread / scale, 0.0, "random",
                                            generality) for kind in ("text_in_text", "image_in_text")})


def part_head(work: Path, n: int, dim: int, q: int, oversample: int) -> dict:
    from probclip.search.collection_head import carry_head

    root = make_collection(work / f"head-{n}", n, dim, modality="text")
    index_file = root / "index" / "text.inclusion.npy"
    if not index_file.is_file():
        build_index(root, kind="flat", progress=False)
    index = SearchIndex.load(root, "text")
    head = random_head(index.stored.embedding(np.arange(0, index.rows, max(1, index.rows // 32))[:32]))
    carry_head(root, head.to_file(work / "head.safetensors"))
    index = SearchIndex.load(root, "text")
    query = queries(q, dim)
    out = {}
    for name, score, modality in (("captions-by-captions-included", "included", "text"),
                                  ("captions-by-captions-includes", "includes", "text"),
                                  ("captions-by-images-included", "included", "image")):
        def scan(score=score, modality=modality):
            return index.search(query, k=10, score=score, query_modality=modality, exhaustive=True)

        def fast(score=score, modality=modality):
            return index.search(query, k=10, score=score, query_modality=modality, exhaustive=False,
                                oversample=oversample)

        truth, found = scan(), fast()
        assert truth[0].ranked_by == found[0].ranked_by == "hierarchy head"
        t_scan, t_fast = timed_pair(scan, fast, repeats=1)
        out[name] = {"recall_at_10": recall([r.ids for r in found], [r.ids for r in truth]),
                     "true_items": sum(len(r) for r in truth), "speedup": t_scan / t_fast,
                     "probclip_qps": q / t_fast, "exhaustive_qps": q / t_scan}
        print(f"head {name} N={index.rows} D={index.dim} Q={q}: recall@10 {out[name]['recall_at_10']:.3f} (of "
              f"{out[name]['true_items']} items passing the check)   candidates+re-rank {q / t_fast:8.1f} q/s   "
              f"exhaustive head scan {q / t_scan:8.1f} q/s   speed-up {t_scan / t_fast:.1f}x", flush=True)
    return out


def part_embed(work: Path, count: int, model_name: str, batch: int, workers: int) -> dict:
    from PIL import Image

    folder = work / "embed-images"
    shutil.rmtree(folder, ignore_errors=True)  # a --work folder may hold another run's images
    folder.mkdir()
    rng = np.random.default_rng(0)
    for i in range(count):
        Image.fromarray(rng.integers(0, 256, (96, 128, 3), dtype=np.uint8)).save(folder / f"{i:05d}.jpg", quality=90)
    torch.manual_seed(0)
    model = probclip.create_model(model_name).eval()
    transform = probclip.image_transform(model.config.vision)
    pixels = torch.stack([transform(probclip.load_image(p)) for p in sorted(folder.iterdir())])

    def bare():
        with torch.inference_mode():
            for start in range(0, count, batch):
                model.encode_image(pixels[start:start + batch])

    def job():
        out = work / "embed-out"
        shutil.rmtree(out, ignore_errors=True)
        embed_collection(model, folder, out, modality="image", batch_size=batch, num_workers=workers,
                         progress=False)

    t_bare, t_job = timed_pair(bare, job, repeats=3)
    out = {"images": count, "model": model_name, "batch": batch, "workers": workers, "embed_ips": count / t_job,
           "bare_encode_ips": count / t_bare, "ratio": t_bare / t_job}
    print(f"embed {model_name} {count} images, batch {batch}, {workers} workers: probclip embed "
          f"{count / t_job:7.1f} img/s   bare encode_image {count / t_bare:7.1f} img/s   ratio {t_bare / t_job:.3f}",
          flush=True)
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--n", type=int, default=200_000, help="rows of the flat comparison")
    parser.add_argument("--dim", type=int, default=768)
    parser.add_argument("--queries", type=int, default=256)
    parser.add_argument("--hnsw-n", type=int, default=100_000)
    parser.add_argument("--hnsw-oversample", type=int, default=4)
    parser.add_argument("--inclusion-n", type=int, default=50_000)
    parser.add_argument("--inclusion-queries", type=int, default=20)
    parser.add_argument("--inclusion-oversample", type=int, default=10)
    parser.add_argument("--quickstart", default=None, help="a `probclip quickstart --out` folder")
    parser.add_argument("--synthetic-scenes", type=int, default=0,
                        help="also a synthetic-world collection of this many test scenes (with --quickstart)")
    parser.add_argument("--embed-images", type=int, default=512)
    parser.add_argument("--embed-model", default="ProLIP-Small-Word")
    parser.add_argument("--embed-batch", type=int, default=64)
    parser.add_argument("--embed-workers", type=int, default=1)
    parser.add_argument("--parts", default="flat,hnsw,inclusion,head,embed")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--work", default=None, help="scratch folder (default: a temporary one, removed)")
    parser.add_argument("--json", default=None, help="also write the numbers to this file")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    faiss.omp_set_num_threads(args.threads)
    work = Path(args.work or tempfile.mkdtemp(prefix="bench-search-"))
    work.mkdir(parents=True, exist_ok=True)
    parts = args.parts.split(",")
    numbers = {}
    try:
        if "flat" in parts:
            numbers["flat"] = part_flat(work, args.n, args.dim, args.queries)
        if "hnsw" in parts:
            numbers["hnsw"] = part_hnsw(work, args.hnsw_n, args.dim, args.queries, args.hnsw_oversample)
        if "inclusion" in parts:
            numbers["inclusion"] = part_inclusion(work, args.inclusion_n, args.dim, args.inclusion_queries,
                                                  args.inclusion_oversample, args.quickstart, args.synthetic_scenes)
        if "head" in parts:
            numbers["head"] = part_head(work, args.inclusion_n, args.dim, args.inclusion_queries,
                                        args.inclusion_oversample)
        if "embed" in parts:
            numbers["embed"] = part_embed(work, args.embed_images, args.embed_model, args.embed_batch,
                                          args.embed_workers)
    finally:
        if args.work is None:
            shutil.rmtree(work, ignore_errors=True)
    if args.json:
        Path(args.json).write_text(json.dumps(numbers, indent=2) + "\n")


if __name__ == "__main__":
    main()
