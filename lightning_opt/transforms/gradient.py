"""Gradient transforms that tame long tails: soft clipping, centralisation, adaptive clipping, normalisation.

Each transform is written once, as a function of one gradient and its parameter, in two forms: a pure
function that returns a new tensor (``soft_clip``...) and an in-place one that rewrites the gradient
(``soft_clip_``...). The same functions serve three ways of using them:

- as plain functions, on any tensors;
- as Lightning callbacks on ``p.grad`` (:mod:`lightning_opt.callbacks.gradient_hooks`), with any optimizer;
- inside this package's optimizers, through their ``grad_transforms`` argument (the update then reads
  the transformed gradient without changing ``p.grad``, and under ``compile=True`` the transform is fused
  into the update kernel).

A *unit* is an output unit: for a tensor of two or more dimensions, one slice along the first dimension
(a row of a ``Linear`` weight, an output channel of a convolution); a 0-d or 1-D tensor (a bias, a gain)
is one unit. Gradient normalisation is the exception: it divides by the norm of the whole tensor. Norms are
accumulated in at least float32, so bfloat16 and float16 gradients work.

Non-finite gradients stay non-finite: a unit holding an inf or NaN still holds a NaN or inf afterwards
(its finite entries may come out as NaN or as 0), so that a GradScaler or ``skip_nonfinite=True`` still
sees the overflow and skips the step. Other units are unaffected.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from typing import Union

import torch

from lightning_opt.transforms.arith import Scalar
from lightning_opt.transforms.reductions import PER_TENSOR, count_from, norm_from, sum_from
from lightning_opt.validation import check_float32

SOFT_CLIP_EPS = 1e-12
"""The seed's floor on both root-mean-squares of :func:`soft_clip`."""
AGC_CLIPPING = 1e-2
"""Default largest ratio of a unit's gradient norm to its parameter norm in :func:`adaptive_clip`
(NFNets' value for batch 4096; the paper finds smaller batches tolerate larger values)."""
AGC_EPS = 1e-3
"""NFNets' floor on a unit's parameter norm, so that zero-initialised units can still move."""
AGC_GRAD_EPS = 1e-6
"""Floor on a unit's gradient norm in :func:`adaptive_clip`, to avoid dividing by zero."""
NORMALIZE_EPS = 1e-8
"""The ``eps`` of :func:`normalize_gradient`'s ``g / (||g|| + eps)`` (also inside the optimizers)."""


def unit_start(tensor: torch.Tensor, start: int | None = None) -> int:
    """The first dimension reduced to get one value per output unit: ``start`` if given (the engine's stacked
    tensors), else 1 for a tensor of two or more dimensions and 0 (the whole tensor) for a 0-d or 1-D one.

    >>> unit_start(torch.zeros(4, 3, 2, 2)), unit_start(torch.zeros(4)), unit_start(torch.zeros(()))
    (1, 0, 0)
    """
    if start is not None:
        return start
    return 1 if tensor.dim() > 1 else 0


def unit_norm(tensor: torch.Tensor, start: int | None = None) -> torch.Tensor:
    """The Euclidean norm of each output unit (kept dimensions, so it broadcasts against ``tensor``).

    Accumulated in at least float32. A 0-d or 1-D tensor has one unit.

    Args:
        tensor: any tensor.
        start: the first dimension of a unit (see :func:`unit_start`); by default each slice along the
            first dimension of a tensor of two or more dimensions is a unit.

    >>> unit_norm(torch.tensor([[3.0, 4.0], [0.0, 1.0]]))
    tensor([[5.],
            [1.]])
    """
    return norm_from(tensor, unit_start(tensor, start))


def unit_rms(tensor: torch.Tensor, start: int | None = None) -> torch.Tensor:
    """The root-mean-square of each output unit (kept dimensions); 0 for an empty tensor.

    >>> unit_rms(torch.tensor([[3.0, 4.0], [0.0, 0.0]]))
    tensor([[3.5355],
            [0.0000]])
    """
    start = unit_start(tensor, start)
    return norm_from(tensor, start) / math.sqrt(count_from(tensor, start))


# ------------------------------------------------------------------------------------------ soft clip
def soft_clip_scale(
    grad: torch.Tensor, param: torch.Tensor, eps: Scalar = SOFT_CLIP_EPS, start: int | None = None
) -> torch.Tensor:
    """The per-unit factor of :func:`soft_clip`: ``min(rms(g), rms(p)) / rms(g)``, both floored at ``eps``."""
    _check_eps(eps, SOFT_CLIP_EPS)
    grad_rms = unit_rms(grad, start).clamp_min(eps)
    param_rms = unit_rms(param, start).clamp_min(eps)
    return torch.minimum(grad_rms, param_rms) / grad_rms


