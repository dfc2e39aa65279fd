"""Hierarchical search measured against known truth: "more general" and "more specific".

A query (a caption or an image) asks for the gallery captions more general than it (``general``: those it
entails, or for an image every caption true of it) or more specific (``specific``: those that entail it). Each
score ranks the gallery, and the ranked list is compared with the truth, per query level:

- ``r_precision``, ``map_at_r``, ``r1`` / ``r5`` / ``r10`` (``R@K = 1`` when any of the first K is right), over the
  items a score returns (a directional score returns only the items that pass its check; the others are never
  found);
- ``order``: Kendall tau between the rank and the caption level of the right items among the first R: +1 when
  they come **general to specific** (HierarCaps' order: for ``general``, "a shape" first and the query's nearest
  generalisation last; for ``specific``, the query's nearest specialisations first), -1 specific to general,
  NaN (left out of the mean) when fewer than two levels are found.

Scores (``HIERARCHY_SCORES``; ``test(a in b)`` is ProLIP's inclusion test at eps 0):

- ``directional``: what ``probclip search`` ranks by (``included`` for ``general``, ``includes`` for
  ``specific``): ``test(query in item)`` (``general``) or ``test(item in query)`` (``specific``) over the items
  where it beats the reverse test (the direction check);
- ``test``: the same test without the check; ``csd``: ``-CSD``; ``mean``: cosine of the means;
- ``walk`` (``general`` only): the HierarCaps interpolation walk from the query to the empty caption's mean
  (:func:`probclip.eval.hierarcaps.hierarchical_walk`), the captions it visits ranked from the root end.
- ``denotation`` (when a calibrated match probability ``p(caption, image)`` over a set of images is given; the
  synthetic world fits one on its training split, :func:`fit_match_calibration`): caption ``i`` is more general than
  caption ``q`` by the share of ``q``'s images that ``i`` describes too, ``sum_x p(q,x) p(i,x) / sum_x p(q,x)``
  (visual denotations), "more specific" the other way round, each returned only in the direction of the larger
  share; for an image query, ``p(caption, image)`` itself (:func:`denotation_scores`). It looks at the images, not
  at the stored Gaussians alone, so ``probclip search`` does not rank by it.
- ``head`` (when a :class:`~probclip.hierarchy_head.HierarchyHead` is given): the head's logit of ``P(query in
  item)`` (``general``) or ``P(item in query)`` (``specific``, plus the head's ``generality`` term, which puts the
  nearer specialisations first: :func:`fit_specific_generality`), over the captions where it beats the reverse
  logit (caption queries) or where ``P > 0.5`` (image queries, which have no reverse); what ``probclip search``
  ranks by when the collection carries a head (:func:`head_scores`).

:func:`evaluate_hierarchy` runs the task on a HierarCaps CSV (the levels of each chain, general -> specific, are
the truth); ``probclip.synthetic.hierarchy`` runs it on the synthetic world, whose truth is exact.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from scipy.stats import kendalltau

from ..distances import inclusion_score
from ..embedding import ProbEmbedding
from ..hierarchy_head import HierarchyHead, PairWeights
from .encode import EvalModel, embedding_means, encode_images, encode_texts
from .hierarcaps import hierarchical_walk
from .image_check import skipped_report
from .options import EvalOptions
from .readers import HierarCapsData, read_hierarcaps
from .report import plot_bars, write_results

__all__ = ["DIRECTIONS", "HIERARCHY_SCORES", "HIERARCHY_METRICS", "MatchCalibration", "denotation_scores",
           "head_scores",
           "fit_match_calibration", "fit_specific_generality", "GENERALITY_GRID", "hierarchy_scores",
           "hierarchy_metrics", "hierarchy_score_matrices", "hierarchy_metrics_of", "hierarchy_results",
           "hierarcaps_truth", "evaluate_hierarchy", "flat_hierarchy_metrics", "hierarchy_table",
           "hierarchy_tables"]

DIRECTIONS = ("general", "specific")
HIERARCHY_SCORES = ("directional", "test", "csd", "mean", "walk")
HIERARCHY_METRICS = ("r_precision", "map_at_r", "r1", "r5", "r10", "order")
#: Interpolation points of the walk score.
WALK_STEPS = 50


@dataclass(frozen=True)
class MatchCalibration:
    """``P(caption true of image) = sigmoid(a * logit + c * u_caption + d)``, with the model's match logit
    ``logit = s (mu_c . mu_x - (u_c + u_x) / 2) + b`` (``s = exp(logit_scale)``, ``b = logit_bias``)."""

    a: float
    c: float
    d: float

    def probability(self, captions: ProbEmbedding, images: ProbEmbedding, logit_scale: float,
                    logit_bias: float) -> torch.Tensor:
        """Calibrated ``P(caption true of image)`` ``[G, N]`` float64 for captions ``[G, D]`` and images ``[N, D]``."""
        logits = match_logits(captions, images, logit_scale, logit_bias)
        return torch.sigmoid(self.a * logits + self.c * captions.uncertainty.double()[:, None] + self.d)


def match_logits(captions: ProbEmbedding, images: ProbEmbedding, logit_scale: float,
                 logit_bias: float) -> torch.Tensor:
    """The model's match logit ``[G, N]`` float64 (``logit_scale`` is the log of the scale, as the model stores it)."""
    c, x = captions.to(torch.float64), images.to(torch.float64)
    return math.exp(logit_scale) * (c.mean @ x.mean.T - (c.uncertainty[:, None] + x.uncertainty[None]) / 2) \
        + logit_bias


