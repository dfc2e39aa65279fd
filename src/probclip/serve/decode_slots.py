"""A bound on how many uploaded images the service holds decoded at once.

Each upload's pixel count is bounded (``ServiceLimits.max_image_pixels``), but without this, N simultaneous uploads
cost N decoded bitmaps (a 36-megapixel upload is 108 MB as RGB). An image search holds one of ``slots`` slots from
before it is decoded until the search worker has encoded it; the other image searches wait for a slot (text and
embedding searches never do), so the decoded pixels in memory never exceed ``slots`` images.
"""

from __future__ import annotations

import asyncio
import threading
from contextlib import asynccontextmanager

from PIL import Image
from starlette.concurrency import run_in_threadpool

from ..errors import InputError
from .limits import ServiceLimits, decode_image_bytes

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


def _decode(data: bytes, limits: ServiceLimits) -> Image.Image:
    try:
        return decode_image_bytes(data, limits)
    except InputError:
        raise
    except (OSError, SyntaxError, ValueError, EOFError, IndexError, KeyError, TypeError) as err:
        # Pillow reports a stream cut inside its header with assorted exception types and messages that may hold
        # an object's repr: the client gets one plain line instead.
        raise InputError(f"the uploaded image could not be read (truncated or corrupt {type(err).__name__}); "
                         "send a complete PNG, JPEG, GIF, WebP or BMP file") from err


async def decode_upload(data: bytes, limits: ServiceLimits) -> Image.Image:
    """Decode an uploaded image in the thread pool; every failure is an ``InputError`` (or ``ImageTooLargeError``)
    with a one-line message. Call it while holding a :class:`DecodeSlots` slot."""
    return await run_in_threadpool(_decode, data, limits)
