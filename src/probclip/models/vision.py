"""Vision tower: timm's VisionTransformer with a CLS and an UNC token, plus a Gaussian head."""

from __future__ import annotations

from functools import partial

import torch
from timm.models.vision_transformer import VisionTransformer
from torch import nn
from torch.utils.checkpoint import checkpoint

from .config import VisionConfig
from .heads import GaussianHead
from .parameter_rules import TowerParameterRules

__all__ = ["VisionTower"]


class VisionTower(TowerParameterRules, nn.Module):
    """Pre-LN ViT over ``[CLS, UNC, patch_1..patch_N]`` with a Gaussian head.

    ``trunk`` is a timm ``VisionTransformer`` (bias-free patch embedding, ``norm_pre`` = ln_pre, ``reg_token`` =
    the UNC token, ``norm`` = ln_post, positional rows for all N + 2 tokens). The mean comes from the CLS
    token, the log-variance from the UNC token.

    Args:
        cfg: the tower's configuration.
        embed_dim: output embedding size D.
        double_norm_cls: apply ln_post a second time to the CLS token before the mean projection (the released
            checkpoints' forward pass).
    """

    UNCERTAINTY_PARAMETERS = ("trunk.reg_token", "head.logvar.weight", "head.logvar.bias")
    NO_WEIGHT_DECAY = ("trunk.pos_embed", "trunk.cls_token", "trunk.reg_token")

    def __init__(self, cfg: VisionConfig, embed_dim: int, double_norm_cls: bool = False):
        super().__init__()
        self.cfg = cfg
        self.image_size = cfg.image_size
        self.patch_size = cfg.patch_size
        self.num_patches = cfg.num_patches
        self.double_norm_cls = double_norm_cls
        self.grad_checkpointing = False
        self.trunk = VisionTransformer(
            img_size=cfg.image_size,
            patch_size=cfg.patch_size,
            num_classes=0,
            global_pool="",
            embed_dim=cfg.width,
            depth=cfg.layers,
            num_heads=cfg.heads,
            mlp_ratio=cfg.mlp_ratio,
            qkv_bias=True,
            class_token=True,
            reg_tokens=1,
            no_embed_class=False,
            pre_norm=True,
            final_norm=True,
            norm_layer=partial(nn.LayerNorm, eps=cfg.ln_eps),
            act_layer=cfg.act,
        )
        self.head = GaussianHead(cfg.width, embed_dim, mean_bias=False, init_unc_bias=cfg.init_unc_bias)

    @torch.no_grad()
    def reset_unc_token(self) -> None:
        """UNC token ~ N(0, 0.02^2)."""
        nn.init.normal_(self.trunk.reg_token, std=0.02)

    def _check_images(self, images: torch.Tensor) -> None:
        if not isinstance(images, torch.Tensor) or images.dim() != 4 or images.shape[1] != 3:
            shape = tuple(images.shape) if isinstance(images, torch.Tensor) else type(images).__name__
            raise ValueError(f"images must be a tensor [B, 3, H, W]; got {shape}")
        height, width = images.shape[-2:]
        if (height, width) != (self.image_size, self.image_size):
            raise ValueError(
                f"images are {height}x{width} pixels but this model expects {self.image_size}x{self.image_size}; "
                "resize them with the model's preprocess transform"
            )

    @torch.compiler.disable  # reads index values (data-dependent): runs eagerly inside a compiled tower
    def _check_keep_patches(self, keep_patches: torch.Tensor, batch: int) -> None:
        if (
            keep_patches.dim() != 2
            or keep_patches.shape[0] != batch
            or keep_patches.dtype not in (torch.int64, torch.int32)
        ):
            raise ValueError(
                f"keep_patches must be an integer tensor [B={batch}, K] of patch indices; got "
                f"{tuple(keep_patches.shape)} {keep_patches.dtype}"
            )
        if keep_patches.numel() and (keep_patches.min() < 0 or keep_patches.max() >= self.num_patches):
            raise ValueError(
                f"keep_patches holds indices in [{int(keep_patches.min())}, {int(keep_patches.max())}]; "
                f"valid patch indices are 0..{self.num_patches - 1}"
            )

    def _keep_patch_tokens(self, tokens: torch.Tensor, keep_patches: torch.Tensor) -> torch.Tensor:
        """``[B, 2 + N, W]`` -> ``[B, 2 + K, W]``: CLS and UNC plus the kept patches (positional rows already added)."""
        self._check_keep_patches(keep_patches, tokens.shape[0])
        index = (keep_patches.long() + 2).unsqueeze(-1).expand(-1, -1, tokens.shape[-1])
        return torch.cat([tokens[:, :2], torch.gather(tokens, 1, index)], dim=1)

    def forward_tokens(self, images: torch.Tensor, keep_patches: torch.Tensor | None = None) -> torch.Tensor:
        """``[B, 3, H, W]`` -> ``[B, 2 + K, W]`` token outputs after ln_post (K = N, or the kept patches)."""
        self._check_images(images)
        trunk = self.trunk
        x = trunk.patch_embed(images)  # [B, N, W]
        # CLS and UNC expanded one by one: their gradients come out contiguous, as DDP's buckets expect.
        cls, unc = (token.expand(x.shape[0], -1, -1).to(x.dtype) for token in (trunk.cls_token, trunk.reg_token))
        x = torch.cat([cls, unc, x], dim=1) + trunk.pos_embed.to(x.dtype)  # [B, 2 + N, W]
        if keep_patches is not None:
            x = self._keep_patch_tokens(x, keep_patches.to(x.device))
        x = trunk.norm_pre(x)
        if self.grad_checkpointing and torch.is_grad_enabled():
            for block in trunk.blocks:
                x = checkpoint(block, x, use_reentrant=False)
        else:
            x = trunk.blocks(x)
        return trunk.norm(x)

    def forward(
        self, images: torch.Tensor, keep_patches: torch.Tensor | None = None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Returns ``(mean [B, D] unnormalised, logvar [B, D])``."""
        tokens = self.forward_tokens(images, keep_patches)
        cls_token = tokens[:, 0]
        if self.double_norm_cls:
            cls_token = self.trunk.norm(cls_token)
        return self.head.forward_mean(cls_token), self.head.forward_logvar(tokens[:, 1])
