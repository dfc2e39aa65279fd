"""Models for evaluation: loading (probclip or open_clip), and batched encoding of images and texts.

A probclip model returns :class:`~probclip.ProbEmbedding` from ``encode_image`` / ``encode_text``. A
deterministic open_clip model is wrapped in :class:`DeterministicCLIP`, whose encoders return plain
unit-norm mean tensors ``[B, D]``; the evaluation tasks check the type of what the encoders return and
leave the uncertainty analyses out for plain tensors.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch
from torch import nn

from ..embedding import ProbEmbedding
from ..models import create_model_from_pretrained
from ..tokenizers import get_tokenizer
from .readers import ImageItem

__all__ = [
    "DeterministicCLIP",
    "EvalModel",
    "Embeddings",
    "OPEN_CLIP_PREFIX",
    "load_eval_model",
    "encode_images",
    "encode_image_dataset",
    "encode_texts",
    "embedding_means",
    "embedding_uncertainty",
    "is_probabilistic",
]

OPEN_CLIP_PREFIX = "open_clip:"
Embeddings = ProbEmbedding | torch.Tensor


class DeterministicCLIP(nn.Module):
    """An open_clip ``CLIP`` seen through probclip's encoder API, returning unit-norm means ``[B, D]``."""

    def __init__(self, clip_model: nn.Module):
        super().__init__()
        for name in ("encode_image", "encode_text"):
            if not callable(getattr(clip_model, name, None)):
                raise TypeError(f"DeterministicCLIP needs a model with {name}(); got {type(clip_model).__name__}")
        self.clip = clip_model

    def encode_image(self, images: torch.Tensor) -> torch.Tensor:
        """``[B, 3, H, W]`` -> ``[B, D]`` unit-norm image embeddings."""
        return nn.functional.normalize(self.clip.encode_image(images).float(), dim=-1)

    def encode_text(self, tokens: torch.Tensor) -> torch.Tensor:
        """``[B, L]`` token ids -> ``[B, D]`` unit-norm text embeddings."""
        return nn.functional.normalize(self.clip.encode_text(tokens).float(), dim=-1)


def is_probabilistic(model: nn.Module) -> bool:
    """False for :class:`DeterministicCLIP`, True for probclip models (encoders return ProbEmbedding)."""
    return not isinstance(model, DeterministicCLIP)


@dataclass
class EvalModel:
    """A model with its evaluation preprocessing (PIL image -> ``[3, H, W]``) and tokenizer."""

    model: nn.Module
    preprocess: Callable
    tokenizer: Callable
    name: str = "model"

    @property
    def probabilistic(self) -> bool:
        return is_probabilistic(self.model)


def load_eval_model(spec: str, device: str | torch.device = "cpu") -> EvalModel:
    """Load a model for evaluation.

    ``spec`` is anything :func:`probclip.create_model_from_pretrained` accepts (a local checkpoint
    folder, ``hf-hub:<repo>``), or ``open_clip:<model name>[@<pretrained tag>]`` for a deterministic
    open_clip model (random weights without a tag).
    """
    if spec.startswith(OPEN_CLIP_PREFIX):
        import open_clip  # heavy; only open_clip: model specs need it

        name, _, pretrained = spec[len(OPEN_CLIP_PREFIX) :].partition("@")
        if not name:
            raise ValueError(f"open_clip model spec needs a name: 'open_clip:<name>[@<pretrained>]'; got {spec!r}")
        clip, _, preprocess = open_clip.create_model_and_transforms(name, pretrained=pretrained or None)
        model = DeterministicCLIP(clip)
        tokenizer = open_clip.get_tokenizer(name)
    else:
        model, preprocess = create_model_from_pretrained(spec)
        tokenizer = get_tokenizer(model)
    model = model.to(device).eval()
    return EvalModel(model, preprocess, tokenizer, name=spec)


def embedding_means(embeddings: Embeddings) -> torch.Tensor:
    """``[N, D]`` means of a ProbEmbedding, or the tensor itself."""
    return embeddings.mean if isinstance(embeddings, ProbEmbedding) else embeddings


def embedding_uncertainty(embeddings: Embeddings) -> torch.Tensor | None:
    """``[N]`` scalar uncertainty ``sum exp(logvar)``, or None for deterministic embeddings."""
    return embeddings.uncertainty if isinstance(embeddings, ProbEmbedding) else None


def _check_output(out, where: str, model: nn.Module):
    expected = torch.Tensor if isinstance(model, DeterministicCLIP) else ProbEmbedding
    if not isinstance(out, expected):
        raise TypeError(f"{type(model).__name__}.{where} returned {type(out).__name__}; expected {expected.__name__}")
    return out


def _concat(parts: list, probabilistic: bool) -> Embeddings:
    if probabilistic:
        return ProbEmbedding.cat(parts).float()
    return torch.cat(parts).float()


class _ImageDataset(torch.utils.data.Dataset):
    def __init__(self, items: Sequence[ImageItem], preprocess: Callable):
        self.items = items
        self.preprocess = preprocess

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, index: int) -> torch.Tensor:
        return self.preprocess(self.items[index].open())


def _progress(iterable, total: int, desc: str, show: bool):
    from tqdm.auto import tqdm  # only when a bar is shown

    return tqdm(iterable, total=total, desc=desc, disable=not show, leave=False)


@torch.no_grad()
def encode_image_dataset(
    model: nn.Module,
    dataset: torch.utils.data.Dataset,
    batch_size: int = 64,
    num_workers: int = 0,
    desc: str = "images",
    progress: bool = True,
) -> Embeddings:
    """Encode a map-style data set of preprocessed images ``[3, H, W]`` in order (CPU, float32 output)."""
    if len(dataset) == 0:
        raise ValueError("cannot encode an empty image data set")
    device = next(model.parameters()).device
    loader = torch.utils.data.DataLoader(dataset, batch_size=batch_size, shuffle=False, num_workers=num_workers)
    parts = []
    for batch in _progress(loader, len(loader), desc, progress):
        out = _check_output(model.encode_image(batch.to(device)), "encode_image", model)
        parts.append(out.detach().cpu())
    return _concat(parts, is_probabilistic(model))


def encode_images(
    model: nn.Module,
    items: Sequence[ImageItem],
    preprocess: Callable,
    batch_size: int = 64,
    num_workers: int = 0,
    desc: str = "images",
    progress: bool = True,
) -> Embeddings:
    """Read, preprocess and encode images; returns ProbEmbedding ``[N, D]`` or a ``[N, D]`` tensor (CPU, float32)."""
    if not items:
        raise ValueError("encode_images needs at least one image")
    return encode_image_dataset(model, _ImageDataset(items, preprocess), batch_size, num_workers, desc, progress)


@torch.no_grad()
def encode_texts(
    model: nn.Module,
    texts: Sequence[str],
    tokenizer: Callable,
    batch_size: int = 256,
    desc: str = "texts",
    progress: bool = True,
) -> Embeddings:
    """Tokenize and encode texts; returns ProbEmbedding ``[N, D]`` or a ``[N, D]`` tensor (CPU, float32)."""
    texts = list(texts)
    if not texts:
        raise ValueError("encode_texts needs at least one text")
    device = next(model.parameters()).device
    parts = []
    starts = range(0, len(texts), batch_size)
    for start in _progress(starts, len(starts), desc, progress):
        tokens = tokenizer(texts[start : start + batch_size])
        out = _check_output(model.encode_text(tokens.to(device)), "encode_text", model)
        parts.append(out.detach().cpu())
    return _concat(parts, is_probabilistic(model))
