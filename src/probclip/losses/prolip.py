"""ProLIP's objective: probabilistic pairwise contrastive loss + inclusion losses + VIB regulariser."""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from ..embedding import ProbEmbedding
from .base import PairLoss, check_weight
from .distributed import RankContext
from .pairwise import pairwise_sigmoid_bce

__all__ = ["ProLIPLoss", "inclusion_loss_terms", "inclusion_margin", "vib_terms"]


def _margin_parts(mu1, lv1, mu2, lv2, eps: float):
    """Shared pieces of the inclusion margin: P1, P2, S1, S2, A1 = P1/S1, A2 = P2/S2, delta, Q, margin."""
    p1, p2 = torch.exp(eps - lv1), torch.exp(eps - lv2)
    s1, s2 = 2 * p1 + p2, p1 + 2 * p2
    a1, a2 = p1 / s1, p2 / s2
    delta = mu1 - mu2
    q = (p2 - p1) * a1 * a2  # = P1 P2 (P2 - P1) / (S1 S2), written so that it cannot overflow before P does
    margin = (lv2 - lv1) - torch.log(s1 / s2) / 2 - delta.pow(2) * q
    return p1, p2, s1, s2, a1, a2, delta, q, margin


def inclusion_margin(inner: ProbEmbedding, outer: ProbEmbedding, eps: float) -> torch.Tensor:
    """Per-dimension ``test(inner in outer) - test(outer in inner)`` of ProLIP's inclusion test, ``[N, D]``.

    The test (``probclip.inclusion_score_paired`` averages it over dimensions) is, per dimension, with
    ``P = exp(eps - lv)``: ``-2 lv1 - lv2 - log(a)/2 + b^2/(4a) - c``, ``a = P1 + P2/2``,
    ``b = 2 mu1 P1 + mu2 P2``, ``c = mu1^2 P1 + mu2^2 P2/2``. Since ``b^2 - 4ac = -2 P1 P2 (mu1 - mu2)^2``,
    the difference of the two directions simplifies exactly to::

        (lv2 - lv1) - log(S1 / S2) / 2 - (mu1 - mu2)^2 (P2 - P1) (P1 / S1) (P2 / S2),
        S1 = 2 P1 + P2,  S2 = P1 + 2 P2

    which needs a third of the operations and avoids the cancellation in ``b^2/(4a) - c``.
    """
    return _margin_parts(inner.mean, inner.logvar, outer.mean, outer.logvar, eps)[-1]


class _InclusionLoss(torch.autograd.Function):
    """``mean_d softplus(-scale * margin)`` per sample, with an analytic backward that saves only the inputs.

    With ``G = -A1 + P1 / (2 S2)`` (= P1 d/dP1 of ``-log(S1/S2)/2``; its P2 counterpart is ``-G``) and
    ``H = A1 A2 (-P1 + (P2 - P1)(P2 / S1 - P1 / S2))`` (= P1 dQ/dP1; the P2 counterpart is ``Q - H``), and
    ``dP/dlv = -P``: ``dm/dlv1 = -1 - G + delta^2 H``, ``dm/dlv2 = 1 + G + delta^2 (Q - H)``,
    ``dm/dmu1 = -2 delta Q = -dm/dmu2``.
    """

    @staticmethod
    def forward(ctx, mu1, lv1, mu2, lv2, eps: float, scale: float):
        ctx.eps, ctx.scale = eps, scale
        ctx.save_for_backward(mu1, lv1, mu2, lv2)
        out = mu1.new_empty(mu1.shape[:-1])
        for rows in _row_chunks(mu1):
            margin = _margin_parts(mu1[rows], lv1[rows], mu2[rows], lv2[rows], eps)[-1]
            out[rows] = F.softplus(-scale * margin).mean(-1)
        return out

    @staticmethod
    def backward(ctx, grad):
        mu1, lv1, mu2, lv2 = ctx.saved_tensors
        grads = [torch.empty_like(mu1), torch.empty_like(lv1), torch.empty_like(mu2), torch.empty_like(lv2)]
        for rows in _row_chunks(mu1):
            p1, p2, s1, s2, a1, a2, delta, q, margin = _margin_parts(
                mu1[rows], lv1[rows], mu2[rows], lv2[rows], ctx.eps
            )
            # d loss / d margin, with the per-sample mean and the upstream gradient folded in.
            dm = torch.sigmoid(ctx.scale * margin).sub_(1).mul_(ctx.scale / mu1.shape[-1]).mul_(grad[rows, None])
            g = p1 / (2 * s2) - a1
            h = a1 * a2 * ((p2 - p1) * (p2 / s1 - p1 / s2) - p1)
            d2 = delta.pow(2)
            torch.mul(dm, -2 * delta * q, out=grads[0][rows])
            torch.mul(dm, d2 * h - g - 1, out=grads[1][rows])
            torch.neg(grads[0][rows], out=grads[2][rows])
            torch.mul(dm, d2 * (q - h) + g + 1, out=grads[3][rows])
        return (*grads, None, None)


