"""Masked views for ProLIP's original-in-masked inclusion loss, built on the fly from a batch.

Ratios are explicit and named by what they count:

- ``image_keep_ratio``: fraction of image PATCHES KEPT in a masked image view (CLS and UNC tokens are always
  kept). The reference training keeps 0.75 of the patches (i.e. masks 25%).
  ``image_mask_mode`` says what happens to the other patches: ``drop`` removes their tokens (the reference);
  ``grey`` paints their pixels mid-grey and keeps every token (an occluded image, as the input looks when part of
  a scene is hidden).
- ``text_mask_prob``: probability that each non-padding text token is masked (reference: 0.75, i.e. masks 75%
  of the tokens). ``text_mask_mode`` says how: ``replace`` puts the mask token in its place (the reference);
  ``drop`` removes it and closes the gap, so the view is a shorter text (a more general caption, with no token
  that real captions never contain); ``phrase`` takes a strictly more general caption that the data source makes
  by dropping whole phrases (``probclip.data.text_views``; the synthetic world's), and drops words as ``drop``
  for a caption without one.
- ``fraction``: masked views are made for 1 in every ``1 / fraction`` samples, chosen by global index in the
  batch so that the choice does not depend on how the batch is split across processes
  (``probclip.train.step.masked_selection``; reference: 0.125, the reference takes the first ``B / 8``).
  ``num_masked(B, fraction)`` is their count in a batch of ``B``.
"""

from __future__ import annotations

import torch

__all__ = ["TEXT_MASK_MODES", "TOKEN_MASK_MODES", "IMAGE_MASK_MODES", "num_masked", "num_kept_patches",
           "sample_keep_patches", "mask_text_tokens", "paint_masked_patches"]

#: How ``mask_text_tokens`` removes a masked token: replaced by the mask token (reference), or dropped.
TOKEN_MASK_MODES = ("replace", "drop")
#: How a masked text view is made: the token modes, or ``phrase``: a strictly more general caption from the data
#: source (``probclip.data.text_views``; a caption without one drops words as ``drop`` does).
TEXT_MASK_MODES = (*TOKEN_MASK_MODES, "phrase")
#: What a masked image view does with the patches it does not keep: drop their tokens (reference) or paint them grey.
IMAGE_MASK_MODES = ("drop", "grey")


def num_masked(batch_size: int, fraction: float) -> int:
    """How many samples of a batch of ``batch_size`` get masked views: ``round(fraction * B)``, at least 1 when
    ``fraction > 0``, never more than ``B``; 0 when ``fraction == 0``."""
    if not 0.0 <= fraction <= 1.0:
        raise ValueError(f"masked fraction must be in [0, 1]; got {fraction!r}")
    if fraction == 0.0 or batch_size == 0:
        return 0
    return min(batch_size, max(1, int(round(fraction * batch_size))))


def num_kept_patches(num_patches: int, keep_ratio: float) -> int:
    """Patches kept in a masked image view: ``round(keep_ratio * num_patches)``, between 1 and ``num_patches``."""
    if not 0.0 < keep_ratio <= 1.0:
        raise ValueError(f"image_keep_ratio (fraction of patches kept) must be in (0, 1]; got {keep_ratio!r}")
    return min(num_patches, max(1, int(round(keep_ratio * num_patches))))


def sample_keep_patches(count: int, num_patches: int, keep_ratio: float, generator: torch.Generator | None = None,
                        device: torch.device | str | None = None) -> torch.Tensor:
    """Random patch subsets: LongTensor ``[count, K]`` of distinct indices in ``0..num_patches-1`` (sorted per row),
    ``K = num_kept_patches(num_patches, keep_ratio)``; each row drawn independently with ``generator``."""
    kept = num_kept_patches(num_patches, keep_ratio)
    scores = torch.rand(count, num_patches, generator=generator)
    indices = scores.argsort(dim=1)[:, :kept].sort(dim=1).values
    return indices.to(device) if device is not None else indices


def mask_text_tokens(tokens: torch.Tensor, mask_prob: float, mask_id: int | None, pad_id: int,
                     generator: torch.Generator | None = None, mode: str = "replace") -> torch.Tensor:
    """A masked copy of ``tokens [n, L]``: each non-padding token is masked with probability ``mask_prob``
    (drawn with ``generator`` on the CPU).

    ``mode="replace"``: a masked token is replaced by ``mask_id`` (raises ``ValueError`` if the tokenizer has no
    mask token). ``mode="drop"``: masked tokens are removed, the kept tokens move left in their order and the
    row is padded with ``pad_id`` at the end (a row may become all padding: the empty text).
    """
    if not 0.0 <= mask_prob <= 1.0:
        raise ValueError(f"text_mask_prob must be in [0, 1]; got {mask_prob!r}")
    if mode not in TOKEN_MASK_MODES:
        raise ValueError(f"text mask mode must be one of {list(TOKEN_MASK_MODES)}; got {mode!r}")
    if mask_prob == 0.0:
        return tokens.clone()
    if mode == "replace" and mask_id is None:
        raise ValueError(
            "masked text views need a mask token but the tokenizer has mask_id=None; set the model's "
            "text.mask_id, masking.text_mask_mode: drop, or masking.text_mask_prob: 0"
        )
    draws = torch.rand(tokens.shape, generator=generator).to(tokens.device)
    content = tokens != pad_id
    masked = (draws < mask_prob) & content
    if mode == "replace":
        return torch.where(masked, torch.full_like(tokens, mask_id), tokens)
    kept = content & ~masked
    # Stable sort of "not kept" puts the kept tokens first, in their order.
    order = torch.sort((~kept).to(torch.int8), dim=1, stable=True).indices
    compact = torch.gather(tokens, 1, order)
    count = kept.sum(dim=1, keepdim=True)
    positions = torch.arange(tokens.shape[1], device=tokens.device)[None, :]
    return torch.where(positions < count, compact, torch.full_like(tokens, pad_id))


def paint_masked_patches(images: torch.Tensor, keep: torch.Tensor, patch_size: int,
                         fill: torch.Tensor) -> torch.Tensor:
    """A copy of ``images [n, C, H, W]`` whose patches NOT listed in ``keep [n, K]`` (row-major patch indices of a
    ``patch_size`` grid) are set to ``fill [C]`` (per channel, in the images' normalised units)."""
    n, channels, height, width = images.shape
    rows, cols = height // patch_size, width // patch_size
    kept = torch.zeros(n, rows * cols, dtype=torch.bool, device=images.device)
    kept.scatter_(1, keep.to(images.device), True)
    pixel_kept = kept.view(n, 1, rows, 1, cols, 1).expand(n, 1, rows, patch_size, cols, patch_size)
    pixel_kept = pixel_kept.reshape(n, 1, rows * patch_size, cols * patch_size)
    out = images.clone()
    region = out[:, :, : rows * patch_size, : cols * patch_size]
    region.copy_(torch.where(pixel_kept, region, fill.to(images)[None, :, None, None]))
    return out
