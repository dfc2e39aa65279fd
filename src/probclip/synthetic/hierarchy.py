"""The hierarchy task on the synthetic world: "more general" / "more specific" against exact truth.

The gallery is the evaluation set's distinct captions (the captions of the quickstart collection); the queries are
every one of them and the 500 clean test images. The truth is exact: a caption's generalisations are the captions
it strictly entails (``entails``), its specialisations those that strictly entail it, and an image's captions every
caption true of its scene (``caption_is_true``). Metrics and scores: :mod:`probclip.eval.hierarchy`.

For a probabilistic model the task also scores ``denotation``: the model's match probability is calibrated on the
*training* split (``CALIBRATION_SCENES`` scenes and their captions, whose truth the world gives;
:func:`synthetic_match_calibration`), and the test images are the evidence; and ``head``: the hierarchy head
(:mod:`probclip.hierarchy_head`) stored beside the model, or else one fitted on the same training-split material
(:func:`synthetic_hierarchy_head`). ``results.json``'s ``breakdown`` says where the search's scores go wrong
(:mod:`probclip.synthetic.hierarchy_breakdown`).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from ..embedding import ProbEmbedding
from ..eval.hierarchy import (
    MatchCalibration,
    fit_match_calibration,
    fit_specific_generality,
    hierarchy_metrics_of,
    hierarchy_plot,
    hierarchy_score_matrices,
    hierarchy_tables,
)
from ..eval.report import write_results
from ..hierarchy_head import HierarchyHead, fit_pair_weights
from .evaluation import (
    EvaluationSet,
    build_evaluation_set,
    draw_scenes,
    encode_scenes,
    encode_synthetic,
    encode_texts,
    in_eval_mode,
)
from .hierarchy_breakdown import breakdown_tables, hierarchy_breakdown
from .world import Caption, Scene, entailment_matrix, truth_matrix

__all__ = ["CALIBRATION_SCENES", "TrainingMaterial", "training_material", "synthetic_hierarchy_truth",
           "synthetic_score_matrices", "synthetic_hierarchy_metrics", "synthetic_match_calibration",
           "synthetic_hierarchy_head", "strictly_more_general", "tuning_captions", "synthetic_training_fits",
           "BREAKDOWN_SCORES", "TEXT_HARD_NEGATIVE_ROUNDS", "evaluate_synthetic_hierarchy"]

#: Scores whose answers the task breaks down by kind of query and of mistake: what the search ranks by with a
#: hierarchy head and without one.
BREAKDOWN_SCORES = ("head", "directional")
#: Rounds of hard negatives in the ``text_in_text`` fit (:func:`~probclip.hierarchy_head.fit_pair_weights`): one
#: round raised "more specific" R-precision (levels 0-3) of the quickstart model by 0.022-0.029 on three seeds
#: for about 40 s on 2 cores (docs/evaluation.md); a second round added nothing.
TEXT_HARD_NEGATIVE_ROUNDS = 1
#: Training-split scenes the match calibration of the ``denotation`` score and the hierarchy head are fitted on.
CALIBRATION_SCENES = 1000


@dataclass(frozen=True)
class TrainingMaterial:
    """Training-split scenes and their distinct captions (sorted by text), encoded by a model."""

    scenes: list[Scene]
    captions: list[Caption]
    images: ProbEmbedding
    texts: ProbEmbedding
    seed: int

    def describe(self) -> str:
        """Where a fit on this material comes from, in words."""
        return (f"{len(self.scenes)} training-split scenes of the synthetic world (seed {self.seed}) and their "
                f"{len(self.captions)} captions")


def training_material(model, tokenizer, transform, seed: int,
                      num_scenes: int = CALIBRATION_SCENES) -> TrainingMaterial:
    """The first ``num_scenes`` scenes of the *training* split (world seed ``seed``) and their distinct captions,
    encoded by ``model`` in eval mode (never the test split)."""
    scenes, drawn = draw_scenes(seed, num_scenes, "train", "occlusion")
    captions = [c for _, c in sorted({c.text: c for caps in drawn for c in caps}.items())]
    with in_eval_mode(model):
        images = encode_scenes(model, scenes, transform)
        texts = encode_texts(model, [c.text for c in captions], tokenizer)
    return TrainingMaterial(scenes, captions, images, texts, seed)


def strictly_more_general(captions: Sequence[Caption]) -> np.ndarray:
    """bool ``[G, G]``: ``[q, i]`` when caption ``i`` is strictly more general than caption ``q`` (``q`` entails
    ``i`` and not the other way round); its transpose says "strictly more specific"."""
    entailed = entailment_matrix(captions)  # [i, j]: caption i entails caption j
    return entailed & ~entailed.T


def synthetic_hierarchy_truth(eval_set: EvaluationSet) -> dict[str, np.ndarray]:
    """``{"general": [G, G], "specific": [G, G], "image": [N, G]}`` bool over ``eval_set.captions``: row q holds
    the captions strictly more general than caption q, strictly more specific, and true of image q."""
    strict = strictly_more_general(eval_set.captions)
    return {"general": strict, "specific": strict.T.copy(), "image": eval_set.truth.copy()}


def synthetic_match_calibration(model, tokenizer, transform, seed: int, num_scenes: int = CALIBRATION_SCENES,
                                material: TrainingMaterial | None = None) -> MatchCalibration:
    """The model's match probability calibrated on ``num_scenes`` scenes of the *training* split (world seed
    ``seed``) and their distinct captions, against the world's truth (never on the test split). ``material``: the
    encoded training material when already at hand (:func:`training_material`)."""
    material = material or training_material(model, tokenizer, transform, seed, num_scenes)
    truth = truth_matrix(material.scenes, material.captions).T  # [captions, scenes]
    return fit_match_calibration(material.texts, material.images, truth, *_logit_parameters(model))


def tuning_captions(model, tokenizer, seed: int, num_scenes: int = CALIBRATION_SCENES
                    ) -> tuple[list[Caption], ProbEmbedding]:
    """The distinct captions of the *training* split's scenes ``num_scenes .. 2 num_scenes - 1`` (after the scenes a
    head is fitted on; sorted by text) and their embeddings: held-out captions to tune the head's ``generality``."""
    _, drawn = draw_scenes(seed, 2 * num_scenes, "train", "occlusion")
    captions = [c for _, c in sorted({c.text: c for caps in drawn[num_scenes:] for c in caps}.items())]
    with in_eval_mode(model):
        texts = encode_texts(model, [c.text for c in captions], tokenizer)
    return captions, texts


