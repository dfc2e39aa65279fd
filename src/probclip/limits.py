"""Resource limits on untrusted inputs: decoded image size, tar member size, caption length.

An input over a limit is refused before it costs memory (an image is checked from its header, before any pixel is
decoded; a tar member from its header, before it is read): the reader raises :class:`LimitExceededError` (an
``InputError``) naming the input, and the training and evaluation readers skip it, count it and name it like any
unreadable sample. The limits of the current process are :func:`current_limits`; training sets them from the
``data`` config section (:func:`set_limits`), and the readers take them from there unless given explicitly.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

from .errors import InputError

__all__ = ["ResourceLimits", "DEFAULT_LIMITS", "LimitExceededError", "current_limits", "set_limits",
           "check_image_pixels", "check_member_size", "check_caption_length"]


@dataclass(frozen=True)
class ResourceLimits:
    """Attributes:
        max_image_pixels: width x height of an image (50 M: a 45-megapixel photo passes; decoded as RGB it is
            150 MB at most, while a 100-megapixel bomb is refused from its header).
        max_member_bytes: bytes of one tar member (image or caption file) read into memory (32 MiB).
        max_caption_chars: characters of one caption (20,000; the longest released context is 256 tokens).
    """

    max_image_pixels: int = 50_000_000
    max_member_bytes: int = 32 * 1024 * 1024
    max_caption_chars: int = 20_000


DEFAULT_LIMITS = ResourceLimits()
_current = DEFAULT_LIMITS


class LimitExceededError(InputError, ValueError):
    """An input is larger than a resource limit (the message names it, its size and the limit)."""


def current_limits() -> ResourceLimits:
    """The limits in force in this process (data loader workers started by fork inherit them)."""
    return _current


def set_limits(limits: ResourceLimits | None = None, **changes: int) -> ResourceLimits:
    """Replace the process's limits (``None``: the defaults) with ``changes`` applied; returns the previous ones."""
    global _current
    previous = _current
    _current = dataclasses.replace(limits or DEFAULT_LIMITS, **changes)
    return previous


def check_image_pixels(width: int, height: int, name: str, limit: int | None = None) -> None:
    """Raise ``LimitExceededError`` when a ``width x height`` image has more pixels than the limit."""
    limit = current_limits().max_image_pixels if limit is None else limit
    if width * height > limit:
        raise LimitExceededError(
            f"{name}: image of {width}x{height} = {width * height / 1e6:.1f} megapixels exceeds the limit of "
            f"{limit / 1e6:.1f} megapixels (data.max_image_pixels); not decoded")


def check_member_size(size: int, name: str, limit: int | None = None) -> None:
    """Raise ``LimitExceededError`` when a file or tar member of ``size`` bytes exceeds the limit."""
    limit = current_limits().max_member_bytes if limit is None else limit
    if size > limit:
        raise LimitExceededError(f"{name}: {size} bytes exceeds the limit of {limit} bytes (data.max_member_bytes); "
                                 "not read")


def check_caption_length(text: str, name: str, limit: int | None = None) -> None:
    """Raise ``LimitExceededError`` when a caption has more characters than the limit."""
    limit = current_limits().max_caption_chars if limit is None else limit
    if len(text) > limit:
        raise LimitExceededError(f"{name}: caption of {len(text)} characters exceeds the limit of {limit} "
                                 "(data.max_caption_chars)")
