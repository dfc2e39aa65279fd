"""Image-text retrieval in both directions, scored by CSD and by mean only, with uncertainty bins.

Image-to-text (i2t): each image is a query, the gallery holds every caption, the image's own
captions are its positives. Text-to-image (t2i): each caption is a query, its image is the single
positive. Urban-1k is the same task on one long caption per image.
"""

from __future__ import annotations

import dataclasses
import warnings
from collections.abc import Sequence
from pathlib import Path

import torch

from .benchmark_wds import is_benchmark_retrieval, read_benchmark_retrieval
from .caption_check import skipped_captions_report
from .encode import Embeddings, EvalModel, embedding_uncertainty, encode_images, encode_texts
from .examples import retrieval_examples
from .image_check import skipped_report
from .metrics import DEFAULT_MAX_CHUNK_ELEMENTS, metrics_from_ranks, uncertainty_bins
from .options import EvalOptions
from .readers import RetrievalData, read_retrieval, read_urban1k
from .report import plot_bars, plot_uncertainty_bins, write_results
from .scoring import PositiveLists, available_methods, rank_positives_by_method

__all__ = ["retrieval_metrics", "evaluate_retrieval", "evaluate_urban1k", "encode_retrieval_data"]


def retrieval_metrics(
    image_embeddings: Embeddings,
    text_embeddings: Embeddings,
    caption_image: torch.Tensor,
    ks: Sequence[int] = (1, 5, 10),
    methods: Sequence[str] | None = None,
    n_bins: int = 10,
    max_chunk_elements: int = DEFAULT_MAX_CHUNK_ELEMENTS,
) -> dict:
    """Retrieval metrics for both directions and each score method.

    Args:
        image_embeddings: ``[N_img, D]`` ProbEmbedding (or tensor of means for deterministic models).
        text_embeddings: ``[N_txt, D]`` of the same kind.
        caption_image: ``[N_txt]`` long, the image index of each caption.
        methods: subset of ``("csd", "mean")``; default: all that apply.

    Returns ``{method: {"i2t": {r1, r5, r10, map_at_r, r_precision}, "t2i": {...}, "rsum": float}}`` (fractions)
    plus, for probabilistic embeddings, ``"uncertainty": {method: {"i2t": bins, "t2i": bins}}`` with the
    per-query R@1 in 10 uncertainty bins of the query.
    """
    caption_image = torch.as_tensor(caption_image, dtype=torch.long)
    n_img = image_embeddings.shape[0]
    applicable = available_methods(image_embeddings, text_embeddings)
    methods = tuple(methods) if methods is not None else applicable
    for m in methods:
        if m not in applicable:
            raise ValueError(f"score method {m!r} does not apply to these embeddings; available: {applicable}")
    i2t_pos = PositiveLists.from_labels(torch.arange(n_img), caption_image)
    t2i_pos = PositiveLists.single(caption_image, n_img)
    results: dict = {method: {} for method in methods}
    u_img = embedding_uncertainty(image_embeddings)
    u_txt = embedding_uncertainty(text_embeddings)
    bins: dict = {}
    for direction, query, gallery, positives, u_query in (
        ("i2t", image_embeddings, text_embeddings, i2t_pos, u_img),
        ("t2i", text_embeddings, image_embeddings, t2i_pos, u_txt),
    ):
        depth = max(max(ks), int(positives.counts.max()))
        # one product of the means per block of queries serves every score method
        ranks = rank_positives_by_method(query, gallery, positives, methods, max_chunk_elements, depth=depth)
        for method in methods:
            per_query = metrics_from_ranks(ranks[method], positives.counts, ks)
            results[method][direction] = {k: float(v.mean()) for k, v in per_query.items()}
            if u_query is not None and u_query.numel() >= n_bins:
                bins.setdefault(method, {})[direction] = uncertainty_bins(u_query, per_query["r1"], n_bins)
    for method in methods:
        entry = results[method]
        entry["rsum"] = sum(entry[d][f"r{k}"] for d in ("i2t", "t2i") for k in ks)
    if bins:
        results["uncertainty"] = bins
    return results


