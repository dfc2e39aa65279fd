"""Numeric precision of a training run: the autocast context of the forward passes and fp16 loss scaling."""

from __future__ import annotations

import contextlib
from collections.abc import Callable

import torch

__all__ = ["autocast_factory", "uses_grad_scaler"]


def autocast_factory(device: torch.device, precision: str) -> Callable:
    """The context of the model's forward passes: bf16/fp16 autocast on CUDA; none (fp32) for fp32 or on the CPU."""
    if device.type != "cuda" or precision == "fp32":
        return contextlib.nullcontext
    dtype = torch.bfloat16 if precision == "bf16" else torch.float16
    return lambda: torch.autocast("cuda", dtype=dtype)


def uses_grad_scaler(device: torch.device, precision: str) -> bool:
    """fp16 autocast on CUDA needs loss scaling (bf16 has fp32's exponent range and does not)."""
    return device.type == "cuda" and precision == "fp16"