def fit_match_calibration(captions: ProbEmbedding, images: ProbEmbedding, truth: np.ndarray, logit_scale: float,
                          logit_bias: float) -> MatchCalibration:
    """Logistic regression of ``truth`` ``[G, N]`` (caption true of image) on the match logit and the caption's
    ``u`` (L-BFGS on standardised features, an L2 penalty of 1e-4)."""
    truth = np.asarray(truth, dtype=bool)
    if truth.shape != (len(captions), len(images)) or truth.all() or not truth.any():
        raise ValueError(f"truth must be a [captions, images] = [{len(captions)}, {len(images)}] boolean matrix "
                         f"holding both true and false pairs; got shape {truth.shape}")
    logits = match_logits(captions, images, logit_scale, logit_bias)
    x = torch.stack([logits.ravel(), captions.uncertainty.double()[:, None].expand_as(logits).ravel()], 1)
    y = torch.as_tensor(truth, dtype=torch.float64).ravel()
    mean, std = x.mean(0), x.std(0).clamp_min(1e-12)
    z = (x - mean) / std
    w = torch.zeros(3, dtype=torch.float64, requires_grad=True)
    optimizer = torch.optim.LBFGS([w], max_iter=200, line_search_fn="strong_wolfe")

    def closure():
        optimizer.zero_grad()
        loss = torch.nn.functional.binary_cross_entropy_with_logits(z @ w[:2] + w[2], y) + 1e-4 * w[:2].pow(2).sum()
        loss.backward()
        return loss

    optimizer.step(closure)
    w = w.detach()
    a, c = (w[:2] / std).tolist()
    return MatchCalibration(a=a, c=c, d=float(w[2] - (mean / std) @ w[:2]))


def denotation_scores(probability: torch.Tensor, direction: str) -> torch.Tensor:
    """Denotation scores from a calibrated ``P(caption true of image)`` ``[G, N]``: ``[G + N, G]`` for
    ``general`` (caption queries, then the images as queries), ``[G, G]`` for ``specific``; ``-inf`` where the
    share is not larger in the direction asked."""
    if direction not in DIRECTIONS:
        raise ValueError(f"direction must be one of {list(DIRECTIONS)}; got {direction!r}")
    p = probability.double()
    share = (p @ p.T) / p.sum(1, keepdim=True).clamp_min(1e-300)  # [q, i]: share of q's images that i describes
    if direction == "specific":
        return torch.where(share.T > share, share.T, -math.inf)
    return torch.cat([torch.where(share > share.T, share, -math.inf), p.T])


def _specific_head_scores(text: PairWeights, inner: torch.Tensor, captions: ProbEmbedding) -> torch.Tensor:
    """``[q, i]`` "more specific" head scores from the ``text_in_text`` logits ``inner`` ``[q, i]`` (caption q in
    caption i): the specific rank of caption i in q where that logit beats the reverse one, else ``-inf``."""
    rank = text.specific_rank(inner.T, captions.logvar.double()[None])  # [q, i], i the more specific side
    return torch.where(inner.T > inner, rank, -math.inf)


