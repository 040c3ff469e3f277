"""Exponential moving averages of the gradient and of its square (Adam's first and second moments).

References:
    Kingma & Ba, "Adam: A Method for Stochastic Optimization", arXiv:1412.6980.
"""

from __future__ import annotations

import torch

from lightning_opt.transforms.arith import Scalar


def ema_(buffer: torch.Tensor, value: torch.Tensor, beta: Scalar) -> torch.Tensor:
    """In place ``buffer = beta * buffer + (1 - beta) * value``; returns ``buffer``.

    Example:
        >>> m = torch.zeros(3)
        >>> ema_(m, torch.ones(3), 0.9)
        tensor([0.1000, 0.1000, 0.1000])
    """
    return buffer.lerp_(value, 1 - beta)


def ema_sq_(buffer: torch.Tensor, value: torch.Tensor, beta: Scalar) -> torch.Tensor:
    """In place ``buffer = beta * buffer + (1 - beta) * value**2``; returns ``buffer``."""
    if isinstance(beta, torch.Tensor):
        return buffer.mul_(beta).addcmul_(value, value * (1 - beta))
    return buffer.mul_(beta).addcmul_(value, value, value=1 - beta)
