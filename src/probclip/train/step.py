"""One training step's inputs and its forward/backward pass, with exact contrastive gradient accumulation.

Masked views (ProLIP): a sample at global-batch index ``g`` gets a masked image and text view when
``ceil((g + 1) * f) > ceil(g * f)`` with ``f = masking.fraction``: the first sample of every ``1 / f`` (1 in 8
at 0.125), spread over the batch so that every rank gets its share and the selection does not depend on the
number of processes. Each masked view is drawn from a generator seeded by (run seed, step, g), so a
1-process and a W-process run with the same global batch build identical views.

Gradient accumulation (``accum_freq = k``): the local batch is split into k chunks. All features are first
computed without gradient; then, for each chunk, its features are recomputed with gradient, the loss of the
whole batch is evaluated with the other chunks' cached features, and backpropagated. Summed over chunks this
is exactly the gradient of the full-batch loss (the logit parameters take their gradient in one pass only).
"""

from __future__ import annotations

import contextlib
import math
from dataclasses import dataclass
from fractions import Fraction

import torch
from torch import nn
from torch.nn.parallel import DistributedDataParallel

from ..data.masking import mask_text_tokens, paint_masked_patches, sample_keep_patches
from ..data.mixing import mix_images
from ..data.samples import derive_seed
from ..embedding import ProbEmbedding
from ..losses import soft_match_labels

__all__ = [
    "StepInputs",
    "TrainingForward",
    "ViewGeometry",
    "as_training_forward",
    "masked_selection",
    "build_step_inputs",
    "forward_backward",
]

_MASK_TAG, _MIX_TAG = 1, 2


@dataclass
class StepInputs:
    """Tensors of one local batch on the training device.

    ``images [b, 3, H, W]``, ``tokens [b, L]``; masked views: ``masked_index [n]`` (local indices),
    ``keep_patches [n, K]`` (or, with ``image_mask_mode: grey``, ``masked_images [n, 3, H, W]`` with the other
    patches painted grey), ``masked_tokens [n, L]`` (None when off); ``match_labels [b, b]`` soft labels of
    mixed samples (PCME++) or None.
    """

    images: torch.Tensor
    tokens: torch.Tensor
    masked_index: torch.Tensor | None = None
    keep_patches: torch.Tensor | None = None
    masked_images: torch.Tensor | None = None
    masked_tokens: torch.Tensor | None = None
    match_labels: torch.Tensor | None = None

    def __len__(self) -> int:
        return len(self.images)


def masked_selection(first_global_index: int, count: int, fraction: float) -> list[int]:
    """Local indices (0..count-1) of the samples at global indices ``first_global_index + i`` that get masked
    views: those with ``ceil((g + 1) f) > ceil(g f)`` (1 in every ``1/f``, starting with g = 0)."""
    if fraction <= 0:
        return []
    f = Fraction(fraction).limit_denominator(1_000_000)
    chosen = []
    for i in range(count):
        g = first_global_index + i
        if math.ceil((g + 1) * f) > math.ceil(g * f):
            chosen.append(i)
    return chosen


@dataclass(frozen=True)
class ViewGeometry:
    """What building masked views needs to know of the model and its tokenizer.

    ``num_patches`` and ``patch_size`` (pixels) of the vision tower; ``grey``: mid-grey per channel in the model's
    normalised pixel units ``[3]`` (the fill of ``image_mask_mode: grey``); the tokenizer's ``mask_id`` and
    ``pad_id``.
    """

    num_patches: int = 0
    patch_size: int = 0
    grey: torch.Tensor | None = None
    mask_id: int | None = None
    pad_id: int = 0

    @classmethod
    def of(cls, model, tokenizer) -> ViewGeometry:
        """The geometry of a ``ProbCLIP`` and its tokenizer."""
        vision = model.config.vision
        grey = (0.5 - torch.tensor(vision.image_mean)) / torch.tensor(vision.image_std)
        return cls(model.visual.num_patches, model.visual.patch_size, grey, tokenizer.mask_id, tokenizer.pad_id)


