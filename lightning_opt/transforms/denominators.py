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
