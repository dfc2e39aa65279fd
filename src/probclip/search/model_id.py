"""Naming a model in a collection's manifest: its name, a hash of its config and a fingerprint of its weights."""

from __future__ import annotations

import hashlib
import json

import torch
from torch import nn

__all__ = ["config_hash", "model_fingerprint", "model_record"]


def config_hash(model: nn.Module) -> str:
    """First 16 hex digits of the SHA-256 of the model's config (``config.to_dict()``, keys sorted)."""
    config = model.config.to_dict() if hasattr(model, "config") else {"class": type(model).__name__}
    return hashlib.sha256(json.dumps(config, sort_keys=True, default=str).encode("utf-8")).hexdigest()[:16]


@torch.no_grad()
def model_fingerprint(model: nn.Module) -> str:
    """First 16 hex digits of the SHA-256 of the config hash and every weight (name, dtype, shape, float32 bytes).

    Two models give the same fingerprint only if they compute the same embeddings; about 1 s per 100 M weights.
    """
    digest = hashlib.sha256(config_hash(model).encode("utf-8"))
    for name, tensor in sorted(model.state_dict().items()):
        digest.update(f"{name}:{tuple(tensor.shape)}".encode())
        digest.update(tensor.detach().to("cpu", torch.float32).contiguous().numpy().tobytes())
    return digest.hexdigest()[:16]


def model_record(model: nn.Module, source: str | None) -> dict:
    """The manifest's ``model`` entry: name, config hash, fingerprint, embed_dim and where to load it from."""
    config = getattr(model, "config", None)
    return {
        "name": str(getattr(config, "name", None) or type(model).__name__),
        "config_hash": config_hash(model),
        "fingerprint": model_fingerprint(model),
        "embed_dim": int(getattr(model, "embed_dim", 0) or config.embed_dim),
        "source": source,
    }
