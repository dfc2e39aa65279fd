"""Text context-length extension (LongProLIP): resize the text positional embedding, update model and config."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

__all__ = ["resize_text_positional_embedding", "extend_context_length"]


def resize_text_positional_embedding(pos: torch.Tensor, new_context_length: int, keep_first: int = 20) -> torch.Tensor:
    """Resize a text positional embedding ``[L + 2, W]`` to ``[new_context_length + 2, W]``.

    The first ``keep_first`` rows are kept as they are, the last 2 rows (UNC, CLS) stay the last 2 rows, and the
    rows in between are linearly interpolated to the new length (``align_corners=False``, no antialiasing).
    With L = 64, new length 256 this is LongProLIP's 66 -> 258 rule.
    """
    if pos.dim() != 2:
        raise ValueError(f"pos must be [L + 2, W]; got shape {tuple(pos.shape)}")
    old_context = pos.shape[0] - 2
    if not isinstance(new_context_length, int) or new_context_length <= keep_first:
        raise ValueError(f"new_context_length must be an int > keep_first={keep_first}; got {new_context_length!r}")
    if old_context <= keep_first:
        raise ValueError(f"pos has {old_context} text rows; need more than keep_first={keep_first} to interpolate")
    head, middle, tail = pos[:keep_first], pos[keep_first:old_context], pos[old_context:]
    new_middle_len = new_context_length - keep_first
    resized = F.interpolate(
        middle.T.unsqueeze(0).float(), size=new_middle_len, mode="linear", align_corners=False, antialias=False
    )[0].T.to(pos.dtype)
    return torch.cat([head, resized, tail], dim=0)


def extend_context_length(model, new_context_length: int, keep_first: int = 20):
    """Give ``model`` (a ``ProbCLIP``) a text context of ``new_context_length`` tokens, in place; returns the model.

    The positional embedding is resized with ``resize_text_positional_embedding`` and ``model.config`` is updated
    so that ``save_pretrained`` and ``get_tokenizer(model)`` follow.
    """
    text = model.text
    old = text.positional_embedding
    new = resize_text_positional_embedding(old.detach(), new_context_length, keep_first)
    text.positional_embedding = nn.Parameter(new.to(old.device), requires_grad=old.requires_grad)
    text.context_length = new_context_length
    text.cfg.context_length = new_context_length
    model.config.text.context_length = new_context_length
    return model