def build_step_inputs(batch, *, step: int, seed: int, rank: int, device: torch.device, masking=None, mixing=None,
                      geometry: ViewGeometry | None = None) -> StepInputs:
    """Move a ``PairBatch`` to ``device`` and add masked views (``masking``: a ``MaskingSection`` or None; they need
    the ``geometry`` of the model) and mixed samples (``mixing``: a ``LossSection`` with
    ``mix_fraction``/``mix_beta``/``cutmix_prob``, or None)."""
    geometry = geometry or ViewGeometry()
    num_patches, patch_size, grey = geometry.num_patches, geometry.patch_size, geometry.grey
    mask_id, pad_id = geometry.mask_id, geometry.pad_id
    images, tokens = batch.images, batch.tokens  # masked text views are skipped when text_mask_prob is 0
    local = len(images)
    inputs = StepInputs(images, tokens)
    if mixing is not None and mixing.mix_fraction > 0:
        generator = torch.Generator().manual_seed(derive_seed(seed, step, rank, _MIX_TAG))
        images, lam, partner = mix_images(images, mixing.mix_fraction, mixing.mix_beta, mixing.cutmix_prob, generator)
        inputs.images = images
        inputs.match_labels = soft_match_labels(lam, partner).to(device)
    if masking is not None and masking.fraction > 0:
        chosen = masked_selection(rank * local, local, masking.fraction)
        if chosen:
            keeps, texts = [], []
            for i in chosen:
                generator = torch.Generator().manual_seed(derive_seed(seed, step, rank * local + i, _MASK_TAG))
                keeps.append(sample_keep_patches(1, num_patches, masking.image_keep_ratio, generator))
                if masking.text_mask_prob > 0:
                    texts.append(_masked_text(batch, i, masking, mask_id, pad_id, generator))
            inputs.masked_index = torch.tensor(chosen, dtype=torch.long, device=device)
            keep = torch.cat(keeps)
            if masking.image_mask_mode == "grey":
                if not patch_size or grey is None:
                    raise ValueError("image_mask_mode 'grey' needs the model's patch_size and the normalised grey")
                inputs.masked_images = paint_masked_patches(images[chosen], keep, patch_size, grey).to(device)
            else:
                inputs.keep_patches = keep.to(device)
            inputs.masked_tokens = torch.cat(texts).to(device) if texts else None
    non_blocking = device.type == "cuda"
    inputs.images = inputs.images.to(device, non_blocking=non_blocking)
    inputs.tokens = inputs.tokens.to(device, non_blocking=non_blocking)
    return inputs


def _masked_text(batch, i: int, masking, mask_id: int | None, pad_id: int,
                 generator: torch.Generator) -> torch.Tensor:
    """The masked text view ``[1, L]`` of sample ``i``: its phrase view (``text_mask_mode: phrase``, when the
    batch has one for it), else its tokens masked by ``mask_text_tokens`` (words dropped in ``phrase`` mode)."""
    mode = masking.text_mask_mode
    if mode == "phrase":
        if batch.phrase_views is None:
            raise ValueError("masking.text_mask_mode 'phrase' needs batches with phrase views (PairCollator's "
                             "phrase_view); this batch has none")
        if bool(batch.has_phrase_view[i]):
            return batch.phrase_views[i: i + 1]
        mode = "drop"
    return mask_text_tokens(batch.tokens[i: i + 1], masking.text_mask_prob, mask_id, pad_id, generator, mode)


def _encode(model, images, tokens):
    return model.encode_image(images), model.encode_text(tokens)


def _encode_masked_images(model, inputs: StepInputs):
    if inputs.masked_images is not None:
        return model.encode_image(inputs.masked_images)
    return model.encode_image(inputs.images[inputs.masked_index], keep_patches=inputs.keep_patches)


def _encode_masked(model, inputs: StepInputs):
    masked_image = _encode_masked_images(model, inputs)
    masked_text = None if inputs.masked_tokens is None else model.encode_text(inputs.masked_tokens)
    return masked_image, masked_text


def _encode_with_masked(model, inputs: StepInputs, images, tokens):
    """Features of ``images``/``tokens`` plus the masked views of ``inputs``: the masked texts go through the text
    tower in the same call as the batch's texts (one pass over ``b + n`` rows; every row is encoded on its own)."""
    if inputs.masked_index is None:
        return _encode(model, images, tokens), (None, None)
    if inputs.masked_tokens is None:
        return _encode(model, images, tokens), _encode_masked(model, inputs)
    image = model.encode_image(images)
    masked_image = _encode_masked_images(model, inputs)
    both = model.encode_text(torch.cat([tokens, inputs.masked_tokens]))
    count = len(tokens)
    return (image, both[:count]), (masked_image, both[count:])


class TrainingForward(nn.Module):
    """The forward pass of a training step as one module call: a batch's images and texts and, when asked, the
    masked views of a ``StepInputs``.

    ``DistributedDataParallel`` wraps this module, so each backward pass follows exactly one forward call, even
    though masked views run the towers twice. Its only parameters are the model's.
    """

    def __init__(self, model: nn.Module):
        super().__init__()
        self.model = model

    def forward(self, images: torch.Tensor, tokens: torch.Tensor, views: StepInputs | None = None) -> dict:
        """``images [b, 3, H, W]``, ``tokens [b, L]``; ``views``: encode its masked views too (None: none).

        Returns ``dict(image, text, masked_image, masked_text)`` (``ProbEmbedding`` s, masked ones None when not
        encoded) and the 0-dim ``logit_scale`` and ``logit_bias``.
        """
        if views is None:
            (image, text), (masked_image, masked_text) = _encode(self.model, images, tokens), (None, None)
        else:
            (image, text), (masked_image, masked_text) = _encode_with_masked(self.model, views, images, tokens)
        return {"image": image, "text": text, "masked_image": masked_image, "masked_text": masked_text,
                "logit_scale": self.model.logit_scale.view(()), "logit_bias": self.model.logit_bias.view(())}


