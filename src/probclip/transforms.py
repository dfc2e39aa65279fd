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
from PIL import Image, UnidentifiedImageError
from torchvision.transforms import InterpolationMode
from torchvision.transforms import v2 as T

from .errors import InputError

__all__ = ["ImageLoadError", "ToRGB", "image_transform", "load_image"]

_INTERPOLATIONS = {"bicubic": InterpolationMode.BICUBIC, "bilinear": InterpolationMode.BILINEAR}


class ImageLoadError(InputError, OSError):
    """An image file could not be read or decoded (the message names the file)."""


class ToRGB(torch.nn.Module):
    """Convert a PIL image of any mode (L, LA, La, P, PA, RGBA, RGBa, CMYK, YCbCr, LAB, HSV, I;16, I, F, 1) to RGB;
    transparent areas become white."""

    def forward(self, image: Image.Image) -> Image.Image:
        if not isinstance(image, Image.Image):
            raise TypeError(f"expected a PIL.Image.Image; got {type(image).__name__}")
        if image.mode == "RGB":
            return image
        if image.mode == "P" and "transparency" in image.info:
            image = image.convert("RGBA")
        elif image.mode in ("La", "RGBa"):  # premultiplied alpha: un-premultiply first
            image = image.convert("LA" if image.mode == "La" else "RGBA")
        if image.mode in ("RGBA", "LA", "PA"):
            rgba = image.convert("RGBA")
            background = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
            return Image.alpha_composite(background, rgba).convert("RGB")
        if image.mode.startswith("I;16") or image.mode in ("I", "F"):
            # 16-bit / 32-bit greyscale: rescale to 8 bits before conversion.
            import numpy as np

            array = np.asarray(image, dtype=np.float64)
            peak = array.max() if array.size and array.max() > 0 else 1.0
            return Image.fromarray((array / peak * 255.0).round().astype(np.uint8), mode="L").convert("RGB")
        return image.convert("RGB")


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
    """Open and fully decode an image file; returns an RGB PIL image.

    Raises ``ImageLoadError`` (naming the file) for a missing, unreadable, unknown-format or truncated file.
    """
    path = Path(path)
    try:
        with Image.open(path) as image:
            image.load()
            return ToRGB()(image)
    except FileNotFoundError as err:
        raise ImageLoadError(f"image file not found: {path}") from err
    except UnidentifiedImageError as err:
        raise ImageLoadError(f"cannot identify image file {path}: not an image or an unsupported format") from err
    except (OSError, SyntaxError, ValueError) as err:
        raise ImageLoadError(f"cannot read image file {path} (truncated or corrupt): {err}") from err
