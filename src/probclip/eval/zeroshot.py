"""Zero-shot classification with prompt templates, optional BPRW, and accuracy per uncertainty bin.

Template combinations (each class has T templates, text embeddings ``N(mu_t, V_t)``):

- ``"mean"``: the mean of the unit-norm template means, re-normalised (the CLIP recipe). Its variance
  is that of the average of T independent Gaussians, ``sum_t V_t / T^2``.
- ``"probabilistic"``: the product of the T Gaussians (precision-weighted fusion): per dimension
  ``V = 1 / sum_t (1 / V_t)`` and ``mu = V * sum_t mu_t / V_t``, re-normalised. Templates the model is
  sure about count more, per dimension.
- ``"bprw"``: Bayesian prompt re-weighting from support images (see :mod:`probclip.eval.bprw`).

Each combination is scored by CSD ranking and by cosine of the means (only cosine, and only the
``"mean"`` combination, for deterministic models).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path

import torch

from ..embedding import ProbEmbedding
from .bprw import BPRWSettings, bprw_class_embeddings, check_disjoint, select_support
from .encode import (
    Embeddings,
    EvalModel,
    embedding_uncertainty,
    encode_images,
    encode_texts,
)
from .image_check import skipped_report
from .metrics import mean_per_class_recall, topk_accuracy, uncertainty_bins
from .options import EvalOptions
from .readers import ClassificationData, read_classification
from .report import plot_bars, plot_uncertainty_bins, write_results
from .scoring import available_methods, ranking_scores

__all__ = [
    "class_text_embeddings",
    "combine_templates",
    "classification_metrics",
    "evaluate_zeroshot",
    "TEMPLATE_COMBINATIONS",
]

TEMPLATE_COMBINATIONS = ("mean", "probabilistic")


def class_text_embeddings(
    model: EvalModel, classnames: Sequence[str], templates: Sequence[str], batch_size: int = 256, progress: bool = True
) -> Embeddings:
    """Encode every (class, template) prompt; returns ``[C, T, D]`` (ProbEmbedding or tensor)."""
    prompts = [t.replace("{c}", name) for name in classnames for t in templates]
    flat = encode_texts(model.model, prompts, model.tokenizer, batch_size=batch_size, desc="prompts", progress=progress)
    c, t = len(classnames), len(templates)
    if isinstance(flat, ProbEmbedding):
        return ProbEmbedding(flat.mean.reshape(c, t, -1), flat.logvar.reshape(c, t, -1))
    return flat.reshape(c, t, -1)


def combine_templates(text: Embeddings, how: str = "mean") -> Embeddings:
    """Combine ``[C, T, D]`` template embeddings into ``[C, D]`` class embeddings (see module doc)."""
    if how not in TEMPLATE_COMBINATIONS:
        raise ValueError(f"unknown template combination {how!r}; expected one of {TEMPLATE_COMBINATIONS}")
    means = text.mean if isinstance(text, ProbEmbedding) else text
    means = torch.nn.functional.normalize(means.float(), dim=-1)
    n_templates = means.shape[1]
    if not isinstance(text, ProbEmbedding):
        if how != "mean":
            raise ValueError(f"template combination {how!r} needs probabilistic text embeddings")
        return torch.nn.functional.normalize(means.mean(1), dim=-1)
    var = text.logvar.float().exp()
    if how == "mean":
        mean = means.mean(1)
        combined_var = var.sum(1) / n_templates**2
    else:
        precision = 1.0 / var
        combined_var = 1.0 / precision.sum(1)
        mean = combined_var * (precision * means).sum(1)
    return ProbEmbedding(torch.nn.functional.normalize(mean, dim=-1), combined_var.log())


def classification_metrics(logits: torch.Tensor, labels: torch.Tensor, n_classes: int) -> tuple[dict, torch.Tensor]:
    """``({acc1, acc5, mean_per_class_recall}, per-sample top-1 correctness [N])`` from ``[N, C]`` logits."""
    per_sample = topk_accuracy(logits, labels, ks=(1, 5))
    predictions = logits.argmax(1)
    summary = {
        "acc1": float(per_sample["acc1"].mean()),
        "acc5": float(per_sample["acc5"].mean()),
        "mean_per_class_recall": mean_per_class_recall(predictions, labels, n_classes),
    }
    return summary, per_sample["acc1"]


def evaluate_zeroshot(
    model: EvalModel,
    data: ClassificationData | str | Path,
    options: EvalOptions | None = None,
    *,
    support: ClassificationData | str | Path | None = None,
    bprw: BPRWSettings | None = None,
    support_split: str = "train",
    templates: Sequence[str] | None = None,
    n_bins: int = 10,
    extra_metrics: Callable[[torch.Tensor, torch.Tensor], dict] | None = None,
) -> dict:
    """Zero-shot classification: acc1, acc5, mean per-class recall per template combination and score.

    With ``support`` (a labelled data set of the same classes, from another split than ``data``), also
    evaluates BPRW and reports its gain in acc1 over the uniform ``"mean"`` combination. Writes
    ``results.json`` and plots to ``out_dir`` if given. ``extra_metrics(logits [N, C], labels [N])``, if
    given, returns more metrics (a dict) for each template combination and score.
    """
    options = EvalOptions.of(options)
    if not isinstance(data, ClassificationData):
        data = read_classification(data, split=options.split, templates=list(templates) if templates else None)
    n_classes = len(data.classnames)
    labels = torch.tensor(data.labels)
    support_data = None
    if support is not None:
        if not model.probabilistic:
            raise ValueError("BPRW needs a probabilistic model; the given model is deterministic")
        support_data = (
            support if isinstance(support, ClassificationData) else read_classification(support, split=support_split)
        )
        if support_data.classnames != data.classnames:
            raise ValueError(
                f"support and evaluation data must list the same classes in the same order; got "
                f"{len(support_data.classnames)} vs {len(data.classnames)} class names"
            )
    text = class_text_embeddings(model, data.classnames, data.templates, progress=options.progress)
    images = encode_images(
        model.model, data.items, model.preprocess, options.batch_size, options.num_workers, progress=options.progress
    )

    classes = {"mean": combine_templates(text, "mean")}
    if model.probabilistic:
        classes["probabilistic"] = combine_templates(text, "probabilistic")
    bprw_info = None
    if support_data is not None:
        settings = bprw or BPRWSettings()
        support_items, support_labels = select_support(support_data, settings.shots, n_classes, settings.seed)
        check_disjoint(data.items, support_items)
        support_emb = encode_images(
            model.model,
            support_items,
            model.preprocess,
            options.batch_size,
            options.num_workers,
            desc="support images",
            progress=options.progress,
        )
        classes["bprw"], weights = bprw_class_embeddings(text, support_emb, support_labels, settings)
        bprw_info = {"settings": settings.to_dict(), "n_support_images": len(support_items),
                     "template_weights": weights.tolist()}

    u_img = embedding_uncertainty(images)
    metrics, bins = {}, {}
    for combo, class_emb in classes.items():
        for method in available_methods(images, class_emb):
            logits = ranking_scores(images, class_emb, method)
            summary, correct = classification_metrics(logits, labels, n_classes)
            if extra_metrics is not None:
                summary.update(extra_metrics(logits, labels))
            metrics.setdefault(combo, {})[method] = summary
            if u_img is not None and len(data.items) >= n_bins:
                bins[f"{combo}/{method}"] = uncertainty_bins(u_img, correct, n_bins)

    results = {
        "task": "zeroshot",
        "model": model.name,
        "probabilistic": model.probabilistic,
        "n_images": len(data.items),
        "n_classes": n_classes,
        "n_templates": len(data.templates),
        "metrics": metrics,
    }
    if bins:
        results["uncertainty"] = bins
    if bprw_info is not None:
        bprw_info["gain_acc1"] = {m: metrics["bprw"][m]["acc1"] - metrics["mean"][m]["acc1"] for m in metrics["bprw"]}
        results["bprw"] = bprw_info
    results["skipped_images"] = skipped_report(data, support_data)
    if options.out_dir is not None:
        out_dir = Path(options.out_dir)
        bars = {f"{combo}/{method}": v["acc1"] for combo, per in metrics.items() for method, v in per.items()}
        plots = [plot_bars(bars, out_dir / "accuracy.png", "zero-shot top-1 accuracy", "acc1").name]
        if bins:
            plots.append(plot_uncertainty_bins(bins, out_dir / "uncertainty_acc1.png",
                                               "top-1 accuracy per image-uncertainty bin", "acc1").name)
        results["plots"] = plots
        write_results(options.out_dir, results)
    return results
