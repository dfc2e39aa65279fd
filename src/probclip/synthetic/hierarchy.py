"""The hierarchy task on the synthetic world: "more general" / "more specific" against exact truth.

The gallery is the evaluation set's distinct captions (the captions of the quickstart collection); the queries are
every one of them and the 500 clean test images. The truth is exact: a caption's generalisations are the captions
it strictly entails (``entails``), its specialisations those that strictly entail it, and an image's captions every
caption true of its scene (``caption_is_true``). Metrics and scores: :mod:`probclip.eval.hierarchy`.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from ..eval.hierarchy import hierarchy_plot, hierarchy_results, hierarchy_tables
from ..eval.report import write_results
from .evaluation import EvaluationSet, build_evaluation_set, encode_synthetic
from .world import entailment_matrix

__all__ = ["synthetic_hierarchy_truth", "synthetic_hierarchy_metrics", "evaluate_synthetic_hierarchy"]


def synthetic_hierarchy_truth(eval_set: EvaluationSet) -> dict[str, np.ndarray]:
    """``{"general": [G, G], "specific": [G, G], "image": [N, G]}`` bool over ``eval_set.captions``: row q holds
    the captions strictly more general than caption q, strictly more specific, and true of image q."""
    entailed = entailment_matrix(eval_set.captions)  # [i, j]: caption i entails caption j
    strict = entailed & ~entailed.T
    return {"general": strict, "specific": strict.T.copy(), "image": eval_set.truth.copy()}


def synthetic_hierarchy_metrics(embeddings: dict, eval_set: EvaluationSet, empty, probabilistic: bool = True) -> dict:
    """The hierarchy metrics from :func:`~probclip.synthetic.evaluation.encode_synthetic`'s ``embeddings`` and the
    empty caption's embedding ``empty`` ``[1, D]``."""
    levels = np.array([c.level for c in eval_set.captions])
    return hierarchy_results(embeddings["captions"], embeddings["images"], levels,
                             synthetic_hierarchy_truth(eval_set), empty, probabilistic)


def evaluate_synthetic_hierarchy(model, tokenizer, transform, seed: int = 0, out_dir: str | Path | None = None,
                                 name: str = "model", probabilistic: bool = True) -> dict:
    """The hierarchy task on the synthetic world's test split (world seed ``seed``: the quickstart's scenes)."""
    if not probabilistic:
        raise ValueError("the hierarchy task on the synthetic world needs a probclip model trained on it (e.g. "
                         "the quickstart's model/); give a HierarCaps CSV with --data for other models")
    eval_set = build_evaluation_set(seed, degradation_kind="occlusion")
    embeddings = encode_synthetic(model, eval_set, tokenizer, transform)
    model.eval()
    with torch.no_grad():
        empty = model.encode_text(tokenizer([""]))
    metrics = synthetic_hierarchy_metrics(embeddings, eval_set, empty, probabilistic)
    results = {"task": "hierarchy", "data": f"synthetic world, test split, seed {seed}", "model": name,
               "probabilistic": probabilistic, "n_images": len(eval_set.scenes), "n_captions": len(eval_set.captions),
               "metrics": metrics, "tables": hierarchy_tables(metrics)}
    if out_dir is not None:
        results["plots"] = [hierarchy_plot(metrics, Path(out_dir) / "hierarchy.png").name]
        write_results(out_dir, results)
    return results
