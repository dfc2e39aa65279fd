"""A bound on how many uploaded images the service holds decoded at once, and on what resizing one may cost.

Each upload's pixel count is bounded (``ServiceLimits.max_image_pixels``), but without this, N simultaneous uploads
cost N decoded bitmaps (a 36-megapixel upload is 108 MB as RGB, several times that while it is decoded and
resized). An image search holds one of ``slots`` slots from before it is decoded until the search worker has
encoded it; the other image searches wait for a slot (text and embedding searches never do), so the decoded pixels
in memory never exceed ``slots`` images.

The model's input transform resizes an image's short side to its input size: a 100000 x 1 PNG of a few hundred
bytes would become 100000 x S x S pixels. ``decode_upload`` refuses, from the header and before decoding, an image
whose resized size would exceed ``max_image_pixels``.
"""

from __future__ import annotations

import asyncio
import threading
from contextlib import asynccontextmanager

from PIL import Image
from starlette.concurrency import run_in_threadpool

from ..errors import InputError
from .limits import ImageTooLargeError, ServiceLimits, decode_image_bytes, image_header_size

__all__ = ["DecodeSlots", "decode_upload"]

#: Seconds between two tries of a waiting request to take a slot.
POLL_S = 0.005


class DecodeSlots:
    """``slots`` permits shared by the image searches of one service (see the module docstring)."""

    def __init__(self, slots: int):
        if isinstance(slots, bool) or not isinstance(slots, int) or slots < 1:
            raise ValueError(f"decode slots must be a positive integer; got {slots!r}")
        self.slots = slots
        self._semaphore = threading.BoundedSemaphore(slots)
        self._held = 0

    @property
    def held(self) -> int:
        """Slots in use now."""
        return self._held

    @asynccontextmanager
    async def hold(self):
        """Wait for a free slot (without blocking the event loop) and hold it for the ``async with`` block.

        A request cancelled while it waits holds nothing: the slot is taken without blocking, between short sleeps.
        """
        while not self._semaphore.acquire(blocking=False):
            await asyncio.sleep(POLL_S)
        self._held += 1
        try:
            yield
        finally:
            self._held -= 1
            self._semaphore.release()


def check_resized_size(width: int, height: int, input_size: int, limit: int) -> None:
    """``ImageTooLargeError`` when resizing the short side of a ``width x height`` image to ``input_size`` pixels
    (what the model's transform does) gives more than ``limit`` pixels."""
    short, long = sorted((max(width, 1), max(height, 1)))
    resized = -(-long * input_size // short) * input_size
    if resized > limit:
        raise ImageTooLargeError(
            f"image of {width} x {height} pixels refused before decoding: resizing its short side to the model's "
            f"{input_size} pixels would make {resized} pixels, over the limit of {limit}; crop it to a less "
            "elongated shape")


def _decode(data: bytes, limits: ServiceLimits, input_size: int | None) -> Image.Image:
    try:
        if input_size and 0 < len(data) <= limits.max_image_bytes:  # larger or empty: refused just below
            _, width, height = image_header_size(data)
            check_resized_size(width, height, input_size, limits.max_image_pixels)
        return decode_image_bytes(data, limits)
    except InputError:
        raise
    except (OSError, SyntaxError, ValueError, EOFError, IndexError, KeyError, TypeError) as err:
        # Pillow reports a stream cut inside its header with assorted exception types and messages that may hold
        # an object's repr: the client gets one plain line instead.
        raise InputError(f"the uploaded image could not be read (truncated or corrupt {type(err).__name__}); "
                         "send a complete PNG, JPEG, GIF, WebP or BMP file") from err


async def decode_upload(data: bytes, limits: ServiceLimits, input_size: int | None = None) -> Image.Image:
    """Decode an uploaded image in the thread pool; every failure is an ``InputError`` (or ``ImageTooLargeError``)
    with a one-line message. ``input_size``: the model's input side (see ``check_resized_size``). Call it while
    holding a :class:`DecodeSlots` slot."""
    return await run_in_threadpool(_decode, data, limits, input_size)
