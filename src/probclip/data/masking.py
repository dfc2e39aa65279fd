"""Masked views for ProLIP's original-in-masked inclusion loss, built on the fly from a batch.

Ratios are explicit and named by what they count:

- ``image_keep_ratio``: fraction of image PATCHES KEPT in a masked image view (CLS and UNC tokens are always
  kept). The reference training keeps 0.75 of the patches (i.e. masks 25%).
- ``text_mask_prob``: probability that each non-padding text token is REPLACED by the mask token
  (reference: 0.75, i.e. masks 75% of the tokens).
- ``fraction``: masked views are made for the first ``num_masked(B, fraction)`` samples of a local batch
  (reference: 0.125).
"""

from __future__ import annotations

import torch

__all__ = ["num_masked", "num_kept_patches", "sample_keep_patches", "mask_text_tokens"]


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
                     generator: torch.Generator | None = None) -> torch.Tensor:
    """A copy of ``tokens [n, L]`` where each non-padding token is replaced by ``mask_id`` with probability
    ``mask_prob`` (drawn with ``generator`` on the CPU). Raises ``ValueError`` if masking is asked for and the
    tokenizer has no mask token."""
    if not 0.0 <= mask_prob <= 1.0:
        raise ValueError(f"text_mask_prob must be in [0, 1]; got {mask_prob!r}")
    if mask_prob == 0.0:
        return tokens.clone()
    if mask_id is None:
        raise ValueError(
            "masked text views need a mask token but the tokenizer has mask_id=None; set the model's "
            "text.mask_id or masking.text_mask_prob: 0"
        )
    draws = torch.rand(tokens.shape, generator=generator).to(tokens.device)
    replace = (draws < mask_prob) & (tokens != pad_id)
    return torch.where(replace, torch.full_like(tokens, mask_id), tokens)
