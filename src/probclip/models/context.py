"""Text context-length extension (LongProLIP): resize the text positional embedding, update model and config."""

from __future__ import annotations

import torch
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
    resized = _linear_resize_rows(middle, new_context_length - keep_first)
    return torch.cat([head, resized, tail], dim=0)


def _linear_resize_rows(rows: torch.Tensor, new_len: int) -> torch.Tensor:
    """Linear interpolation of ``rows [n, W]`` to ``[new_len, W]`` along the first axis (``align_corners=False``).

    Source position of output row ``i``: ``max(0, (i + 0.5) * n / new_len - 0.5)``, blended between the two
    neighbouring rows. The position and the blending weights are computed in float32, as PyTorch's
    ``F.interpolate(mode="linear")`` did when the released LongProLIP checkpoints were made; newer PyTorch
    versions round them differently (up to ~1e-5 on the resized rows), so the rule is spelled out here to
    reproduce the released numbers on any version.
    """
    n = rows.shape[0]
    scale = torch.tensor(n / new_len, dtype=torch.float32)
    src = (torch.arange(new_len, dtype=torch.float32) + 0.5) * scale - 0.5
    src = src.clamp_min(0.0)
    low = src.floor().long().clamp_max(n - 1)
    high = (low + 1).clamp_max(n - 1)
    w_high = (src - low.to(torch.float32)).to(rows.device)
    w_low = 1.0 - w_high
    low, high = low.to(rows.device), high.to(rows.device)
    compute = torch.float32 if rows.dtype in (torch.float16, torch.bfloat16) else rows.dtype
    out = w_low[:, None].to(compute) * rows[low].to(compute) + w_high[:, None].to(compute) * rows[high].to(compute)
    return out.to(rows.dtype)


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
