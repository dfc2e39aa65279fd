"""Where the hierarchy task's answers go wrong on the synthetic world: R-precision by kind of query, and what the
wrong answers are.

The world knows why an answer is wrong, so the task can say it:

- by kind of query: image queries by number of objects and by whether an object shows a held-out (shape, colour)
  combination (never in a training image); caption queries by whether they name a held-out combination and whether
  their text occurs among the training split's captions (the ones a head or calibration was fitted on);
- the wrong captions among an image query's top R (R = its number of right captions): ``binding`` (every value it
  names is in the image, but on different objects: "a red square" for a red circle and a blue square),
  ``absent <attribute>`` (a value it names is on no object: the model misread that attribute), or ``full scene``
  (a wrong full-scene caption whose values are all present);
- the wrong captions among a "more specific" caption query's top R, by their level (full-scene captions that do not
  hold the query's object are the text side of binding).
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable, Collection, Mapping

import numpy as np
import torch

from ..eval.hierarchy import per_query_metrics
from .evaluation import EvaluationSet
from .world import ATTRIBUTES, FULL_SCENE_LEVEL, HELDOUT_COMBINATIONS, Caption, Scene

__all__ = ["mistake_kind", "query_kinds", "hierarchy_breakdown", "breakdown_tables"]

_HELDOUT = frozenset(HELDOUT_COMBINATIONS)
#: Caption levels whose "more specific" queries the task's claim is about (0-3).
SPECIFIC_LEVELS = (0, 1, 2, 3)


def _names_heldout(caption: Caption) -> bool:
    return any((dict(d).get("shape"), dict(d).get("colour")) in _HELDOUT for d in caption.descriptions)


def _shows_heldout(scene: Scene) -> bool:
    return any((o.shape, o.colour) in _HELDOUT for o in scene.objects)


def mistake_kind(scene: Scene, caption: Caption) -> str:
    """Why ``caption`` (false of ``scene``) is wrong: ``binding``, ``absent <attribute>`` (``absent several`` when
    more than one attribute's value is on no object) or ``full scene``."""
    absent = sorted({a for d in caption.descriptions for a, v in d if all(o.value(a) != v for o in scene.objects)},
                    key=ATTRIBUTES.index)
    if len(absent) > 1:
        return "absent several"
    if absent:
        return f"absent {absent[0]}"
    return "full scene" if caption.exclusive else "binding"


def query_kinds(eval_set: EvaluationSet, training_captions: Collection[str] = ()) -> dict[str, dict[str, np.ndarray]]:
    """Boolean masks of the task's queries by kind: ``{"image": {name: [N]}, "caption": {name: [G]}}``.

    Image kinds: ``1 object`` / ``2 objects`` crossed with ``seen combinations`` / ``held-out combination``.
    Caption kinds: ``seen combinations`` / ``held-out combination`` and, when ``training_captions`` (texts) are given,
    ``in the training captions`` / ``not in the training captions``.
    """
    objects = np.array([len(s.objects) for s in eval_set.scenes])
    held_image = np.array([_shows_heldout(s) for s in eval_set.scenes], dtype=bool)
    images = {}
    for count in sorted(set(objects.tolist())):
        noun = "object" if count == 1 else "objects"
        images[f"{count} {noun}, seen combinations"] = (objects == count) & ~held_image
        images[f"{count} {noun}, held-out combination"] = (objects == count) & held_image
    held_caption = np.array([_names_heldout(c) for c in eval_set.captions], dtype=bool)
    captions = {"seen combinations": ~held_caption, "held-out combination": held_caption}
    if training_captions:
        known = np.array([c.text in training_captions for c in eval_set.captions], dtype=bool)
        captions["in the training captions"] = known
        captions["not in the training captions"] = ~known
    return {"image": images, "caption": captions}


def _mean(values: np.ndarray, mask: np.ndarray) -> dict:
    chosen = values[mask & ~np.isnan(values)]
    return {"r_precision": float(chosen.mean()) if chosen.size else float("nan"), "queries": int(chosen.size)}


def _mistakes(scores: np.ndarray, truth: np.ndarray, mask: np.ndarray, kind_of: Callable[[int, int], str],
              itself: np.ndarray | None = None) -> dict:
    """Counts of ``kind_of(query, item)`` over the wrong items among the top R of the queries in ``mask``
    (``itself``: each query's own gallery index, left out of its ranking)."""
    counts: Counter = Counter()
    for q in np.nonzero(mask)[0]:
        row = scores[q].copy()
        if itself is not None:
            row[itself[q]] = -np.inf
        right = truth[q]
        n_right = int(right.sum()) - (int(right[itself[q]]) if itself is not None else 0)
        if n_right <= 0:
            continue
        returned = np.nonzero(np.isfinite(row))[0]
        top = returned[np.lexsort((returned, -row[returned]))][:n_right]
        counts.update(kind_of(q, j) for j in top if not right[j])
    total = sum(counts.values())
    return {"wrong": total, "kinds": {k: {"count": n, "share": n / total} for k, n in counts.most_common()}}


def _level_name(level: int) -> str:
    return "level 5 (full scene)" if level == FULL_SCENE_LEVEL else f"level {level}"


def hierarchy_breakdown(general: Mapping[str, torch.Tensor], specific: Mapping[str, torch.Tensor],
                        truth: Mapping[str, np.ndarray], eval_set: EvaluationSet,
                        training_captions: Collection[str] = ()) -> dict:
    """R-precision by kind of query and the kinds of wrong answers, per score.

    Args:
        general: ``{score: [G + N, G]}`` "more general" scores of the G caption queries then the N image queries
            over the G captions (as :func:`probclip.eval.hierarchy.hierarchy_results` builds them).
        specific: ``{score: [G, G]}`` "more specific" scores of the caption queries.
        truth: :func:`probclip.synthetic.hierarchy.synthetic_hierarchy_truth` of ``eval_set``.
        training_captions: texts of the captions a fit saw (adds the "in the training captions" kinds).

    Returns ``{score: {"general, images": {kind: {r_precision, queries}}, "general, captions": {...},
    "specific, captions of levels 0-3": {...}, "mistakes of image queries": {images: {wrong, kinds}},
    "mistakes of more specific, levels 0-3": {wrong, kinds}}}``: a wrong image answer's kind is
    :func:`mistake_kind`, a wrong "more specific" answer's its caption level.
    """
    kinds = query_kinds(eval_set, training_captions)
    levels = np.array([c.level for c in eval_set.captions])
    n_captions = len(levels)
    itself = np.arange(n_captions)

    def image_mistake(q: int, j: int) -> str:
        return mistake_kind(eval_set.scenes[q], eval_set.captions[j])

    out = {}
    for score in general:
        matrix = general[score].double().numpy()
        by_image = per_query_metrics(matrix[n_captions:], truth["image"], levels)["r_precision"]
        by_caption = per_query_metrics(matrix[:n_captions], truth["general"], levels, itself)["r_precision"]
        entry = {"general, images": {k: _mean(by_image, m) for k, m in kinds["image"].items()},
                 "general, captions": {k: _mean(by_caption, m) for k, m in kinds["caption"].items()}}
        if score in specific:
            by_specific = per_query_metrics(specific[score], truth["specific"], levels, itself)["r_precision"]
            low = np.isin(levels, SPECIFIC_LEVELS)
            entry["specific, captions of levels 0-3"] = {k: _mean(by_specific, m & low)
                                                         for k, m in kinds["caption"].items()}
            entry["mistakes of more specific, levels 0-3"] = _mistakes(
                specific[score].double().numpy(), truth["specific"], low,
                lambda q, j: _level_name(int(levels[j])), itself)
        images = matrix[n_captions:]
        entry["mistakes of image queries"] = {
            "all images": _mistakes(images, truth["image"], np.ones(len(by_image), bool), image_mistake),
            **{k: _mistakes(images, truth["image"], m, image_mistake) for k, m in kinds["image"].items()},
        }
        out[score] = entry
    return out


def breakdown_tables(breakdown: Mapping) -> dict[str, list[list]]:
    """The report's tables of a :func:`hierarchy_breakdown`: R-precision by kind of query (one row per score and
    question), and the shares of the kinds of wrong answers of image queries (one row per score and kind of image)."""
    tables = {}
    for question in ("general, images", "general, captions", "specific, captions of levels 0-3"):
        names = [k for entry in breakdown.values() for k in entry.get(question, {})]
        names = list(dict.fromkeys(names))
        if not names:
            continue
        rows = [["score", *(f"{k} (n={_queries(breakdown, question, k)})" for k in names)]]
        rows += [[score, *(entry[question].get(k, {}).get("r_precision") for k in names)]
                 for score, entry in breakdown.items() if question in entry]
        tables[f"R-precision by kind of query: {question}"] = rows
    kinds = list(dict.fromkeys(k for entry in breakdown.values()
                               for part in entry["mistakes of image queries"].values() for k in part["kinds"]))
    rows = [["score", "images", "wrong in top R", *kinds]]
    for score, entry in breakdown.items():
        for group, part in entry["mistakes of image queries"].items():
            rows.append([score, group, part["wrong"], *(part["kinds"].get(k, {}).get("share", 0.0) for k in kinds)])
    tables["Wrong captions among an image's top R, by kind (share)"] = rows
    levels = list(dict.fromkeys(k for entry in breakdown.values()
                                for k in entry.get("mistakes of more specific, levels 0-3", {}).get("kinds", {})))
    if levels:
        rows = [["score", "wrong in top R", *levels]]
        for score, entry in breakdown.items():
            part = entry.get("mistakes of more specific, levels 0-3")
            if part is not None:
                rows.append([score, part["wrong"], *(part["kinds"].get(k, {}).get("share", 0.0) for k in levels)])
        tables["Wrong captions among the top R of \"more specific\" (levels 0-3), by their level (share)"] = rows
    return tables


def _queries(breakdown: Mapping, question: str, kind: str) -> int:
    return max(entry.get(question, {}).get(kind, {}).get("queries", 0) for entry in breakdown.values())