def head_scores(head: HierarchyHead, captions: ProbEmbedding, images: ProbEmbedding | None,
                direction: str) -> torch.Tensor:
    """The ``head`` score: ``[G + N, G]`` for ``general`` (caption queries, then image queries), ``[G, G]`` for
    ``specific``; ``-inf`` for the items a search with the head does not return (see the module docstring)."""
    if direction not in DIRECTIONS:
        raise ValueError(f"direction must be one of {list(DIRECTIONS)}; got {direction!r}")
    text = head.kind("text", "text")
    if text is None:
        raise ValueError(f"the head holds no text_in_text weights (it has {sorted(head.pairs)})")
    inner = text.logits(captions, captions)  # [q, i]: P(caption q in caption i)
    if direction == "specific":
        return _specific_head_scores(text, inner, captions)
    rows = [torch.where(inner > inner.T, inner, -math.inf)]
    if images is not None and len(images):
        image = head.kind("image", "text")
        if image is None:
            raise ValueError(f"the head holds no image_in_text weights (it has {sorted(head.pairs)})")
        logits = image.logits(images, captions)
        rows.append(torch.where(logits > 0, logits, -math.inf))
    return torch.cat(rows)


#: Values of ``generality`` :func:`fit_specific_generality` tries.
GENERALITY_GRID = (0.0, 0.25, 0.5, 0.75, 1.0, 1.5, 2.0, 2.5, 3.0, 4.0)


def fit_specific_generality(head: HierarchyHead, captions: ProbEmbedding, more_specific: np.ndarray,
                            grid: Sequence[float] = GENERALITY_GRID) -> tuple[HierarchyHead, dict[float, float]]:
    """Choose the ``text_in_text`` weights' ``generality`` (see :meth:`PairWeights.specific_rank`) on held-out
    captions: the grid value with the best mean R-precision of "more specific" over ``captions`` ``[G, D]`` as
    queries and gallery, against ``more_specific`` ``[G, G]`` (row q: the captions strictly more specific than
    caption q). Returns the head with that ``generality`` and ``{value: R-precision}``; ties go to the smaller value.

    Use captions the head was *not* fitted on: on its own fitting pairs the logit alone already ranks right.
    """
    text = head.kind("text", "text")
    if text is None:
        raise ValueError(f"the head holds no text_in_text weights (it has {sorted(head.pairs)})")
    if not grid or any(not math.isfinite(g) for g in grid):
        raise ValueError(f"grid must be a non-empty list of finite numbers; got {list(grid)}")
    levels = np.zeros(len(captions), dtype=np.int64)
    itself = np.arange(len(captions))
    inner = text.logits(captions, captions)  # once: the generality changes the ranking only
    table = {}
    for value in grid:
        scores = _specific_head_scores(dataclasses.replace(text, generality=float(value)), inner, captions)
        table[float(value)] = _nanmean(per_query_metrics(scores, more_specific, levels, itself)["r_precision"])
    best = max(table, key=lambda g: (table[g], -g))
    return HierarchyHead({**head.pairs, "text_in_text": dataclasses.replace(text, generality=best)}), table


def _sides(query: ProbEmbedding, gallery: ProbEmbedding, direction: str) -> tuple[torch.Tensor, torch.Tensor]:
    """``(asked, reverse)`` ``[Q, G]`` float64: the inclusion test in the direction asked and the reverse one."""
    q, g = query.to(torch.float64), gallery.to(torch.float64)
    up, down = inclusion_score(q, g, eps=0.0), inclusion_score(g, q, eps=0.0).T  # test(q in g), test(g in q)
    return (up, down) if direction == "general" else (down, up)


