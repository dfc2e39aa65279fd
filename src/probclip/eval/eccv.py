"""ECCV Caption, CxC and COCO 1k / 5k retrieval metrics on the COCO Karpathy 5k test split.

The ground truth is the one shipped in the ``eccv-caption`` package (COCO image and caption ids:
original COCO pairs, CxC positives, ECCV Caption positives, and the caption-id order that defines the
five COCO-1k folds). The metrics are computed here, exactly, from the embeddings:

- ECCV Caption: mAP@R, R-Precision and R@1 over the ECCV queries (1,261 images i2t, 1,332 captions t2i);
- CxC: R@K with the CxC positives;
- COCO 5k: R@K with the original pairs over the full 5k images / 25k captions;
- COCO 1k: R@K averaged over five folds of 1,000 images and their 5,000 captions.

Unlike the package's evaluator, nothing needs ranked lists as input (so COCO 1k needs no full
rankings), any metric can be asked alone, and malformed input is an error that names the bad ids.

R (the number of positives of a query) counts every ground-truth positive, as the package does. Two
ECCV i2t positives in the shipped ground truth are not among the 25,000 test captions; they count in
R and can never be retrieved, so ECCV numbers stay comparable with published ones.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from ..textfiles import read_json_file
from .caption_check import skipped_captions_report
from .encode import Embeddings, EvalModel, embedding_uncertainty
from .image_check import skipped_report
from .metrics import DEFAULT_MAX_CHUNK_ELEMENTS, metrics_from_ranks, uncertainty_bins
from .options import EvalOptions
from .readers import RetrievalData, read_retrieval
from .report import plot_bars, plot_uncertainty_bins, write_results
from .retrieval import encode_retrieval_data
from .scoring import PositiveLists, available_methods, rank_positives

__all__ = [
    "CocoGroundTruth",
    "load_coco_ground_truth",
    "coco_eccv_metrics",
    "attach_coco_caption_ids",
    "evaluate_eccv",
    "BENCHMARKS",
]

_GT_NAMES = ("original", "cxc", "eccv")
BENCHMARKS = ("eccv", "cxc", "coco_5k", "coco_1k")


@dataclass
class CocoGroundTruth:
    """Id-level ground truth: ``positives[name][direction]`` maps a query id to its positive ids.

    ``name`` in ``("original", "cxc", "eccv")``, ``direction`` in ``("i2t", "t2i")``;
    ``caption_order`` is the list of caption ids whose consecutive fifths are the COCO-1k folds.
    """

    positives: dict
    caption_order: list[int]

    @property
    def image_ids(self) -> set[int]:
        return set(self.positives["original"]["i2t"])

    @property
    def caption_ids(self) -> set[int]:
        return set(self.positives["original"]["t2i"])


def _read_id_map(path: Path) -> dict[int, list[int]]:
    raw = read_json_file(path)
    return {int(k): [int(v) for v in values] for k, values in raw.items()}


def load_coco_ground_truth(data_dir: str | Path | None = None) -> CocoGroundTruth:
    """Read the ground truth files (default: the data folder of the installed ``eccv_caption`` package).

    Expected files: ``{original,cxc,eccv}_{image_to_caption,caption_to_image}.json`` and ``coco_test_ids.npy``.
    """
    if data_dir is None:
        import eccv_caption  # only the ECCV task needs its ground truth

        data_dir = Path(eccv_caption.__file__).parent / "data"
    data_dir = Path(data_dir)
    positives = {}
    for name in _GT_NAMES:
        positives[name] = {}
        for direction, stem in (("i2t", "image_to_caption"), ("t2i", "caption_to_image")):
            path = data_dir / f"{name}_{stem}.json"
            if not path.is_file():
                raise FileNotFoundError(f"ground truth file {path} is missing (expected in {data_dir})")
            positives[name][direction] = _read_id_map(path)
    order_path = data_dir / "coco_test_ids.npy"
    if not order_path.is_file():
        raise FileNotFoundError(f"ground truth file {order_path} is missing")
    caption_order = [int(x) for x in np.load(order_path)]
    return CocoGroundTruth(positives, caption_order)


def _index_of(ids: Sequence[int], what: str) -> dict[int, int]:
    index = {}
    for i, x in enumerate(ids):
        if int(x) in index:
            raise ValueError(f"{what} id {x} appears twice; ids must be unique")
        index[int(x)] = i
    return index


def _check_coverage(given: dict[int, int], expected: set[int], what: str) -> None:
    missing = expected - set(given)
    extra = set(given) - expected
    if missing or extra:
        raise ValueError(
            f"the {what} ids must be exactly the {len(expected)} of the COCO 5k test split; "
            f"{len(missing)} missing (e.g. {sorted(missing)[:3]}), {len(extra)} not in it (e.g. {sorted(extra)[:3]})"
        )


def _positive_lists(mapping: dict[int, list[int]], query_index: dict[int, int], gallery_index: dict[int, int],
                    n_gallery: int) -> tuple[torch.Tensor, PositiveLists, torch.Tensor]:
    """``(query rows, positives found in the gallery, R = number of ground-truth positives per query)``.

    R counts every listed positive, also one missing from the gallery (it can never be retrieved).
    """
    queries = sorted((q for q in mapping if mapping[q]), key=lambda q: query_index[q])  # empty lists: no query
    rows = torch.tensor([query_index[q] for q in queries], dtype=torch.long)
    lists = [[gallery_index[g] for g in mapping[q] if g in gallery_index] for q in queries]
    n_relevant = torch.tensor([len(set(mapping[q])) for q in queries], dtype=torch.long)
    return rows, PositiveLists.from_lists(lists, n_gallery), n_relevant


def _ranked_metrics(query, gallery, rows, positives, n_relevant, method, ks, max_chunk_elements):
    """Per-query metrics; a query none of whose positives is in the gallery scores 0 on every metric."""
    names = [f"r{int(k)}" for k in ks] + ["map_at_r", "r_precision"]
    out = {name: torch.zeros(rows.numel(), dtype=torch.float64) for name in names}
    found = positives.counts > 0
    if not bool(found.any()):
        return out
    keep = found.nonzero().flatten()
    if keep.numel() < rows.numel():
        positives, rows, n_relevant = positives.subset(keep), rows[keep], n_relevant[keep]
    depth = max(max(ks), int(n_relevant.max()))
    ranks = rank_positives(query[rows], gallery, positives, method, max_chunk_elements, depth=depth)
    for name, values in metrics_from_ranks(ranks, n_relevant, ks).items():
        out[name][keep] = values
    return out


def coco_eccv_metrics(
    image_embeddings: Embeddings,
    text_embeddings: Embeddings,
    image_ids: Sequence[int],
    caption_ids: Sequence[int],
    ground_truth: CocoGroundTruth | None = None,
    methods: Sequence[str] | None = None,
    ks: Sequence[int] = (1, 5, 10),
    n_bins: int = 10,
    benchmarks: Sequence[str] = BENCHMARKS,
) -> dict:
    """ECCV Caption, CxC, COCO 5k and COCO 1k metrics of embeddings with COCO ids.

    Args:
        image_embeddings: ``[5000, D]`` (ProbEmbedding or means), rows named by ``image_ids``.
        text_embeddings: ``[25000, D]``, rows named by ``caption_ids`` (COCO caption ids).
        ground_truth: default :func:`load_coco_ground_truth()`.
        benchmarks: any subset of ``("eccv", "cxc", "coco_5k", "coco_1k")``; each is computed alone
            when asked alone.

    A query with an empty ground-truth list is left out; a query none of whose positives is among the
    given ids scores 0.

    Returns ``{method: {"eccv": {i2t: {map_at_r, r_precision, r1}, t2i: ...}, "cxc": {i2t: {r1, r5, r10}, t2i},
    "coco_5k": {...}, "coco_1k": {...}}}`` (fractions) and, for probabilistic embeddings,
    ``"uncertainty": {method: {"eccv_map_at_r/i2t": bins, "eccv_map_at_r/t2i": bins, "coco_5k_r1/i2t": ...}}``.
    """
    benchmarks = tuple(benchmarks)
    unknown = [b for b in benchmarks if b not in BENCHMARKS]
    if unknown or not benchmarks:
        raise ValueError(f"benchmarks must be a non-empty subset of {BENCHMARKS}; got {list(benchmarks)}")
    gt = ground_truth or load_coco_ground_truth()
    image_index = _index_of(image_ids, "image")
    caption_index = _index_of(caption_ids, "caption")
    if len(image_index) != image_embeddings.shape[0] or len(caption_index) != text_embeddings.shape[0]:
        raise ValueError(
            f"got {len(image_index)} image ids for {image_embeddings.shape[0]} images and "
            f"{len(caption_index)} caption ids for {text_embeddings.shape[0]} captions"
        )
    _check_coverage(image_index, gt.image_ids, "image")
    _check_coverage(caption_index, gt.caption_ids, "caption")
    applicable = available_methods(image_embeddings, text_embeddings)
    methods = tuple(methods) if methods is not None else applicable
    n_img, n_txt = len(image_index), len(caption_index)
    u = {"i2t": embedding_uncertainty(image_embeddings), "t2i": embedding_uncertainty(text_embeddings)}
    emb = {"i2t": (image_embeddings, text_embeddings, image_index, caption_index, n_txt),
           "t2i": (text_embeddings, image_embeddings, caption_index, image_index, n_img)}

    results: dict = {}
    bins: dict = {}
    for method in methods:
        if method not in applicable:
            raise ValueError(f"score method {method!r} does not apply to these embeddings; available: {applicable}")
        entry: dict = {}
        for name, keep, out_name in (("eccv", None, "eccv"), ("cxc", ks, "cxc"), ("original", ks, "coco_5k")):
            if out_name not in benchmarks:
                continue
            entry[out_name] = {}
            for direction in ("i2t", "t2i"):
                query, gallery, q_index, g_index, n_gallery = emb[direction]
                rows, positives, n_relevant = _positive_lists(gt.positives[name][direction], q_index, g_index,
                                                              n_gallery)
                per_query = _ranked_metrics(query, gallery, rows, positives, n_relevant, method,
                                            ks if keep else (1,), DEFAULT_MAX_CHUNK_ELEMENTS)
                if keep is None:
                    summary = {k: float(per_query[k].mean()) for k in ("map_at_r", "r_precision", "r1")}
                    bin_key = "map_at_r"
                else:
                    summary = {f"r{k}": float(per_query[f"r{k}"].mean()) for k in keep}
                    bin_key = "r1"
                entry[out_name][direction] = summary
                if u[direction] is not None and name != "cxc" and per_query[bin_key].numel() >= n_bins:
                    bins.setdefault(method, {})[f"{out_name}_{bin_key}/{direction}"] = uncertainty_bins(
                        u[direction][rows], per_query[bin_key], n_bins
                    )
        if "coco_1k" in benchmarks:
            entry["coco_1k"] = _coco_1k(gt, emb, method, ks, DEFAULT_MAX_CHUNK_ELEMENTS)
        results[method] = entry
    if bins:
        results["uncertainty"] = bins
    return results


def _coco_1k(gt: CocoGroundTruth, emb: dict, method: str, ks: Sequence[int], max_chunk_elements: int) -> dict:
    """R@K averaged over the five COCO-1k folds (gallery restricted to the fold)."""
    n_folds = 5
    fold_size = len(gt.caption_order) // n_folds
    sums = {d: {f"r{k}": 0.0 for k in ks} for d in ("i2t", "t2i")}
    image_emb, text_emb, image_index, caption_index, _ = emb["i2t"]
    original = gt.positives["original"]
    for fold in range(n_folds):
        fold_captions = gt.caption_order[fold * fold_size : (fold + 1) * fold_size]
        fold_images = sorted({original["t2i"][c][0] for c in fold_captions}, key=lambda i: image_index[i])
        fold_captions = sorted(fold_captions, key=lambda c: caption_index[c])
        cap_local = {c: j for j, c in enumerate(fold_captions)}
        img_local = {i: j for j, i in enumerate(fold_images)}
        img_rows = torch.tensor([image_index[i] for i in fold_images])
        cap_rows = torch.tensor([caption_index[c] for c in fold_captions])
        fold_img, fold_txt = image_emb[img_rows], text_emb[cap_rows]
        for direction, query, gallery, queries, q_local, g_local, mapping in (
            ("i2t", fold_img, fold_txt, fold_images, img_local, cap_local, original["i2t"]),
            ("t2i", fold_txt, fold_img, fold_captions, cap_local, img_local, original["t2i"]),
        ):
            sub = {q: mapping[q] for q in queries}
            rows, positives, n_relevant = _positive_lists(sub, q_local, g_local, len(g_local))
            per_query = _ranked_metrics(query, gallery, rows, positives, n_relevant, method, ks, max_chunk_elements)
            for k in ks:
                sums[direction][f"r{k}"] += float(per_query[f"r{k}"].mean()) / n_folds
    return sums


def attach_coco_caption_ids(data: RetrievalData, coco_captions_json: str | Path) -> RetrievalData:
    """Fill ``data.caption_ids`` by matching each caption to the COCO annotation of its image.

    ``coco_captions_json`` is a COCO captions file (``captions_val2014.json``: ``annotations[*].{image_id,
    id, caption}``). Captions are matched within their image after collapsing whitespace and lower-casing.
    ``data.image_ids`` must hold the COCO image ids (the Karpathy JSON's ``cocoid``).
    """
    if data.image_ids is None:
        raise ValueError("matching COCO caption ids needs COCO image ids (the Karpathy JSON 'cocoid' field)")
    raw = read_json_file(coco_captions_json)
    if "annotations" not in raw:
        raise ValueError(f"{coco_captions_json} is not a COCO captions file: no 'annotations' list")

    def norm(text: str) -> str:
        return " ".join(text.lower().split())

    table: dict[tuple[int, str], list[int]] = {}
    for ann in raw["annotations"]:
        table.setdefault((int(ann["image_id"]), norm(ann["caption"])), []).append(int(ann["id"]))
    caption_ids, unmatched = [], []
    used: set[int] = set()
    for k, caption in enumerate(data.captions):
        image_id = int(data.image_ids[int(data.caption_image[k])])
        candidates = [c for c in table.get((image_id, norm(caption)), []) if c not in used]
        if not candidates:
            unmatched.append((image_id, caption))
            continue
        used.add(candidates[0])
        caption_ids.append(candidates[0])
    if unmatched:
        raise ValueError(
            f"{len(unmatched)} captions have no matching annotation in {coco_captions_json} "
            f"(e.g. image {unmatched[0][0]}: {unmatched[0][1]!r})"
        )
    data.caption_ids = caption_ids
    return data


def evaluate_eccv(
    model: EvalModel,
    data: RetrievalData | str | Path,
    options: EvalOptions | None = None,
    *,
    coco_captions: str | Path | None = None,
    ground_truth: CocoGroundTruth | str | Path | None = None,
) -> dict:
    """Encode the COCO 5k test split and compute :func:`coco_eccv_metrics`.

    ``data``: a Karpathy COCO JSON (caption ids from ``coco_captions``, or from sentence ``id`` fields),
    or a CSV with ``image_id`` and ``caption_id`` columns. ``ground_truth``: a :class:`CocoGroundTruth`,
    a folder of ground-truth files (see :func:`load_coco_ground_truth`), or None for the one shipped in
    the ``eccv-caption`` package.
    """
    options = EvalOptions.of(options)

    if ground_truth is not None and not isinstance(ground_truth, CocoGroundTruth):
        ground_truth = load_coco_ground_truth(ground_truth)

    if not isinstance(data, RetrievalData):
        data = read_retrieval(data, image_root=options.image_root, split=options.split)
    if data.caption_ids is None:
        if coco_captions is None:
            raise ValueError(
                "ECCV Caption metrics need COCO caption ids: give a COCO captions file (captions_val2014.json) "
                "or data whose captions carry ids (CSV caption_id column)"
            )
        attach_coco_caption_ids(data, coco_captions)
    if data.image_ids is None:
        raise ValueError("ECCV Caption metrics need COCO image ids (Karpathy 'cocoid' or CSV image_id column)")
    images, texts = encode_retrieval_data(model, data, options.batch_size, options.num_workers, options.progress)
    metrics = coco_eccv_metrics(images, texts, data.image_ids, data.caption_ids, ground_truth=ground_truth)
    results = {"task": "eccv", "model": model.name, "probabilistic": model.probabilistic,
               "n_images": len(data.items), "n_captions": len(data.captions), "metrics": metrics}
    results["skipped_images"] = skipped_report(data)
    results["skipped_captions"] = skipped_captions_report(data)
    if options.out_dir is not None:
        out_dir = Path(options.out_dir)
        plots = []
        for method, entry in metrics.items():
            if method == "uncertainty":
                continue
            bars = {
                "ECCV mAP@R i2t": entry["eccv"]["i2t"]["map_at_r"],
                "ECCV mAP@R t2i": entry["eccv"]["t2i"]["map_at_r"],
                "CxC R@1 i2t": entry["cxc"]["i2t"]["r1"],
                "CxC R@1 t2i": entry["cxc"]["t2i"]["r1"],
                "COCO5k R@1 i2t": entry["coco_5k"]["i2t"]["r1"],
                "COCO5k R@1 t2i": entry["coco_5k"]["t2i"]["r1"],
                "COCO1k R@1 i2t": entry["coco_1k"]["i2t"]["r1"],
                "COCO1k R@1 t2i": entry["coco_1k"]["t2i"]["r1"],
            }
            plots.append(
                plot_bars(bars, out_dir / f"eccv_{method}.png", f"ECCV / CxC / COCO ({method} score)", "").name
            )
        for method, series in metrics.get("uncertainty", {}).items():
            plots.append(plot_uncertainty_bins(series, out_dir / f"uncertainty_{method}.png",
                                               "metric per query-uncertainty bin", "metric").name)
        results["plots"] = plots
        write_results(options.out_dir, results)
    return results
