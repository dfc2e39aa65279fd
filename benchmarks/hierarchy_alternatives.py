"""Quality, not speed: R-precision of alternative "more general / more specific" scores against the world's truth.

Runs the hierarchy task's queries (the quickstart's test split: every distinct caption, and the 500 clean images)
on a trained quickstart model and compares the score ``probclip search`` ranks by (``directional``) and the
cosine of the means with scores a search could rank by instead:

- ``containment``: the item more uncertain than the query (``u_item > u_query`` for "more general"), ranked by
  ``-sum_d (mu_q - mu_i)^2 / var_i`` (how many of the item's standard deviations the query's mean lies from it);
- ``denotation``: the hierarchy task's score (``probclip.eval.hierarchy.denotation_scores``): the model's match
  probability calibrated on the *training* split (``synthetic_match_calibration``), then for a caption query the
  share of its images (the test images) that an item describes too, for an image query the calibrated
  ``P(caption true of image)`` ("calibrated match").

    python benchmarks/hierarchy_alternatives.py QUICKSTART_OUT/model [--seed 0] [--fit-scenes 1000]

Prints one row per score: R-precision of "more general" from captions and from images, and of "more specific"
from captions of levels 0-3 (the quickstart's claims), plus the calibration's fit.
"""

from __future__ import annotations

import argparse
import math

import numpy as np
import torch


def roc_auc(scores: np.ndarray, positive: np.ndarray) -> float:
    """Area under the ROC curve of ``scores`` for the boolean labels ``positive`` (ties get average ranks)."""
    from scipy.stats import rankdata

    ranks = rankdata(scores)
    n_pos, n_neg = int(positive.sum()), int((~positive).sum())
    return float((ranks[positive].sum() - n_pos * (n_pos + 1) / 2) / (n_pos * n_neg))


def main() -> None:
    from probclip import create_model_from_pretrained
    from probclip.eval.hierarchy import denotation_scores, hierarchy_scores, match_logits, per_query_metrics
    from probclip.synthetic.evaluation import build_evaluation_set, encode_synthetic
    from probclip.synthetic.hierarchy import synthetic_hierarchy_truth, synthetic_match_calibration
    from probclip.tokenizers import get_tokenizer
    from probclip.transforms import image_transform

    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("model", help="a trained quickstart model folder (QUICKSTART_OUT/model)")
    parser.add_argument("--seed", type=int, default=0, help="world seed of the test split (the quickstart's)")
    parser.add_argument("--fit-scenes", type=int, default=1000,
                        help="training-split scenes the calibration is fitted on")
    args = parser.parse_args()
    torch.set_num_threads(1)

    model, _ = create_model_from_pretrained(args.model)
    model.eval()
    tokenizer, transform = get_tokenizer(model), image_transform(model.config.vision)
    scale, bias = float(model.logit_scale.detach()), float(model.logit_bias.detach())
    calibration = synthetic_match_calibration(model, tokenizer, transform, args.seed, args.fit_scenes)
    print(f"calibration on {args.fit_scenes} training scenes: P = sigmoid({calibration.a:.3f} logit "
          f"+ {calibration.c:.3f} u_caption + {calibration.d:.3f})")

    eval_set = build_evaluation_set(args.seed, degradation_kind="occlusion")
    emb = encode_synthetic(model, eval_set, tokenizer, transform)
    caps, imgs = emb["captions"].to(torch.float64), emb["images"].to(torch.float64)
    truth = synthetic_hierarchy_truth(eval_set)
    levels = np.array([c.level for c in eval_set.captions])
    own = np.arange(len(levels))

    def row(name, general, image, specific):
        g = per_query_metrics(general, truth["general"], levels, own)["r_precision"]
        i = per_query_metrics(image, truth["image"], levels, None)["r_precision"]
        s = per_query_metrics(specific, truth["specific"], levels, own)["r_precision"]
        print(f"| {name} | {np.nanmean(g):.3f} | {np.nanmean(i):.3f} | {np.nanmean(s[levels <= 3]):.3f} |", flush=True)

    print("| score | general, captions | general, images | specific, levels 0-3 |\n|---|---|---|---|")
    for score in ("directional", "mean"):
        row(score, hierarchy_scores(caps, caps, "general", score), hierarchy_scores(imgs, caps, "general", score),
            hierarchy_scores(caps, caps, "specific", score))

    var = caps.logvar.exp()
    inside = torch.stack([-((caps.mean[q] - caps.mean) ** 2 / var).sum(-1) for q in range(len(caps))])  # [q, i]
    higher = caps.uncertainty[None, :] > caps.uncertainty[:, None]  # [q, i]: u_i > u_q
    img_inside = torch.stack([-((imgs.mean[x] - caps.mean) ** 2 / var).sum(-1) for x in range(len(imgs))])
    img_higher = caps.uncertainty[None, :] > imgs.uncertainty[:, None]
    row("containment", torch.where(higher, inside, -math.inf), torch.where(img_higher, img_inside, -math.inf),
        torch.where(~higher, inside.T, -math.inf))

    logits = match_logits(caps, imgs, scale, bias)
    aucs = [roc_auc(logits[levels == level].ravel().numpy(), eval_set.truth.T[levels == level].ravel())
            for level in range(1, int(levels.max()) + 1)]
    print("AUC of the match logit, captions true of an image vs not, caption levels 1..:",
          " ".join(f"{a:.3f}" for a in aucs))
    p = calibration.probability(caps, imgs, scale, bias)  # [G, N]
    general = denotation_scores(p, "general")
    row("calibrated match (images) / denotation (captions)", general[: len(caps)], general[len(caps):],
        denotation_scores(p, "specific"))


if __name__ == "__main__":
    main()
