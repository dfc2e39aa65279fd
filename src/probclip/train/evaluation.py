"""Periodic evaluation during training (the ``eval`` config section): zero-shot classification and retrieval on
given data sets, through ``probclip.eval``. Metrics are flattened to ``{"<task>/<set>/<metric path>": number}``."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from ..eval.encode import EvalModel
from ..eval.options import EvalOptions
from ..eval.readers import read_classification, read_retrieval
from ..eval.retrieval import evaluate_retrieval
from ..eval.zeroshot import evaluate_zeroshot

__all__ = ["flatten_numbers", "build_eval_fn"]


def flatten_numbers(tree, prefix: str = "") -> dict[str, float]:
    """Nested dicts of numbers -> ``{"a/b/c": float}`` (non-numbers and booleans dropped)."""
    out: dict[str, float] = {}
    if isinstance(tree, dict):
        for key, value in tree.items():
            out.update(flatten_numbers(value, f"{prefix}/{key}" if prefix else str(key)))
    elif isinstance(tree, (int, float)) and not isinstance(tree, bool):
        out[prefix] = float(tree)
    return out


def build_eval_fn(section, tokenizer_factory: Callable, transform_factory: Callable) -> Callable | None:
    """``eval_fn(model, step) -> dict`` for ``train``, or None when the section lists no data set.

    Data sets are read once, here (errors name a missing one before training starts).
    ``tokenizer_factory(model)`` and ``transform_factory(model)`` give the model's tokenizer and eval transform.
    """
    if not section.zeroshot and not section.retrieval:
        return None
    zeroshot = {Path(p).name or str(p): read_classification(p, split=section.split) for p in section.zeroshot}
    retrieval = {Path(p).name or str(p): read_retrieval(p, split=section.split) for p in section.retrieval}

    options = EvalOptions(batch_size=section.batch_size, progress=False)

    def eval_fn(model, step: int) -> dict:
        wrapped = EvalModel(model, transform_factory(model), tokenizer_factory(model), name=f"step_{step}")
        metrics: dict[str, float] = {}
        for name, data in zeroshot.items():
            result = evaluate_zeroshot(wrapped, data, options)
            metrics.update(flatten_numbers(result["metrics"], f"zeroshot/{name}"))
        for name, data in retrieval.items():
            result = evaluate_retrieval(wrapped, data, options)
            metrics.update(flatten_numbers(result["metrics"], f"retrieval/{name}"))
        return metrics

    return eval_fn
