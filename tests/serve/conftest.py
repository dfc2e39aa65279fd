"""Fixtures of the service tests: one tiny real collection per test process, embedded with ProLIP-Tiny."""

from __future__ import annotations

import pytest
import torch
from serve_support import write_tiny_data

import probclip
from probclip.search import SearchIndex, build_index, embed_collection


@pytest.fixture(scope="session")
def tiny_model():
    """An untrained ProLIP-Tiny (eval mode), fixed by the seed."""
    torch.manual_seed(0)
    return probclip.create_model("ProLIP-Tiny").eval()


@pytest.fixture(scope="session")
def tiny_collection(tmp_path_factory, tiny_model):
    """A collection of 24 coloured-shape images and their 24 captions, embedded and flat-indexed."""
    root = tmp_path_factory.mktemp("serve-collection")
    tiny_model.save_pretrained(root / "model")
    write_tiny_data(root / "data")
    out = embed_collection(tiny_model, root / "data", root / "collection", modality="both", batch_size=32,
                           num_workers=0, progress=False)
    build_index(out, kind="flat", progress=False)
    return out


@pytest.fixture(scope="session")
def tiny_indexes(tiny_collection, tiny_model):
    """The image and text ``SearchIndex`` of the tiny collection, sharing the model."""
    return [SearchIndex.load(tiny_collection, modality="image", model=tiny_model),
            SearchIndex.load(tiny_collection, modality="text", model=tiny_model)]
