"""Retrieval metrics at scale: 5,000 images x 25,000 captions (5 per image), embeddings given.

Measures probclip's exact retrieval metrics (R@1/5/10, mAP@R, R-Precision, both directions, CSD and
mean-only scores, uncertainty bins) on random Gaussian embeddings, on CPU: wall time and peak resident
memory of the process. Baseline, run in a fresh child process on the same embeddings: the direct
approach (full score matrix, full argsort per query) for the image-to-text direction with the mean
score. Prints both and their ratios.

    .venv/bin/python benchmarks/bench_retrieval.py [--images 5000] [--per-image 5] [--dim 768]
"""

from __future__ import annotations

import argparse
import multiprocessing as mp
import resource
import time

import torch


def make_embeddings(n_images: int, per_image: int, dim: int, seed: int = 0):
    from probclip.embedding import ProbEmbedding

    g = torch.Generator().manual_seed(seed)
    img_mean = torch.nn.functional.normalize(torch.randn(n_images, dim, generator=g), dim=-1)
    caption_image = torch.arange(n_images).repeat_interleave(per_image)
    txt_mean = img_mean[caption_image] + 6.0 * torch.randn(n_images * per_image, dim, generator=g) / dim**0.5
    txt_mean = torch.nn.functional.normalize(txt_mean, dim=-1)
    img = ProbEmbedding(img_mean, torch.randn(n_images, dim, generator=g) * 0.5 - 6)
    txt = ProbEmbedding(txt_mean, torch.randn(n_images * per_image, dim, generator=g) * 0.5 - 6)
    return img, txt, caption_image


def peak_rss_mib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux reports KiB


def _baseline(args, queue) -> None:
    """Direct approach: full [Q, G] matrix and a full argsort; image-to-text, mean score only."""
    img, txt, caption_image = make_embeddings(args.images, args.per_image, args.dim)
    start = time.perf_counter()
    scores = img.mean @ txt.mean.T
    order = torch.argsort(scores, dim=1, descending=True)
    hits = caption_image[order] == torch.arange(args.images)[:, None]  # [Q, G] bool in ranked order
    r = hits.sum(1, keepdim=True)
    first = hits.float().argmax(1)
    recalls = {f"r{k}": float((first < k).float().mean()) for k in (1, 5, 10)}
    cum = hits.cumsum(1)
    positions = torch.arange(1, hits.shape[1] + 1)
    within = positions[None] <= r
    map_at_r = float(((cum / positions) * hits * within).sum(1).div(r.squeeze(1)).mean())
    elapsed = time.perf_counter() - start
    queue.put(dict(seconds=elapsed, peak_rss_mib=peak_rss_mib(), map_at_r=map_at_r, **recalls))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--images", type=int, default=5000)
    parser.add_argument("--per-image", type=int, default=5)
    parser.add_argument("--dim", type=int, default=768)
    parser.add_argument("--skip-baseline", action="store_true")
    args = parser.parse_args()

    from probclip.eval.retrieval import retrieval_metrics

    img, txt, caption_image = make_embeddings(args.images, args.per_image, args.dim)
    rss_inputs = peak_rss_mib()
    start = time.perf_counter()
    results = retrieval_metrics(img, txt, caption_image)
    elapsed = time.perf_counter() - start
    rss = peak_rss_mib()
    print(f"probclip retrieval_metrics: {args.images} images x {args.images * args.per_image} captions, D={args.dim}, "
          f"{torch.get_num_threads()} threads")
    print(f"  time {elapsed:.1f} s (both directions, csd + mean scores, uncertainty bins)")
    print(f"  peak RSS {rss:.0f} MiB (of which inputs and libraries {rss_inputs:.0f} MiB)")
    for method in ("csd", "mean"):
        m = results[method]
        print(f"  {method:4s} i2t R@1 {m['i2t']['r1']:.4f} R@5 {m['i2t']['r5']:.4f} mAP@R {m['i2t']['map_at_r']:.4f} | "
              f"t2i R@1 {m['t2i']['r1']:.4f} R@10 {m['t2i']['r10']:.4f}")
    if args.skip_baseline:
        return
    ctx = mp.get_context("spawn")
    queue = ctx.Queue()
    child = ctx.Process(target=_baseline, args=(args, queue))
    child.start()
    base = queue.get()
    child.join()
    # our time for the same work (i2t, mean score) alone
    from probclip.eval.metrics import metrics_from_ranks
    from probclip.eval.scoring import PositiveLists, rank_positives

    positives = PositiveLists.from_labels(torch.arange(args.images), caption_image)
    start = time.perf_counter()
    ranks = rank_positives(img, txt, positives, "mean", depth=max(10, args.per_image))
    same = {k: float(v.mean()) for k, v in metrics_from_ranks(ranks, positives.counts).items()}
    ours_same = time.perf_counter() - start
    print(f"baseline (full matrix + argsort, i2t mean score only): {base['seconds']:.1f} s, "
          f"peak RSS {base['peak_rss_mib']:.0f} MiB")
    print(
        f"  same work with probclip: {ours_same:.1f} s -> speed-up x{base['seconds'] / ours_same:.1f}; "
        f"agreement: R@1 {same['r1']:.4f} vs {base['r1']:.4f}, mAP@R {same['map_at_r']:.4f} vs {base['map_at_r']:.4f}"
    )
    print(f"  memory ratio (whole-process peak RSS): baseline / probclip = {base['peak_rss_mib'] / rss:.2f}")


if __name__ == "__main__":
    main()
