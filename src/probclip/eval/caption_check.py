"""Over-long captions in an evaluation set: skipped, counted and named in ``results.json``, like unreadable images.

A caption longer than ``data.max_caption_chars`` (``probclip.limits``, the limit training applies) is dropped from
a retrieval set and listed in ``data.skipped_captions`` as ``{"image": key, "caption_index": i, "error": message}``
(``i`` counts the captions of that image from 0, in reading order); the image keeps its other captions. An image
left with no caption is dropped and listed in ``data.skipped`` with the images that cannot be read. A HierarCaps
chain with an over-long level loses its image the same way. Class names and prompt templates are configuration, not
data: one over the limit is a ``UsageError``.
"""

from __future__ import annotations

import dataclasses
from typing import Any

from ..errors import UsageError
from ..limits import LimitExceededError, check_caption_length
from .image_check import drop_images

__all__ = ["drop_overlong_captions", "check_class_prompts", "skipped_captions_report"]


def _too_long(caption: str, name: str) -> str | None:
    try:
        check_caption_length(caption, name)
    except LimitExceededError as err:
        return str(err)
    return None


def _drop_overlong_chains(data: Any) -> Any:
    problems = {}
    for i, (item, chain) in enumerate(zip(data.items, data.chains, strict=True)):
        errors = [e for level, text in enumerate(chain) if (e := _too_long(text, f"{item.key} level {level}"))]
        if errors:
            problems[i] = errors[0]
    return drop_images(data, problems) if problems else data


def _overlong_captions(data: Any) -> dict[int, dict]:
    """``{caption index: skipped entry}`` of the captions of a retrieval set over the length limit."""
    seen: dict[int, int] = {}
    problems: dict[int, dict] = {}
    for k, (caption, image) in enumerate(zip(data.captions, data.caption_image.tolist(), strict=True)):
        index = seen[image] = seen.get(image, -1) + 1
        key = data.items[image].key
        error = _too_long(caption, f"{key} caption {index}")
        if error is not None:
            problems[k] = {"image": key, "caption_index": index, "error": error}
    return problems


def drop_overlong_captions(data: Any) -> Any:
    """``data`` (RetrievalData or HierarCapsData; anything else is returned as is) without its over-long captions.

    Returns ``data`` itself when every caption is within the limit, else a copy (see the module docstring).
    """
    if hasattr(data, "chains"):
        return _drop_overlong_chains(data)
    if not hasattr(data, "caption_image"):
        return data
    problems = _overlong_captions(data)
    if not problems:
        return data
    owners = data.caption_image.tolist()
    with_caption = {image for k, image in enumerate(owners) if k not in problems}
    empty = {i: f"no caption left: each of its {owners.count(i)} caption(s) exceeds the length limit "
                f"(data.max_caption_chars)"
             for i in range(len(data.items)) if i not in with_caption}
    skipped_captions = list(data.skipped_captions) + [problems[k] for k in sorted(problems)]
    if empty:
        data = drop_images(data, empty)  # with their captions, all of them over-long
        problems = _overlong_captions(data)
    keep = [k for k in range(len(data.captions)) if k not in problems]
    changes: dict[str, Any] = {
        "captions": [data.captions[k] for k in keep],
        "caption_image": data.caption_image[keep],
        "skipped_captions": skipped_captions,
    }
    if data.caption_ids is not None:
        changes["caption_ids"] = [data.caption_ids[k] for k in keep]
    return dataclasses.replace(data, **changes)


def check_class_prompts(classnames: list[str], templates: list[str]) -> None:
    """Raise ``UsageError`` naming the first class name or template longer than the caption length limit."""
    for what, texts in (("class name", classnames), ("template", templates)):
        for i, text in enumerate(texts):
            error = _too_long(text, f"{what} {i}")
            if error is not None:
                raise UsageError(f"{error}; shorten the {what} (a {what} is configuration, not skipped like data)")


def skipped_captions_report(*datasets: Any) -> dict:
    """``{"count": n, "captions": [{"image": key, "caption_index": i, "error": message}, ...]}``."""
    captions = [entry for data in datasets if data is not None for entry in getattr(data, "skipped_captions", [])]
    return {"count": len(captions), "captions": captions}
