"""HierarCaps hierarchical retrieval: walk from an image's best caption towards a root.

For each image, the gallery holds the distinct caption texts of the whole data set. The walk starts
at the mean of the caption that best matches the image (CSD ranking for probabilistic models, cosine
otherwise) and moves in ``n_steps`` equally spaced points to a root embedding, each point being
``normalise((1 - a) * start + a * root)``; at each point the nearest caption (cosine of means) is
retrieved. With ``pred`` the set of captions retrieved along the walk and ``GT`` the image's own
levels (general -> specific):

- precision = ``|pred & GT| / |pred|``;  recall = ``|pred & GT| / |GT|``.

Roots:

- ``"empty"``: the mean of the empty-caption embedding;
- ``"inclusion"`` (probabilistic models): ``normalise(mu_empty + mu_c*)`` where ``c*`` is the caption
  that maximises the inclusion test "image included in caption" (eps 0) for this image.
"""

from __future__ import annotations

from pathlib import Path

import torch

from ..distances import inclusion_score
from ..embedding import ProbEmbedding
from .encode import (
    EvalModel,
    embedding_means,
    embedding_uncertainty,
    encode_images,
    encode_texts,
)
from .image_check import skipped_report
from .metrics import uncertainty_bins
from .options import EvalOptions
from .readers import HierarCapsData, read_hierarcaps
from .report import plot_bars, plot_uncertainty_bins, write_results
from .scoring import ranking_scores

__all__ = ["hierarchical_walk", "hierarcaps_metrics", "evaluate_hierarcaps"]


def hierarchical_walk(
    start: torch.Tensor, root: torch.Tensor, gallery_means: torch.Tensor, n_steps: int = 50
) -> torch.Tensor:
    """Indices of the gallery items nearest to each point of the walk, ``[N, n_steps]``.

    Args:
        start: ``[N, D]`` walk starts; root: ``[N, D]`` (or ``[D]``) walk ends;
        gallery_means: ``[G, D]`` caption means (compared by cosine).
    """
    if n_steps < 2:
        raise ValueError(f"n_steps must be >= 2; got {n_steps}")
    root = root.expand_as(start)
    alphas = torch.linspace(0.0, 1.0, n_steps, dtype=start.dtype)
    points = (1 - alphas)[None, :, None] * start[:, None, :] + alphas[None, :, None] * root[:, None, :]
    points = torch.nn.functional.normalize(points, dim=-1)
    gallery = torch.nn.functional.normalize(gallery_means.to(start.dtype), dim=-1)
    return (points @ gallery.T).argmax(-1)


def _precision_recall(
    walk: torch.Tensor, gallery_texts: list[str], chains: list[list[str]]
) -> tuple[torch.Tensor, torch.Tensor]:
    precision, recall = [], []
    for row, chain in zip(walk.tolist(), chains):
        pred = {gallery_texts[j] for j in row}
        truth = set(chain)
        hit = len(pred & truth)
        precision.append(hit / len(pred))
        recall.append(hit / len(truth))
    return torch.tensor(precision, dtype=torch.float64), torch.tensor(recall, dtype=torch.float64)


def hierarcaps_metrics(images, captions, gallery_texts: list[str], chains: list[list[str]], empty,
                       n_steps: int = 50, n_bins: int = 10) -> dict:
    """HierarCaps precision / recall per root.

    Args:
        images: ``[N, D]`` image embeddings; captions: ``[G, D]`` embeddings of ``gallery_texts``;
        chains: per image its caption levels (texts, each in ``gallery_texts``);
        empty: ``[1, D]`` embedding of the empty caption.

    Returns ``{root: {"precision", "recall", "f1"}}`` and, for probabilistic embeddings,
    ``"uncertainty": {root: bins of per-image recall by image uncertainty}``.
    """
    missing = {c for chain in chains for c in chain} - set(gallery_texts)
    if missing:
        raise ValueError(f"{len(missing)} chain captions are not in the gallery, e.g. {sorted(missing)[:2]}")
    probabilistic = isinstance(images, ProbEmbedding) and isinstance(captions, ProbEmbedding)
    start_scores = ranking_scores(images, captions, "csd" if probabilistic else "mean")
    start = embedding_means(captions)[start_scores.argmax(1)]
    cap_means = embedding_means(captions)
    empty_mean = torch.nn.functional.normalize(embedding_means(empty)[0], dim=-1)
    roots = {"empty": empty_mean[None].expand_as(start)}
    if probabilistic:
        best = inclusion_score(images, captions, eps=0.0).argmax(1)
        roots["inclusion"] = torch.nn.functional.normalize(empty_mean[None] + cap_means[best], dim=-1)
    results, bins = {}, {}
    u_img = embedding_uncertainty(images)
    for name, root in roots.items():
        walk = hierarchical_walk(start, root, cap_means, n_steps)
        precision, recall = _precision_recall(walk, gallery_texts, chains)
        p, r = float(precision.mean()), float(recall.mean())
        results[name] = {"precision": p, "recall": r, "f1": 2 * p * r / (p + r) if p + r > 0 else 0.0}
        if u_img is not None and len(chains) >= n_bins:
            bins[name] = uncertainty_bins(u_img, recall, n_bins)
    if bins:
        results["uncertainty"] = bins
    return results


def evaluate_hierarcaps(
    model: EvalModel, data: HierarCapsData | str | Path, options: EvalOptions | None = None, *, n_steps: int = 50
) -> dict:
    """Read (``id,captions,image_url`` CSV), encode and score HierarCaps; writes results and plots."""
    options = EvalOptions.of(options)
    if not isinstance(data, HierarCapsData):
        data = read_hierarcaps(data, image_root=options.image_root)
    gallery_texts = sorted({c for chain in data.chains for c in chain})
    images = encode_images(
        model.model, data.items, model.preprocess, options.batch_size, options.num_workers, progress=options.progress
    )
    captions = encode_texts(model.model, gallery_texts, model.tokenizer, progress=options.progress)
    empty = encode_texts(model.model, [""], model.tokenizer, progress=False)
    n_bins = 10 if len(data.items) >= 10 else max(2, len(data.items))
    metrics = hierarcaps_metrics(images, captions, gallery_texts, data.chains, empty, n_steps, n_bins)
    results = {"task": "hierarcaps", "model": model.name, "probabilistic": model.probabilistic,
               "n_images": len(data.items), "n_captions": len(gallery_texts), "n_steps": n_steps, "metrics": metrics}
    results["skipped_images"] = skipped_report(data)
    if options.out_dir is not None:
        out_dir = Path(options.out_dir)
        bars = {
            f"{root} {k}": v[k] for root, v in metrics.items() if root != "uncertainty" for k in ("precision", "recall")
        }
        plots = [plot_bars(bars, out_dir / "hierarcaps.png", "HierarCaps precision / recall", "").name]
        if "uncertainty" in metrics:
            plots.append(plot_uncertainty_bins(metrics["uncertainty"], out_dir / "uncertainty_recall.png",
                                               "HierarCaps recall per image-uncertainty bin", "recall").name)
        results["plots"] = plots
        write_results(options.out_dir, results)
    return results