def hierarchy_scores(query: ProbEmbedding | torch.Tensor, gallery: ProbEmbedding | torch.Tensor, direction: str,
                     score: str, *, empty: ProbEmbedding | torch.Tensor | None = None) -> torch.Tensor:
    """``[Q, G]`` float64 scores (higher first), ``-inf`` for the items a score does not return.

    ``query`` ``[Q, D]``, ``gallery`` ``[G, D]``: probabilistic embeddings (plain mean tensors allow only
    ``mean`` and ``walk``). ``empty``: the empty caption's embedding ``[1, D]`` (the root of ``walk``).
    """
    if direction not in DIRECTIONS:
        raise ValueError(f"direction must be one of {list(DIRECTIONS)}; got {direction!r}")
    if score not in HIERARCHY_SCORES:
        raise ValueError(f"score must be one of {list(HIERARCHY_SCORES)}; got {score!r}")
    q_mean = torch.nn.functional.normalize(embedding_means(query).double(), dim=-1)
    g_mean = torch.nn.functional.normalize(embedding_means(gallery).double(), dim=-1)
    if score == "mean":
        return q_mean @ g_mean.T
    if score == "walk":
        if direction != "general" or empty is None:
            raise ValueError("the walk score needs direction 'general' and the empty caption's embedding")
        root = torch.nn.functional.normalize(embedding_means(empty).double()[0], dim=-1)
        walk = hierarchical_walk(q_mean, root, g_mean, WALK_STEPS)  # [Q, steps], start -> root
        out = torch.full((q_mean.shape[0], g_mean.shape[0]), -math.inf, dtype=torch.float64)
        steps = torch.arange(WALK_STEPS, dtype=torch.float64).expand_as(walk)
        out.scatter_reduce_(1, walk, steps, reduce="amax")  # the later a caption is visited, the more general
        return out
    if not (isinstance(query, ProbEmbedding) and isinstance(gallery, ProbEmbedding)):
        raise ValueError(f"score {score!r} needs probabilistic embeddings")
    if score == "csd":
        distance = torch.cdist(query.mean.double(), gallery.mean.double()) ** 2
        return -(distance + query.uncertainty.double()[:, None] + gallery.uncertainty.double()[None])
    asked, reverse = _sides(query, gallery, direction)
    if score == "test":
        return asked
    return torch.where(asked > reverse, asked, -math.inf)  # directional


def _kendall(levels: np.ndarray) -> float:
    """Kendall tau between position and level (+1: levels rise along the list); NaN when undefined."""
    if levels.size < 2 or np.all(levels == levels[0]):
        return math.nan
    return float(kendalltau(np.arange(levels.size), levels).statistic)


def per_query_metrics(scores: torch.Tensor, truth: np.ndarray, gallery_levels: np.ndarray,
                      exclude: np.ndarray | None = None, ks: Sequence[int] = (1, 5, 10)) -> dict[str, np.ndarray]:
    """Per query ``[Q]`` float64 arrays of ``HIERARCHY_METRICS`` (NaN for queries without a right item).

    Args:
        scores: ``[Q, G]`` (``-inf``: not returned); truth: ``[Q, G]`` bool; gallery_levels: ``[G]`` ints
            (larger = more specific); exclude: ``[Q]`` gallery index of the query itself, or -1.
    """
    scores = scores.double().numpy() if isinstance(scores, torch.Tensor) else np.asarray(scores, np.float64)
    n_q, n_g = scores.shape
    out = {k: np.full(n_q, math.nan) for k in (*(f"r{k}" for k in ks), "map_at_r", "r_precision", "order")}
    for qi in range(n_q):
        row, right = scores[qi].copy(), truth[qi].copy()
        if exclude is not None and exclude[qi] >= 0:
            row[exclude[qi]], right[exclude[qi]] = -math.inf, False
        n_right = int(right.sum())
        if n_right == 0:
            continue
        returned = np.nonzero(np.isfinite(row))[0]
        ranked = returned[np.lexsort((returned, -row[returned]))]
        hits = right[ranked]
        top = hits[:n_right]
        for k in ks:
            out[f"r{k}"][qi] = float(hits[:k].any())
        out["r_precision"][qi] = top.sum() / n_right
        precision_at = np.cumsum(top) / np.arange(1, top.size + 1) if top.size else np.zeros(0)
        out["map_at_r"][qi] = float((precision_at * top).sum() / n_right)
        out["order"][qi] = _kendall(gallery_levels[ranked[:n_right][top]])
    return out


def hierarchy_metrics(scores: Mapping[str, torch.Tensor], truth: np.ndarray, query_groups: Sequence[str],
                      gallery_levels: np.ndarray, exclude: np.ndarray | None = None) -> dict:
    """``{score: {group: {metric: mean, "queries": n}}}`` over the queries of each group with a right item.

    ``query_groups``: ``[Q]`` group names (a caption level ``"0"``, ``"1"``, ... or ``"image"``); the group
    ``"captions"`` pools every caption query.
    """
    groups = np.asarray(query_groups)
    names = [g for g in dict.fromkeys(groups.tolist())]
    if any(g != "image" for g in names):
        names.append("captions")
    out = {}
    for score, matrix in scores.items():
        values = per_query_metrics(matrix, truth, gallery_levels, exclude)
        per_group = {}
        for name in names:
            mask = groups != "image" if name == "captions" else groups == name
            mask = mask & ~np.isnan(values["r_precision"])
            if not mask.any():
                continue
            entry = {m: _nanmean(values[m][mask]) for m in HIERARCHY_METRICS}
            entry["queries"] = int(mask.sum())
            per_group[name] = entry
        out[score] = per_group
    return out


