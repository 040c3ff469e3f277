"""Scaled additions that accept a Python float or a 0-d tensor as the scale.

``Tensor.add_(other, alpha=...)`` only takes a number; ``addcmul_`` takes a 0-d tensor. These two helpers
pick the cheaper form for each case so that the pieces of an update are written once for both paths.
"""

from __future__ import annotations

from typing import Union

import torch

Scalar = Union[float, torch.Tensor]
"""A hyper-parameter: a Python float on the eager path, a 0-d tensor on the compiled path."""


def add_scaled_(x: torch.Tensor, y: torch.Tensor, scale: Scalar) -> torch.Tensor:
    """In place ``x += scale * y``; returns ``x``."""
    if isinstance(scale, torch.Tensor):
        return x.addcmul_(y, scale)
    return x.add_(y, alpha=scale)


def add_scaled(x: torch.Tensor, y: torch.Tensor, scale: Scalar) -> torch.Tensor:
    """Out of place ``x + scale * y``, with the dtype of ``x`` (also when all three are 0-d)."""
    if isinstance(scale, torch.Tensor):
        return torch.addcmul(x, y, scale).to(x.dtype)
    return torch.add(x, y, alpha=scale)


def scaled(x: torch.Tensor, scale: Scalar) -> torch.Tensor:
    """Out of place ``scale * x``; a number or a 0-d tensor ``scale`` keeps the dtype of ``x`` (also when ``x`` is
    0-d, where torch alone would promote a bfloat16 ``x`` to the scale's float32), a tensor of per-tensor
    numbers promotes as torch does.

    Example:
        >>> scaled(torch.tensor(2.0, dtype=torch.bfloat16), torch.tensor(0.5)).dtype
        torch.bfloat16
    """
    if isinstance(scale, torch.Tensor) and scale.dim() == 0:
        return (x * scale).to(x.dtype)
    return x * scale
