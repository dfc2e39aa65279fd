"""Classification metrics of the DataComp suite beyond accuracy: macro F1 and worst-group accuracy.

Both follow the WILDS definitions DataComp uses: ``F1-macro_all`` is the F1 score averaged over the
classes present in the labels (a class never predicted has precision 0 and F1 0); a worst-group
accuracy is the lowest top-K accuracy over the groups (values of one metadata column) that hold at
least one sample. Values are float64 fractions in [0, 1].
"""

from __future__ import annotations

from collections.abc import Callable

import torch

from .metrics import topk_accuracy

__all__ = ["f1_macro", "worst_group_accuracy", "suite_extra_metrics"]


def f1_macro(predictions: torch.Tensor, labels: torch.Tensor) -> float:
    """Mean F1 over the classes present in ``labels`` (``[N]`` long each)."""
    if predictions.shape != labels.shape or labels.dim() != 1 or labels.numel() == 0:
        raise ValueError(f"f1_macro expects predictions and labels of one shape [N], N > 0; "
                         f"got {tuple(predictions.shape)} and {tuple(labels.shape)}")
    classes = torch.unique(labels)
    n = int(max(int(labels.max()), int(predictions.max()))) + 1
    correct = (predictions == labels).double()
    true_pos = torch.bincount(labels, weights=correct, minlength=n)[classes]
    predicted = torch.bincount(predictions, minlength=n).double()[classes]
    actual = torch.bincount(labels, minlength=n).double()[classes]
    denominator = predicted + actual  # F1 = 2 TP / (predicted + actual)
    f1 = torch.where(denominator > 0, 2 * true_pos / denominator.clamp_min(1), torch.zeros_like(true_pos))
    return float(f1.mean())


def worst_group_accuracy(logits: torch.Tensor, labels: torch.Tensor, groups: torch.Tensor, k: int = 1) -> float:
    """Lowest top-``k`` accuracy over the groups present; ``logits [N, C]``, ``labels [N]``, ``groups [N]``.

    Ties in the logits are ordered by class index (as :func:`probclip.eval.metrics.topk_accuracy`).
    """
    if groups.shape != labels.shape:
        raise ValueError(f"groups must have one value per sample ({labels.numel()}); got shape {tuple(groups.shape)}")
    correct = topk_accuracy(logits, labels, ks=(k,))[f"acc{k}"].double()
    groups = groups.long()
    present = torch.unique(groups)
    per_group = [float(correct[groups == g].mean()) for g in present.tolist()]
    return min(per_group)


def suite_extra_metrics(main_metric: str, groups: torch.Tensor | None = None,
                        k: int = 1) -> Callable[[torch.Tensor, torch.Tensor], dict] | None:
    """The function ``(logits, labels) -> {name: value}`` that adds ``main_metric`` to a zero-shot summary,
    or None when the summary already holds it (``acc1``, ``mean_per_class_recall``)."""
    if main_metric in ("acc1", "mean_per_class_recall"):
        return None
    if main_metric == "F1-macro_all":
        return lambda logits, labels: {main_metric: f1_macro(logits.argmax(1), labels)}
    if groups is None:
        raise ValueError(f"metric {main_metric!r} needs a group per sample (the data set's .npy metadata)")
    return lambda logits, labels: {main_metric: worst_group_accuracy(logits, labels, groups, k)}
