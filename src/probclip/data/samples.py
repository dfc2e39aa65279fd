"""Turning raw samples into training tensors: image decoding, seeded per-sample randomness, batch collation."""

from __future__ import annotations

import random
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
from PIL import Image, UnidentifiedImageError

from ..errors import InputError
from ..image_decoding import ImageLoadError, ToRGB, decode_image
from ..limits import LimitExceededError
from .captions import draw_caption

__all__ = [
    "SampleError",
    "DatasetError",
    "derive_seed",
    "decode_image_bytes",
    "as_pil",
    "PairBatch",
    "PairCollator",
    "READ_ERRORS",
]

#: Exceptions that mean "this one sample is unreadable": it is skipped and counted, the run goes on.
READ_ERRORS = (
    OSError,
    SyntaxError,
    ValueError,
    UnidentifiedImageError,
    Image.DecompressionBombError,
    UnicodeDecodeError,
)


class SampleError(InputError, ValueError):
    """A sample is unusable (no image, no caption, undecodable payload); the message names the sample."""


class DatasetError(InputError, ValueError):
    """A whole dataset is unusable before training starts (empty, or a table without the configured column);
    the message names it."""


def derive_seed(*parts: int) -> int:
    """A 63-bit seed derived deterministically from integer ``parts`` (run seed, rank, worker, position...)."""
    state = np.random.SeedSequence([int(p) for p in parts]).generate_state(2, dtype=np.uint32)
    return (int(state[0]) << 31) ^ int(state[1])


def decode_image_bytes(payload: bytes, name: str = "image") -> Image.Image:
    """Fully decode an encoded image (jpg/png/webp/...) into an upright RGB PIL image (``probclip.image_decoding``).

    Raises ``SampleError`` naming ``name`` when the bytes are not a readable image or exceed the pixel limit.
    """
    try:
        return decode_image(payload, name)
    except (ImageLoadError, LimitExceededError) as err:
        raise SampleError(str(err)) from err


@dataclass
class PairBatch:
    """A batch of image-text pairs.

    Attributes:
        images: float tensor ``[B, 3, H, W]`` (normalised).
        tokens: long tensor ``[B, L]``.
        skipped: unreadable samples skipped while this batch was assembled.
        errors: messages of the first few skipped samples (for the log).
        position: the data position after this batch, used to resume (``{"worker": w, "consumed": n}`` for
            streaming sources, ``{"step": s}`` for indexed ones).
        phrase_views: long tensor ``[B, L]``: each caption's phrase view (``masking.text_mask_mode: phrase``;
            rows without one hold the caption itself), or None.
        has_phrase_view: bool tensor ``[B]``: which rows of ``phrase_views`` are views, or None.
    """

    images: torch.Tensor
    tokens: torch.Tensor
    skipped: int = 0
    errors: list = field(default_factory=list)
    position: dict = field(default_factory=dict)
    phrase_views: torch.Tensor | None = None
    has_phrase_view: torch.Tensor | None = None

    def pin_memory(self) -> PairBatch:
        """Page-locked copies of the tensors (used by ``DataLoader(pin_memory=True)``)."""
        views = None if self.phrase_views is None else self.phrase_views.pin_memory()
        return PairBatch(self.images.pin_memory(), self.tokens.pin_memory(), self.skipped, self.errors, self.position,
                         views, self.has_phrase_view)

    def __len__(self) -> int:
        return len(self.images)


class PairCollator:
    """Per-sample image transform and caption draw, then batch tokenization.

    Args:
        transform: PIL image -> ``[3, H, W]`` tensor (the model's train or eval transform).
        tokenizer: ``tokenizer(list[str]) -> LongTensor [B, L]``.
        random_transform: the transform draws random numbers (e.g. random resized crop); they are then drawn from
            a generator seeded per sample, so that results do not depend on worker scheduling.
        phrase_view: ``make(caption, rng) -> str | None`` (``probclip.data.text_views``): each batch also carries
            the drawn caption's phrase view (``rng`` seeded per sample); None: no views.
    """

    def __init__(self, transform: Callable, tokenizer: Callable, random_transform: bool = False,
                 phrase_view: Callable[[str, random.Random], str | None] | None = None):
        self.transform = transform
        self.tokenizer = tokenizer
        self.random_transform = random_transform
        self.phrase_view = phrase_view

    def image_tensor(self, image: Image.Image, seed: int) -> torch.Tensor:
        """``image`` -> ``[3, H, W]``; random transforms use a torch generator state derived from ``seed``."""
        if not self.random_transform:
            return self.transform(image)
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            return self.transform(image)

    def __call__(self, samples: Sequence[tuple[Image.Image, list[str], int]], skipped: int = 0,
                 errors: list | None = None, position: dict | None = None) -> PairBatch:
        """``samples``: ``(image, captions, seed)`` triples -> ``PairBatch`` (one caption drawn per sample)."""
        images, texts, views = [], [], []
        for image, captions, seed in samples:
            images.append(self.image_tensor(image, seed))
            texts.append(draw_caption(captions, random.Random(seed)))
            if self.phrase_view is not None:
                views.append(self.phrase_view(texts[-1], random.Random(f"phrase view {seed}")))
        batch = PairBatch(torch.stack(images), self.tokenizer(texts), skipped, list(errors or []),
                          dict(position or {}))
        if self.phrase_view is not None:
            batch.phrase_views = self.tokenizer([view or text for view, text in zip(views, texts)])
            batch.has_phrase_view = torch.tensor([view is not None for view in views], dtype=torch.bool)
        return batch


def as_pil(image: Any, name: str) -> Image.Image:
    """Accept a PIL image (converted to RGB) from an in-process source; raises ``SampleError`` otherwise."""
    if isinstance(image, Image.Image):
        return ToRGB()(image)
    raise SampleError(f"{name}: expected a PIL.Image for 'image'; got {type(image).__name__}")