def encode_retrieval_data(model: EvalModel, data: RetrievalData, batch_size: int = 64, num_workers: int = 0,
                          progress: bool = True) -> tuple[Embeddings, Embeddings]:
    """Encode the images and captions of a retrieval data set; returns ``(images [N, D], texts [C, D])``."""
    images = encode_images(model.model, data.items, model.preprocess, batch_size, num_workers, progress=progress)
    texts = encode_texts(model.model, data.captions, model.tokenizer, batch_size=max(batch_size, 64), progress=progress)
    return images, texts


def _write_plots(results: dict, out_dir: Path, title: str) -> list[str]:
    plots = []
    for method, entry in results.items():
        if method == "uncertainty":
            continue
        values = {f"{d} R@{k[1:]}": v for d in ("i2t", "t2i") for k, v in entry[d].items() if k[1:].isdigit()}
        path = plot_bars(values, out_dir / f"recall_{method}.png", f"{title}: recall ({method} score)", "recall")
        plots.append(path.name)
    for method, per_direction in results.get("uncertainty", {}).items():
        path = plot_uncertainty_bins(
            per_direction, out_dir / f"uncertainty_r1_{method}.png", f"{title}: R@1 per query-uncertainty bin", "R@1"
        )
        plots.append(path.name)
    return plots


def evaluate_retrieval(
    model: EvalModel,
    data: RetrievalData | str | Path,
    options: EvalOptions | None = None,
    *,
    ks: Sequence[int] = (1, 5, 10),
    task: str = "retrieval",
) -> dict:
    """Encode a retrieval data set (or read it from a path, see :func:`probclip.eval.readers.read_retrieval`;
    a folder in the CLIP_benchmark layout is read by :func:`probclip.eval.benchmark_wds.read_benchmark_retrieval`)
    and compute :func:`retrieval_metrics`; writes ``results.json``, plots and example queries (thumbnails)
    to ``options.out_dir`` if given."""
    options = EvalOptions.of(options)
    if not isinstance(data, RetrievalData):
        if is_benchmark_retrieval(data, options.split):  # CLIP_benchmark / DataComp layout: read as CLIP_benchmark does
            data = read_benchmark_retrieval(data, options.split)
        else:
            data = read_retrieval(data, image_root=options.image_root, split=options.split)
    images, texts = encode_retrieval_data(model, data, options.batch_size, options.num_workers, options.progress)
    metrics = retrieval_metrics(images, texts, data.caption_image, ks=ks)
    results = {
        "task": task,
        "model": model.name,
        "probabilistic": model.probabilistic,
        "n_images": len(data.items),
        "n_captions": len(data.captions),
        "metrics": metrics,
    }
    results["skipped_images"] = skipped_report(data)
    results["skipped_captions"] = skipped_captions_report(data)
    if options.out_dir is not None:
        results["plots"] = _write_plots(metrics, Path(options.out_dir), task)
        results["examples"] = retrieval_examples(data, images, texts, options.out_dir)
        write_results(options.out_dir, results)
    return results


def evaluate_urban1k(model: EvalModel, root: str | Path, options: EvalOptions | None = None) -> dict:
    """Urban-1k long-caption retrieval (``image/<name>.jpg`` + ``caption/<name>.txt``): I2T and T2I R@1.

    Captions are tokenized by the model's own tokenizer, so a long-context model (e.g. context 256)
    sees more of each caption than a context-64 one; ``truncated_fraction`` reports how many captions
    fill the whole context (a sign they were cut).
    """
    options = EvalOptions.of(options, batch_size=32)
    data = read_urban1k(root)
    results = evaluate_retrieval(model, data, dataclasses.replace(options, out_dir=None), task="urban1k")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # encoding already warned about truncated captions, if any
        tokens = model.tokenizer(data.captions)
    context = tokens.shape[1]
    pad_id = getattr(model.tokenizer, "pad_id", 0)
    results["context_length"] = int(context)
    results["truncated_fraction"] = float((tokens[:, -1] != (pad_id if pad_id is not None else 0)).double().mean())
    if options.out_dir is not None:
        results["plots"] = _write_plots(results["metrics"], Path(options.out_dir), "urban1k")
        write_results(options.out_dir, results)
    return results
