"""First moments beyond the plain EMA (:func:`~lightning_opt.transforms.moments.ema_`): the NAdam look-ahead,
positive-negative momentum and adaptive-memory momentum.

References:
    Dozat, "Incorporating Nesterov Momentum into Adam", ICLR 2016 workshop (NAdam).
    Xie et al., "Positive-Negative Momentum: Manipulating Stochastic Gradient Noise to Improve
    Generalization", arXiv:2103.17182 (PNM).
    Topollai & Choromanska, "Adaptive Memory Momentum via a Model-Based Framework for Deep Learning
    Optimization", arXiv:2510.04988 (AM).
"""

from __future__ import annotations

import math

import torch

from lightning_opt.transforms.arith import Scalar, add_scaled, scaled
from lightning_opt.transforms.reductions import sum_from


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


def adaptive_memory_coefficient(
    grad: torch.Tensor,
    memory: torch.Tensor,
    lam: Scalar,
    beta_max: Scalar,
    start: int = 0,
    metric: torch.Tensor | None = None,
) -> torch.Tensor:
    """AM's momentum coefficient ``beta_t = clip(((1 + lam) <g, d> - <d - g, g + lam d>) / ||d - g||**2, 0,
    beta_max)``, per tensor (0 where ``d = g``, where every ``beta`` gives the same direction).

    ``d`` (``memory``) is the previous direction, ``g`` the gradient. The loss is modelled by the larger of two
    planes at the current point ``x``: the gradient's, ``f(x) + <g, y - x>``, and the memory's, ``f(x) + lr <g, d>
    + <d, y - x>`` (the plane of slope ``d`` through the previous iterate ``x + lr d``, whose loss is estimated
    from the gradient at ``x``). The proximal step on that model, with ``||y - x||**2 / (2 lr)`` and ``lam`` times
    a proximal term around the heavy-ball point ``x - lr d``, moves along ``((beta + lam) d + (1 - beta) g) / (1 +
    lam)`` (:func:`adaptive_memory_momentum_`), where ``beta``, the weight of the memory's plane, maximises the
    dual, a concave quadratic: its zero derivative gives the ratio above; ``beta_max`` keeps some of the gradient.

    Args:
        grad: the gradient.
        memory: the direction of the previous step.
        lam: the weight ``lambda >= 0`` of the proximal term around the heavy-ball point.
        beta_max: the largest coefficient, in ``[0, 1)``.
        start: the first dimension of one tensor: 0 for a plain tensor,
            :data:`~lightning_opt.transforms.reductions.PER_TENSOR` for the engine's stacks.
        metric: positive weights of the inner products (a preconditioned step ``P^-1 d`` measures distances in
            ``P``: ``metric = 1 / diag(P)``); ``None``: 1.

    Returns:
        ``beta_t`` in at least float32, with the reduced dimensions kept (size 1).

    Example:
        >>> adaptive_memory_coefficient(torch.tensor([1.0, 0.0]), torch.tensor([0.0, 1.0]), 0.0, 0.9)
        tensor([0.5000])
    """
    difference = memory - grad
    weighted = difference if metric is None else difference * metric
    mixed = grad * (1.0 + lam) * memory if metric is None else grad * (1.0 + lam) * memory * metric
    # by rows (compiled, faster) unless a metric is given: AdamW's is the second moment updated in the same pass,
    # which Inductor would then stage in a full-size temporary (standard set: 22.6 -> 47.7 ms a step)
    by_rows = metric is None
    numerator = sum_from(mixed - weighted * (grad + memory * lam), start, by_rows)
    square = sum_from(weighted * difference, start, by_rows)
    ratio = numerator / torch.where(square > 0, square, torch.ones_like(square))
    return torch.where(square > 0, ratio.clamp(min=0.0).clamp(max=beta_max), torch.zeros_like(ratio))


def adaptive_memory_momentum_(memory: torch.Tensor, grad: torch.Tensor, beta: Scalar, lam: Scalar) -> torch.Tensor:
    """In place ``d <- ((beta + lam) d + (1 - beta) g) / (1 + lam)`` (AM's direction); returns ``memory``.

    The two weights sum to one: with ``lam = 0`` an EMA with coefficient ``beta``; a larger ``lam`` keeps at
    least ``lam / (1 + lam)`` of the memory.

    Example:
        >>> adaptive_memory_momentum_(torch.tensor([2.0]), torch.tensor([4.0]), 0.5, 1.0)
        tensor([2.5000])
    """
    keep = (beta + lam) / (1.0 + lam)
    take = (1.0 - beta) / (1.0 + lam)
    return memory.mul_(keep).add_(grad * take)
