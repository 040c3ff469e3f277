"""Weight-decay variants: L2 added to the gradient, decoupled (AdamW), and cautious.

References:
    Loshchilov & Hutter, "Decoupled Weight Decay Regularization", arXiv:1711.05101.
    Chen et al., "Cautious Weight Decay", arXiv:2510.12402.
"""

from __future__ import annotations

import torch

from lightning_opt.transforms.arith import Scalar, add_scaled, add_scaled_


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
