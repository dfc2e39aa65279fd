"""Captions of a sample: parsing ``txt``/``json`` payloads and drawing one caption per step."""

from __future__ import annotations

import json
import random
from typing import Any

from ..errors import InputError
from ..limits import check_caption_length

__all__ = ["CaptionError", "parse_caption_payload", "captions_from_payload", "split_captions", "draw_caption"]


class CaptionError(InputError, ValueError):
    """A sample's caption payload holds no usable caption (the message says what was found)."""


def split_captions(text: str, separator: str | None) -> list[str]:
    """Split one caption cell into several captions on ``separator`` (None: the cell is one caption).

    Empty pieces are dropped; surrounding whitespace is stripped.
    """
    pieces = [text] if separator is None else text.split(separator)
    return [piece.strip() for piece in pieces if piece.strip()]


def _captions_from_json(value: Any) -> list[str]:
    if isinstance(value, str):
        return [value]
    if isinstance(value, list) and all(isinstance(v, str) for v in value):
        return list(value)
    if isinstance(value, dict):
        for key in ("captions", "caption", "text"):
            if key in value:
                return _captions_from_json(value[key])
        raise CaptionError(
            f"json caption object has none of the keys 'captions', 'caption', 'text'; keys: {sorted(value)}"
        )
    raise CaptionError(f"json caption must be a string, a list of strings or an object; got {type(value).__name__}")


def parse_caption_payload(extension: str, payload: bytes, separator: str | None = None) -> list[str]:
    """Captions stored in a webdataset member: ``txt`` (UTF-8 text) or ``json`` (string, list, or object with a
    ``captions``/``caption``/``text`` field, as img2dataset writes), not yet checked against the length limit.

    Returns a non-empty list of non-empty strings; raises ``CaptionError`` otherwise (``UnicodeDecodeError`` /
    ``json.JSONDecodeError`` for bytes that are not UTF-8 text / JSON).
    """
    text = payload.decode("utf-8")
    if extension == "json":
        captions: list[str] = []
        for caption in _captions_from_json(json.loads(text)):
            captions.extend(split_captions(caption, separator))
    else:
        captions = split_captions(text, separator)
    if not captions:
        raise CaptionError(f"{extension} caption payload is empty")
    return captions


def captions_from_payload(extension: str, payload: bytes, separator: str | None = None) -> list[str]:
    """:func:`parse_caption_payload`, refusing the whole payload (``LimitExceededError``) when a caption is longer
    than ``data.max_caption_chars`` (training skips such a sample; evaluation drops only the long caption)."""
    captions = parse_caption_payload(extension, payload, separator)
    for caption in captions:
        check_caption_length(caption, f"{extension} caption")
    return captions


def draw_caption(captions: list[str], rng: random.Random) -> str:
    """One caption drawn uniformly from ``captions`` with ``rng``."""
    if not captions:
        raise CaptionError("a sample has no captions to draw from")
    return captions[rng.randrange(len(captions))]
