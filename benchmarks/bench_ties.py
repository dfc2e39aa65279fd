"""ECCV Caption / CxC / COCO 5k / COCO 1k metrics with heavily tied scores vs without ties.

Embeddings for the COCO Karpathy 5k test split (5,000 images x 25,000 captions, the ids of the ground truth
shipped in the ``eccv-caption`` package), random Gaussians on CPU. Untied: every embedding is distinct.
Tied: images and captions are copies of ``--levels`` distinct Gaussians each, so every query sees only
that many distinct scores over its gallery (a tie block holds ~25,000 / levels captions or ~5,000 / levels
images). Both runs compute every benchmark, both directions, CSD and mean scores. Prints the two wall
times, their ratio (the target: tied <= 2x untied), a check of tied ranks against a direct stable sort,
and the core step (``positive_ranks``) alone, tied and untied.

    .venv/bin/python benchmarks/bench_ties.py [--dim 256] [--levels 20] [--repeats 1]
"""

from __future__ import annotations

import argparse
import time

import torch


def make_embeddings(n_images: int, n_captions: int, dim: int, levels: int | None, seed: int = 0):
    from probclip.embedding import ProbEmbedding

    g = torch.Generator().manual_seed(seed)

    def draw(n: int) -> ProbEmbedding:
        rows = n if levels is None else levels
        mean = torch.nn.functional.normalize(torch.randn(rows, dim, generator=g), dim=-1)
        logvar = torch.randn(rows, dim, generator=g) * 0.5 - 6
        if levels is not None:
            pick = torch.randint(0, levels, (n,), generator=g)
            mean, logvar = mean[pick], logvar[pick]
        return ProbEmbedding(mean, logvar)

    return draw(n_images), draw(n_captions)


def timed(fn, repeats: int) -> tuple[float, object]:
    best, out = float("inf"), None
    for _ in range(repeats):
        start = time.perf_counter()
        out = fn()
        best = min(best, time.perf_counter() - start)
    return best, out


def check_ranks(levels: int, dim: int, n_queries: int = 50) -> None:
    """Ranks of the tied t2i/i2t positives against a stable descending sort (the ranking convention)."""
    from probclip.eval.metrics import positive_ranks

    g = torch.Generator().manual_seed(3)
    scores = torch.randint(0, levels, (n_queries, 25000), generator=g).float()
    positives = torch.zeros_like(scores, dtype=torch.bool)
    positives[:, torch.randint(0, 25000, (48,), generator=g)] = True
    got = positive_ranks(scores, positives)
    order = torch.sort(scores, dim=1, descending=True, stable=True).indices
    place = torch.empty_like(order)
    place.scatter_(1, order, torch.arange(scores.shape[1]).expand_as(order))
    want = torch.sort(torch.where(positives, place, scores.shape[1]), dim=1).values[:, : got.shape[1]]
    assert torch.equal(got, want), "tied ranks differ from the stable sort"
    print(f"  ranks with {levels} score levels on {n_queries} x 25,000 agree with a stable sort")


def core_step(levels: int, repeats: int = 5) -> None:
    """``positive_ranks`` alone: 300 queries x 25,000 items, 48 positives each, depth 48, one thread."""
    from probclip.eval.metrics import positive_ranks

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    g = torch.Generator().manual_seed(0)
    q, n, r = 300, 25000, 48
    positives = torch.zeros(q, n, dtype=torch.bool)
    positives[torch.arange(q)[:, None], torch.randint(0, n, (q, r), generator=g)] = True
    times = {}
    for name, scores in (("untied", torch.randn(q, n, generator=g)),
                         ("tied", torch.randint(0, levels, (q, n), generator=g).float())):
        times[name], _ = timed(lambda s=scores: positive_ranks(s, positives, depth=r), repeats)
    torch.set_num_threads(threads)
    print(f"positive_ranks {q} x {n}, {r} positives, depth {r}, 1 thread, best of {repeats}: untied "
          f"{times['untied']:.3f} s, tied {times['tied']:.3f} s, ratio {times['tied'] / times['untied']:.2f}x")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--dim", type=int, default=256)
    parser.add_argument("--levels", type=int, default=20, help="distinct embeddings per side in the tied run")
    parser.add_argument("--repeats", type=int, default=1)
    args = parser.parse_args()

    from probclip.eval.eccv import coco_eccv_metrics, load_coco_ground_truth

    gt = load_coco_ground_truth()
    image_ids, caption_ids = sorted(gt.image_ids), list(gt.caption_order)
    print(f"{len(image_ids)} images x {len(caption_ids)} captions, D={args.dim}, {torch.get_num_threads()} threads")
    times = {}
    for name, levels in (("untied", None), ("tied", args.levels)):
        img, txt = make_embeddings(len(image_ids), len(caption_ids), args.dim, levels)
        seconds, metrics = timed(lambda i=img, t=txt: coco_eccv_metrics(i, t, image_ids, caption_ids, ground_truth=gt),
                                 args.repeats)
        times[name] = seconds
        m = metrics["csd"]
        print(f"{name:7s}: {seconds:6.1f} s  (ECCV mAP@R i2t {m['eccv']['i2t']['map_at_r']:.4f}, "
              f"COCO-5k R@1 t2i {m['coco_5k']['t2i']['r1']:.4f})")
    print(f"tied / untied = {times['tied'] / times['untied']:.2f}x (target <= 2x)")
    check_ranks(args.levels, args.dim)
    core_step(args.levels)


if __name__ == "__main__":
    main()
