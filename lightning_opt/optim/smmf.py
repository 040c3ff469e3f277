"""SMMF: Adam-like moments kept as rank-1 non-negative factors of the most square matricization, plus 1-bit signs."""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import torch

from lightning_opt.engine import BaseOptimizer, Flags, Hyperparameters
from lightning_opt.engine.base import ParamsT
from lightning_opt.transforms.gradient import AGC_CLIPPING, check_agc_clipping
from lightning_opt.transforms.reductions import reduce_rows
from lightning_opt.validation import (
    check_decay_factor,
    check_float,
    check_float32,
    check_probability,
    check_step_size,
)

SIGN_BITS = 8
"""Signs of the first moment packed per byte of the ``exp_avg_sign`` buffer (one bit each)."""


def square_view(shape: torch.Size) -> tuple[int, int]:
    """The most square matrix ``(rows, cols)`` holding a tensor of ``shape``, ``rows >= cols``.

    ``cols`` is the largest divisor of the number of elements not above its square root (the authors'
    ``_get_effective_shape``), so a prime count gives one column. A 0-d tensor is ``(1, 1)``; a 1-D one is
    matricized like any other (the authors' ``vector_reshape=True``).

    Example:
        >>> square_view(torch.Size([64, 3, 3, 3])), square_view(torch.Size([10])), square_view(torch.Size([]))
        ((48, 36), (5, 2), (1, 1))
    """
    numel = math.prod(shape)
    for cols in range(math.isqrt(numel), 0, -1):
        if numel % cols == 0:
            return numel // cols, cols
    return 0, 0  # no elements


