"""First moments beyond the plain EMA (:func:`~lightning_opt.transforms.moments.ema_`): the NAdam look-ahead and
positive-negative momentum.

References:
    Dozat, "Incorporating Nesterov Momentum into Adam", ICLR 2016 workshop (NAdam).
    Xie et al., "Positive-Negative Momentum: Manipulating Stochastic Gradient Noise to Improve
    Generalization", arXiv:2103.17182 (PNM).
"""

from __future__ import annotations

import math

import torch

from lightning_opt.transforms.arith import Scalar, add_scaled, scaled


def nesterov_coefficients(beta1: float, steps: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """The coefficients ``(on m, on g)`` of NAdam's bias-corrected look-ahead, per step count:
    ``beta1 m / (1 - beta1**(t+1)) + (1 - beta1) g / (1 - beta1**t)``.

    ``torch.optim.NAdam`` takes the same step when its momentum schedule is switched off (a ``momentum_decay``
    so large that ``0.96 ** (t * momentum_decay)`` is 0, so every ``mu_t`` is ``beta1``).

    Example:
        >>> nesterov_coefficients(0.5, torch.tensor([1.0], dtype=torch.float64))
        (tensor([0.6667], dtype=torch.float64), tensor([1.], dtype=torch.float64))
    """
    return beta1 / (1.0 - beta1 ** (steps + 1)), (1.0 - beta1) / (1.0 - beta1**steps)


def nesterov_numerator(exp_avg: torch.Tensor, grad: torch.Tensor, m_scale: Scalar, g_scale: Scalar) -> torch.Tensor:
    """Return ``m_scale * exp_avg + g_scale * grad`` (see :func:`nesterov_coefficients`) as a new tensor."""
    return add_scaled(scaled(exp_avg, m_scale), grad, g_scale)


def pnm_noise_norm(beta0: float) -> float:
    """``sqrt((1 + beta0)**2 + beta0**2)``: PNM divides its mix of momenta by it, so that the noise of the mix
    keeps the scale of one momentum's.

    >>> round(pnm_noise_norm(1.0), 4)
    2.2361
    """
    return math.sqrt((1.0 + beta0) ** 2 + beta0**2)


def positive_negative_momentum_(
    exp_avg: torch.Tensor,
    neg_exp_avg: torch.Tensor,
    value: torch.Tensor,
    weight: Scalar,
    odd: torch.Tensor,
    pos_coef: Scalar,
    neg_coef: Scalar,
) -> torch.Tensor:
    """PNM's two momenta: update the one of this step's parity, return ``pos_coef * it - neg_coef * the other``.

    On odd steps ``exp_avg`` is the positive momentum (updated: ``m <- m + weight * (value - m)``) and
    ``neg_exp_avg`` the negative one; on even steps the roles swap, as in pytorch_optimizer's ``PNM`` and
    ``AdaPNM``. Tensors of one stack may be at different steps, so the parity is a per-tensor number ``odd``
    (1.0 or 0.0) and both buffers are written (one of them unchanged): one extra write, no branch.

    Args:
        exp_avg: the momentum updated on odd steps, in place.
        neg_exp_avg: the momentum updated on even steps, in place.
        value: what the momentum averages (the gradient).
        weight: ``1 - beta1**2`` in PNM (each momentum sees every other gradient).
        odd: 1.0 where this is an odd step (1-based), 0.0 where even; broadcasts against the buffers.
        pos_coef: ``(1 + beta0) / noise_norm`` (times a bias correction).
        neg_coef: ``beta0 / noise_norm`` (times the same).

    Example:
        >>> a, b = torch.zeros(2), torch.ones(2)
        >>> positive_negative_momentum_(a, b, torch.full((2,), 3.0), 0.5, torch.tensor(1.0), 2.0, 1.0)
        tensor([2., 2.])
    """
    # not lerp_: its weight must have the buffers' dtype, and a bfloat16 ``odd * weight`` would round the weight
    exp_avg.add_((value - exp_avg) * (odd * weight))
    neg_exp_avg.add_((value - neg_exp_avg) * ((1.0 - odd) * weight))
    positive = neg_exp_avg + (exp_avg - neg_exp_avg) * odd
    negative = (exp_avg + neg_exp_avg).sub_(positive)
    return add_scaled(positive * pos_coef, negative, -neg_coef)
