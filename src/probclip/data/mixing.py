"""Mixed-sample augmentation of PCME++: mixup or cutmix of a part of the batch with the mirrored image.

Image ``i`` (for ``i < m``) is mixed with image ``B - 1 - i``; ``lambda_i`` is the share of image i in the result
(for cutmix, the exact un-pasted area fraction). Build the soft match labels with
``probclip.losses.soft_match_labels(mix_lambda, partner_index)``.
"""

from __future__ import annotations

import torch

__all__ = ["mix_images"]


def _cutmix_box(height: int, width: int, lam: float, generator: torch.Generator) -> tuple[int, int, int, int]:
    """A box covering about ``1 - lam`` of the image, centred uniformly at random (clipped to the image)."""
    cut = (1.0 - lam) ** 0.5
    box_h, box_w = int(round(height * cut)), int(round(width * cut))
    cy = int(torch.randint(height, (1,), generator=generator))
    cx = int(torch.randint(width, (1,), generator=generator))
    top, bottom = max(cy - box_h // 2, 0), min(cy + box_h - box_h // 2, height)
    left, right = max(cx - box_w // 2, 0), min(cx + box_w - box_w // 2, width)
    return top, bottom, left, right


def mix_images(images: torch.Tensor, fraction: float, beta: float, cutmix_prob: float,
               generator: torch.Generator) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Mix the first ``round(fraction * B)`` images with their mirrored partners.

    Args:
        images: ``[B, 3, H, W]``.
        fraction: share of the batch that is mixed (PCME++: 0.25); never more than half (a pair mixes once).
        beta: ``lambda ~ Beta(beta, beta)`` (PCME++: 2).
        cutmix_prob: probability that a mixed image uses cutmix instead of mixup.
        generator: CPU generator for every random draw.

    Returns ``(mixed images [B, 3, H, W], mix_lambda [B] (1 for unmixed images), partner_index [B])``.
    """
    batch, _, height, width = images.shape
    count = min(int(round(fraction * batch)), batch // 2)
    mixed = images.clone()
    lam = torch.ones(batch, dtype=torch.float32)
    partner = torch.arange(batch)
    if count == 0:
        return mixed, lam, partner
    for i in range(count):
        j = batch - 1 - i
        weight = _beta_sample(beta, generator)
        partner[i] = j
        if float(torch.rand((), generator=generator)) < cutmix_prob:
            top, bottom, left, right = _cutmix_box(height, width, weight, generator)
            mixed[i, :, top:bottom, left:right] = images[j, :, top:bottom, left:right]
            weight = 1.0 - (bottom - top) * (right - left) / (height * width)
        else:
            mixed[i] = weight * images[i] + (1.0 - weight) * images[j]
        lam[i] = weight
    return mixed, lam, partner


def _beta_sample(beta: float, generator: torch.Generator) -> float:
    """One draw of Beta(beta, beta) by inverse-CDF sampling of a uniform drawn with ``generator``."""
    from scipy.special import betaincinv  # scipy loads slowly; only mixed samples need it

    uniform = float(torch.rand((), generator=generator, dtype=torch.float64))
    return float(betaincinv(beta, beta, uniform))
