"""Evaluating a model on the synthetic world, where the truth of every (image, caption) pair is exact.

``build_evaluation_set(seed)`` draws the held-out test material once (scenes of the ``test`` split, their
captions at every level, the same scenes at every degradation level, single-object scenes for zero-shot), and
``evaluate_synthetic(model, eval_set, probabilistic)`` measures on it:

- ``retrieval.i2t`` / ``retrieval.t2i``: R@1, R@5, mAP@R, R-Precision with every true caption (image) a positive;
- ``uncertainty.text_specificity_spearman``: Spearman correlation between a caption's level (0 general ... 5
  full scene) and its text uncertainty, over the captions drawn for the test images (one per level per image,
  so every level weighs the same); negative: general captions are more uncertain;
- ``uncertainty.image_degradation_spearman``: Spearman correlation between an image's degradation level and
  its image uncertainty (positive: degraded images are more uncertain);
- ``inclusion.accuracy``: over pairs of true captions of one image where one strictly entails the other, the
  fraction where the inclusion test (eps 0) says the specific one is more included in the general one than the
  reverse;
- ``zeroshot.acc1``: an attribute (default: colour) of the single object of single-object scenes, classes from a
  prompt ensemble; ``zeroshot.unc_acc_corr``:
  Pearson correlation between image-uncertainty bin and accuracy (10 bins).

Probabilistic models are ranked by CSD (``mu.mu - u / 2``); deterministic ones (baselines) by the cosine of the
means, and their uncertainty keys are left out.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator
from dataclasses import dataclass

import numpy as np
import torch
from scipy.stats import spearmanr

from ..distances import inclusion_score_paired
from ..embedding import ProbEmbedding
from ..eval.metrics import per_query_ranking_metrics, ranking_metrics, uncertainty_bins
from ..eval.scoring import ranking_scores
from ..eval.zeroshot import combine_templates
from .world import (
    COLOURS,
    DEGRADATION_LEVELS,
    SHAPES,
    SIZES,
    Caption,
    Scene,
    SyntheticDataset,
    entails,
    render_scene,
    sample_captions,
    truth_matrix,
)

__all__ = ["ZEROSHOT_TEMPLATES", "EvaluationSet", "build_evaluation_set", "draw_scenes", "in_eval_mode",
           "encode_scenes", "encode_synthetic", "encode_texts", "evaluate_synthetic"]

#: Prompt ensembles of the zero-shot classifiers of the main object's attribute ("{}" is the class value).
ZEROSHOT_TEMPLATES = {
    "colour": ("a {} shape",) + tuple(f"a {s} {{}} shape" for s in SIZES) + tuple(f"a {{}} {h}" for h in SHAPES),
    "shape": ("a {}",) + tuple(f"a {s} {{}}" for s in SIZES) + tuple(f"a {c} {{}}" for c in COLOURS),
}
#: Class values of each zero-shot attribute.
ZEROSHOT_CLASSES = {"colour": tuple(COLOURS), "shape": SHAPES}


@dataclass
class EvaluationSet:
    """Held-out test material.

    Attributes:
        scenes: clean test scenes (retrieval, specificity, inclusion).
        captions: distinct captions true of at least one test scene (the retrieval gallery), sorted by text.
        truth: bool ``[len(scenes), len(captions)]``.
        image_captions: per scene, indices into ``captions`` of the captions drawn for it (one per level).
        degraded_scenes: scenes re-drawn at every degradation level; ``degraded_levels`` their levels,
            ``degradation_kind`` the kind (noise, blur or occlusion).
        zeroshot_scenes: single-object scenes; ``zeroshot_labels`` the index of their ``zeroshot_attribute`` value
            in ``ZEROSHOT_CLASSES[zeroshot_attribute]``.
    """

    scenes: list
    captions: list
    truth: np.ndarray
    image_captions: list
    degraded_scenes: list
    degraded_levels: np.ndarray
    zeroshot_scenes: list
    zeroshot_labels: np.ndarray
    zeroshot_attribute: str = "colour"
    degradation_kind: str = "noise"


def draw_scenes(seed: int, num_scenes: int, split: str = "test",
                degradation_kind: str = "noise") -> tuple[list[Scene], list[list[Caption]]]:
    """The first ``num_scenes`` scenes of ``split`` with world seed ``seed``, and the captions drawn for each."""
    data = SyntheticDataset(seed=seed, split=split, size=num_scenes, degradation_kind=degradation_kind)
    scenes, drawn = [], []
    for i in range(num_scenes):
        scene, rng = data._scene_and_rng(i)
        scenes.append(scene)
        drawn.append(sample_captions(scene, rng))
    return scenes, drawn


def build_evaluation_set(seed: int, num_scenes: int = 500, num_degraded: int = 200, num_zeroshot: int = 400,
                         split: str = "test", degradation_kind: str = "noise",
                         zeroshot_attribute: str = "colour") -> EvaluationSet:
    """Draw the evaluation material from ``split`` (never the training split) with world seed ``seed``."""
    if zeroshot_attribute not in ZEROSHOT_CLASSES:
        raise ValueError(f"zeroshot_attribute {zeroshot_attribute!r} is not one of {sorted(ZEROSHOT_CLASSES)}")
    scenes, drawn = draw_scenes(seed, num_scenes, split, degradation_kind)
    by_text: dict[str, Caption] = {}
    for caps in drawn:
        for cap in caps:
            by_text.setdefault(cap.text, cap)
    captions = [by_text[t] for t in sorted(by_text)]
    index = {c.text: j for j, c in enumerate(captions)}
    image_captions = [[index[c.text] for c in caps] for caps in drawn]
    degraded, levels = [], []
    for scene in scenes[:num_degraded]:
        for level in range(DEGRADATION_LEVELS):
            degraded.append(Scene(scene.objects, level, degradation_kind, scene.jitter_seed))
            levels.append(level)
    single = SyntheticDataset(seed=seed + 1, split=split, size=num_zeroshot, max_objects=1)
    zeroshot = [single.scene(i) for i in range(num_zeroshot)]
    return EvaluationSet(
        scenes=scenes,
        captions=captions,
        truth=truth_matrix(scenes, captions),
        image_captions=image_captions,
        degraded_scenes=degraded,
        degraded_levels=np.array(levels),
        zeroshot_scenes=zeroshot,
        zeroshot_labels=np.array(
            [ZEROSHOT_CLASSES[zeroshot_attribute].index(s.objects[0].value(zeroshot_attribute)) for s in zeroshot]
        ),
        zeroshot_attribute=zeroshot_attribute,
        degradation_kind=degradation_kind,
    )


@torch.no_grad()
def encode_scenes(model, scenes, transform: Callable, batch_size: int = 500) -> ProbEmbedding:
    """Embeddings ``[N, D]`` of the rendered ``scenes``."""
    parts = []
    for start in range(0, len(scenes), batch_size):
        images = torch.stack([transform(render_scene(s)) for s in scenes[start:start + batch_size]])
        parts.append(model.encode_image(images).detach())
    return ProbEmbedding.cat(parts)


@torch.no_grad()
def encode_texts(model, texts, tokenizer, batch_size: int = 1000) -> ProbEmbedding:
    """Embeddings ``[N, D]`` of ``texts``."""
    parts = [model.encode_text(tokenizer(list(texts[s:s + batch_size]))).detach()
             for s in range(0, len(texts), batch_size)]
    return ProbEmbedding.cat(parts)


@contextlib.contextmanager
def in_eval_mode(model) -> Iterator[None]:
    """Put ``model`` in eval mode for the block, then back in the mode it was in (also on an error)."""
    was_training = model.training
    model.eval()
    try:
        yield
    finally:
        model.train(was_training)


def encode_synthetic(model, eval_set: EvaluationSet, tokenizer, transform) -> dict:
    """Embeddings of everything in ``eval_set`` (model in eval mode): keys ``images``, ``captions``, ``degraded``,
    ``zeroshot_images``, ``class_texts`` (``[classes * templates]``, class-major)."""
    with in_eval_mode(model):
        attribute = eval_set.zeroshot_attribute
        class_texts = [t.format(value) for value in ZEROSHOT_CLASSES[attribute] for t in ZEROSHOT_TEMPLATES[attribute]]
        return {
            "images": encode_scenes(model, eval_set.scenes, transform),
            "captions": encode_texts(model, [c.text for c in eval_set.captions], tokenizer),
            "degraded": encode_scenes(model, eval_set.degraded_scenes, transform),
            "zeroshot_images": encode_scenes(model, eval_set.zeroshot_scenes, transform),
            "class_texts": encode_texts(model, class_texts, tokenizer),
        }


def _scores(query: ProbEmbedding, gallery: ProbEmbedding, probabilistic: bool) -> torch.Tensor:
    return ranking_scores(query, gallery, "csd" if probabilistic else "mean")


def _spearman(x, y) -> float:
    value = spearmanr(np.asarray(x, dtype=np.float64), np.asarray(y, dtype=np.float64)).statistic
    return float(value)


def class_embeddings(class_texts: ProbEmbedding, num_templates: int) -> ProbEmbedding:
    """Prompt ensemble of ``[C * T, D]`` template embeddings (class-major): the rule of ``probclip eval``,
    ``combine_templates(..., "mean")`` (normalised mean of the template means, variance ``sum_t V_t / T^2``)."""
    dim = class_texts.mean.shape[-1]
    per_class = ProbEmbedding(class_texts.mean.reshape(-1, num_templates, dim),
                              class_texts.logvar.reshape(-1, num_templates, dim))
    return combine_templates(per_class, "mean")


def evaluate_synthetic(model, eval_set: EvaluationSet, tokenizer, transform, probabilistic: bool = True,
                       embeddings: dict | None = None) -> tuple[dict, dict]:
    """Metrics of ``model`` on ``eval_set`` and the raw values behind them (for plots).

    Returns ``(metrics, details)``: ``metrics`` is a flat dict with dotted keys (see the module docstring);
    ``details`` holds the embeddings, scores, per-query values and correctness used by the report.
    """
    emb = embeddings if embeddings is not None else encode_synthetic(model, eval_set, tokenizer, transform)
    truth = torch.from_numpy(eval_set.truth)
    metrics: dict = {}
    i2t = _scores(emb["images"], emb["captions"], probabilistic)
    t2i = _scores(emb["captions"], emb["images"], probabilistic)
    for name, scores, positives in (("i2t", i2t, truth), ("t2i", t2i, truth.T.contiguous())):
        values = ranking_metrics(scores, positives, ks=(1, 5))
        for key in ("r1", "r5", "map_at_r", "r_precision"):
            metrics[f"retrieval.{name}.{key}"] = values[key]
    details = {"embeddings": emb, "i2t_scores": i2t, "t2i_scores": t2i}

    classes = class_embeddings(emb["class_texts"], len(ZEROSHOT_TEMPLATES[eval_set.zeroshot_attribute]))
    zs_scores = _scores(emb["zeroshot_images"], classes, probabilistic)
    correct = (zs_scores.argmax(1).numpy() == eval_set.zeroshot_labels).astype(np.float64)
    metrics["zeroshot.acc1"] = float(correct.mean())
    details["zeroshot_correct"] = correct
    if not probabilistic:
        return metrics, details

    levels = np.array([c.level for c in eval_set.captions])
    text_u = emb["captions"].uncertainty.double().numpy()
    drawn = np.array([j for caps in eval_set.image_captions for j in caps])  # one caption per level per image
    metrics["uncertainty.text_specificity_spearman"] = _spearman(levels[drawn], text_u[drawn])
    degraded_u = emb["degraded"].uncertainty.double().numpy()
    metrics["uncertainty.image_degradation_spearman"] = _spearman(eval_set.degraded_levels, degraded_u)

    specific, general = [], []
    for caps in eval_set.image_captions:
        for a in caps:
            for b in caps:
                ca, cb = eval_set.captions[a], eval_set.captions[b]
                if a != b and entails(ca, cb) and not entails(cb, ca):
                    specific.append(a)
                    general.append(b)
    spec, gen = torch.tensor(specific), torch.tensor(general)
    captions = emb["captions"]
    inward = inclusion_score_paired(captions[spec], captions[gen], eps=0.0)
    outward = inclusion_score_paired(captions[gen], captions[spec], eps=0.0)
    metrics["inclusion.accuracy"] = float((inward > outward).double().mean())

    zs_u = emb["zeroshot_images"].uncertainty
    bins = uncertainty_bins(zs_u, torch.from_numpy(correct), n_bins=10)
    metrics["zeroshot.unc_acc_corr"] = bins["pearson"]
    per_query = per_query_ranking_metrics(i2t, truth, ks=(1,))
    details.update(
        caption_levels=levels, caption_uncertainty=text_u, drawn_captions=drawn, degraded_uncertainty=degraded_u,
        zeroshot_bins=bins,
        i2t_bins=uncertainty_bins(emb["images"].uncertainty, per_query["r1"], n_bins=10),
    )
    return metrics, details
