"""Text tower: token embedding, appended ``[UNC, CLS]`` tokens, pre-LN transformer, Gaussian head."""

from __future__ import annotations

from functools import partial

import torch
from timm.layers import get_act_layer
from timm.models.vision_transformer import Block
from torch import nn
from torch.utils.checkpoint import checkpoint

from .config import TextConfig
from .heads import GaussianHead
from .parameter_rules import TowerParameterRules

__all__ = ["TextTower"]


class TextTower(TowerParameterRules, nn.Module):
    """Transformer over ``[t_0 .. t_{L-1}, UNC, CLS]`` with learned positional rows (see ``positions``).

    The mean comes from the CLS output (``ln_final`` then ``head.mean``, a Linear with bias). The
    log-variance comes from the UNC output (native) or, with ``released_compat``, from the projected CLS
    mean as in the released checkpoints (which also use no attention mask).

    Args:
        cfg: the tower's configuration.
        embed_dim: output embedding size D.
        released_compat: reproduce the released forward pass (no padding mask, logvar from the mean).
    """

    UNCERTAINTY_PARAMETERS = ("unc_token", "head.logvar.weight", "head.logvar.bias")
    NO_WEIGHT_DECAY = ("token_embedding.weight", "positional_embedding", "unc_token", "cls_token")

    def __init__(self, cfg: TextConfig, embed_dim: int, released_compat: bool = False):
        super().__init__()
        self.cfg = cfg
        self.context_length = cfg.context_length
        self.pad_id = cfg.pad_id
        self.released_compat = released_compat
        self.grad_checkpointing = False
        self.token_embedding = nn.Embedding(cfg.vocab_size, cfg.width)
        self.unc_token = nn.Parameter(torch.empty(cfg.width))
        self.cls_token = nn.Parameter(torch.empty(cfg.width))
        self.positional_embedding = nn.Parameter(torch.empty(cfg.context_length + 2, cfg.width))
        norm_layer = partial(nn.LayerNorm, eps=cfg.ln_eps)
        self.blocks = nn.ModuleList(
            Block(
                dim=cfg.width,
                num_heads=cfg.heads,
                mlp_ratio=cfg.mlp_ratio,
                qkv_bias=True,
                norm_layer=norm_layer,
                act_layer=get_act_layer(cfg.act),
            )
            for _ in range(cfg.layers)
        )
        self.ln_final = norm_layer(cfg.width)
        self.head = GaussianHead(cfg.width, embed_dim, mean_bias=True, init_unc_bias=cfg.init_unc_bias)
        self.reset_parameters()

    def reset_parameters(self) -> None:
        """Embeddings ~ N(0, 0.02) / N(0, 0.01); block Linear weights truncated-normal(0.02), biases zero."""
        for module in self.blocks.modules():
            if isinstance(module, nn.Linear):
                nn.init.trunc_normal_(module.weight, std=0.02)
                nn.init.zeros_(module.bias)
        nn.init.normal_(self.token_embedding.weight, std=0.02)
        nn.init.normal_(self.positional_embedding, std=0.01)
        nn.init.normal_(self.unc_token, std=0.01)
        nn.init.normal_(self.cls_token, std=0.01)

    @torch.no_grad()
    def reset_unc_token(self) -> None:
        """UNC token ~ N(0, 0.01^2)."""
        nn.init.normal_(self.unc_token, std=0.01)

    @torch.compiler.disable  # reads token values (data-dependent): runs eagerly inside a compiled tower
    def _check_tokens(self, tokens: torch.Tensor) -> None:
        if not isinstance(tokens, torch.Tensor) or tokens.dim() != 2 or tokens.dtype not in (torch.int64, torch.int32):
            shape = (
                f"{tuple(tokens.shape)} {tokens.dtype}" if isinstance(tokens, torch.Tensor) else type(tokens).__name__
            )
            raise ValueError(f"tokens must be an integer tensor [B, L]; got {shape}")
        if tokens.shape[1] > self.context_length:
            raise ValueError(
                f"tokens have length {tokens.shape[1]} but this model's context length is {self.context_length}; "
                "tokenize with probclip.get_tokenizer(model) (which truncates) or extend the context length"
            )
        vocab_size = self.token_embedding.num_embeddings
        if tokens.numel() and (int(tokens.min()) < 0 or int(tokens.max()) >= vocab_size):
            raise ValueError(
                f"token ids span [{int(tokens.min())}, {int(tokens.max())}] but this model's vocabulary is "
                f"0..{vocab_size - 1}; use probclip.get_tokenizer(model)"
            )

    def positions(self, length: int) -> torch.Tensor:
        """Positional rows ``[length + 2, W]`` for ``length`` text tokens followed by UNC and CLS.

        Released mode uses ``pos[:length + 2]`` (UNC/CLS positions move with the padded length). Native mode keeps
        UNC and CLS on the last two rows, so that, with padding masked, the output does not depend on how far a
        text is padded. Both agree when ``length`` is the context length.
        """
        pos = self.positional_embedding
        if self.released_compat or length == self.context_length:
            return pos[: length + 2]
        return torch.cat([pos[:length], pos[-2:]], dim=0)

    def padding_mask(self, tokens: torch.Tensor) -> torch.Tensor:
        """``[B, L]`` -> bool ``[B, 1, 1, L + 2]`` attention mask (True = attend); UNC and CLS always attended."""
        keep = tokens != self.pad_id
        special = keep.new_ones(tokens.shape[0], 2)
        return torch.cat([keep, special], dim=1)[:, None, None, :]

    def forward_tokens(self, tokens: torch.Tensor, final_norm: bool = True) -> torch.Tensor:
        """``[B, L]`` token ids -> ``[B, L + 2, W]`` transformer outputs (after ``ln_final`` if ``final_norm``)."""
        self._check_tokens(tokens)
        batch, length = tokens.shape
        x = self.token_embedding(tokens)
        special = torch.stack([self.unc_token, self.cls_token]).to(x.dtype).expand(batch, -1, -1)
        x = torch.cat([x, special], dim=1) + self.positions(length).to(x.dtype)
        attn_mask = None if self.released_compat else self.padding_mask(tokens)
        for block in self.blocks:
            if self.grad_checkpointing and torch.is_grad_enabled():
                x = checkpoint(block, x, attn_mask, use_reentrant=False)
            else:
                x = block(x, attn_mask=attn_mask)
        return self.ln_final(x) if final_norm else x

    def forward(self, tokens: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Returns ``(mean [B, D] unnormalised, logvar [B, D])``."""
        unc_cls = self.ln_final(self.forward_tokens(tokens, final_norm=False)[:, -2:])
        mean = self.head.forward_mean(unc_cls[:, 1])
        if self.released_compat:
            logvar = self.head.forward_logvar(mean)
        else:
            logvar = self.head.forward_logvar(unc_cls[:, 0])
        return mean, logvar