def as_training_forward(model: nn.Module) -> nn.Module:
    """``model`` itself when it is a ``TrainingForward`` (or one wrapped in DistributedDataParallel), else
    ``TrainingForward(model)`` for a ``ProbCLIP``."""
    if isinstance(model, TrainingForward) or (isinstance(model, DistributedDataParallel)
                                              and isinstance(model.module, TrainingForward)):
        return model
    return TrainingForward(model)


def _loss_extras(loss_fn, inputs: StepInputs, masked_image, masked_text) -> dict:
    extras = {}
    if getattr(loss_fn, "uses_masked_views", False) and masked_image is not None:
        extras.update(masked_image=masked_image, masked_text=masked_text, masked_index=inputs.masked_index)
    if "match_labels" in getattr(loss_fn, "extra_arguments", ()) and inputs.match_labels is not None:
        extras["match_labels"] = inputs.match_labels
    return extras


def _loss(loss_fn, inputs: StepInputs, out: dict, logit_scale, logit_bias) -> dict:
    return loss_fn(out["image"], out["text"], logit_scale, logit_bias,
                   **_loss_extras(loss_fn, inputs, out["masked_image"], out["masked_text"]))


def forward_backward(model, loss_fn, inputs: StepInputs, accum_freq: int = 1, autocast=contextlib.nullcontext,
                     scale_loss=lambda loss: loss) -> dict[str, float]:
    """Compute the loss of ``inputs`` and accumulate its gradient into the model's ``.grad``.

    Args:
        model: a ``ProbCLIP``, a ``TrainingForward`` or a ``TrainingForward`` in ``DistributedDataParallel`` (which
            then averages the gradients over processes during the backward pass).
        loss_fn: a ``probclip.losses`` loss.
        inputs: the local batch.
        accum_freq: number of chunks for exact gradient accumulation (1: one pass). Under DistributedDataParallel
            all chunks but the last run in ``no_sync()``: gradients are averaged once, in the last backward pass.
        autocast: factory of the autocast context for the model's forward passes.
        scale_loss: applied to the loss before ``backward`` (the fp16 gradient scaler).

    Returns the loss terms of this rank as floats. Raises ``probclip.losses.NonFiniteLossError`` (before any
    backward pass) when a term is not finite.
    """
    forward = as_training_forward(model)
    uses_masks = getattr(loss_fn, "uses_masked_views", False)
    views = inputs if uses_masks and inputs.masked_index is not None else None
    if accum_freq <= 1:
        with autocast():
            out = forward(inputs.images, inputs.tokens, views)
        terms = _loss(loss_fn, inputs, out, out["logit_scale"], out["logit_bias"])
        scale_loss(terms["loss"]).backward()
        return {k: float(v.detach()) for k, v in terms.items()}

    local = forward.module if isinstance(forward, DistributedDataParallel) else forward  # no gradient: no DDP
    no_sync = forward.no_sync if isinstance(forward, DistributedDataParallel) else contextlib.nullcontext
    chunks = [c for c in torch.arange(len(inputs)).tensor_split(accum_freq) if len(c)]
    with torch.no_grad(), autocast():
        cached = [local(inputs.images[c], inputs.tokens[c]) for c in chunks]
        cached_masked = _encode_masked(local.model, inputs) if views is not None else (None, None)
    terms = {}
    last = len(chunks) - 1
    for j, chunk in enumerate(chunks):
        with no_sync() if j < last else contextlib.nullcontext():
            with autocast():
                fresh = forward(inputs.images[chunk], inputs.tokens[chunk], views if j == 0 else None)
            out = {
                "image": ProbEmbedding.cat([fresh["image"] if i == j else c["image"] for i, c in enumerate(cached)]),
                "text": ProbEmbedding.cat([fresh["text"] if i == j else c["text"] for i, c in enumerate(cached)]),
                "masked_image": fresh["masked_image"] if j == 0 else cached_masked[0],
                "masked_text": fresh["masked_text"] if j == 0 else cached_masked[1],
            }
            logit_scale = fresh["logit_scale"] if j == last else fresh["logit_scale"].detach()
            logit_bias = fresh["logit_bias"] if j == last else fresh["logit_bias"].detach()
            terms = _loss(loss_fn, inputs, out, logit_scale, logit_bias)
            scale_loss(terms["loss"]).backward()
    return {k: float(v.detach()) for k, v in terms.items()}
