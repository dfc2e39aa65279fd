"""Deterministic baselines on the embedding means: SigLIP's sigmoid loss and CLIP's InfoNCE."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from .base import PairLoss
from .distributed import RankContext
from .pairwise import pairwise_sigmoid_bce

__all__ = ["SigLIPLoss", "CLIPLoss"]


class SigLIPLoss(PairLoss):
    r"""SigLIP's pairwise sigmoid loss on the means (variances are ignored).

    ``siglip = (1/B) sum_{i,j} -log sigmoid(y_ij * (s * mu_i . mu_j + beta_b))`` with ``y = 2 I - 1``,
    ``s = exp(logit_scale)``, ``beta_b = logit_bias``, ``B`` the global batch; ``loss = siglip``.

    Distributed: texts of all ranks are gathered with gradient, local rows scored against all columns
    (memory O(b x B)), the sum scaled by ``W / B``: the mean over ranks is the global-batch loss.
    """

    uses_uncertainty = False

    def compute(self, image, text, scale, bias, context: RankContext, masked_image=None, masked_text=None):
        b = len(image)
        sizes = [c[0] for c in context.gather_counts([b], image.device)]
        mu_t = context.gather_rows(text.mean, sizes)
        left = torch.cat([scale * image.mean, bias.expand(b, 1)], dim=1)
        right = torch.cat([mu_t, torch.ones_like(mu_t[:, :1])], dim=1)
        total = pairwise_sigmoid_bce(left, right, None, sum(sizes[: context.rank]))
        siglip = total * (context.world_size / sum(sizes))
        return {"loss": siglip, "siglip": siglip}


class CLIPLoss(PairLoss):
    r"""CLIP's symmetric InfoNCE on the means (variances are ignored).

    With ``z_ij = s * mu_i . mu_j`` (``s = exp(logit_scale)``)::

        i2t  = (1/B) sum_i -log softmax_j(z_ij)[i]
        t2i  = (1/B) sum_j -log softmax_i(z_ij)[j]
        loss = (i2t + t2i) / 2        (reported entries: i2t/2 and t2i/2, which sum to loss)

    ``logit_bias`` is accepted for the shared call shape; a constant shift does not change a softmax, so it
    has no effect (its gradient is 0). Distributed: both sides are gathered with gradient, each rank
    scores its image rows and its text rows against all B columns, sums scaled by ``W / B``.
    """

    uses_uncertainty = False
    uses_logit_bias = False

    def compute(self, image, text, scale, bias, context: RankContext, masked_image=None, masked_text=None):
        b = len(image)
        sizes = [c[0] for c in context.gather_counts([b], image.device)]
        offset = sum(sizes[: context.rank])
        targets = torch.arange(offset, offset + b, device=image.device)
        norm = context.world_size / sum(sizes)
        all_texts = context.gather_rows(text.mean, sizes)
        all_images = context.gather_rows(image.mean, sizes)
        i2t = F.cross_entropy(scale * image.mean @ all_texts.T, targets, reduction="sum") * norm
        t2i = F.cross_entropy(scale * text.mean @ all_images.T, targets, reduction="sum") * norm
        return {"loss": (i2t + t2i) / 2, "i2t": i2t / 2, "t2i": t2i / 2}
