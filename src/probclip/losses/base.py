"""What every probclip loss shares: input checks, the scale/bias convention, float32 evaluation."""

from __future__ import annotations

import contextlib

import torch
from torch import nn

from ..embedding import ProbEmbedding
from .distributed import RankContext, rank_context
from .errors import raise_if_not_finite

__all__ = ["PairLoss"]


def _as_scalar(value, name: str, like: torch.Tensor) -> torch.Tensor:
    if not isinstance(value, torch.Tensor):
        value = torch.tensor(float(value))
    if value.numel() != 1:
        raise ValueError(
            f"{name} must be a scalar (0-dim or one-element tensor, or a float); got shape {tuple(value.shape)}"
        )
    return value.reshape(()).to(device=like.device, dtype=like.dtype)


def _check_embedding(e, name: str, dim: int | None = None) -> ProbEmbedding:
    if not isinstance(e, ProbEmbedding):
        raise TypeError(f"{name} must be a ProbEmbedding; got {type(e).__name__}")
    if e.mean.dim() != 2:
        raise ValueError(f"{name} must have shape [batch, D]; got {tuple(e.mean.shape)}")
    if dim is not None and e.dim != dim:
        raise ValueError(f"{name} has embedding size D={e.dim}; expected D={dim} like the image embedding")
    return e


def _float32_or_wider(e: ProbEmbedding) -> ProbEmbedding:
    return e.float() if e.dtype in (torch.float16, torch.bfloat16) else e


class PairLoss(nn.Module):
    """Base of the image-text losses: ``loss_fn(image, text, logit_scale, logit_bias, ...) -> dict``.

    Subclasses implement :meth:`compute` on validated, float32-or-wider inputs (autocast disabled) and
    return ``{name: 0-dim tensor}`` with ``"loss"`` equal to the sum of the other entries. This class then
    checks that every entry is finite (raising :class:`~probclip.losses.NonFiniteLossError`).

    Args:
        gather_across_ranks: when torch.distributed is initialised with more than one process, pair this
            rank's samples with the samples of every rank (exact global-batch loss). Set False to evaluate
            a loss on one process's data alone inside a distributed job.
        process_group: the group to gather over (None: the default group).
    """

    uses_masked_views = False
    extra_arguments: tuple[str, ...] = ()
    #: Whether the loss reads the log-variances (a loss on the means alone gives the log-variance heads no gradient).
    uses_uncertainty = True
    #: Whether the loss depends on ``logit_bias`` (a softmax loss does not).
    uses_logit_bias = True

    def __init__(self, gather_across_ranks: bool = True, process_group=None):
        super().__init__()
        self.gather_across_ranks = bool(gather_across_ranks)
        self.process_group = process_group

    def forward(
        self,
        image: ProbEmbedding,
        text: ProbEmbedding,
        logit_scale,
        logit_bias,
        masked_image: ProbEmbedding | None = None,
        masked_text: ProbEmbedding | None = None,
        **extra,
    ) -> dict[str, torch.Tensor]:
        """Loss terms of one (local) batch; see the class docstring for the formula and keys."""
        _check_embedding(image, "image")
        _check_embedding(text, "text", image.dim)
        if len(image) != len(text):
            raise ValueError(f"image and text batches must pair up; got {len(image)} images and {len(text)} texts")
        if len(image) == 0:
            raise ValueError("the loss needs at least one image-text pair; got an empty batch")
        if not self.uses_masked_views and (masked_image is not None or masked_text is not None):
            raise ValueError(
                f"{type(self).__name__} does not use masked views; pass masked_image=None and masked_text=None "
                f"(or use ProLIPLoss, whose inclusion terms use them)"
            )
        unknown = sorted(set(extra) - set(self.extra_arguments))
        if unknown:
            raise TypeError(
                f"{type(self).__name__} got unexpected argument(s) {unknown}; it accepts image, text, logit_scale, "
                f"logit_bias, masked_image, masked_text" + "".join(f", {k}" for k in self.extra_arguments)
            )
        for name, e in (("masked_image", masked_image), ("masked_text", masked_text)):
            if e is not None:
                _check_embedding(e, name, image.dim)
        context = rank_context(self.gather_across_ranks, self.process_group)
        device_type = image.device.type
        autocast_off = (
            torch.autocast(device_type=device_type, enabled=False)
            if device_type in ("cuda", "cpu", "xpu", "mps")
            else contextlib.nullcontext()
        )
        with autocast_off:
            image, text = _float32_or_wider(image), _float32_or_wider(text)
            if masked_image is not None:
                masked_image = _float32_or_wider(masked_image)
            if masked_text is not None:
                masked_text = _float32_or_wider(masked_text)
            scale = _as_scalar(logit_scale, "logit_scale", image.mean).exp()
            bias = _as_scalar(logit_bias, "logit_bias", image.mean)
            terms = self.compute(
                image, text, scale, bias, context, masked_image=masked_image, masked_text=masked_text, **extra
            )
        raise_if_not_finite(terms, context)
        return terms

    def compute(self, image, text, scale, bias, context: RankContext, **kwargs) -> dict[str, torch.Tensor]:
        raise NotImplementedError


def check_weight(value, name: str) -> float:
    """A finite, non-negative loss weight as float; ValueError naming ``name`` otherwise."""
    value = float(value)
    if not (value >= 0.0 and value != float("inf")):
        raise ValueError(f"{name} must be a finite number >= 0; got {value}")
    return value
