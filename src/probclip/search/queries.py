"""Encoding search queries: an embedding, text(s) or PIL image(s) -> a float32 CPU ``ProbEmbedding [Q, D]``."""

from __future__ import annotations

from collections.abc import Callable

import torch
from PIL import Image

from ..embedding import ProbEmbedding
from ..errors import UsageError
from ..limits import current_limits
from ..tokenizers import get_tokenizer
from ..transforms import ToRGB, image_transform
from .checks import check_query_embedding

__all__ = ["QueryEncoder"]


class QueryEncoder:
    """Encodes queries with the collection's model (``model()``: loaded on first use), checked against ``dim``.

    Text queries are cut at nothing: longer than ``max_caption_chars`` is a ``UsageError``. The tokenizer is built
    once (a BPE tokenizer takes ~0.3 s to build).
    """

    def __init__(self, model: Callable[[], torch.nn.Module], dim: int, model_name: str):
        self._model, self.dim, self.model_name = model, dim, model_name
        self._tokenizer = None

    def encode(self, query) -> ProbEmbedding:
        """A query as a float32 CPU ``ProbEmbedding [Q, D]``: an embedding, text(s) or PIL image(s)."""
        if isinstance(query, ProbEmbedding):
            emb = query.detach().cpu().float()
            emb = emb if emb.mean.dim() == 2 else ProbEmbedding(emb.mean.reshape(1, -1), emb.logvar.reshape(1, -1))
        elif isinstance(query, str) or (isinstance(query, (list, tuple)) and query
                                        and all(isinstance(q, str) for q in query)):
            texts = [query] if isinstance(query, str) else list(query)
            limit = current_limits().max_caption_chars
            if any(len(t) > limit for t in texts):
                longest = max(len(t) for t in texts)
                raise UsageError(f"a text query of {longest} characters exceeds the limit of {limit} "
                                 "(max_caption_chars); shorten it")
            model = self._model()
            with torch.inference_mode():
                if self._tokenizer is None:  # built once: a BPE tokenizer takes ~0.3 s to build
                    self._tokenizer = get_tokenizer(model)
                emb = model.encode_text(self._tokenizer(texts).to(next(model.parameters()).device))
        elif isinstance(query, Image.Image) or (isinstance(query, (list, tuple)) and query
                                                and all(isinstance(q, Image.Image) for q in query)):
            images = [query] if isinstance(query, Image.Image) else list(query)
            model = self._model()
            transform, to_rgb = image_transform(model.config.vision), ToRGB()
            pixels = torch.stack([transform(to_rgb(im)) for im in images])
            with torch.inference_mode():
                emb = model.encode_image(pixels.to(next(model.parameters()).device))
        else:
            raise UsageError("query must be a ProbEmbedding, a str or list of str, or a PIL image or list of them; "
                             f"got {type(query).__name__}")
        emb = emb.detach().cpu().float()
        check_query_embedding(emb, self.dim, self.model_name)
        return emb
