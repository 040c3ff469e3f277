"""Adafactor: a factored second moment (one number per row and per column), relative step sizes, update clipping.

The preconditioner is formed as the seed's tour suggests: ``(mean(r) / r) / c`` and one square root last,
instead of the two reciprocal square roots (of ``r / mean(r)`` and of ``c``) that the common
``_approx_sq_grad`` (fairseq, transformers, pytorch_optimizer) multiplies; ``benchmarks/adafactor_precision.py``
measures both forms against float64.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any, Optional

import torch

from lightning_opt.engine import BaseOptimizer, Flags, Hyperparameters, OptionalBuffer
from lightning_opt.engine.base import ParamsT
from lightning_opt.transforms.gradient import AGC_CLIPPING, check_agc_clipping
from lightning_opt.transforms.reductions import (
    PER_TENSOR,
    accumulation_dtype,
    count_from,
    norm_from,
    reduce_rows,
    sum_from,
)
from lightning_opt.validation import (
    FLOAT32_MAX,
    check_bool,
    check_decay_factor,
    check_float,
    check_float32,
    check_probability,
    check_step_size,
)

RELATIVE_STEP_CAP = 1e-2
"""With ``lr=None`` the step size is ``min(RELATIVE_STEP_CAP, 1 / sqrt(t))`` (the paper's relative step)."""
FLOAT32_TINY = 1.1754943508222875e-38
"""``torch.finfo(torch.float32).tiny``, the smallest normal float32 (and bfloat16): the least ``eps1``."""


def matrix_view(shape: torch.Size) -> tuple[int, int, int]:
    """``(batch, rows, cols)``: the last two dimensions as a matrix, the others as a batch of matrices.

    A 0-d or 1-D tensor is one matrix of one row. Its factored second moment is then exact: the row factor
    is one number ``r``, ``mean(r) / r = 1``, and ``v = c``, the unfactored second moment of each element.

    >>> matrix_view(torch.Size([64, 32, 3, 3])), matrix_view(torch.Size([10])), matrix_view(torch.Size([]))
    ((2048, 3, 3), (1, 1, 10), (1, 1, 1))
    """
    if len(shape) < 2:
        return 1, 1, shape.numel()
    return math.prod(shape[:-2]), shape[-2], shape[-1]


def check_hyperparameters(
    lr: Any,
    beta1: Any,
    decay_rate: Any,
    eps1: Any,
    eps2: Any,
    clip_threshold: Any,
    scale_parameter: Any,
    weight_decay: Any,
    agc_clipping: Any = AGC_CLIPPING,
) -> dict[str, Any]:
    """Validate Adafactor's hyper-parameters (one group's, or the defaults) and return them normalised.

    Example:
        >>> check_hyperparameters(1e7, None, -0.8, 1e-30, 1e-3, 2.0, True, 0.0)
        Traceback (most recent call last):
        ...
        ValueError: Invalid lr: 10000000.0 (the largest step size lr * clip_threshold with clip_threshold=2 = \
2e+07 must be below 2**24 = 16777216)
    """
    clip_threshold = check_float32("clip_threshold", clip_threshold)
    if lr is not None:
        lr = check_float("lr", lr, low=0.0)
        check_step_size(
            "lr", lr, lr * clip_threshold, "lr * clip_threshold with clip_threshold={d:g}", d=clip_threshold
        )
    weight_decay = check_float("weight_decay", weight_decay, low=0.0)
    largest_step = RELATIVE_STEP_CAP if lr is None else lr
    check_decay_factor(
        "weight_decay", weight_decay, largest_step * weight_decay, "{lr:g} * weight_decay", lr=largest_step
    )
    return dict(
        lr=lr,
        beta1=None if beta1 is None else check_probability("beta1", beta1),
        decay_rate=check_float("decay_rate", decay_rate, low=-1.0, high=0.0),
        eps1=check_float("eps1", eps1, low=FLOAT32_TINY, high=FLOAT32_MAX),
        eps2=check_float32("eps2", eps2),
        clip_threshold=clip_threshold,
        scale_parameter=check_bool("scale_parameter", scale_parameter),
        weight_decay=weight_decay,
        agc_clipping=check_agc_clipping(agc_clipping),
    )


class Adafactor(BaseOptimizer):
    r"""Adafactor (Shazeer & Stern, 2018): Adam's second moment factored into row and column averages.

    Each tensor is seen as a batch of matrices over its last two dimensions (:func:`matrix_view`); a 0-d or
    1-D tensor as one row, for which the factored moment *is* the unfactored one. At step ``t`` (per tensor),
    with ``beta2_t = 1 - t**decay_rate`` and means over a matrix's columns (``mean_j``) or rows (``mean_i``)::

        r <- beta2_t r + (1 - beta2_t) mean_j(g^2 + eps1)        (one number per row)
        c <- beta2_t c + (1 - beta2_t) mean_i(g^2 + eps1)        (one number per column)
        u  = g * sqrt((mean_i(r) / r) / c)                        (= g / sqrt(v), v = r c / mean_i(r))
        u <- u / max(1, RMS(u) / clip_threshold)
        rho = lr, or min(1e-2, 1 / sqrt(t)) if lr is None          (relative step)
        alpha = rho * max(eps2, RMS(p))   if scale_parameter else rho
        m <- beta1 m + (1 - beta1) alpha u,  step = m              (only if beta1 is not None)
        p <- p (1 - rho * weight_decay) - step                    (step = alpha u without beta1)

    ``RMS(p)`` is taken before the step, and RMS over the whole tensor. The preconditioner is formed as
    ``(mean(r) / r) / c`` with one square root last (the seed's precision point), not as the product of the
    reciprocal square roots of ``r / mean(r)`` and of ``c`` (``_approx_sq_grad`` in transformers,
    pytorch_optimizer; torch.optim.Adafactor's ``rsqrt`` of ``r c / mean(r)``): see the README for the
    measured errors. Where an all-zero row meets an all-zero column (a dead unit and a constant input),
    ``mean(r) / (r c)`` can exceed float32's range; it is clamped to the largest float32 there, and the
    gradient there is zero, so the update is too.

    How it relates to the public implementations (checked in ``tests/test_adafactor.py``):

    - ``torch.optim.Adafactor(lr=x, weight_decay=w)`` takes the same steps as ``Adafactor(lr=None,
      weight_decay=w)`` with ``x = 1e-2``, and as ``Adafactor(lr=x, weight_decay=w)`` otherwise, while
      ``t <= 1 / x**2`` (torch's ``rho_t = min(lr, 1 / sqrt(t))`` is ``lr`` until then); torch has no
      ``eps1`` in the moments (it clamps instead), no first moment, and always scales by ``RMS(p)``.
    - transformers' and pytorch_optimizer's ``AdaFactor`` (``relative_step``/``scale_parameter``, the
      ``exp_avg`` of the scaled update) take the same steps without weight decay; they decay by
      ``alpha * weight_decay`` (which includes ``RMS(p)``), torch and this class by ``rho * weight_decay``.
      pytorch_optimizer's defaults turn a bfloat16 first moment and a ``beta2`` cap of 0.999 on.

    State per tensor: ``exp_avg_sq_row`` of shape ``(batch, rows, 1)``, ``exp_avg_sq_col`` of shape
    ``(batch, 1, cols)`` (a ``(1024, 1024)`` weight keeps 2,048 numbers, a 1-D tensor of ``n`` elements
    ``n + 1``), and ``exp_avg`` of the parameter's shape if ``beta1`` is not ``None``. Whether the first
    moment is kept is decided for the whole optimizer by its ``beta1``: a parameter group may change the
    value, or set ``None`` (its ``exp_avg`` is then left unused), but not give a number to an optimizer built
    with ``beta1=None``. The moments' means, the preconditioner and the update are computed in
    at least float32 (bfloat16 parameters keep bfloat16 state).

    The update reads whole rows and columns and whole tensors (``RMS``): DTensor-sharded parameters (FSDP2)
    are refused. A NaN or inf in a gradient makes the whole tensor non-finite.

    Args:
        params: iterable of parameters or of dicts defining parameter groups.
        lr: the step size ``rho``; ``None`` (default) for the paper's relative step
            ``min(1e-2, 1 / sqrt(t))``. With ``lr=None`` the groups' ``lr`` is ``None``, which learning-rate
            schedulers and Lightning's ``LearningRateMonitor`` cannot use: give a number to schedule it.
        beta1: coefficient of the first moment (of the scaled, clipped update); ``None`` (default) keeps none.
        decay_rate: ``beta2_t = 1 - t**decay_rate``, in ``[-1, 0]`` (the paper's ``-0.8``).
        eps1: added to every squared gradient (the paper's 1e-30); at least the smallest normal float32, so
            that a row or column with no gradient never divides zero by zero.
        eps2: the least parameter scale of ``scale_parameter`` (1e-3), so that zero-initialised tensors move.
        clip_threshold: the largest RMS of the preconditioned update ``u`` (the paper's ``d = 1``).
        scale_parameter: multiply the step size by ``max(eps2, RMS(p))`` (a relative step).
        weight_decay: decoupled weight decay, multiplied by ``rho`` (not by the parameter scale).
        compile: fuse the update with ``torch.compile`` (same numbers, faster steps).
        skip_nonfinite: leave a tensor untouched (with a warning) when its gradient has inf or NaN.
        grad_transforms: gradient transforms applied in order before the update, without changing
            ``p.grad``: ``"centralize"`` (arXiv:2004.01461), ``"adaptive_clip"`` (arXiv:2102.06171),
            ``"soft_clip"`` (the seed's per-unit RMS clip); see :mod:`lightning_opt.transforms.gradient`.
        agc_clipping: the largest unit-wise gradient-to-parameter norm ratio of ``"adaptive_clip"``.

    Bounds (see :mod:`lightning_opt.validation`): the update's RMS is at most ``clip_threshold``, so with a
    number ``lr`` the relative step ``lr * clip_threshold`` must stay below ``2**24``; the decay factor
    ``1 - rho * weight_decay`` must stay in ``[0, 1]`` for the largest ``rho`` (``lr``, or 1e-2).

    In a ``LightningCLI``, ``--optimizer Adafactor`` is ambiguous with ``torch.optim.Adafactor``: give
    ``--optimizer lightning_opt.Adafactor`` (or ``class_path: lightning_opt.Adafactor`` in a config);
    ``lightning-opt fit --optimizer Adafactor`` and ``build_optimizer(model, "Adafactor")`` mean this class.
    On the digits recipe the defaults reach 0.96 validation accuracy.

    Example:
        >>> model = torch.nn.Linear(4, 2)
        >>> optimizer = Adafactor(model.parameters())
        >>> model(torch.randn(8, 4)).square().mean().backward()
        >>> optimizer.step()
        >>> sorted(optimizer.state[model.weight])
        ['exp_avg_sq_col', 'exp_avg_sq_row', 'step']

    References:
        Shazeer & Stern, "Adafactor: Adaptive Learning Rates with Sublinear Memory Cost", arXiv:1804.04235.
    """

    hyperparameter_check = staticmethod(check_hyperparameters)
    stack_view = staticmethod(matrix_view)
    whole_tensor_statistics = True

    def __init__(
        self,
        params: ParamsT,
        lr: Optional[float] = None,
        beta1: Optional[float] = None,
        decay_rate: float = -0.8,
        eps1: float = 1e-30,
        eps2: float = 1e-3,
        clip_threshold: float = 1.0,
        scale_parameter: bool = True,
        weight_decay: float = 0.0,
        compile: bool = False,
        skip_nonfinite: bool = False,
        grad_transforms: Sequence[str] = (),
        agc_clipping: float = AGC_CLIPPING,
    ) -> None:
        defaults = check_hyperparameters(
            lr, beta1, decay_rate, eps1, eps2, clip_threshold, scale_parameter, weight_decay, agc_clipping
        )
        super().__init__(
            params,
            defaults,
            compile=compile,
            skip_nonfinite=skip_nonfinite,
            grad_transforms=grad_transforms,
            agc_clipping=agc_clipping,
        )

    buffer_names = ("exp_avg_sq_row", "exp_avg_sq_col")
    optional_buffers = {"exp_avg": OptionalBuffer("beta1", lambda beta1: beta1 is not None, "first moment")}

    def buffer_shapes(self, shape: torch.Size) -> dict[str, tuple[int, ...]]:
        batch, rows, cols = matrix_view(shape)
        return {"exp_avg_sq_row": (batch, rows, 1), "exp_avg_sq_col": (batch, 1, cols)}

    def group_hyperparameters(self, group: dict[str, Any]) -> tuple[dict[str, float], dict[str, Any]]:
        beta1 = group["beta1"]
        numbers = {
            "eps1": group["eps1"],
            "eps2": group["eps2"],
            "inv_clip": 1.0 / group["clip_threshold"],
            "beta1": 0.0 if beta1 is None else beta1,
        }
        flags = {
            "scale_parameter": group["scale_parameter"],
            "first_moment": beta1 is not None,
            "decay": group["weight_decay"] != 0.0,
        }
        return numbers, flags

    def tensor_hyperparameters(self, group: dict[str, Any], steps: torch.Tensor) -> dict[str, torch.Tensor]:
        lr = group["lr"]
        rho = steps.rsqrt().clamp_max(RELATIVE_STEP_CAP) if lr is None else torch.full_like(steps, lr)
        return {
            "one_minus_beta2": steps ** group["decay_rate"],  # 1 - beta2_t; 1 at the first step
            "rho": rho,
            "decay_factor": 1.0 - rho * group["weight_decay"],
        }

    @staticmethod
    def update_moments(
        param: torch.Tensor, grad: torch.Tensor, buffers: dict[str, torch.Tensor], hp: Hyperparameters, flags: Flags
    ) -> dict[str, torch.Tensor]:
        """First pass: the row and column averages of ``g^2 + eps1``, and the parameter's RMS."""
        dtype = accumulation_dtype(grad)
        rows, cols = grad.shape[-2], grad.shape[-1]
        # the row sums of g^2 as a squared norm, with no squared copy of the gradient (eagerly); the column sums
        # from such a copy (eagerly, ATen's norm over rows is ten times slower than the copy and a sum), in
        # blocks of rows (compiled, twice as fast)
        row_sums = torch.linalg.vector_norm(grad, dim=-1, keepdim=True, dtype=dtype).square()
        g = grad.to(dtype)
        col_sums = reduce_rows(g * g, "sum", -2)
        row_mean = row_sums / cols + hp["eps1"]
        col_mean = col_sums / rows + hp["eps1"]
        _lerp_into(buffers["exp_avg_sq_row"], row_mean, hp["one_minus_beta2"])
        _lerp_into(buffers["exp_avg_sq_col"], col_mean, hp["one_minus_beta2"])
        # mean(r) / r once per row here, not once per element in the next two passes
        carried = {"row_factor": row_factor(buffers["exp_avg_sq_row"])}
        if flags["scale_parameter"]:
            # by rows: compiled, one loop reads the parameter and the gradient (for row_sums)
            param_norm = norm_from(param, PER_TENSOR, by_rows=True)
            carried["param_rms"] = param_norm / math.sqrt(count_from(param, PER_TENSOR))
        return carried

    @staticmethod
    def update_rms(
        param: torch.Tensor, grad: torch.Tensor, buffers: dict[str, torch.Tensor], hp: Hyperparameters, flags: Flags
    ) -> dict[str, torch.Tensor]:
        """Second pass: the mean square of the preconditioned gradient ``u``, and from it the step's scale per
        tensor (relative step, parameter scale, update clipping), computed once here rather than per element in
        the last pass."""
        g = grad.to(accumulation_dtype(grad))
        inverse = _inverse(hp["row_factor"], buffers["exp_avg_sq_col"])
        update_ms = sum_from(g * g * inverse, PER_TENSOR, by_rows=True) / count_from(grad, PER_TENSOR)
        step_size = hp["rho"] * torch.clamp(hp["param_rms"], min=hp["eps2"]) if flags["scale_parameter"] else hp["rho"]
        return {"scale": step_size / torch.clamp(update_ms.sqrt() * hp["inv_clip"], min=1.0)}

    @staticmethod
    def update_param(
        param: torch.Tensor, grad: torch.Tensor, buffers: dict[str, torch.Tensor], hp: Hyperparameters, flags: Flags
    ) -> None:
        """Third pass: the clipped, scaled update (through the first moment if kept) and the weight decay."""
        dtype = accumulation_dtype(grad)
        inverse = _inverse(hp["row_factor"], buffers["exp_avg_sq_col"])
        update = grad.to(dtype) * inverse.sqrt() * hp["scale"]
        if flags["first_moment"]:
            update = _lerp_into(buffers["exp_avg"], update, 1.0 - hp["beta1"])
        if param.dtype == dtype:
            if flags["decay"]:
                param.mul_(hp["decay_factor"])
            param.sub_(update)
        else:  # one rounding to the parameter's dtype
            value = param.to(dtype) * hp["decay_factor"] if flags["decay"] else param.to(dtype)
            param.copy_(value - update)

    # RMS(p) and the moments, then RMS(u), then the step: three passes over the tensor.
    phases = ("update_moments", "update_rms", "update_param")


def inverse_second_moment(row: torch.Tensor, col: torch.Tensor) -> torch.Tensor:
    """``1 / v = (mean(r) / r) / c`` for factored moments ``r`` (``(..., rows, 1)``) and ``c``
    (``(..., 1, cols)``), in at least float32, clamped to the dtype's largest number (where an all-zero row
    meets an all-zero column); its square root is the preconditioner, taken once, last.

    Example:
        >>> inverse_second_moment(torch.tensor([[1.0], [4.0]]), torch.tensor([[0.5, 2.0]]))
        tensor([[5.0000, 1.2500],
                [1.2500, 0.3125]])
    """
    return _inverse(row_factor(row), col)


def row_factor(row: torch.Tensor) -> torch.Tensor:
    """``mean(r) / r`` of factored row moments ``r`` (``(..., rows, 1)``), in at least float32: the row part of
    :func:`inverse_second_moment`.

    Example:
        >>> row_factor(torch.tensor([[1.0], [4.0]]))
        tensor([[2.5000],
                [0.6250]])
    """
    row = row.to(accumulation_dtype(row))
    return row.mean(dim=-2, keepdim=True) / row


def _inverse(factor: torch.Tensor, col: torch.Tensor) -> torch.Tensor:
    """``(mean(r) / r) / c`` from the row factor (:func:`row_factor`), clamped to the dtype's largest number."""
    col = col.to(factor.dtype)
    return (factor / col).clamp_max(torch.finfo(factor.dtype).max)


def _lerp_into(buffer: torch.Tensor, value: torch.Tensor, weight: Any) -> torch.Tensor:
    """``buffer <- buffer + weight * (value - buffer)`` in ``value``'s dtype, stored in ``buffer``'s; returns
    the new value in ``value``'s dtype (the buffer itself when the dtypes agree)."""
    if buffer.dtype == value.dtype:
        return buffer.lerp_(value, weight)
    new = buffer.to(value.dtype).lerp(value, weight)
    buffer.copy_(new)
    return new
