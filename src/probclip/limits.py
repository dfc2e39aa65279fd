"""Resource limits on untrusted inputs: image and text file bytes, decoded image size and shape, caption length,
model size, shard counts, and the caption text a search answers with.

An input over a limit is refused before it costs memory (an image is checked from its header, before any pixel is
decoded; a tar member from its header, before it is read): the reader raises :class:`LimitExceededError` (an
``InputError``) naming the input, and the training and evaluation readers skip it, count it and name it like any
unreadable sample. The limits of the current process are :func:`current_limits`; training sets them from the
``data`` config section (:func:`set_limits`), and the readers take them from there unless given explicitly.
"""

from __future__ import annotations

import dataclasses
import os
import stat
from dataclasses import dataclass
from pathlib import Path

from .errors import InputError

__all__ = ["ResourceLimits", "DEFAULT_LIMITS", "LimitExceededError", "current_limits", "set_limits",
           "check_image_pixels", "check_image_shape", "check_member_size", "check_caption_length",
           "check_parameter_count", "check_shard_count", "read_bounded", "clip_caption"]


@dataclass(frozen=True)
class ResourceLimits:
    """Attributes:
        max_image_pixels: width x height of an image (50 M: a 45-megapixel photo passes; decoded as RGB it is
            150 MB at most, while a 100-megapixel bomb is refused from its header).
        max_image_aspect_ratio: the long side of an image over its short side (50). The resize before the centre
            crop scales the short side to the model's size, so a 100000x1 image would be resized to 22,400,000 x 224
            pixels; at 50:1 the resized image is at most 224 x 11,200 (7.5 MB as RGB).
        max_member_bytes: bytes of one file or tar member read into memory whole: an image file, a caption file
            (``photo.txt``) or a member of a shard (32 MiB).
        max_caption_chars: characters of one caption (20,000; the longest released context is 256 tokens).
        max_text_file_bytes: bytes of one listing file read whole: a CSV/TSV table, a Karpathy JSON, a ``.txt`` of
            captions, a model ``config.json`` (512 MiB; COCO's Karpathy JSON is 144 MB).
        max_model_parameters: parameters of a model built from a config, counted from the config before anything
            is allocated (20 billion; the largest released ProLIP has 0.9 billion).
        max_shards: shards of one data set (``nshards.txt``, brace patterns such as ``{000..999}``) (1,000,000).
        max_result_caption_chars: characters of one caption in a search answer (CLI table, JSON, HTTP): longer
            captions are cut and marked (1,000).
    """

    max_image_pixels: int = 50_000_000
    max_image_aspect_ratio: float = 50.0
    max_member_bytes: int = 32 * 1024 * 1024
    max_caption_chars: int = 20_000
    max_text_file_bytes: int = 512 * 1024 * 1024
    max_model_parameters: int = 20_000_000_000
    max_shards: int = 1_000_000
    max_result_caption_chars: int = 1_000


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


def check_image_shape(width: int, height: int, name: str, limit: float | None = None) -> None:
    """Raise ``LimitExceededError`` when a ``width x height`` image is longer than the aspect-ratio limit (or has
    no pixel): resizing its short side to a model's input size would allocate ``size^2 x ratio`` pixels."""
    limit = current_limits().max_image_aspect_ratio if limit is None else limit
    if min(width, height) < 1:
        raise LimitExceededError(f"{name}: image of {width}x{height} has no pixel; not decoded")
    ratio = max(width, height) / min(width, height)
    if ratio > limit:
        raise LimitExceededError(
            f"{name}: image of {width}x{height} has an aspect ratio of {ratio:.4g}:1, over the limit of {limit:g}:1 "
            "(data.max_image_aspect_ratio); not decoded")


def check_parameter_count(count: int, name: str, limit: int | None = None) -> None:
    """Raise ``LimitExceededError`` when a model config describes more parameters than the limit."""
    limit = current_limits().max_model_parameters if limit is None else limit
    if count > limit:
        raise LimitExceededError(
            f"{name}: the config describes a model of {count:.4g} parameters ({count * 4 / 2**30:.4g} GiB in "
            f"float32), over the limit of {limit:.4g} (max_model_parameters); nothing was allocated")


def check_shard_count(count: int, name: str, limit: int | None = None) -> None:
    """Raise ``LimitExceededError`` when a data set names more shards than the limit."""
    limit = current_limits().max_shards if limit is None else limit
    if count > limit:
        raise LimitExceededError(f"{name}: {count} shards exceeds the limit of {limit} shards (max_shards)")


def read_bounded(path: str | os.PathLike, limit: int, setting: str) -> bytes:
    """The bytes of ``path``, refused (``LimitExceededError`` naming the file and ``setting``) when over ``limit``.

    A regular file is refused from its size before it is read; anything else (a device, a pipe) is read up to
    ``limit + 1`` bytes at most, so an endless stream costs no more than the limit.
    """
    path = Path(path)
    with open(path, "rb") as handle:
        info = os.fstat(handle.fileno())
        if stat.S_ISREG(info.st_mode) and info.st_size > limit:
            raise LimitExceededError(f"{path}: {info.st_size} bytes exceeds the limit of {limit} bytes ({setting}); "
                                     "not read")
        if stat.S_ISREG(info.st_mode):
            return handle.read(info.st_size + 1)  # (a read of limit + 1 would allocate the limit)
        chunks, size = [], 0
        while size <= limit:
            chunk = handle.read(min(1 << 20, limit + 1 - size))
            if not chunk:
                break
            chunks.append(chunk)
            size += len(chunk)
        data = b"".join(chunks)
    if len(data) > limit:
        raise LimitExceededError(f"{path}: more than {limit} bytes, the limit ({setting}); not read further")
    return data


def clip_caption(text: str, limit: int | None = None) -> tuple[str, bool]:
    """``(text cut to the limit of characters, whether it was cut)``: a cut caption ends with an ellipsis."""
    limit = current_limits().max_result_caption_chars if limit is None else limit
    if len(text) <= limit:
        return text, False
    return text[: max(0, limit - 1)] + "\u2026", True