def synthetic_hierarchy_head(model, tokenizer, transform, seed: int, num_scenes: int = CALIBRATION_SCENES,
                             material: TrainingMaterial | None = None) -> HierarchyHead:
    """A hierarchy head fitted on the *training* split's material (:func:`training_material`): ``text_in_text`` on
    the strict entailments between its captions (with ``TEXT_HARD_NEGATIVE_ROUNDS`` rounds of hard negatives),
    ``image_in_text`` on which captions are true of which scenes; its ``generality`` is chosen on the captions of
    the next ``num_scenes`` training scenes (:func:`tuning_captions`)."""
    material = material or training_material(model, tokenizer, transform, seed, num_scenes)
    where = material.describe()
    text = fit_pair_weights(material.texts, material.texts, strictly_more_general(material.captions), where,
                            seed=seed, hard_negative_rounds=TEXT_HARD_NEGATIVE_ROUNDS)
    image = fit_pair_weights(material.images, material.texts, truth_matrix(material.scenes, material.captions),
                             where, seed=seed)
    head = HierarchyHead({"text_in_text": text, "image_in_text": image})
    captions, texts = tuning_captions(model, tokenizer, seed, num_scenes)
    head, _ = fit_specific_generality(head, texts, strictly_more_general(captions).T.copy())
    return head


def synthetic_training_fits(model, tokenizer, transform, seed: int, head: HierarchyHead | None = None
                            ) -> tuple[MatchCalibration, HierarchyHead, TrainingMaterial]:
    """The match calibration and the hierarchy head from one encoding of the training split
    (:func:`training_material`): ``(calibration, head, material)``; a given ``head`` is kept, not fitted again."""
    material = training_material(model, tokenizer, transform, seed)
    calibration = synthetic_match_calibration(model, tokenizer, transform, seed, material=material)
    if head is None:
        head = synthetic_hierarchy_head(model, tokenizer, transform, seed, material=material)
    return calibration, head, material


def _logit_parameters(model) -> tuple[float, float]:
    return float(model.logit_scale.detach()), float(model.logit_bias.detach())


