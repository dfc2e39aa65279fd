"""Checks of what the encoders are given: finite floating-point images, integer token ids."""

from __future__ import annotations

import torch

from ..errors import InputError

__all__ = ["NonFiniteInputError", "check_image_input", "check_token_input"]


class NonFiniteInputError(InputError, ValueError):
    """An encoder was given NaN or infinite pixel values."""


def check_image_input(images: torch.Tensor) -> None:
    """Raise ``InputError`` unless ``images`` is a floating-point tensor ``[B, 3, H, W]`` of finite values."""
    if not isinstance(images, torch.Tensor) or not images.is_floating_point():
        raise InputError(f"encode_image expects a floating-point image tensor [B, 3, H, W]; got "
                         f"{getattr(images, 'dtype', type(images).__name__)}")
    if not bool(torch.isfinite(images).all()):
        bad = int((~torch.isfinite(images)).flatten(1).any(1).sum())
        raise NonFiniteInputError(f"encode_image: {bad} of {images.shape[0]} image(s) hold NaN or infinite pixel "
                                  "values; check the preprocessing")


def check_token_input(tokens: torch.Tensor) -> None:
    """Raise ``InputError`` unless ``tokens`` is an integer tensor of token ids."""
    if not isinstance(tokens, torch.Tensor) or tokens.is_floating_point() or tokens.is_complex() \
            or tokens.dtype == torch.bool:
        raise InputError(f"encode_text expects integer token ids [B, L] (from probclip.get_tokenizer); got "
                         f"{getattr(tokens, 'dtype', type(tokens).__name__)}")
