"""Weight-decay variants: L2 added to the gradient, decoupled (AdamW), cautious, and stable (SWD).

References:
    Loshchilov & Hutter, "Decoupled Weight Decay Regularization", arXiv:1711.05101.
    Chen et al., "Cautious Weight Decay", arXiv:2510.12402.
    Xie et al., "On the Overlooked Pitfalls of Weight Decay and How to Mitigate Them: A Gradient-Norm
    Perspective", NeurIPS 2023, arXiv:2011.11152 (stable weight decay, SWD; AdamS).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from lightning_opt.transforms.arith import Scalar, add_scaled, add_scaled_
from lightning_opt.transforms.reductions import sum_from

SWD_EPS = 1e-8
"""The default ``eps`` of :func:`stable_weight_decay_scale`, ``1 / (sqrt(mean) + eps)`` (pytorch_optimizer's
``AdamS`` adds its ``eps`` there too; the authors' code adds none)."""


def l2_regularised(grad: torch.Tensor, param: torch.Tensor, weight_decay: Scalar) -> torch.Tensor:
    """Return ``grad + weight_decay * param`` as a new tensor; ``grad`` (the user's ``p.grad``) is untouched."""
    return add_scaled(grad, param, weight_decay)


def decoupled_weight_decay_(param: torch.Tensor, decay_factor: Scalar) -> torch.Tensor:
    """In place ``param *= decay_factor`` where ``decay_factor = 1 - lr * weight_decay``."""
    return param.mul_(decay_factor)


def cautious_weight_decay_(param: torch.Tensor, update: torch.Tensor, lr_times_decay: Scalar) -> torch.Tensor:
    """In place ``param -= lr_times_decay * param`` only where ``update * param > 0``.

    ``update`` is the direction subtracted from the parameter (``param -= lr * update``), so the decay
    acts only where that step already moves the parameter towards zero.
    """
    agrees = (update * param > 0).to(param.dtype)
    return add_scaled_(param, agrees.mul_(param), -lr_times_decay)


# ------------------------------------------------------------------------------------ stable weight decay
def whole_model_mean(sums: Sequence[torch.Tensor] | torch.Tensor, counts: Sequence[int]) -> torch.Tensor:
    """``sum(sums) / sum(counts)`` over every tensor and, when ``torch.distributed`` is initialised, over every
    rank of its default group (one all-reduce of the total and the count, so the mean is over the whole model
    whether each rank holds all of it, as under DDP, or a part, as under ZeRO or FSDP). A tensor whose sum is
    not finite is left out of both (so that ``skip_nonfinite`` and a GradScaler's skipped tensors do not spoil
    the statistic of the others); with nothing left, the mean is NaN. No value is read back to the host. The
    all-reduce is a collective: every rank of the default group must call it at each step, as DDP's and ZeRO's
    ranks do (an optimizer that only some ranks step would wait for the others).

    Args:
        sums: one 0-d tensor per tensor of the model (or per group of them), on one device; or a 1-D tensor of
            them.
        counts: how many elements each sum covers.

    Example:
        >>> whole_model_mean([torch.tensor(3.0), torch.tensor(5.0)], [2, 2])
        tensor(2.)
    """
    if len(sums) == 0:
        raise ValueError("Invalid sums: [] (expected at least one tensor)")
    totals = sums if isinstance(sums, torch.Tensor) else torch.stack([total.reshape(()) for total in sums])
    sizes = torch.tensor(list(counts), dtype=totals.dtype).to(totals.device, non_blocking=True)
    finite = totals.isfinite()
    both = torch.stack([torch.where(finite, totals, 0.0).sum(), torch.where(finite, sizes, 0.0).sum()])
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        torch.distributed.all_reduce(both)
    return both[0] / both[1]


def stable_weight_decay_scale(second_moments: Sequence[torch.Tensor], eps: Scalar = SWD_EPS) -> torch.Tensor:
    """SWD's factor on the weight decay: ``1 / (sqrt(mean(v_hat)) + eps)``, the mean over every element of
    every tensor given (and of every rank, see :func:`whole_model_mean`), as one 0-d tensor.

    Stable weight decay decays every parameter by ``lr * weight_decay / sqrt(mean(v_hat))`` instead of
    AdamW's ``lr * weight_decay``: one number for the whole model, so the decay follows the size of the
    gradients (large early, small late) the way Adam's steps do, without becoming per-coordinate (the paper's
    point against L2 regularisation inside Adam).

    Args:
        second_moments: the bias-corrected second moments ``v_hat = v / (1 - beta2**t)`` of this step (after
            the gradient of this step entered ``v``; AMSGrad: their running maximum), one per parameter with a
            gradient.
        eps: added to the square root.

    Example:
        >>> stable_weight_decay_scale([torch.full((2, 2), 4.0), torch.full((4,), 16.0)], eps=0.0)  # mean 10
        tensor(0.3162)

    References:
        Xie et al., arXiv:2011.11152, Algorithm "AdamS" (``v_bar = mean(v_hat)``, decay ``lr * wd / sqrt(v_bar)``).
    """
    sums = [sum_from(moment, 0).reshape(()) for moment in second_moments]
    return stable_weight_decay_scale_of_sums(sums, [moment.numel() for moment in second_moments], eps)


def stable_weight_decay_scale_of_sums(
    sums: Sequence[torch.Tensor] | torch.Tensor, counts: Sequence[int], eps: Scalar = SWD_EPS
) -> torch.Tensor:
    """:func:`stable_weight_decay_scale` from the sum of each tensor's ``v_hat`` and its number of elements
    (what an optimizer computes without keeping the ``v_hat`` tensors), through :func:`whole_model_mean`."""
    return 1.0 / (whole_model_mean(sums, counts).sqrt() + eps)


def stable_weight_decay_(param: torch.Tensor, lr_times_decay: Scalar, scale: Scalar) -> torch.Tensor:
    """In place ``param *= 1 - min(lr_times_decay * scale, 1)``, with ``scale`` from
    :func:`stable_weight_decay_scale`; returns ``param``.

    The coefficient is capped at 1: a step decays at most the whole parameter, never flips its sign (which a
    tiny mean second moment, early or with vanishing gradients, would otherwise do).

    Example:
        >>> stable_weight_decay_(torch.ones(2), 0.01, torch.tensor(5.0))
        tensor([0.9500, 0.9500])
    """
    coefficient = lr_times_decay * scale
    if isinstance(coefficient, torch.Tensor):
        coefficient = coefficient.clamp_max(1.0)
    else:
        coefficient = min(coefficient, 1.0)
    return param.mul_(1.0 - coefficient)
