"""The one way probclip decodes an image: training, evaluation, ``probclip embed``, ``probclip search --image``,
``SearchIndex.open_image`` (thumbnails) and the service's uploads all call :func:`decode_image`.

It reads a file's bytes within ``max_member_bytes`` (a device or pipe is never read past the limit), checks the
pixel count and the aspect ratio from the header against the resource limits (``probclip.limits``) BEFORE decoding,
applies the EXIF orientation, and converts every mode to RGB with :class:`ToRGB` (alpha over white, 16-bit and
float greyscale rescaled, palette and CMYK converted).
"""

from __future__ import annotations

import io
import os
import warnings

import numpy as np
import torch
from PIL import Image, ImageOps, UnidentifiedImageError

from .errors import InputError
from .limits import LimitExceededError, check_image_pixels, check_image_shape, current_limits, read_bounded

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
                 draft: tuple[int, int] | None = None, *, max_bytes: int | None = None,
                 formats: tuple[str, ...] | None = None) -> Image.Image:
    """Decode an encoded image (bytes, or a file path) into an upright RGB PIL image.

    ``max_pixels`` defaults to the process's ``max_image_pixels`` limit, ``max_bytes`` to ``max_member_bytes``
    (the encoded size: a file over it is not read); the aspect ratio is bounded by ``max_image_aspect_ratio``.
    Raises ``ImageLoadError`` naming ``name`` (default: the path) for a missing, unreadable, unknown-format or
    truncated image, and ``LimitExceededError`` for one over a limit (decided from the size and the header, before
    decoding). ``draft``: let JPEG decode at a reduced scale of at least this size (to check an image quickly; the
    whole stream is still read). ``formats``: the Pillow format names accepted (default: every format Pillow reads).
    """
    is_bytes = isinstance(source, (bytes, bytearray, memoryview))
    name = name or ("image" if is_bytes else str(source))
    max_bytes = current_limits().max_member_bytes if max_bytes is None else max_bytes
    try:
        if is_bytes:
            data = bytes(source)
            if len(data) > max_bytes:
                raise LimitExceededError(f"{name}: {len(data)} bytes exceeds the limit of {max_bytes} bytes "
                                         "(data.max_member_bytes); not decoded")
        else:
            data = read_bounded(source, max_bytes, "data.max_member_bytes")
        if not data:
            raise ImageLoadError(f"cannot read image {name}: the file is empty (0 bytes)")
        with warnings.catch_warnings():
            # PIL's own bomb warning is superseded by the explicit limit checked below
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            opened = Image.open(io.BytesIO(data), formats=formats)
        with opened as image:
            check_image_pixels(image.width, image.height, name, max_pixels)
            check_image_shape(image.width, image.height, name)
            if draft is not None:
                image.draft("RGB", draft)
            image.load()
            ImageOps.exif_transpose(image, in_place=True)
            return ToRGB()(image)
    except (LimitExceededError, ImageLoadError):
        raise
    except FileNotFoundError as err:
        raise ImageLoadError(f"image file not found: {name}") from err
    except IsADirectoryError as err:
        raise ImageLoadError(f"cannot read image {name}: it is a directory") from err
    except UnidentifiedImageError as err:
        accepted = f"; accepted formats: {', '.join(formats)}" if formats else ""
        raise ImageLoadError(f"cannot identify image {name}: not an image or an unsupported format{accepted}") from err
    except Image.DecompressionBombError as err:
        raise ImageLoadError(f"{name}: {err}") from err
    except (OSError, SyntaxError, ValueError, EOFError) as err:
        raise ImageLoadError(f"cannot read image {name} (truncated or corrupt): {err}") from err
