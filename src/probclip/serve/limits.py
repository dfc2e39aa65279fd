"""Bounds on what a client may send: request bytes, upload bytes, decoded image pixels, k, text length.

An uploaded image is decoded by the one decoder, ``probclip.image_decoding.decode_image`` (EXIF orientation, alpha
over white, the same conversions as training and ``probclip embed``): its width x height and aspect ratio are
checked from the header and only then is it decoded, so a small file that would decode to a huge bitmap, or resize
to one, is refused before any pixel memory is allocated.
"""

from __future__ import annotations

import io
import warnings
from dataclasses import dataclass

from PIL import Image, UnidentifiedImageError

from ..errors import InputError
from ..image_decoding import ImageLoadError, decode_image
from ..limits import LimitExceededError

__all__ = ["ServiceLimits", "ImageTooLargeError", "decode_image_bytes", "image_header_size"]

#: Image formats the service decodes (Pillow format names).
ACCEPTED_IMAGE_FORMATS = ("PNG", "JPEG", "GIF", "WEBP", "BMP")


@dataclass(frozen=True)
class ServiceLimits:
    """What one request may carry.

    Attributes:
        max_request_bytes: bytes of one request body (JSON or multipart), checked while it streams in.
        max_image_bytes: bytes of one encoded image (after base64 decoding for JSON).
        max_image_pixels: decoded width x height of one query image, checked from the header before decoding.
        max_k: the largest ``k`` a search may ask for.
        max_text_chars: characters of one text query.
        max_thumbnail_px: the largest side of a thumbnail the image endpoint returns.
        max_concurrent_decodes: image searches holding a decoded upload at once (``decode_slots.DecodeSlots``).
    """

    max_request_bytes: int = 16 * 1024 * 1024
    max_image_bytes: int = 10 * 1024 * 1024
    max_image_pixels: int = 40_000_000
    max_k: int = 1000
    max_text_chars: int = 2000
    max_thumbnail_px: int = 512
    max_concurrent_decodes: int = 1

    def __post_init__(self):
        for name in ("max_request_bytes", "max_image_bytes", "max_image_pixels", "max_k", "max_text_chars",
                     "max_thumbnail_px", "max_concurrent_decodes"):
            value = getattr(self, name)
            if not isinstance(value, int) or value < 1:
                raise ValueError(f"ServiceLimits.{name} must be a positive integer; got {value!r}")


class ImageTooLargeError(InputError):
    """An image whose bytes or decoded pixels exceed the service's limits (HTTP 413)."""


def image_header_size(data: bytes) -> tuple[str, int, int]:
    """Read an encoded image's header only; returns ``(format, width, height)`` without decoding pixels.

    Raises ``InputError`` when the bytes are not an image in one of ``ACCEPTED_IMAGE_FORMATS``.
    """
    try:
        with warnings.catch_warnings():
            # The service applies its own, lower pixel bound right below; Pillow's bomb warning adds nothing.
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            with Image.open(io.BytesIO(data), formats=ACCEPTED_IMAGE_FORMATS) as image:
                return image.format, image.width, image.height
    except Image.DecompressionBombError as err:
        raise ImageTooLargeError(f"image refused before decoding: {err}") from err
    except UnidentifiedImageError as err:
        raise InputError(
            f"the uploaded bytes are not a readable image; accepted formats: {', '.join(ACCEPTED_IMAGE_FORMATS)}"
        ) from err


def decode_image_bytes(data: bytes, limits: ServiceLimits) -> Image.Image:
    """Decode an uploaded image within ``limits`` with the one decoder (``probclip.image_decoding``); returns an
    upright RGB PIL image.

    Raises ``ImageTooLargeError`` for too many bytes, pixels or too long a shape (checked before decoding) and
    ``InputError`` for bytes that are not a readable image.
    """
    if len(data) == 0:
        raise InputError("the image is empty (0 bytes); send a PNG, JPEG, GIF, WebP or BMP file")
    if len(data) > limits.max_image_bytes:
        raise ImageTooLargeError(
            f"image of {len(data)} bytes refused: the limit is {limits.max_image_bytes} bytes"
        )
    fmt, width, height = image_header_size(data)
    if width * height > limits.max_image_pixels:
        raise ImageTooLargeError(
            f"image of {width} x {height} = {width * height} pixels refused before decoding: the limit is "
            f"{limits.max_image_pixels} pixels"
        )
    try:
        return decode_image(data, f"the uploaded {fmt} image", max_pixels=limits.max_image_pixels,
                            max_bytes=limits.max_image_bytes, formats=ACCEPTED_IMAGE_FORMATS)
    except LimitExceededError as err:  # the aspect ratio (a 100000 x 1 image would resize to 22,400,000 x 224)
        raise ImageTooLargeError(str(err)) from err
    except ImageLoadError as err:
        raise InputError(str(err).splitlines()[0]) from err
