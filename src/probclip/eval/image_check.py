"""Unreadable images in an evaluation set: found before encoding, skipped, counted and named in ``results.json``.

Every image is decoded once with the training decoder (``probclip.image_decoding``, resource limits included;
JPEGs in draft mode, which reads the whole stream at reduced scale and so still finds truncation). An image that
fails is removed from the data set with its captions or label, and listed in ``data.skipped``; the evaluation goes
on with the rest. The check runs on a few threads (PIL releases the GIL while decoding).
"""

from __future__ import annotations

import dataclasses
import os
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import torch

from ..errors import InputError

__all__ = ["unreadable_images", "drop_images", "drop_unreadable_images", "skipped_report"]


def _problem(item) -> str | None:
    try:
        item.check()
    except InputError as err:
        return str(err)
    return None


def unreadable_images(items) -> dict[int, str]:
    """``{index: error message}`` of the items of ``items`` (``ImageItem``) that cannot be decoded."""
    workers = max(1, min(8, os.cpu_count() or 1))
    with ThreadPoolExecutor(workers) as pool:
        problems = list(pool.map(_problem, items, chunksize=64))
    return {i: message for i, message in enumerate(problems) if message is not None}


def drop_unreadable_images(data: Any) -> Any:
    """``data`` (ClassificationData, RetrievalData or HierarCapsData) without its unreadable images.

    Returns ``data`` itself when every image reads (or it was checked before), else a copy whose ``skipped`` lists
    ``{"image": key, "error": message}`` per removed image; a retrieval set also loses those images' captions.
    """
    if getattr(data, "checked", False):
        return data
    bad = unreadable_images(data.items)
    if not bad:
        data.checked = True
        return data
    return dataclasses.replace(drop_images(data, bad), checked=True)


def drop_images(data: Any, problems: dict[int, str]) -> Any:
    """A copy of ``data`` without the images ``{index: reason}`` of ``problems`` (with their captions, labels or
    chains), each listed in ``skipped`` as ``{"image": key, "error": reason}``.

    Raises ``InputError`` when no image would be left.
    """
    keep = [i for i in range(len(data.items)) if i not in problems]
    skipped = list(data.skipped) + [{"image": data.items[i].key, "error": problems[i]} for i in sorted(problems)]
    changes: dict[str, Any] = {"items": [data.items[i] for i in keep], "skipped": skipped}
    if hasattr(data, "labels"):
        changes["labels"] = [data.labels[i] for i in keep]
    if hasattr(data, "chains"):
        changes["chains"] = [data.chains[i] for i in keep]
        if data.ids:
            changes["ids"] = [data.ids[i] for i in keep]
    if hasattr(data, "caption_image"):
        new_index = {old: new for new, old in enumerate(keep)}
        kept_captions = [k for k, image in enumerate(data.caption_image.tolist()) if image in new_index]
        changes["captions"] = [data.captions[k] for k in kept_captions]
        changes["caption_image"] = torch.tensor([new_index[int(data.caption_image[k])] for k in kept_captions],
                                                dtype=torch.long)
        if data.image_ids is not None:
            changes["image_ids"] = [data.image_ids[i] for i in keep]
        if data.caption_ids is not None:
            changes["caption_ids"] = [data.caption_ids[k] for k in kept_captions]
    if not changes["items"]:
        first = skipped[len(data.skipped)]
        raise InputError(f"no image of the evaluation set can be used ({len(problems)} skipped; first: "
                         f"{first['image']}: {first['error']})")
    return dataclasses.replace(data, **changes)


def skipped_report(*datasets: Any) -> dict:
    """``{"count": n, "images": [{"image": key, "error": message}, ...]}`` over the given data sets."""
    images = [entry for data in datasets if data is not None for entry in getattr(data, "skipped", [])]
    return {"count": len(images), "images": images}
