"""Shared test set-up: offline, deterministic, small thread pools."""

import os
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

import pytest  # noqa: E402
import torch  # noqa: E402

import probclip  # noqa: E402

FIXTURES = Path(__file__).parent / "fixtures"
OFFICIAL = FIXTURES / "prolip-official"


@pytest.fixture(autouse=True)
def _seed_everything():
    torch.manual_seed(0)
    yield


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory) -> Path:
    """A ProLIP-Tiny checkpoint with seed-0 weights, shared by the tests that only read it."""
    torch.manual_seed(0)
    path = tmp_path_factory.mktemp("model") / "tiny"
    probclip.create_model("ProLIP-Tiny").save_pretrained(path)
    return path


@pytest.fixture
def official_dir() -> Path:
    """Directory with the released-format tiny checkpoint and the reference outputs."""
    return OFFICIAL
