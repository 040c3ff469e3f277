"""The cautious mask: drop the coordinates where the update disagrees with the current gradient.

References:
    Liang et al., "Cautious Optimizers: Improving Training with One Line of Code", arXiv:2411.16085.
"""

from __future__ import annotations

import torch

from lightning_opt.transforms.reductions import count_from, sum_from


def cautious_mask_(update: torch.Tensor, grad: torch.Tensor, start: int = 0) -> torch.Tensor:
    """In place ``update *= mask * numel / (sum(mask) + 1)`` with ``mask = (update * grad > 0)``.

    The rescaling keeps the update's average magnitude when part of it is masked out; the ``+ 1``
    keeps it finite when every coordinate is masked. Returns ``update``.

    Args:
        update: the update direction, changed in place.
        grad: the current gradient, same shape.
        start: the first dimension of one tensor (``numel`` and ``sum`` run over dimensions ``start, ...``):
            0 for a plain tensor, :data:`~lightning_opt.transforms.reductions.PER_TENSOR` for the engine's
            stacks of tensors.

    Example:
        >>> cautious_mask_(torch.tensor([1.0, -1.0]), torch.tensor([2.0, 2.0]))
        tensor([1., -0.])
    """
    mask = (update * grad > 0).to(update.dtype)
    scale = count_from(mask, start) / (sum_from(mask, start) + 1)
    return update.mul_(mask.mul_(scale.to(update.dtype)))