def _nanmean(values: np.ndarray) -> float:
    values = values[~np.isnan(values)]
    return float(values.mean()) if values.size else math.nan


def hierarcaps_truth(chains: Sequence[Sequence[str]]) -> tuple[list[str], np.ndarray, dict[str, np.ndarray]]:
    """The truth of a HierarCaps data set: ``(captions, levels, truth)``.

    ``captions``: the distinct chain captions (sorted); ``levels``: ``[G]`` each caption's deepest position in a
    chain (0 = most general); ``truth``: ``{"general": [G, G], "specific": [G, G], "image": [N, G]}`` bool, where a
    caption's generalisations are the captions before it in any chain holding it, its specialisations those after,
    and an image's captions are its chain.
    """
    captions = sorted({c for chain in chains for c in chain})
    index = {c: j for j, c in enumerate(captions)}
    levels = np.zeros(len(captions), dtype=np.int64)
    general = np.zeros((len(captions), len(captions)), dtype=bool)
    image = np.zeros((len(chains), len(captions)), dtype=bool)
    for i, chain in enumerate(chains):
        ids = [index[c] for c in chain]
        for depth, j in enumerate(ids):
            levels[j] = max(levels[j], depth)
            image[i, j] = True
            for k in ids[:depth]:
                if k != j:
                    general[j, k] = True
    return captions, levels, {"general": general, "specific": general.T.copy(), "image": image}


def flat_hierarchy_metrics(metrics: Mapping, prefix: str = "hierarchy",
                           keys: Sequence[str] = ("r_precision", "map_at_r", "order")) -> dict[str, float]:
    """``{"hierarchy.<direction>.<score>.<group>.<metric>": value}`` for ``keys`` (the quickstart's metrics.json)."""
    return {f"{prefix}.{direction}.{score}.{group}.{key}": entry[key]
            for direction, by_score in metrics.items() for score, by_group in by_score.items()
            for group, entry in by_group.items() for key in keys}


def _scores_for(query, gallery, direction: str, probabilistic: bool, empty) -> dict[str, torch.Tensor]:
    names = HIERARCHY_SCORES if probabilistic else ("mean", "walk")
    return {s: hierarchy_scores(query, gallery, direction, s, empty=empty) for s in names
            if not (s == "walk" and direction != "general")}


def hierarchy_score_matrices(captions, images, caption_levels: np.ndarray, empty, probabilistic: bool,
                             match_probability: torch.Tensor | None = None, head: HierarchyHead | None = None
                             ) -> tuple[dict[str, torch.Tensor], dict[str, torch.Tensor]]:
    """Every score's matrices: ``(general, specific)``, ``general[score]`` ``[G + N, G]`` ("more general" of the G
    caption queries, then the N image queries, over the G captions) and ``specific[score]`` ``[G, G]``.

    ``captions`` ``[G, D]`` are both the caption queries and the gallery; ``images`` ``[N, D]``.
    ``match_probability``: a calibrated ``P(caption true of image)`` ``[G, N]``, which adds the ``denotation``
    score; ``head``: a hierarchy head, which adds the ``head`` score.
    """
    cat = ProbEmbedding.cat if isinstance(captions, ProbEmbedding) else torch.cat
    general = _scores_for(cat([captions, images]), captions, "general", probabilistic, empty)
    specific = _scores_for(captions, captions, "specific", probabilistic, empty)
    if match_probability is not None:
        if tuple(match_probability.shape) != (len(caption_levels), len(images)):
            raise ValueError(f"match_probability must be [captions, images] = [{len(caption_levels)}, "
                             f"{len(images)}]; got {tuple(match_probability.shape)}")
        general["denotation"] = denotation_scores(match_probability, "general")
        specific["denotation"] = denotation_scores(match_probability, "specific")
    if head is not None and probabilistic:
        general["head"] = head_scores(head, captions, images, "general")
        specific["head"] = head_scores(head, captions, None, "specific")
    return general, specific