PER_SAMPLE_CHUNK_ELEMENTS = 2**18  # elements per temporary of the inclusion loss (1 MiB in float32)


def _row_chunks(x: torch.Tensor):
    """Row slices of ``x`` ``[N, D]`` of at most ``PER_SAMPLE_CHUNK_ELEMENTS`` elements (bounds the temporaries)."""
    step = max(1, PER_SAMPLE_CHUNK_ELEMENTS // max(1, x.shape[-1]))
    return [slice(start, start + step) for start in range(0, x.shape[0], step)]


def inclusion_loss_terms(inner: ProbEmbedding, outer: ProbEmbedding, eps: float, scale: float) -> torch.Tensor:
    """Per-sample inclusion loss 'inner_i is included in outer_i', ``[N]``.

    ``mean_d -log sigmoid(scale * (test_d(inner in outer) - test_d(outer in inner)))`` (see
    :func:`inclusion_margin`). Memory: the backward recomputes its intermediates from the inputs.
    """
    return _InclusionLoss.apply(inner.mean, inner.logvar, outer.mean, outer.logvar, float(eps), float(scale))


def vib_terms(e: ProbEmbedding) -> torch.Tensor:
    """Per-sample VIB penalty as ProLIP computes it, ``[N]``: ``-0.5 * mean_d(1 + lv/2 - mu^2 - exp(lv/2))``.

    (The KL divergence to N(0, I) with ``lv/2`` in place of the log-variance; same minimiser.)
    """
    half = e.logvar / 2
    # Written so that autograd keeps a single [N, D] tensor (exp(lv/2)) for the backward.
    return 0.5 * e.mean.pow(2).mean(-1) - 0.5 * (1 + half - half.exp()).mean(-1)


class ProLIPLoss(PairLoss):
    r"""ProLIP's training objective on a (local) batch of ``b`` image-text pairs.

    Notation: ``mu`` unit means, ``u = sum_d exp(lv_d)`` the uncertainty, ``s = exp(logit_scale)``,
    ``beta_b = logit_bias``; ``B`` is the global batch (all ranks), ``M_img``/``M_txt`` the global numbers of
    masked views, ``D`` the embedding size. Every entry of the returned dict is the weighted term as it
    enters the total::

        ppcl          = ppcl_weight * (1/B) sum_{i,j} -log sigmoid(y_ij * z_ij),
                        z_ij = s * (mu_i . mu_j - (u_i + u_j) / 2) + beta_b,  y = 2 I - 1
        inclusion     = inclusion_alpha     * (1/B)     sum_i incl(image_i in text_i)
        img_inclusion = inclusion_alpha_occ * (1/M_img) sum_k incl(image_{n_k} in masked_image_k)
        txt_inclusion = inclusion_alpha_occ_text * (1/M_txt) sum_k incl(text_{n_k} in masked_text_k)
        txt_view_ppcl = text_view_weight * (1/M_txt) sum_{k local, l global} -log sigmoid(y_kl z_kl),
                        z_kl = PPCL's logit between text_{n_k} and masked_text_l,  y = 2 I - 1
        vib           = vib_beta * (1/B) sum_i (kl_i(image) + kl_i(text))
        loss          = ppcl + inclusion + img_inclusion + txt_inclusion + txt_view_ppcl + vib

    with ``incl(1 in 2) = mean_d -log sigmoid(inclusion_scale * (test_d(1 in 2) - test_d(2 in 1)))``
    (see :func:`inclusion_loss_terms`, ``inclusion_eps`` inside the test) and
    ``kl_i = -0.5 mean_d (1 + lv/2 - mu^2 - exp(lv/2))`` (see :func:`vib_terms`). ``masked_image_k`` is a
    masked view of sample ``n_k = masked_index[k]`` (default: the first samples, ``n_k = k``); the
    inclusion goes "original included in masked view". Absent masked views give 0 for their term.

    Distributed (torch.distributed initialised, W processes): each rank passes its local samples; texts
    of all ranks are gathered with gradient and the local rows are scored against the ``B`` global columns
    (memory O(b x B)). Per-sample sums are scaled by ``W / B`` (``W / M``), so the mean over ranks of each
    entry equals the single-process value on the concatenated batch and DDP-averaged gradients equal the
    single-process gradients, also for unequal local batch sizes.

    Args:
        inclusion_alpha: weight of the image-in-text inclusion term (released training: 1e-7).
        inclusion_alpha_occ: weight of the original-in-masked terms (released training: 1e-3).
        vib_beta: weight of the VIB regulariser (released training: 1e-4).
        inclusion_eps: log-precision offset of the inclusion test (released training: -20; LongProLIP -100).
        inclusion_scale: sharpness of the inclusion sigmoid (released training: 1000; LongProLIP 10).
        ppcl_weight: weight of the PPCL term.
        inclusion_alpha_occ_text: weight of the text original-in-masked term when it should differ from the
            image one (default: ``inclusion_alpha_occ``, as in the reference).
        text_view_weight: weight of a PPCL term that matches each caption with its own masked view among all the
            masked views (not in the reference: 0 by default). With views that drop words, a masked view is a
            more general caption, so the term puts a caption's mean near its generalisations' means.
    """

    uses_masked_views = True
    extra_arguments = ("masked_index",)

    def __init__(
        self,
        inclusion_alpha: float = 1e-7,
        inclusion_alpha_occ: float = 1e-3,
        vib_beta: float = 1e-4,
        inclusion_eps: float = -20.0,
        inclusion_scale: float = 1000.0,
        ppcl_weight: float = 1.0,
        inclusion_alpha_occ_text: float | None = None,
        text_view_weight: float = 0.0,
        gather_across_ranks: bool = True,
        process_group=None,
    ):
        super().__init__(gather_across_ranks, process_group)
        self.inclusion_alpha = check_weight(inclusion_alpha, "inclusion_alpha")
        self.inclusion_alpha_occ = check_weight(inclusion_alpha_occ, "inclusion_alpha_occ")
        self.inclusion_alpha_occ_text = (
            self.inclusion_alpha_occ if inclusion_alpha_occ_text is None
            else check_weight(inclusion_alpha_occ_text, "inclusion_alpha_occ_text")
        )
        self.text_view_weight = check_weight(text_view_weight, "text_view_weight")
        self.vib_beta = check_weight(vib_beta, "vib_beta")
        self.ppcl_weight = check_weight(ppcl_weight, "ppcl_weight")
        self.inclusion_eps = float(inclusion_eps)
        self.inclusion_scale = float(inclusion_scale)
        for name in ("inclusion_eps", "inclusion_scale"):
            if not math.isfinite(getattr(self, name)):
                raise ValueError(f"{name} must be a finite number; got {getattr(self, name)}")

    def extra_repr(self) -> str:
        return (
            f"inclusion_alpha={self.inclusion_alpha}, inclusion_alpha_occ={self.inclusion_alpha_occ}, "
            f"inclusion_alpha_occ_text={self.inclusion_alpha_occ_text}, "
            f"vib_beta={self.vib_beta}, inclusion_eps={self.inclusion_eps}, "
            f"inclusion_scale={self.inclusion_scale}, ppcl_weight={self.ppcl_weight}, "
            f"text_view_weight={self.text_view_weight}"
        )

    def compute(self, image, text, scale, bias, context: RankContext, masked_image=None, masked_text=None,
                masked_index=None):
        b = len(image)
        n_img = 0 if masked_image is None else len(masked_image)
        n_txt = 0 if masked_text is None else len(masked_text)
        originals = _masked_originals(masked_index, b, n_img, n_txt, image.device)
        counts = context.gather_counts([b, n_img, n_txt], image.device)
        sizes = [c[0] for c in counts]
        total_b = sum(sizes)
        total_img, total_txt = sum(c[1] for c in counts), sum(c[2] for c in counts)
        world = context.world_size
        zero = image.mean.new_zeros(())

        terms = {}
        terms["ppcl"] = self.ppcl_weight * ppcl_sum(image, text, scale, bias, context, sizes) * (world / total_b)
        terms["inclusion"] = (
            self.inclusion_alpha * self._inclusion(image, text).sum() * (world / total_b)
            if self.inclusion_alpha
            else zero
        )
        terms["img_inclusion"] = (
            self.inclusion_alpha_occ * self._inclusion(image[originals[:n_img]], masked_image).sum()
            * (world / total_img)
            if self.inclusion_alpha_occ and total_img
            else zero
        )
        terms["txt_inclusion"] = (
            self.inclusion_alpha_occ_text * self._inclusion(text[originals[:n_txt]], masked_text).sum()
            * (world / total_txt)
            if self.inclusion_alpha_occ_text and total_txt
            else zero
        )
        terms["txt_view_ppcl"] = (
            self.text_view_weight * ppcl_sum(text[originals[:n_txt]], masked_text, scale, bias, context,
                                             [c[2] for c in counts]) * (world / total_txt)
            if self.text_view_weight and total_txt
            else zero
        )
        terms["vib"] = (
            self.vib_beta * (vib_terms(image).sum() + vib_terms(text).sum()) * (world / total_b)
            if self.vib_beta
            else zero
        )
        terms = {"loss": sum(terms.values()), **terms}
        return terms

    def _inclusion(self, inner: ProbEmbedding, outer: ProbEmbedding | None) -> torch.Tensor:
        if outer is None or len(outer) == 0:
            return inner.mean.new_zeros(0)
        return inclusion_loss_terms(inner, outer, self.inclusion_eps, self.inclusion_scale)


def ppcl_sum(image, text, scale, bias, context: RankContext, sizes) -> torch.Tensor:
    """``sum_{i local, j global} -log sigmoid(y_ij z_ij)`` of PPCL (0-dim), memory O(b x B).

    The logit is the bilinear form ``[s mu_i, beta_b - s u_i / 2, s] . [mu_j, 1, -u_j / 2]``, so one matrix
    product gives it with no ``[b, B]`` intermediate for the uncertainty terms.
    """
    b = len(image)
    text_rows = context.gather_rows(torch.cat([text.mean, text.uncertainty[:, None]], dim=1), sizes)
    mu_t, u_t = text_rows[:, :-1], text_rows[:, -1:]
    right = torch.cat([mu_t, torch.ones_like(u_t), -u_t / 2], dim=1)
    left = torch.cat(
        [scale * image.mean, (bias - scale * image.uncertainty / 2)[:, None], scale.expand(b, 1)], dim=1
    )
    offset = sum(sizes[: context.rank])
    return pairwise_sigmoid_bce(left, right, None, offset)


def _masked_originals(masked_index, b: int, n_img: int, n_txt: int, device) -> torch.Tensor:
    """Indices (into the local batch) of the samples whose masked views were passed."""
    needed = max(n_img, n_txt)
    if masked_index is None:
        if needed > b:
            raise ValueError(f"{needed} masked views for a batch of {b} samples; pass at most one view per sample")
        return torch.arange(needed, device=device)
    index = torch.as_tensor(masked_index, device=device)
    if index.dim() != 1 or index.dtype not in (torch.int64, torch.int32):
        raise ValueError(
            f"masked_index must be a 1-D integer tensor; got dtype {index.dtype}, shape {tuple(index.shape)}"
        )
    if len(index) != needed or (n_img and n_img != needed) or (n_txt and n_txt != needed):
        raise ValueError(
            f"masked_index has {len(index)} entries; it must have one per masked view "
            f"(masked_image: {n_img}, masked_text: {n_txt})"
        )
    if len(index) and (int(index.min()) < 0 or int(index.max()) >= b):
        raise ValueError(
            f"masked_index values must lie in [0, {b - 1}]; got range [{int(index.min())}, {int(index.max())}]"
        )
    return index.long()
