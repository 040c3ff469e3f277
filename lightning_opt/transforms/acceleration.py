"""Accelerators of Adam-type updates: diffGrad's friction, AdaMomentum's second moment of the momentum and
AdaNorm's gradient-norm correction.

References:
    Dubey et al., "diffGrad: An Optimization Method for Convolutional Neural Networks", arXiv:1909.11015.
    Wang et al., "Rethinking Adam: A Twofold Exponential Moving Average Approach", arXiv:2106.11514.
    Dubey et al., "AdaNorm: Adaptive Gradient Norm Correction based Optimizer for CNNs", arXiv:2210.06364.
"""

from __future__ import annotations

import torch

from lightning_opt.transforms.arith import Scalar
from lightning_opt.transforms.moments import ema_sq_
from lightning_opt.transforms.reductions import norm_from


def friction_(previous_grad: torch.Tensor, grad: torch.Tensor) -> torch.Tensor:
    """diffGrad's friction ``sigmoid(|previous_grad - grad|)`` (in (0.5, 1)), returned as a new tensor; then
    ``previous_grad`` is overwritten with ``grad`` for the next step.

    A coordinate whose gradient barely changes (near an optimum) gets about half its step; one whose gradient
    changes a lot, about all of it. The previous gradient of the first step is zero (as in the paper's code
    and pytorch_optimizer).

    Example:
        >>> previous = torch.zeros(2)
        >>> friction_(previous, torch.tensor([0.0, 10.0])), previous
        (tensor([0.5000, 1.0000]), tensor([ 0., 10.]))
    """
    friction = torch.sigmoid((previous_grad - grad).abs())
    previous_grad.copy_(grad)
    return friction


def momentum_second_moment_(
    exp_avg_sq: torch.Tensor, exp_avg: torch.Tensor, beta2: Scalar, eps: Scalar
) -> torch.Tensor:
    """AdaMomentum's second moment: in place ``v = beta2 v + (1 - beta2) m**2 + eps`` from the (new) momentum
    ``m`` instead of the gradient; returns ``v``.

    Example:
        >>> momentum_second_moment_(torch.zeros(1), torch.tensor([2.0]), 0.75, 0.5)
        tensor([1.5000])
    """
    return ema_sq_(exp_avg_sq, exp_avg, beta2).add_(eps)


def gradient_norm_correction_(
    exp_grad_norm: torch.Tensor, grad: torch.Tensor, beta: Scalar, start: int
) -> torch.Tensor:
    """AdaNorm's correction factor: ``e <- beta e + (1 - beta) ||g||`` (in place, one number per tensor), then
    ``e / ||g||`` where ``e > ||g|| > 0``, else 1. The gradient fed to the momentum is ``g`` times it, so a
    tensor's gradient never has a smaller norm than its running average.

    Args:
        exp_grad_norm: the running norm, shaped to broadcast against ``grad`` with one number per tensor.
        grad: the gradient (a stack of tensors from ``start`` on, see :mod:`~lightning_opt.transforms.reductions`).
        beta: the EMA coefficient of the norm (``r`` in pytorch_optimizer, ``gamma`` in the paper).
        start: the first dimension of one tensor.

    Returns:
        The factor, shaped like ``exp_grad_norm``, in the gradient's dtype.

    Example:
        >>> e = torch.full((1,), 10.0)
        >>> gradient_norm_correction_(e, torch.tensor([3.0, 4.0]), 0.5, 0), e
        (tensor([1.5000]), tensor([7.5000]))
    """
    norm = norm_from(grad, start, by_rows=True).to(exp_grad_norm.dtype)
    # beta e + (1 - beta) n, not lerp: after an inf gradient, e stays inf (pytorch_optimizer's) instead of NaN
    exp_grad_norm.mul_(beta).add_(norm * (1 - beta))
    corrects = (norm > 0) & (exp_grad_norm > norm)
    return torch.where(corrects, exp_grad_norm / torch.where(corrects, norm, 1.0), 1.0).to(grad.dtype)