def soft_clip(
    grad: torch.Tensor, param: torch.Tensor, eps: Scalar = SOFT_CLIP_EPS, start: int | None = None
) -> torch.Tensor:
    """Scale each unit's gradient down so that its RMS is at most the RMS of the same unit's parameter.

    The seed author's soft clip: a unit whose gradient is small against its weights is left alone; a
    unit whose gradient would move it by more than its own typical size is scaled down, direction kept.

    Args:
        grad: the gradient.
        param: the parameter, same shape.
        eps: floor on both root-mean-squares (the seed's ``1e-12``). A unit whose parameter is all zeros
            (a zero-initialised bias) gets its gradient scaled to RMS ``eps``: scale-invariant
            optimizers (Adam-like, ``AdamAtan2``, ``NSGDA``) still move it, plain SGD barely does;
            raise ``eps`` (AGC uses ``1e-3`` on norms) or exclude such parameters if that matters.
            A number given here must be positive and representable in float32 (at most 3.4e38, the
            precision of the norms), or ``ValueError`` is raised.
        start: the first dimension of a unit (:func:`unit_start`); the default suits a plain tensor.

    Returns:
        A new tensor; ``grad`` is unchanged (see :func:`soft_clip_` for the in-place form).

    Example:
        >>> grad = torch.tensor([[3.0, 4.0], [0.1, 0.1]])
        >>> param = torch.tensor([[1.0, 1.0], [1.0, -1.0]])
        >>> soft_clip(grad, param)  # row 0: rms 3.54 > 1, scaled to rms 1; row 1 kept
        tensor([[0.8485, 1.1314],
                [0.1000, 0.1000]])

    References:
        The seed blog post, section 5.5 (``_soft_clip``).
    """
    return grad * soft_clip_scale(grad, param, eps, start).to(grad.dtype)


def soft_clip_(
    grad: torch.Tensor, param: torch.Tensor, eps: Scalar = SOFT_CLIP_EPS, start: int | None = None
) -> torch.Tensor:
    """In-place :func:`soft_clip`; returns ``grad``."""
    return scale_units_(grad, soft_clip_scale(grad, param, eps, start))


