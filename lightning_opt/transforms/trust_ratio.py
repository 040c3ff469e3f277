"""LAMB's layer-wise trust ratio: each tensor's update rescaled to the size of the tensor itself.

References:
    You et al., "Large Batch Optimization for Deep Learning: Training BERT in 76 minutes", ICLR 2020,
    arXiv:1904.00962 (LAMB, Algorithm 2).
"""

from __future__ import annotations

from typing import Optional

import torch

from lightning_opt.transforms.reductions import norm_from

TRUST_RATIO_MAX_WEIGHT_NORM = 10.0
"""The default ceiling of the weight norm in the trust ratio (the paper's scaling function
``phi(z) = min(z, gamma_u)``; pytorch_optimizer's ``Lamb.clamp``)."""


def trust_ratio_scale(
    update: torch.Tensor,
    param: torch.Tensor,
    max_weight_norm: Optional[float] = TRUST_RATIO_MAX_WEIGHT_NORM,
    start: int | None = None,
) -> torch.Tensor:
    """The per-tensor factor of :func:`trust_ratio`: ``min(||p||, max_weight_norm) / ||u||``, or 1 where either
    norm is 0 (kept dimensions, in at least float32).

    Args:
        update: the update ``u`` (the direction subtracted from the parameter, times ``lr``).
        param: the parameter, same shape.
        max_weight_norm: ceiling of ``||p||`` (``None``: none).
        start: for one of the engine's stacks ``(k, units, width)``, the first dimension of a tensor
            (:data:`~lightning_opt.transforms.reductions.PER_TENSOR`); by default the whole of ``update`` is one
            tensor.
    """
    first = 0 if start is None else start
    weight_norm = norm_from(param, first)
    if max_weight_norm is not None:
        weight_norm = weight_norm.clamp_max(max_weight_norm)
    update_norm = norm_from(update, first)
    usable = (weight_norm > 0) & (update_norm > 0)
    return torch.where(usable, weight_norm / torch.where(usable, update_norm, 1.0), 1.0)


def trust_ratio(
    update: torch.Tensor,
    param: torch.Tensor,
    max_weight_norm: Optional[float] = TRUST_RATIO_MAX_WEIGHT_NORM,
    start: int | None = None,
) -> torch.Tensor:
    """Rescale an update to the norm of its parameter: ``u * min(||p||, max_weight_norm) / ||u||`` per tensor.

    LAMB's layer-wise adaptation: every tensor (a layer's weight, its bias) moves by ``lr`` times its own norm,
    whatever the scale of its gradients, so one learning rate suits layers of very different sizes (the paper
    trains BERT with batches of 32k). Where either norm is 0 (a zero-initialised bias, a zero update) the
    update is kept as it is. A non-finite update stays non-finite.

    Args:
        update: the update ``u``; for LAMB, Adam's direction plus the weight decay ``wd * p``.
        param: the parameter, same shape.
        max_weight_norm: ceiling of ``||p||`` (10, as pytorch_optimizer's ``Lamb``; ``None``: none).
        start: for one of the engine's stacks, the first dimension of a tensor; the default suits a plain tensor.

    Returns:
        A new tensor of ``update``'s dtype.

    Example:
        >>> trust_ratio(torch.tensor([3.0, 4.0]), torch.tensor([0.0, 0.5]))  # ||p|| = 0.5, ||u|| = 5
        tensor([0.3000, 0.4000])
        >>> trust_ratio(torch.tensor([3.0, 4.0]), torch.zeros(2))  # a zero parameter: kept
        tensor([3., 4.])

    References:
        You et al., "Large Batch Optimization for Deep Learning: Training BERT in 76 minutes", arXiv:1904.00962.
    """
    return update * trust_ratio_scale(update, param, max_weight_norm, start).to(update.dtype)