def packed_rows(rows: int) -> int:
    """The rows of the packed sign buffer of a ``(rows, cols)`` view: one byte holds 8 rows of a column."""
    return -(-rows // SIGN_BITS)


def pack_signs(positive: torch.Tensor) -> torch.Tensor:
    """Pack a ``(..., rows, cols)`` boolean tensor into ``(..., ceil(rows / 8), cols)`` bytes: bit ``j`` of
    byte ``(i, col)`` is element ``(8 i + j, col)``. Shifts and ORs on ``uint8`` only, which inductor fuses.

    Example:
        >>> pack_signs(torch.tensor([[True], [False], [True]]))
        tensor([[5]], dtype=torch.uint8)
    """
    rows = positive.shape[-2]
    bits = positive.to(torch.uint8)
    padding = packed_rows(rows) * SIGN_BITS - rows
    if padding:
        bits = torch.nn.functional.pad(bits, (0, 0, 0, padding))
    bits = bits.unflatten(-2, (-1, SIGN_BITS))  # (..., ceil(rows / 8), 8, cols)
    packed = bits[..., 0, :]
    for bit in range(1, SIGN_BITS):
        packed = packed | (bits[..., bit, :] << bit)
    return packed


def unpack_signs(packed: torch.Tensor, rows: int) -> torch.Tensor:
    """The inverse of :func:`pack_signs`: a ``(..., rows, cols)`` boolean tensor.

    Example:
        >>> unpack_signs(torch.tensor([[5]], dtype=torch.uint8), 3).squeeze(-1).tolist()
        [True, False, True]
    """
    shifts = torch.arange(SIGN_BITS, dtype=torch.uint8, device=packed.device).view(SIGN_BITS, 1)
    bits = (packed.unsqueeze(-2) >> shifts) & 1  # (..., ceil(rows / 8), 8, cols)
    return bits.flatten(-3, -2)[..., :rows, :] != 0


def check_hyperparameters(
    lr: Any,
    beta: Any,
    eps: Any,
    weight_decay: Any,
    decay_rate: Any,
    growth_rate: Any,
    agc_clipping: Any = AGC_CLIPPING,
) -> dict[str, Any]:
    """Validate SMMF's hyper-parameters (one group's, or the defaults) and return them normalised.

    Example:
        >>> check_hyperparameters(1e-3, 0.9, 1e-8, 0.0, decay_rate=0.5, growth_rate=0.999)
        Traceback (most recent call last):
        ...
        ValueError: Invalid decay_rate: 0.5 (expected <= 0.0)
    """
    lr = check_float("lr", lr, low=0.0)
    check_step_size("lr", lr, lr, "lr")
    weight_decay = check_float("weight_decay", weight_decay, low=0.0)
    check_decay_factor("weight_decay", weight_decay, lr * weight_decay, "{lr:g} * weight_decay", lr=lr)
    return dict(
        lr=lr,
        beta=check_probability("beta", beta),
        eps=check_float32("eps", eps),
        weight_decay=weight_decay,
        decay_rate=check_float("decay_rate", decay_rate, low=-1.0, high=0.0),
        growth_rate=check_float("growth_rate", growth_rate, low=0.0, high=1.0),
        agc_clipping=check_agc_clipping(agc_clipping),
    )


class SMMF(BaseOptimizer):
    r"""SMMF (Square-Matricized Momentum Factorization): Adam's two moments in about 1/8 byte per parameter.

    Each tensor of ``n`` elements is seen as the most square ``(rows, cols)`` matrix (:func:`square_view`;
    0-d and 1-D tensors too). Its first moment is stored as non-negative factors ``r_m`` (rows), ``c_m``
    (columns) of ``|m|`` plus one sign bit per element, packed 8 per byte; its second moment as factors
    ``r_v``, ``c_v``. At step ``t`` (from 1), with ``beta_m = beta * growth_rate**(t - 1)`` and
    ``beta_v = 1 - t**decay_rate``::

        m = sign * outer(r_m, c_m)                v = outer(r_v, c_v)        (decompress)
        m = beta_m m + (1 - beta_m) g             v = beta_v v + (1 - beta_v) g^2
        p <- p (1 - lr * weight_decay) - lr * m / (sqrt(v) + eps)
        sign = [m > 0];   r_m, c_m = nnmf(|m|);   r_v, c_v = nnmf(v)            (compress)

    where ``nnmf(A)`` keeps the row sums and the column sums of ``A`` divided by their total (the rank-1
    non-negative factorization of arXiv:2412.08894, Algorithm 3; the seed's ``_nnmf``); ``outer(r, c)``
    restores a matrix with those row and column sums. The update reads the full, freshly updated ``m``
    and ``v`` of this step; only what carries to the next step is compressed. No bias correction: at
    ``t = 1``, ``beta_v = 0`` and ``v = g^2``.

    State per tensor: ``exp_avg_row`` ``(rows, 1)``, ``exp_avg_col`` ``(1, cols)``, ``exp_avg_sq_row``,
    ``exp_avg_sq_col`` (the parameter's dtype) and ``exp_avg_sign`` ``(ceil(rows / 8), cols)`` (``uint8``:
    bit ``j`` of byte ``(i, col)`` is the sign of element ``(8 i + j, col)``; packed along the longer side,
    so a prime-sized vector costs one byte per 8 elements too). About ``1/8 + 16 (rows + cols) / n`` bytes
    per float32 parameter, against Adam's 8. The arithmetic runs in at least float32 (bf16 parameters keep
    bf16 factors).

    Same numbers as the authors' code (eai-lab/SMMF, ``weight_decay_mode="adamw"``, ``vector_reshape=True``),
    which keeps the sign as one ``bool`` per element (8 times this buffer) and factors in float32 whatever
    the parameter's dtype. Not offered: their ``beta=None`` (no first moment), ``vector_reshape=False``
    (unfactored Adam state for vectors) and ``weight_decay_mode="adam"`` (an L2 term added to the gradient).

    Args:
        params: iterable of parameters or of dicts defining parameter groups.
        lr: learning rate.
        beta: coefficient of the running average of the gradient at the first step, in [0, 1).
        eps: added to ``sqrt(v)`` (> 0).
        weight_decay: decoupled weight decay (AdamW style), multiplied by ``lr``.
        decay_rate: ``lambda`` of the second moment's coefficient ``1 - t**lambda``, in [-1, 0]: -0.5 (the
            authors' default, for CNNs) to -0.8 (their choice for Transformers).
        growth_rate: ``gamma`` of the first moment's coefficient ``beta * gamma**(t - 1)``, in [0, 1].
        compile: fuse the update with ``torch.compile`` (same numbers, faster steps).
        skip_nonfinite: leave a tensor untouched (with a warning) when its gradient has inf or NaN.
        grad_transforms: gradient transforms applied in order before the update, without changing
            ``p.grad``: ``"centralize"`` (arXiv:2004.01461), ``"adaptive_clip"`` (arXiv:2102.06171),
            ``"soft_clip"`` (the seed's per-unit RMS clip); see :mod:`lightning_opt.transforms.gradient`.
        agc_clipping: the largest unit-wise gradient-to-parameter norm ratio of ``"adaptive_clip"``.

    The factors are statistics of whole rows and columns of the matricized tensor: SMMF refuses
    DTensor-sharded parameters (FSDP2). Bounds (see :mod:`lightning_opt.validation`): ``lr`` below ``2**24``
    and ``1 - lr * weight_decay`` in ``[0, 1]``, for every group, at construction and at each step.

    Example:
        >>> model = torch.nn.Linear(4, 2)
        >>> optimizer = SMMF(model.parameters(), lr=1e-3)
        >>> model(torch.randn(8, 4)).square().mean().backward()
        >>> optimizer.step()
        >>> state = optimizer.state[model.weight]  # 8 elements seen as a (4, 2) matrix
        >>> state["exp_avg_row"].shape, state["exp_avg_col"].shape, state["exp_avg_sign"].dtype
        (torch.Size([4, 1]), torch.Size([1, 2]), torch.uint8)

    References:
        Park, Kim, Lee & Ko, "SMMF: Square-Matricized Momentum Factorization for Memory-Efficient
        Optimization", AAAI 2025, arXiv:2412.08894; code: https://github.com/eai-lab/SMMF.
    """

    buffer_names = ("exp_avg_row", "exp_avg_col", "exp_avg_sign", "exp_avg_sq_row", "exp_avg_sq_col")
    stack_view = staticmethod(square_view)
    whole_tensor_statistics = True
    hyperparameter_check = staticmethod(check_hyperparameters)

    def __init__(
        self,
        params: ParamsT,
        lr: float = 1e-3,
        beta: float = 0.9,
        eps: float = 1e-8,
        weight_decay: float = 0.0,
        decay_rate: float = -0.5,
        growth_rate: float = 0.999,
        compile: bool = False,
        skip_nonfinite: bool = False,
        grad_transforms: Sequence[str] = (),
        agc_clipping: float = AGC_CLIPPING,
    ) -> None:
        defaults = check_hyperparameters(lr, beta, eps, weight_decay, decay_rate, growth_rate, agc_clipping)
        super().__init__(
            params,
            defaults,
            compile=compile,
            skip_nonfinite=skip_nonfinite,
            grad_transforms=grad_transforms,
            agc_clipping=agc_clipping,
        )

    def buffer_shapes(self, shape: torch.Size) -> dict[str, tuple[int, ...]]:
        """The factors and the packed signs of a parameter of ``shape`` (see the class docstring).

        Example:
            >>> SMMF([torch.zeros(1)]).buffer_shapes(torch.Size([7]))["exp_avg_sign"]
            (1, 1)
        """
        rows, cols = square_view(shape)
        row, col = (rows, 1), (1, cols)
        return {
            "exp_avg_row": row,
            "exp_avg_col": col,
            "exp_avg_sign": (packed_rows(rows), cols),
            "exp_avg_sq_row": row,
            "exp_avg_sq_col": col,
        }

    def init_state(self, param: torch.Tensor, state: dict[str, Any]) -> None:
        """Zero factors in the parameter's dtype and zero signs in ``uint8`` (see :meth:`buffer_shapes`)."""
        super().init_state(param, state)
        state["exp_avg_sign"] = torch.zeros_like(state["exp_avg_sign"], dtype=torch.uint8)

    def group_hyperparameters(self, group: dict[str, Any]) -> tuple[dict[str, float], dict[str, Any]]:
        lr, weight_decay = group["lr"], group["weight_decay"]
        numbers = {"neg_lr": -lr, "eps": group["eps"], "decay_factor": 1.0 - lr * weight_decay}
        return numbers, {"decay": weight_decay != 0.0}

    def tensor_hyperparameters(self, group: dict[str, Any], steps: torch.Tensor) -> dict[str, torch.Tensor]:
        return {
            "beta_m": group["beta"] * group["growth_rate"] ** (steps - 1.0),
            "beta_v": 1.0 - steps ** group["decay_rate"],
        }

    @staticmethod
    def update(
        param: torch.Tensor, grad: torch.Tensor, buffers: dict[str, torch.Tensor], hp: Hyperparameters, flags: Flags
    ) -> None:
        dtype = torch.promote_types(param.dtype, torch.float32)
        rows = param.shape[-2]
        g = grad.to(dtype)
        exp_avg = buffers["exp_avg_row"].to(dtype) * buffers["exp_avg_col"].to(dtype)
        exp_avg = torch.where(unpack_signs(buffers["exp_avg_sign"], rows), exp_avg, -exp_avg)
        exp_avg = exp_avg * hp["beta_m"] + g * (1.0 - hp["beta_m"])
        exp_avg_sq = buffers["exp_avg_sq_row"].to(dtype) * buffers["exp_avg_sq_col"].to(dtype)
        exp_avg_sq = exp_avg_sq * hp["beta_v"] + g * g * (1.0 - hp["beta_v"])
        value = param.to(dtype) * hp["decay_factor"] if flags["decay"] else param.to(dtype)
        param.copy_(value + exp_avg / (exp_avg_sq.sqrt() + hp["eps"]) * hp["neg_lr"])  # one rounding (bf16)
        buffers["exp_avg_sign"].copy_(pack_signs(exp_avg > 0))
        _compress_(exp_avg.abs(), buffers["exp_avg_row"], buffers["exp_avg_col"])
        _compress_(exp_avg_sq, buffers["exp_avg_sq_row"], buffers["exp_avg_sq_col"])


def _compress_(matrix: torch.Tensor, row: torch.Tensor, col: torch.Tensor) -> None:
    """The rank-1 non-negative factors of a ``(k, rows, cols)`` stack of non-negative matrices, in place: the
    row sums, and the column sums divided by their total (left as they are when it is 0, all zero then).
    ``rows >= cols`` in :func:`square_view`, so the column factor is the one normalised, as in the authors'
    ``_nnmf``. Their outer product restores a matrix with the same row and column sums."""
    col_sums = reduce_rows(matrix, "sum", -2)
    total = col_sums.sum(dim=-1, keepdim=True)
    row.copy_(matrix.sum(dim=-1, keepdim=True))
    col.copy_(col_sums / torch.where(total != 0, total, torch.ones_like(total)))