def scale_units_(grad: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
    """Multiply each output unit of ``grad`` in place by its factor in ``scale`` (kept dimensions, any
    float dtype, as the ``*_scale`` functions return it); returns ``grad``."""
    return grad.mul_(scale.to(grad.dtype))


# --------------------------------------------------------------------------- gradient centralisation
def centralize(grad: torch.Tensor, start: int | None = None) -> torch.Tensor:
    """Subtract from each output unit of a weight's gradient its mean (gradient centralisation).

    Tensors of dimension 0 or 1 (biases, gains) are returned unchanged (as a copy), as in the paper.

    Args:
        grad: the gradient.
        start: the first dimension of a unit (:func:`unit_start`); given, every unit is centralised.

    Returns:
        A new tensor; see :func:`centralize_` for the in-place form.

    Example:
        >>> centralize(torch.tensor([[1.0, 3.0], [2.0, 2.0]]))
        tensor([[-1.,  1.],
                [ 0.,  0.]])

    References:
        Yong et al., "Gradient Centralization: A New Optimization Technique for Deep Neural Networks",
        ECCV 2020, arXiv:2004.01461.
    """
    if start is None and grad.dim() <= 1:
        return grad.clone()
    return grad - _unit_mean(grad, unit_start(grad, start))


def centralize_(grad: torch.Tensor, start: int | None = None) -> torch.Tensor:
    """In-place :func:`centralize`; returns ``grad``."""
    if start is not None or grad.dim() > 1:
        grad.sub_(_unit_mean(grad, unit_start(grad, start)))
    return grad


def _unit_mean(grad: torch.Tensor, start: int) -> torch.Tensor:
    return (sum_from(grad, start) / count_from(grad, start)).to(grad.dtype)


# ------------------------------------------------------------------------- adaptive gradient clipping
def adaptive_clip_scale(
    grad: torch.Tensor,
    param: torch.Tensor,
    clipping: Scalar = AGC_CLIPPING,
    eps: Scalar = AGC_EPS,
    start: int | None = None,
) -> torch.Tensor:
    """The per-unit factor of :func:`adaptive_clip`: 1, or ``clipping * max(|p|, eps) / |g|`` if smaller."""
    _check_eps(eps, AGC_EPS)
    max_norm = unit_norm(param, start).clamp_min(eps) * clipping
    grad_norm = unit_norm(grad, start).clamp_min(AGC_GRAD_EPS)
    return torch.where(grad_norm > max_norm, max_norm / grad_norm, torch.ones_like(grad_norm))


def adaptive_clip(
    grad: torch.Tensor,
    param: torch.Tensor,
    clipping: Scalar = AGC_CLIPPING,
    eps: Scalar = AGC_EPS,
    start: int | None = None,
) -> torch.Tensor:
    """Unit-wise adaptive gradient clipping (AGC): cap each unit's ``|g| / max(|p|, eps)`` at ``clipping``.

    Args:
        grad: the gradient.
        param: the parameter, same shape.
        clipping: the largest allowed ratio of a unit's gradient norm to its parameter norm
            (NFNets: 0.01 at batch size 4096, larger for smaller batches).
        eps: floor on the parameter norm, so that zero-initialised units can still move; as a number,
            positive and at most 3.4e38 (float32), or ``ValueError`` is raised.
        start: the first dimension of a unit (:func:`unit_start`); the default suits a plain tensor.

    Returns:
        A new tensor; see :func:`adaptive_clip_` for the in-place form.

    Example:
        >>> grad = torch.tensor([[3.0, 4.0], [0.001, 0.0]])
        >>> param = torch.tensor([[6.0, 8.0], [1.0, 0.0]])
        >>> adaptive_clip(grad, param, clipping=0.1)  # row 0: |g|/|p| = 0.5 > 0.1, scaled to 0.1 |p| = 1
        tensor([[0.6000, 0.8000],
                [0.0010, 0.0000]])

    References:
        Brock et al., "High-Performance Large-Scale Image Recognition Without Normalization", ICML 2021,
        arXiv:2102.06171, section 4.1.
    """
    return grad * adaptive_clip_scale(grad, param, clipping, eps, start).to(grad.dtype)


def adaptive_clip_(
    grad: torch.Tensor,
    param: torch.Tensor,
    clipping: Scalar = AGC_CLIPPING,
    eps: Scalar = AGC_EPS,
    start: int | None = None,
) -> torch.Tensor:
    """In-place :func:`adaptive_clip`; returns ``grad``."""
    return scale_units_(grad, adaptive_clip_scale(grad, param, clipping, eps, start))


def _check_eps(eps: Scalar, default: float) -> None:
    """Refuse a Python-number ``eps`` outside ``(0, FLOAT32_MAX]`` (the default and tensors, as the compiled
    optimizers pass, are not checked again: this runs for every tensor at every step)."""
    if not isinstance(eps, torch.Tensor) and eps != default:
        check_float32("eps", eps)


# ----------------------------------------------------------------------------- gradient normalisation
def normalize_gradient_scale(
    grad: torch.Tensor, eps: Scalar = NORMALIZE_EPS, start: int | None = None
) -> torch.Tensor:
    """The factor of :func:`normalize_gradient`, ``1 / (||g|| + eps)``, per tensor (kept dimensions), in at
    least float32; ``start`` is the first dimension of a tensor (``None``: the whole of ``grad``; 1 for one of the
    engine's stacks, :data:`~lightning_opt.transforms.reductions.PER_TENSOR`)."""
    _check_eps(eps, NORMALIZE_EPS)
    return 1.0 / (norm_from(grad, 0 if start is None else start) + eps)


def normalize_gradient(grad: torch.Tensor, eps: Scalar = NORMALIZE_EPS, start: int | None = None) -> torch.Tensor:
    """Divide the gradient of a tensor by its norm: ``g / (||g|| + eps)`` (block-normalised gradient).

    Each tensor (a layer's weight, its bias) then moves by a step of a size set by the optimizer alone, whatever
    the scale of its gradient: an exploding or vanishing layer gradient keeps only its direction. The norm is of
    the whole tensor, not of its output units, and is accumulated in at least float32; the division is done in
    that precision too, so a float16 gradient of tiny norm does not overflow.

    Args:
        grad: the gradient.
        eps: added to the norm (``1e-8``): a zero gradient stays zero. A number given here must be positive
            and representable in float32, or ``ValueError`` is raised.
        start: for one of the engine's stacks ``(k, units, width)``, the first dimension of a tensor
            (:data:`~lightning_opt.transforms.reductions.PER_TENSOR`); the default suits a plain tensor.

    Returns:
        A new tensor; see :func:`normalize_gradient_` for the in-place form.

    Example:
        >>> normalize_gradient(torch.tensor([[3.0, 0.0], [0.0, -4.0]]))  # norm 5
        tensor([[ 0.6000,  0.0000],
                [ 0.0000, -0.8000]])

    References:
        arXiv:1711.02257, the reference the seed blog post gives for ``g / (||g|| + eps)``.
    """
    return (grad * normalize_gradient_scale(grad, eps, start)).to(grad.dtype)


def normalize_gradient_(grad: torch.Tensor, eps: Scalar = NORMALIZE_EPS, start: int | None = None) -> torch.Tensor:
    """In-place :func:`normalize_gradient`; returns ``grad``."""
    return grad.copy_(normalize_gradient(grad, eps, start))


# ------------------------------------------------------------------------ transforms inside optimizers
GradientTransform = Callable[[torch.Tensor, torch.Tensor, Mapping[str, Scalar], int], torch.Tensor]

GRADIENT_TRANSFORMS: dict[str, GradientTransform] = {
    "centralize": lambda grad, param, hp, start: centralize(grad, start) if start > PER_TENSOR else grad,
    "adaptive_clip": lambda grad, param, hp, start: adaptive_clip(grad, param, hp["agc_clipping"], start=start),
    "soft_clip": lambda grad, param, hp, start: soft_clip(grad, param, start=start),
    "normalize": lambda grad, param, hp, start: normalize_gradient(grad, start=PER_TENSOR),
}
"""The transforms an optimizer's ``grad_transforms`` may name, applied in the order named, as
``transform(grad, param, hyperparameters, start)`` on the engine's stacked tensors (``start``: the first
dimension of a unit, :data:`~lightning_opt.transforms.reductions.PER_TENSOR` when a whole tensor is one
unit). Each reads its hyper-parameters (``agc_clipping``) from the optimizer's parameter group; ``"normalize"``
divides by the norm of each whole tensor whatever ``start`` says."""

GradTransformsArg = Union[Sequence[str], str, None]


def check_grad_transforms(grad_transforms: GradTransformsArg) -> tuple[str, ...]:
    """Validate an optimizer's ``grad_transforms`` and return it as a tuple (checkpoint-safe).

    >>> check_grad_transforms(["centralize", "soft_clip"])
    ('centralize', 'soft_clip')
    >>> check_grad_transforms("soft_clip")
    ('soft_clip',)
    >>> check_grad_transforms(["clip"])
    Traceback (most recent call last):
    ...
    ValueError: Invalid grad_transforms: ['clip'] (unknown 'clip'; expected names from centralize, adaptive_clip, \
soft_clip, normalize)
    """
    if grad_transforms is None:
        return ()
    names = (grad_transforms,) if isinstance(grad_transforms, str) else grad_transforms
    if not isinstance(names, (list, tuple)):
        raise ValueError(f"Invalid grad_transforms: {grad_transforms!r} (expected a list of transform names)")
    for name in names:
        if not isinstance(name, str):
            raise ValueError(
                f"Invalid grad_transforms: {grad_transforms!r} (expected transform names as strings, got {name!r})"
            )
        if name not in GRADIENT_TRANSFORMS:
            raise ValueError(
                f"Invalid grad_transforms: {grad_transforms!r} (unknown {name!r}; expected names from "
                f"{', '.join(GRADIENT_TRANSFORMS)})"
            )
    if len(set(names)) != len(names):
        raise ValueError(f"Invalid grad_transforms: {grad_transforms!r} (a transform is named twice)")
    return tuple(names)


def check_agc_clipping(agc_clipping: object) -> float:
    """Validate an optimizer's ``agc_clipping``: positive and representable in float32 (the precision of the
    norms it multiplies), so a bound is refused where it would otherwise overflow.

    >>> check_agc_clipping(3.5e38)
    Traceback (most recent call last):
    ...
    ValueError: Invalid agc_clipping: 3.5e+38 (expected <= 3.4028234663852886e+38)
    """
    return check_float32("agc_clipping", agc_clipping)


def apply_gradient_transforms(
    grad: torch.Tensor,
    param: torch.Tensor,
    names: Sequence[str],
    hyperparameters: Mapping[str, Scalar],
    start: int | None = None,
) -> torch.Tensor:
    """Apply the named transforms in order, out of place (``grad`` itself is never changed).

    Args:
        grad: the gradient, a plain tensor or one of the engine's stacks.
        param: the parameter, same shape.
        names: names from :data:`GRADIENT_TRANSFORMS`.
        hyperparameters: what the transforms read (``agc_clipping``).
        start: for a stack, the first dimension of a unit; by default ``grad`` is a plain tensor.
    """
    if names and start is None:  # a plain tensor: as a stack of one
        stacked = grad.unsqueeze(0) if grad.dim() > 1 else grad.reshape(1, 1, -1)
        start = PER_TENSOR + 1 if grad.dim() > 1 else PER_TENSOR
        shape = grad.shape
        grad, param = stacked, param.reshape(stacked.shape)
        for name in names:
            grad = GRADIENT_TRANSFORMS[name](grad, param, hyperparameters, start)
        return grad.reshape(shape)
    for name in names:
        grad = GRADIENT_TRANSFORMS[name](grad, param, hyperparameters, start)
    return grad
