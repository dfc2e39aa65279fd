"""The one way probclip decodes an image, for training and evaluation alike.

:func:`decode_image` opens a file or bytes, checks the pixel count from the header against the resource limit
(``probclip.limits``) BEFORE decoding, applies the EXIF orientation, and converts every mode to RGB with
:class:`ToRGB` (alpha over white, 16-bit and float greyscale rescaled, palette and CMYK converted).
"""

from __future__ import annotations

import io
import os
import warnings
from pathlib import Path

import numpy as np
import torch
from PIL import Image, ImageOps, UnidentifiedImageError

from .errors import InputError
from .limits import LimitExceededError, check_image_pixels

__all__ = ["ImageLoadError", "ToRGB", "decode_image"]


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
            array = np.asarray(image, dtype=np.float64)
            peak = array.max() if array.size and array.max() > 0 else 1.0
            return Image.fromarray((array / peak * 255.0).round().astype(np.uint8), mode="L").convert("RGB")
        return image.convert("RGB")


def decode_image(source: bytes | str | os.PathLike, name: str | None = None, max_pixels: int | None = None,
                 draft: tuple[int, int] | None = None) -> Image.Image:
    """Decode an encoded image (bytes, or a file path) into an upright RGB PIL image.

    ``max_pixels`` defaults to the process's ``max_image_pixels`` limit. Raises ``ImageLoadError`` naming ``name``
    (default: the path) for a missing, unreadable, unknown-format or truncated image, and ``LimitExceededError``
    for one with too many pixels (decided from the header, before decoding). ``draft``: let JPEG decode at a
    reduced scale of at least this size (to check an image quickly; the whole stream is still read).
    """
    is_bytes = isinstance(source, (bytes, bytearray, memoryview))
    name = name or ("image" if is_bytes else str(source))
    try:
        with warnings.catch_warnings():
            # PIL's own bomb warning is superseded by the explicit limit checked below
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            opened = Image.open(io.BytesIO(bytes(source)) if is_bytes else Path(source))
        with opened as image:
            check_image_pixels(image.width, image.height, name, max_pixels)
            if draft is not None:
                image.draft("RGB", draft)
            image.load()
            ImageOps.exif_transpose(image, in_place=True)
            return ToRGB()(image)
    except LimitExceededError:
        raise
    except FileNotFoundError as err:
        raise ImageLoadError(f"image file not found: {name}") from err
    except UnidentifiedImageError as err:
        raise ImageLoadError(f"cannot identify image {name}: not an image or an unsupported format") from err
    except Image.DecompressionBombError as err:
        raise ImageLoadError(f"{name}: {err}") from err
    except (OSError, SyntaxError, ValueError, EOFError) as err:
        raise ImageLoadError(f"cannot read image {name} (truncated or corrupt): {err}") from err
