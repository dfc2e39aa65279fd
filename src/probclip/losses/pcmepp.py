"""PCME++'s objective: CSD match logits with pseudo-positives and soft labels for mixed samples."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from ..embedding import ProbEmbedding
from .base import PairLoss, check_weight
from .distributed import RankContext

__all__ = ["PCMEppLoss", "soft_match_labels"]


def soft_match_labels(mix_lambda: torch.Tensor, partner_index: torch.Tensor) -> torch.Tensor:
    """Match labels ``[b, b]`` for a batch whose image i was mixed with image ``partner_index[i]``.

    Row i is ``lambda_i * onehot(i) + (1 - lambda_i) * onehot(partner_index[i])``: image i matches its
    own text with weight lambda_i (the share of image i in the mix; 1 for unmixed images) and the
    partner's text with the rest. PCME++ mixes with the mirrored index ``b - 1 - i``.
    """
    mix_lambda = torch.as_tensor(mix_lambda)
    partner_index = torch.as_tensor(partner_index, device=mix_lambda.device)
    if mix_lambda.dim() != 1 or partner_index.shape != mix_lambda.shape:
        raise ValueError(
            f"mix_lambda and partner_index must both be [b]; got {tuple(mix_lambda.shape)} and "
            f"{tuple(partner_index.shape)}"
        )
    b = len(mix_lambda)
    if b and (float(mix_lambda.min()) < 0 or float(mix_lambda.max()) > 1):
        raise ValueError(
            f"mix_lambda must lie in [0, 1]; got range [{float(mix_lambda.min())}, {float(mix_lambda.max())}]"
        )
    if b and (int(partner_index.min()) < 0 or int(partner_index.max()) >= b):
        raise ValueError(f"partner_index values must lie in [0, {b - 1}]")
    dtype = mix_lambda.dtype if mix_lambda.is_floating_point() else torch.float32
    lam = mix_lambda.to(dtype)
    labels = torch.zeros(b, b, dtype=dtype, device=mix_lambda.device)
    rows = torch.arange(b, device=mix_lambda.device)
    labels[rows, rows] += lam
    labels[rows, partner_index.long()] += 1 - lam
    return labels


def _csd_logits(query: ProbEmbedding, gallery_rows: torch.Tensor, scale, bias) -> torch.Tensor:
    """``-a * CSD(query_i, gallery_j) + b`` as one matrix product, ``[b, N]``.

    ``gallery_rows`` is ``[N, D + 1]``: means then ``||mu||^2 + u``. With ``c = ||mu||^2 + u``,
    ``-a CSD + b = [2a mu_i, b - a c_i, -a] . [mu_j, 1, c_j]``.
    """
    mu_g, c_g = gallery_rows[:, :-1], gallery_rows[:, -1:]
    c_q = query.mean.pow(2).sum(-1) + query.uncertainty
    left = torch.cat([2 * scale * query.mean, (bias - scale * c_q)[:, None], (-scale).expand(len(query), 1)], dim=1)
    right = torch.cat([mu_g, torch.ones_like(c_g), c_g], dim=1)
    return left @ right.T


def _gallery_rows(e: ProbEmbedding) -> torch.Tensor:
    return torch.cat([e.mean, (e.mean.pow(2).sum(-1) + e.uncertainty)[:, None]], dim=1)


def _pseudo_positive_targets(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """Targets where every column scoring at least the ground-truth column gets the ground-truth label."""
    gt_label, gt_col = targets.max(dim=1)
    gt_logit = logits.gather(1, gt_col[:, None])
    pseudo = logits >= gt_logit
    return torch.where(pseudo, gt_label[:, None].expand_as(targets), targets)


class PCMEppLoss(PairLoss):
    r"""PCME++'s objective on a (local) batch of ``b`` pairs (global batch ``B``).

    Logits ``z_ij = -a * CSD(image_i, text_j) + b_shift`` with ``a = exp(logit_scale)`` and
    ``b_shift = logit_bias`` (PCME++ initialises ``a = 5`` (logit_scale = log 5), ``b_shift = 5``) and
    ``CSD = ||mu_i - mu_j||^2 + u_i + u_j``. ``M`` is the ``[B, B]`` match matrix: block-diagonal, each
    rank's ``[b, b]`` block given by ``match_labels`` (default identity; soft rows for mixed samples, see
    :func:`soft_match_labels`). ``BCE(z, y) = -y log sigmoid(z) - (1 - y) log sigmoid(-z)``::

        match  = (1/B^2) sum_{i,j} [BCE(z_ij, M_ij) + BCE(z_ij, M_ij)]     (image->text + text->image rows;
                 the two are equal, as in PCME++'s "2 * mean BCE")
        pseudo = pseudo_positive_weight * (1/B^2) sum_{i,j} [BCE(z_ij, P_ij) + BCE(z_ji, Q_ij)]
        vib    = vib_beta * (kl(image) + kl(text)),  kl = -0.5 mean_{i,d}(1 + lv - mu^2 - exp(lv))
        loss   = match + pseudo + vib

    ``P`` (image rows) and ``Q`` (text rows) are the pseudo-positive targets: in each row, every column
    whose logit is >= the logit of the row's ground-truth column (its largest label) gets that label;
    the rest keep ``M``. The pseudo targets are labels (no gradient flows through their selection).

    Distributed: images and texts of all ranks are gathered with gradient; each rank scores its image rows
    against all texts and its text rows against all images (memory O(b x B)), pairs across ranks are
    negatives, and sums are scaled by ``W / B^2`` so the mean over ranks equals the global loss.

    Args:
        pseudo_positive_weight: weight of the pseudo-positive BCE (PCME++: 0.1).
        vib_beta: weight of the VIB (KL to N(0, I)) regulariser (PCME++: 1e-4).
    """

    extra_arguments = ("match_labels",)

    def __init__(
        self,
        pseudo_positive_weight: float = 0.1,
        vib_beta: float = 1e-4,
        gather_across_ranks: bool = True,
        process_group=None,
    ):
        super().__init__(gather_across_ranks, process_group)
        self.pseudo_positive_weight = check_weight(pseudo_positive_weight, "pseudo_positive_weight")
        self.vib_beta = check_weight(vib_beta, "vib_beta")

    def extra_repr(self) -> str:
        return f"pseudo_positive_weight={self.pseudo_positive_weight}, vib_beta={self.vib_beta}"

    def compute(self, image, text, scale, bias, context: RankContext, masked_image=None, masked_text=None,
                match_labels=None):
        b = len(image)
        block = _check_labels(match_labels, b, image.mean)
        sizes = [c[0] for c in context.gather_counts([b], image.device)]
        total_b = sum(sizes)
        offset = sum(sizes[: context.rank])
        norm = context.world_size / (total_b * total_b)
        all_texts = context.gather_rows(_gallery_rows(text), sizes)
        all_images = context.gather_rows(_gallery_rows(image), sizes)

        match = image.mean.new_zeros(())
        pseudo = image.mean.new_zeros(())
        for queries, gallery, labels in ((image, all_texts, block), (text, all_images, block.T)):
            logits = _csd_logits(queries, gallery, scale, bias)  # [b, B]
            targets = logits.new_zeros(logits.shape)
            targets[:, offset : offset + b] = labels
            match = match + F.binary_cross_entropy_with_logits(logits, targets, reduction="sum")
            if self.pseudo_positive_weight:
                with torch.no_grad():
                    pseudo_targets = _pseudo_positive_targets(logits, targets)
                pseudo = pseudo + F.binary_cross_entropy_with_logits(logits, pseudo_targets, reduction="sum")
        terms = {
            "match": match * norm,
            "pseudo": self.pseudo_positive_weight * pseudo * norm,
            "vib": (
                self.vib_beta * (_kl_sum(image) + _kl_sum(text)) * (context.world_size / (total_b * image.dim))
                if self.vib_beta
                else image.mean.new_zeros(())
            ),
        }
        return {"loss": sum(terms.values()), **terms}


def _kl_sum(e: ProbEmbedding) -> torch.Tensor:
    """``sum_{i,d} -0.5 (1 + lv - mu^2 - exp(lv))``: KL(N(mu, exp(lv)) || N(0, I)) summed over samples."""
    return -0.5 * (1 + e.logvar - e.mean.pow(2) - e.logvar.exp()).sum()


def _check_labels(match_labels, b: int, like: torch.Tensor) -> torch.Tensor:
    if match_labels is None:
        return torch.eye(b, dtype=like.dtype, device=like.device)
    labels = torch.as_tensor(match_labels).to(device=like.device, dtype=like.dtype).detach()
    if tuple(labels.shape) != (b, b):
        raise ValueError(
            f"match_labels must be [{b}, {b}] (this process's images x this process's texts); got {tuple(labels.shape)}"
        )
    if bool(((labels < 0) | (labels > 1)).any()):
        raise ValueError("match_labels must lie in [0, 1] (soft labels)")
    return labels
