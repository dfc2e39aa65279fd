"""Quality, not speed: R-precision of alternative "more general / more specific" scores against the world's truth.

Runs the hierarchy task's queries (the quickstart's test split: every distinct caption, and the 500 clean images)
on a trained quickstart model and compares the score ``probclip search`` ranks by (``directional``) and the
cosine of the means with scores a search could rank by instead:

- ``containment``: the item more uncertain than the query (``u_item > u_query`` for "more general"), ranked by
  ``-sum_d (mu_q - mu_i)^2 / var_i`` (how many of the item's standard deviations the query's mean lies from it);
- ``calibrated match`` (image queries): ``P(caption true of image)`` from the model's match logit
  ``s (mu_i . mu_x - (u_i + u_x) / 2) + b`` and the caption's ``u``, by a logistic fit on the *training* split's
  scenes and captions (the truth there comes from the world; the test split is never fitted on);
- ``denotation``: caption ``i`` is more general than caption ``q`` as far as the images that ``q`` describes are
  described by ``i`` too: ``sum_x p(q, x) p(i, x) / sum_x p(q, x)`` over the test images, with ``p`` the calibrated
  match probability; "more specific" swaps the roles; only the direction in which the share is larger is
  returned.

    python benchmarks/hierarchy_alternatives.py QUICKSTART_OUT/model [--seed 0] [--fit-scenes 1000]

Prints one row per score: R-precision of "more general" from captions and from images, and of "more specific"
from captions of levels 0-3 (the quickstart's claims), plus the calibration's fit.
"""

from __future__ import annotations

import argparse
import math

import numpy as np
import torch


def encode(model, tokenizer, transform, scenes=None, texts=None):
    """Probabilistic embeddings (float64) of rendered ``scenes`` or of ``texts``."""
    from probclip.embedding import ProbEmbedding
    from probclip.synthetic.world import render_scene

    parts = []
    with torch.no_grad():
        if scenes is not None:
            for i in range(0, len(scenes), 256):
                parts.append(model.encode_image(torch.stack([transform(render_scene(s)) for s in scenes[i:i + 256]])))
        else:
            for i in range(0, len(texts), 512):
                parts.append(model.encode_text(tokenizer(texts[i:i + 512])))
    return ProbEmbedding(torch.cat([p.mean for p in parts]), torch.cat([p.logvar for p in parts])).to(torch.float64)


def match_logits(captions, images, scale: float, bias: float) -> torch.Tensor:
    """The model's match logit ``[G, N]`` of every caption with every image."""
    return scale * (captions.mean @ images.mean.T
                    - (captions.uncertainty[:, None] + images.uncertainty[None]) / 2) + bias


def fit_calibration(logits: torch.Tensor, caption_u: torch.Tensor, truth: np.ndarray) -> torch.Tensor:
    """Logistic regression of ``truth`` ``[G, N]`` on (logit, caption u): the weights ``[3]`` (a, c, d)."""
    x = torch.stack([logits.ravel(), caption_u[:, None].expand_as(logits).ravel()], 1)
    y = torch.as_tensor(truth, dtype=torch.float64).ravel()
    mean, std = x.mean(0), x.std(0)
    z = (x - mean) / std
    w = torch.zeros(3, dtype=torch.float64, requires_grad=True)
    opt = torch.optim.LBFGS([w], max_iter=200, line_search_fn="strong_wolfe")

    def closure():
        opt.zero_grad()
        loss = torch.nn.functional.binary_cross_entropy_with_logits(z @ w[:2] + w[2], y) + 1e-4 * w[:2].pow(2).sum()
        loss.backward()
        return loss

    opt.step(closure)
    a, c = (w[:2] / std).detach()
    return torch.stack([a, c, w[2].detach() - (mean / std) @ w[:2].detach()])


def calibrated(logits, caption_u, weights) -> torch.Tensor:
    """Calibrated ``P(caption true of image)`` ``[G, N]``."""
    return torch.sigmoid(weights[0] * logits + weights[1] * caption_u[:, None] + weights[2])


def roc_auc(scores: np.ndarray, positive: np.ndarray) -> float:
    """Area under the ROC curve of ``scores`` for the boolean labels ``positive`` (ties get average ranks)."""
    from scipy.stats import rankdata

    ranks = rankdata(scores)
    n_pos, n_neg = int(positive.sum()), int((~positive).sum())
    return float((ranks[positive].sum() - n_pos * (n_pos + 1) / 2) / (n_pos * n_neg))


def main() -> None:
    from probclip import create_model_from_pretrained
    from probclip.eval.hierarchy import hierarchy_scores, per_query_metrics
    from probclip.synthetic.evaluation import build_evaluation_set, draw_scenes, encode_synthetic
    from probclip.synthetic.hierarchy import synthetic_hierarchy_truth
    from probclip.synthetic.world import truth_matrix
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
    scale, bias = float(model.logit_scale.detach().exp()), float(model.logit_bias.detach())

    fit_scenes, fit_drawn = draw_scenes(args.seed, args.fit_scenes, "train", "occlusion")
    fit_captions = sorted({c.text: c for caps in fit_drawn for c in caps}.items())
    fit_captions = [c for _, c in fit_captions]
    fit_c = encode(model, tokenizer, transform, texts=[c.text for c in fit_captions])
    fit_x = encode(model, tokenizer, transform, scenes=fit_scenes)
    weights = fit_calibration(match_logits(fit_c, fit_x, scale, bias), fit_c.uncertainty,
                              truth_matrix(fit_scenes, fit_captions).T)
    print(f"calibration on {len(fit_scenes)} training scenes x {len(fit_captions)} captions: "
          f"P = sigmoid({weights[0]:.3f} logit + {weights[1]:.3f} u_caption + {weights[2]:.3f})")

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
    p = calibrated(logits, caps.uncertainty, weights)  # [G, N]
    share = (p @ p.T) / p.sum(1, keepdim=True)  # [q, i]: share of q's images that i describes
    row("calibrated match (images) / denotation (captions)", torch.where(share > share.T, share, -math.inf),
        p.T.clone(), torch.where(share.T > share, share.T, -math.inf))


if __name__ == "__main__":
    main()