def hierarchy_metrics_of(general: Mapping[str, torch.Tensor], specific: Mapping[str, torch.Tensor],
                         caption_levels: np.ndarray, truth: Mapping[str, np.ndarray]) -> dict:
    """``{"general": {score: {group: metrics}}, "specific": {...}}`` of :func:`hierarchy_score_matrices`' output
    (``truth["image"]``: the captions true of each image)."""
    exclude = np.concatenate([np.arange(len(caption_levels)), np.full(len(truth["image"]), -1)])
    groups = [str(int(level)) for level in caption_levels] + ["image"] * len(truth["image"])
    general_truth = np.concatenate([truth["general"], truth["image"]])
    results = {"general": hierarchy_metrics(general, general_truth, groups, caption_levels, exclude)}
    results["specific"] = hierarchy_metrics(specific, truth["specific"], groups[: len(caption_levels)],
                                            caption_levels, exclude[: len(caption_levels)])
    return results


def hierarchy_results(captions, images, caption_levels: np.ndarray, truth: Mapping[str, np.ndarray],
                      empty, probabilistic: bool, match_probability: torch.Tensor | None = None,
                      head: HierarchyHead | None = None) -> dict:
    """``{"general": {score: {group: metrics}}, "specific": {...}}`` for caption and image queries: the metrics of
    :func:`hierarchy_score_matrices` (same arguments) against ``truth``."""
    general, specific = hierarchy_score_matrices(captions, images, caption_levels, empty, probabilistic,
                                                 match_probability, head)
    return hierarchy_metrics_of(general, specific, caption_levels, truth)


def hierarchy_table(metrics: Mapping, metric: str = "r_precision") -> list[list]:
    """Rows ``[direction, score, value per group...]`` of one metric, with the header first."""
    groups: list[str] = []
    for by_score in metrics.values():
        for by_group in by_score.values():
            groups.extend(g for g in by_group if g not in groups)
    groups.sort(key=lambda g: (g != "image", g != "captions", int(g) if g.isdigit() else 0, g))
    rows = [["direction", "score", *groups]]
    for direction, by_score in metrics.items():
        for score, by_group in by_score.items():
            rows.append([direction, score, *(by_group.get(g, {}).get(metric) for g in groups)])
    return rows


def hierarchy_tables(metrics: Mapping) -> dict[str, list[list]]:
    """The report's tables: R-precision and order per score and query level."""
    return {"R-precision (rows: direction and score; columns: query level)": hierarchy_table(metrics, "r_precision"),
            "mAP@R": hierarchy_table(metrics, "map_at_r"),
            "order: Kendall tau of rank and level (+1: general to specific)": hierarchy_table(metrics, "order")}


def hierarchy_plot(metrics: Mapping, path: Path) -> Path:
    """Bar chart of the R-precision of every score over the caption and image queries."""
    bars = {}
    for direction, by_score in metrics.items():
        for score, by_group in by_score.items():
            for group in ("captions", "image"):
                if group in by_group:
                    bars[f"{direction} {group}: {score}"] = by_group[group]["r_precision"]
    return plot_bars(bars, path, "Hierarchical search: R-precision", "R-precision")


def evaluate_hierarchy(model: EvalModel, data: HierarCapsData | str | Path,
                       options: EvalOptions | None = None, head: HierarchyHead | None = None) -> dict:
    """The hierarchy task on a HierarCaps CSV (``id,captions,image_url``); writes results and a plot. ``head``: the
    model's hierarchy head, when it has one (adds the ``head`` score)."""
    options = EvalOptions.of(options)
    if not isinstance(data, HierarCapsData):
        data = read_hierarcaps(data, image_root=options.image_root)
    texts, levels, truth = hierarcaps_truth(data.chains)
    images = encode_images(model.model, data.items, model.preprocess, options.batch_size, options.num_workers,
                           progress=options.progress)
    captions = encode_texts(model.model, texts, model.tokenizer, progress=options.progress)
    empty = encode_texts(model.model, [""], model.tokenizer, progress=False)
    metrics = hierarchy_results(captions, images, levels, truth, empty, model.probabilistic, head=head)
    results = {"task": "hierarchy", "data": "hierarcaps", "model": model.name, "probabilistic": model.probabilistic,
               "n_images": len(data.items), "n_captions": len(texts), "metrics": metrics,
               "skipped_images": skipped_report(data), "tables": hierarchy_tables(metrics)}
    if options.out_dir is not None:
        results["plots"] = [hierarchy_plot(metrics, Path(options.out_dir) / "hierarchy.png").name]
        write_results(options.out_dir, results)
    return results
