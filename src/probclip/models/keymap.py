"""Parameter names of one transformer block: open_clip's ``ResidualAttentionBlock`` -> timm's ``Block``.

Written once here; the released-checkpoint converter and the open_clip initialiser both use it.
"""

from __future__ import annotations

__all__ = ["OPEN_CLIP_TO_TIMM_BLOCK_KEYS"]

#: ``(open_clip name, timm name)`` of every tensor of a block, relative to the block.
OPEN_CLIP_TO_TIMM_BLOCK_KEYS: tuple[tuple[str, str], ...] = (
    ("ln_1.weight", "norm1.weight"), ("ln_1.bias", "norm1.bias"),
    ("attn.in_proj_weight", "attn.qkv.weight"), ("attn.in_proj_bias", "attn.qkv.bias"),
    ("attn.out_proj.weight", "attn.proj.weight"), ("attn.out_proj.bias", "attn.proj.bias"),
    ("ln_2.weight", "norm2.weight"), ("ln_2.bias", "norm2.bias"),
    ("mlp.c_fc.weight", "mlp.fc1.weight"), ("mlp.c_fc.bias", "mlp.fc1.bias"),
    ("mlp.c_proj.weight", "mlp.fc2.weight"), ("mlp.c_proj.bias", "mlp.fc2.bias"),
)