def synthetic_score_matrices(embeddings: dict, eval_set: EvaluationSet, empty, probabilistic: bool = True,
                             model=None, calibration: MatchCalibration | None = None,
                             head: HierarchyHead | None = None) -> tuple[dict, dict]:
    """Every score's ``(general, specific)`` matrices (:func:`~probclip.eval.hierarchy.hierarchy_score_matrices`)
    from :func:`~probclip.synthetic.evaluation.encode_synthetic`'s ``embeddings`` and the empty caption's embedding
    ``empty`` ``[1, D]``; with ``model`` and its ``calibration`` (:func:`synthetic_match_calibration`), the
    ``denotation`` score too; with a ``head``, the ``head`` score."""
    levels = np.array([c.level for c in eval_set.captions])
    probability = None
    if probabilistic and calibration is not None:
        if model is None:
            raise ValueError("the denotation score needs the model (its logit scale and bias) with its calibration")
        probability = calibration.probability(embeddings["captions"], embeddings["images"],
                                              *_logit_parameters(model))
    return hierarchy_score_matrices(embeddings["captions"], embeddings["images"], levels, empty, probabilistic,
                                    probability, head)


def synthetic_hierarchy_metrics(embeddings: dict, eval_set: EvaluationSet, empty, probabilistic: bool = True,
                                model=None, calibration: MatchCalibration | None = None,
                                head: HierarchyHead | None = None) -> dict:
    """The hierarchy metrics of :func:`synthetic_score_matrices` (same arguments) against the world's truth."""
    general, specific = synthetic_score_matrices(embeddings, eval_set, empty, probabilistic, model, calibration,
                                                 head)
    levels = np.array([c.level for c in eval_set.captions])
    return hierarchy_metrics_of(general, specific, levels, synthetic_hierarchy_truth(eval_set))


def evaluate_synthetic_hierarchy(model, tokenizer, transform, seed: int = 0, out_dir: str | Path | None = None,
                                 name: str = "model", probabilistic: bool = True,
                                 head: HierarchyHead | None = None) -> dict:
    """The hierarchy task on the synthetic world's test split (world seed ``seed``: the quickstart's scenes).

    ``head``: the model's stored hierarchy head (what its collections' searches rank by); None fits one on the
    training split, as the quickstart does."""
    if not probabilistic:
        raise ValueError("the hierarchy task on the synthetic world needs a probclip model trained on it (e.g. "
                         "the quickstart's model/); give a HierarCaps CSV with --data for other models")
    eval_set = build_evaluation_set(seed, degradation_kind="occlusion")
    stored = head is not None
    with in_eval_mode(model):  # the model's own mode comes back afterwards
        embeddings = encode_synthetic(model, eval_set, tokenizer, transform)
        with torch.no_grad():
            empty = model.encode_text(tokenizer([""]))
        calibration, head, material = synthetic_training_fits(model, tokenizer, transform, seed, head)
        general, specific = synthetic_score_matrices(embeddings, eval_set, empty, probabilistic, model, calibration,
                                                     head)
    head_source = "stored beside the model" if stored else f"fitted on {material.describe()}"
    truth = synthetic_hierarchy_truth(eval_set)
    levels = np.array([c.level for c in eval_set.captions])
    metrics = hierarchy_metrics_of(general, specific, levels, truth)
    searched = {k: general[k] for k in BREAKDOWN_SCORES if k in general}  # what the search ranks by
    breakdown = hierarchy_breakdown(searched, specific, truth, eval_set, {c.text for c in material.captions})
    results = {"task": "hierarchy", "data": f"synthetic world, test split, seed {seed}", "model": name,
               "probabilistic": probabilistic, "n_images": len(eval_set.scenes), "n_captions": len(eval_set.captions),
               "match_calibration": {**dataclasses.asdict(calibration),
                                     "fitted_on": f"{CALIBRATION_SCENES} training-split scenes, seed {seed}"},
               "hierarchy_head": {"source": head_source,
                                  "fitted_on": {k: v.fitted_on for k, v in head.pairs.items()},
                                  "generality": {k: v.generality for k, v in head.pairs.items()}},
               "metrics": metrics, "breakdown": breakdown,
               "tables": {**hierarchy_tables(metrics), **breakdown_tables(breakdown)}}
    if out_dir is not None:
        results["plots"] = [hierarchy_plot(metrics, Path(out_dir) / "hierarchy.png").name]
        write_results(out_dir, results)
    return results
