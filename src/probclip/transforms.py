"""Image transforms built from a model's vision config, and a checked image loader.

``image_transform(vision_cfg, train=False)``: RGB conversion, bicubic resize of the short side to
``image_size``, centre crop, tensor, normalisation with the config's mean/std.
``image_transform(vision_cfg, train=True)``: RGB conversion, random resized crop (scale 0.9-1.0 by default,
bicubic), tensor, normalisation. ``load_image(path)`` opens a file and names it in any error.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import torch
from PIL import Image
from torchvision.transforms import InterpolationMode
from torchvision.transforms import v2 as T

from .image_decoding import ImageLoadError, ToRGB, decode_image

__all__ = ["ImageLoadError", "ToRGB", "image_transform", "load_image"]

_INTERPOLATIONS = {"bicubic": InterpolationMode.BICUBIC, "bilinear": InterpolationMode.BILINEAR}


def _field(cfg: Any, name: str):
    if isinstance(cfg, dict):
        return cfg[name]
    return getattr(cfg, name)


def image_transform(
    vision_cfg: Any,
    train: bool = False,
    scale: tuple[float, float] = (0.9, 1.0),
    horizontal_flip: bool = False,
) -> T.Compose:
    """PIL image -> normalised float tensor ``[3, image_size, image_size]``.

    Args:
        vision_cfg: a ``VisionConfig`` (or a model: its ``config.vision`` is used), or a dict with
            ``image_size``, ``image_mean``, ``image_std`` and optionally ``resize_interpolation``.
        train: random resized crop (area fraction in ``scale``) instead of resize + centre crop.
        scale: area range of the random crop (train only).
        horizontal_flip: add a random horizontal flip (train only; off by default because captions may
            mention left and right).
    """
    if hasattr(vision_cfg, "config") and hasattr(vision_cfg.config, "vision"):
        vision_cfg = vision_cfg.config.vision
    size = int(_field(vision_cfg, "image_size"))
    mean, std = tuple(_field(vision_cfg, "image_mean")), tuple(_field(vision_cfg, "image_std"))
    interp_name = vision_cfg.get("resize_interpolation", "bicubic") if isinstance(vision_cfg, dict) else getattr(
        vision_cfg, "resize_interpolation", "bicubic")
    if interp_name not in _INTERPOLATIONS:
        raise ValueError(f"resize_interpolation must be one of {sorted(_INTERPOLATIONS)}; got {interp_name!r}")
    interpolation = _INTERPOLATIONS[interp_name]
    steps: list = [ToRGB()]
    if train:
        steps.append(T.RandomResizedCrop(size, scale=scale, interpolation=interpolation, antialias=True))
        if horizontal_flip:
            steps.append(T.RandomHorizontalFlip())
    else:
        steps += [T.Resize(size, interpolation=interpolation, antialias=True), T.CenterCrop(size)]
    steps += [T.PILToTensor(), T.ToDtype(torch.float32, scale=True), T.Normalize(mean=mean, std=std)]
    return T.Compose(steps)


def load_image(path: str | os.PathLike) -> Image.Image:
    """Open and fully decode an image file; returns an upright RGB PIL image (``probclip.image_decoding``).

    Raises ``ImageLoadError`` (naming the file) for a missing, unreadable, unknown-format or truncated file, and
    ``LimitExceededError`` for one with more pixels than the limit (checked before decoding).
    """
    return decode_image(Path(path))
