"""Eps-free replacements for Adam's ``m / (sqrt(v) + eps)``.

References:
    Everett et al., "Scaling Exponents Across Parameterizations and Optimizers", arXiv:2407.05872
    (Adam-atan2: ``a * atan2(m_hat, b * sqrt(v_hat))``, with a = 1.27 and b = 1).
"""

from __future__ import annotations

import torch

from lightning_opt.transforms.arith import Scalar


def atan2_direction(numerator: torch.Tensor, second_moment: torch.Tensor, denominator_scale: Scalar) -> torch.Tensor:
    """Return ``atan2(numerator, denominator_scale * sqrt(second_moment))`` as a new tensor.

    ``atan2`` is bounded by pi/2 in magnitude and is finite where ``second_moment`` is 0, so no eps is
    needed. Because ``atan2(k*y, k*x) == atan2(y, x)`` for any k > 0, callers fold the bias corrections
    of both moments and the paper's ``b`` into ``denominator_scale`` and pass the raw first moment, which
    saves one full pass over the tensor.

    Example:
        >>> atan2_direction(torch.tensor([1.0, -1.0, 0.0]), torch.tensor([1.0, 0.0, 0.0]), 1.0)
        tensor([ 0.7854, -1.5708,  0.0000])
    """
    denominator = second_moment.sqrt()
    if isinstance(denominator_scale, torch.Tensor) or denominator_scale != 1.0:
        denominator.mul_(denominator_scale)
    if torch.compiler.is_compiling():
        # Dynamo refuses an ``out=`` tensor that is not contiguous (a transposed or channels_last
        # parameter); inside a graph the result is fused anyway, so there is no buffer to save.
        return torch.atan2(numerator, denominator)
    return torch.atan2(numerator, denominator, out=denominator)  # eager: reuse the buffer


DENOMINATORS = ("eps", "atan2", "softplus")
"""The ways :func:`adaptive_direction` divides a numerator by the root of a second moment."""

ATAN2_SCALE = 1.27
"""The ``a`` of Adam-atan2 (arXiv:2407.05872): ``a * atan2(x, y)`` matches ``x / y`` for small ratios."""


def eps_direction(
    numerator: torch.Tensor, second_moment: torch.Tensor, root_scale: Scalar, eps: Scalar
) -> torch.Tensor:
    """Return Adam's ``numerator / (root_scale * sqrt(second_moment) + eps)`` as a new tensor.

    ``root_scale`` is ``1 / sqrt(1 - beta2**t)`` for a bias-corrected second moment (per tensor).

    Example:
        >>> eps_direction(torch.tensor([1.0, 2.0]), torch.tensor([4.0, 0.0]), 1.0, 1.0)
        tensor([0.3333, 2.0000])
    """
    return numerator / second_moment.sqrt().mul_(root_scale).add_(eps)


def softplus_(x: torch.Tensor, beta: Scalar) -> torch.Tensor:
    """In place ``softplus_beta(x) = log(1 + exp(beta * x)) / beta`` for ``x >= 0``, as ``x + log(1 + exp(-beta
    x)) / beta`` (no overflow for large ``beta * x``; ``torch.nn.functional.softplus`` returns ``x`` itself past
    ``beta * x > 20``, a difference below ``2e-9 / beta``). Returns ``x``.

    ``log(1 + e)`` rather than ``log1p(e)``: with ``e = exp(-beta x)`` in ``(0, 1]`` the sum ``1 + e`` loses at
    most half an ulp of 1, an absolute error of ``2**-24 / beta`` in float32: below 9e-8 of the result, which is at
    least ``log(2) / beta``; and a vectorised ``log1p`` costs about twice a ``log`` on the CPU (21M float32
    elements, 2 threads, compiled: 97 ms against 53).

    Example:
        >>> softplus_(torch.tensor([0.0, 1.0]), 50.0)
        tensor([0.0139, 1.0000])
    """
    return x.add_(torch.exp(x * -beta).add_(1.0).log_().div_(beta))


def softplus_direction(
    numerator: torch.Tensor, second_moment: torch.Tensor, root_scale: Scalar, eps: Scalar, beta: Scalar
) -> torch.Tensor:
    """Return ``numerator / softplus_beta(root_scale * sqrt(second_moment) + eps)`` as a new tensor.

    The calibrated denominator of Sadam (arXiv:1908.00700), in the form of pytorch_optimizer's Ranger21
    ``use_softplus`` (softplus of Adam's ``sqrt(v_hat) + eps``): a small ``sqrt(v_hat)`` no longer blows the step
    up, since ``softplus_beta(0) = log(2) / beta`` is the smallest denominator (beta = 50: 0.0139).

    Example:
        >>> softplus_direction(torch.tensor([1.0, 1.0]), torch.tensor([1.0, 0.0]), 1.0, 0.0, 50.0)
        tensor([ 1.0000, 72.1348])
    """
    return numerator / softplus_(second_moment.sqrt().mul_(root_scale).add_(eps), beta)


def adaptive_direction(
    denominator: str,
    numerator: torch.Tensor,
    second_moment: torch.Tensor,
    root_scale: Scalar,
    eps: Scalar,
    softplus_beta: Scalar,
) -> torch.Tensor:
    """Divide a (bias-corrected) numerator by the root of a second moment, in one of :data:`DENOMINATORS` ways.

    Args:
        denominator: ``"eps"``: :func:`eps_direction`; ``"atan2"``: ``ATAN2_SCALE * atan2(numerator, root_scale *
            sqrt(second_moment))`` (:func:`atan2_direction`, eps unused, bounded by ``1.27 * pi / 2``);
            ``"softplus"``: :func:`softplus_direction`.
        numerator: the bias-corrected numerator (a first moment, a look-ahead, a mix of momenta).
        second_moment: the raw second moment, not changed.
        root_scale: ``1 / sqrt(1 - beta2**t)``: multiplies ``sqrt(second_moment)``.
        eps: added to the root (``"eps"`` and ``"softplus"``).
        softplus_beta: the ``beta`` of ``"softplus"``.

    Example:
        >>> adaptive_direction("atan2", torch.tensor([1.0]), torch.tensor([1.0]), 1.0, 1e-8, 50.0)
        tensor([0.9975])
    """
    if denominator == "atan2":
        return atan2_direction(numerator, second_moment, root_scale).mul_(ATAN2_SCALE)
    if denominator == "softplus":
        return softplus_direction(numerator, second_moment, root_scale, eps, softplus_beta)
    return eps_direction(numerator, second_moment, root_scale, eps)
