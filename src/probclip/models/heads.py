"""Gaussian heads: map a tower's output tokens to the mean and log-variance of an embedding."""

from __future__ import annotations

import torch
from torch import nn

__all__ = ["GaussianHead"]


class GaussianHead(nn.Module):
    """Two linear maps: ``mean`` (width W -> D) and ``logvar`` (width W -> D, bias set to ``init_unc_bias``).

    The head does not normalise the mean; the model does. ``logvar`` is log sigma^2 per dimension.
    """

    def __init__(self, width: int, embed_dim: int, mean_bias: bool, init_unc_bias: float):
        super().__init__()
        self.mean = nn.Linear(width, embed_dim, bias=mean_bias)
        self.logvar = nn.Linear(width, embed_dim, bias=True)
        self.init_unc_bias = float(init_unc_bias)
        self.reset_parameters()

    def reset_parameters(self) -> None:
        """Mean weights ~ N(0, W^-1/2); log-variance weights small so that logvar starts near the bias."""
        width = self.mean.in_features
        nn.init.normal_(self.mean.weight, std=width**-0.5)
        if self.mean.bias is not None:
            nn.init.zeros_(self.mean.bias)
        self.reset_logvar()

    @torch.no_grad()
    def reset_logvar(self) -> None:
        """Log-variance weights ~ N(0, (0.02 / sqrt(W))^2), bias = ``init_unc_bias``: logvar starts near the bias."""
        nn.init.normal_(self.logvar.weight, std=0.02 * self.logvar.in_features**-0.5)
        nn.init.constant_(self.logvar.bias, self.init_unc_bias)

    def forward_mean(self, tokens: torch.Tensor) -> torch.Tensor:
        """``[B, W] -> [B, D]`` unnormalised mean."""
        return self.mean(tokens)

    def forward_logvar(self, tokens: torch.Tensor) -> torch.Tensor:
        """``[B, W] -> [B, D]`` log-variance."""
        return self.logvar(tokens)
