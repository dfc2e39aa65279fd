"""Phrase views of captions, per data source: ``masking.text_mask_mode: phrase``.

A phrase view is a strictly more general caption made by dropping whole phrases of a caption (``"a small red circle
at the top left"`` -> ``"a red circle"``), where dropping single words (``drop``) may leave a text no caption looks
like. Making one needs to know how the source's captions are built, so a source that can registers a maker:
``make(text, rng) -> str | None`` (``rng`` a ``random.Random`` seeded per sample; None when the caption has no more
general phrase view, and the sample's view then drops words as ``drop`` does).
"""

from __future__ import annotations

import random
from collections.abc import Callable

__all__ = ["PhraseViewMaker", "phrase_view_maker", "phrase_view_sources", "register_phrase_views"]

PhraseViewMaker = Callable[[str, random.Random], "str | None"]

_MAKERS: dict[str, PhraseViewMaker] = {}


def register_phrase_views(source: str, make: PhraseViewMaker) -> None:
    """Let ``data.source: source`` train with ``masking.text_mask_mode: phrase``, its views made by ``make``."""
    if not callable(make):
        raise TypeError(f"the phrase view maker of source {source!r} must be callable; got {type(make).__name__}")
    _MAKERS[source] = make


def phrase_view_maker(source: str) -> PhraseViewMaker | None:
    """The maker registered for ``source``, or None."""
    return _MAKERS.get(source)


def phrase_view_sources() -> list[str]:
    """The data sources that make phrase views, sorted."""
    return sorted(_MAKERS)
