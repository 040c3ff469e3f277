"""Parameter-side regularisers: Norm Loss and CPR, as plain functions and as an option of every optimizer.

Both act on the parameters themselves, not on the gradient, once per step:

- **Norm Loss** (Georgiou et al., arXiv:2103.06583) adds ``factor * sum over units of (1 - ||w_unit||)^2`` to
  the loss, which steers each output unit (a row of a weight, an output channel of a convolution) towards
  unit norm. Its gradient, ``2 * factor * (1 - 1 / ||w_unit||) * w_unit``, is applied decoupled from the
  loss gradient, like AdamW's weight decay, to the parameter as it was at the start of the step:
  ``p <- p * (1 - 2 * lr * factor * (1 - 1 / (||p_unit|| + eps)))``. This is the form of pytorch_optimizer's
  Ranger21 (which also applies it before its own update, with its ``eps`` added to the norm).
- **CPR**, constrained parameter regularisation (Franke et al., arXiv:2311.09058), replaces weight decay by
  an upper bound ``R(p) = ||p||^2 <= kappa`` on each tensor, enforced with a Lagrange multiplier ``lambda``
  updated after the optimizer's step: ``lambda <- max(0, lambda + mu / n * (R(p) - kappa))`` (``n`` the
  tensor's number of elements, as in the authors' code: ``mu`` acts on the mean-square violation, so
  ``mu = 1`` suits tensors of any size), then ``p <- p - 2 * lambda * p`` (the gradient of ``lambda * R``;
  not scaled by the learning rate, as in the paper's default). ``kappa`` is set by the paper's warm start:
  ``R(p)`` right after the tensor's ``warm_start``-th update, then fixed; the constraint acts from the next
  step on. (The paper's other initialisations, a uniform bound, a multiple of ``R`` at initialisation and
  the inflection-point rule, are not provided.)

A *unit* is as in :mod:`lightning_opt.transforms.gradient`: for a tensor of two or more dimensions, a slice
along its first dimension; a 0-d or 1-D tensor (a bias, a gain) is one unit, so Norm Loss pulls the norm of
a whole bias vector towards 1, as Ranger21 does. Give biases and normalisation gains a parameter group of
their own without a regulariser if that is not wanted.

Inside this package's optimizers, a parameter group chooses one with the key ``"regularizer"``
(``"norm_loss"`` or ``"cpr"``) and sets its numbers with the keys of :data:`REGULARIZER_DEFAULTS`; they are
validated when the group is added (:func:`check_regularizer`), travel with the group through
``state_dict``, pickling and copies, and run inside the same compiled graph as the update, in its last phase
(the one that writes the parameter: earlier phases, such as NSGDA's momentum with its L2 term or Adafactor's
parameter RMS, read the parameter as it was before Norm Loss). CPR keeps
``lambda`` and ``kappa`` per tensor in the optimizer state (``"cpr_lagrange"``, ``"cpr_kappa"``, float32, or
float64 for float64 parameters), so a checkpoint resumes them exactly.

References:
    Georgiou, Schmitt, Bäck, Chen & Lew, "Norm Loss: An efficient yet effective regularization method for
    deep neural networks", arXiv:2103.06583.
    Franke, Hefenbrock, Koehler & Hutter, "Improving Deep Learning Optimization through Constrained Parameter
    Regularization", arXiv:2311.09058.
    pytorch_optimizer's ``Ranger21`` (its ``norm_loss_factor``).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any, Optional, Union

import torch

from lightning_opt.transforms.arith import Scalar
from lightning_opt.transforms.gradient import unit_norm
from lightning_opt.transforms.reductions import count_from, norm_from
from lightning_opt.validation import check_choice, check_float, check_positive_int

NORM_LOSS_FACTOR = 1e-4
"""Default ``norm_loss_factor`` (Ranger21's)."""
NORM_LOSS_EPS = 1e-8
"""Added to each unit's norm before dividing by it (Ranger21 adds its ``eps``, 1e-8 by default)."""
CPR_MU = 1.0
"""Default ``cpr_mu``, the step of the Lagrange multiplier per unit of mean-square violation (the paper's)."""
CPR_WARM_START = 1000
"""Default ``cpr_warm_start``: the update after which ``kappa`` is taken (the authors' code's default)."""
MAX_WARM_START = 1 << 24
"""The largest ``cpr_warm_start``: step counts are compared in float32, exact up to 2**24."""

REGULARIZERS = ("norm_loss", "cpr")
"""The names a parameter group's ``"regularizer"`` may take (or ``None``)."""
REGULARIZER_DEFAULTS: dict[str, Any] = {
    "regularizer": None,
    "norm_loss_factor": NORM_LOSS_FACTOR,
    "cpr_mu": CPR_MU,
    "cpr_warm_start": CPR_WARM_START,
}
"""The group keys of the regularisers and the values a group that does not set them gets."""
REGULARIZER_KEYS: dict[str, tuple[str, ...]] = {"norm_loss": ("norm_loss_factor",), "cpr": ("cpr_mu", "cpr_warm_start")}
"""The group keys (of :data:`REGULARIZER_DEFAULTS`) that each regulariser reads besides ``"regularizer"``."""
REGULARIZER_BUFFERS: dict[str, tuple[str, ...]] = {"norm_loss": (), "cpr": ("cpr_lagrange", "cpr_kappa")}
"""The per-tensor state each regulariser keeps (one number per tensor)."""
REGULARIZER_STATE = frozenset(name for names in REGULARIZER_BUFFERS.values() for name in names)
"""Every state name the regularisers use."""
BEFORE_UPDATE = frozenset({"norm_loss"})
"""The regularisers applied before the optimizer's own update (the others are applied after it)."""
STEP = "regularizer_step"
"""The per-tensor hyper-parameter under which the engine passes each tensor's step count to CPR."""


def check_regularizer(
    regularizer: Any = None,
    norm_loss_factor: Any = NORM_LOSS_FACTOR,
    cpr_mu: Any = CPR_MU,
    cpr_warm_start: Any = CPR_WARM_START,
    lr: Any = 1.0,
) -> dict[str, Any]:
    """Validate a parameter group's regulariser and its numbers; return them normalised (without ``lr``, the
    group's learning rate, which Norm Loss needs to be a number: Adafactor's ``lr=None`` is refused with it).

    Example:
        >>> check_regularizer("cpr", cpr_warm_start=10)["cpr_warm_start"]
        10
        >>> check_regularizer("norm")
        Traceback (most recent call last):
        ...
        ValueError: Invalid regularizer: 'norm' (expected one of None, 'norm_loss', 'cpr')
        >>> check_regularizer("cpr", cpr_mu=0.0)
        Traceback (most recent call last):
        ...
        ValueError: Invalid cpr_mu: 0.0 (expected > 0.0)
    """
    if regularizer is not None and (not isinstance(regularizer, str) or regularizer not in REGULARIZERS):
        check_choice("regularizer", regularizer, (None, *REGULARIZERS))  # type: ignore[arg-type]
    if regularizer == "norm_loss" and (isinstance(lr, bool) or not isinstance(lr, (int, float))):
        raise ValueError(
            f"Invalid regularizer: 'norm_loss' (its step is the group's lr times norm_loss_factor, but lr is {lr!r}; "
            "give the group a number lr)"
        )
    warm_start = check_positive_int("cpr_warm_start", cpr_warm_start)
    if warm_start > MAX_WARM_START:
        raise ValueError(f"Invalid cpr_warm_start: {cpr_warm_start!r} (expected <= {MAX_WARM_START})")
    return {
        "regularizer": regularizer,
        "norm_loss_factor": check_float("norm_loss_factor", norm_loss_factor, low=0.0),
        "cpr_mu": check_float("cpr_mu", cpr_mu, low=0.0, low_inclusive=False),
        "cpr_warm_start": warm_start,
    }


def norm_loss_scale(
    param: torch.Tensor, lr_times_factor: Scalar, eps: Scalar = NORM_LOSS_EPS, start: Optional[int] = None
) -> torch.Tensor:
    """The per-unit factor of :func:`norm_loss_`: ``1 - 2 * lr_times_factor * (1 - 1 / (||p_unit|| + eps))``,
    in at least float32, with kept dimensions so that it broadcasts against ``param``."""
    norm = unit_norm(param, start)
    return 1 - 2 * lr_times_factor * (1 - 1 / (norm + eps))


def norm_loss_(
    param: torch.Tensor, lr_times_factor: Scalar, eps: Scalar = NORM_LOSS_EPS, start: Optional[int] = None
) -> torch.Tensor:
    """In place, one decoupled Norm Loss step: ``p <- p * (1 - 2 * lr * factor * (1 - 1 / (||p_unit|| + eps)))``.

    A unit whose norm is above 1 shrinks, one below 1 grows (a zero unit stays zero: its factor multiplies
    zeros). The norms are taken in at least float32.

    Args:
        param: the parameter, changed in place and returned.
        lr_times_factor: the learning rate times ``norm_loss_factor``.
        eps: added to each unit's norm.
        start: the first dimension of a unit (:func:`~lightning_opt.transforms.gradient.unit_start`); by default
            each slice along the first dimension of a tensor of two or more dimensions, and the whole of a
            0-d or 1-D tensor.

    Example:
        >>> p = torch.tensor([[3.0, 4.0], [0.3, 0.4]])
        >>> norm_loss_(p, 0.05)
        tensor([[2.7600, 3.6800],
                [0.3300, 0.4400]])
    """
    return param.mul_(norm_loss_scale(param, lr_times_factor, eps, start))


def cpr_(
    param: torch.Tensor,
    lagrange: torch.Tensor,
    kappa: torch.Tensor,
    mu: Scalar,
    warm_start: Scalar,
    step: Union[int, float, torch.Tensor],
    start: int = 0,
) -> torch.Tensor:
    """In place, one CPR step for a tensor that has just taken its ``step``-th optimizer update.

    - ``step < warm_start``: nothing changes;
    - ``step == warm_start``: ``kappa <- R(p) = ||p||^2``, the bound from now on;
    - ``step > warm_start``: ``lambda <- max(0, lambda + mu / n * (R(p) - kappa))``, then
      ``p <- p * (1 - 2 * lambda)``.

    Args:
        param: the parameter, after the optimizer's update; changed in place and returned.
        lagrange: the Lagrange multiplier ``lambda`` (start it at 0), changed in place; its shape is that of
            the reduction over dimensions ``start, ...`` of ``param`` (kept), or 0-d for ``start=0``.
        kappa: the bound, changed in place at the warm-start step (any value before it).
        mu: the multiplier's step per unit of mean-square violation (``> 0``).
        warm_start: the step after which ``kappa`` is taken.
        step: this step's count, a number or a tensor that broadcasts against ``lagrange``.
        start: the first dimension of a tensor (``0`` for a plain tensor; the engine's stacks use ``1``).

    Example:
        >>> p, lagrange, kappa = torch.tensor([3.0, 4.0]), torch.tensor(0.0), torch.tensor(0.0)
        >>> cpr_(p, lagrange, kappa, 0.001, 1, 1), kappa
        (tensor([3., 4.]), tensor(25.))
        >>> p.mul_(2.0)  # the optimizer grows the tensor: R = 100 > 25
        tensor([6., 8.])
        >>> cpr_(p, lagrange, kappa, 0.001, 1, 2), lagrange  # lambda = 0.001 / 2 * (100 - 25)
        (tensor([5.5500, 7.4000]), tensor(0.0375))
    """
    squared = norm_from(param, start).square() if start > 0 else _squared_norm(param)
    if not isinstance(step, torch.Tensor):
        step = torch.tensor(float(step), dtype=squared.dtype, device=squared.device)
    kappa.copy_(torch.where(step == warm_start, squared, kappa))
    violation = (lagrange + mu / count_from(param, start) * (squared - kappa)).clamp_min(0)
    lagrange.copy_(torch.where(step > warm_start, violation, lagrange))
    return param.mul_(1 - 2 * lagrange)


def _squared_norm(param: torch.Tensor) -> torch.Tensor:
    """``||param||^2`` as a 0-d tensor in at least float32 (also for a 0-d ``param``)."""
    return torch.linalg.vector_norm(param, dtype=torch.promote_types(param.dtype, torch.float32)).square()


def regularizer_numbers(group: Mapping[str, Any]) -> dict[str, float]:
    """The group numbers the engine passes to :func:`apply_regularizer` for ``group``'s regulariser (none for
    none): Norm Loss reads ``lr * norm_loss_factor``, CPR ``mu`` and ``warm_start``."""
    name = group.get("regularizer")
    if name == "norm_loss":
        factor = group.get("norm_loss_factor", NORM_LOSS_FACTOR)
        return {"norm_loss_lr_factor": float(group["lr"]) * factor}
    if name == "cpr":
        return {
            "cpr_mu": group.get("cpr_mu", CPR_MU),
            "cpr_warm_start": float(group.get("cpr_warm_start", CPR_WARM_START)),
        }
    return {}


def apply_regularizer(
    name: str,
    param: torch.Tensor,
    buffers: Mapping[str, torch.Tensor],
    hyperparameters: Mapping[str, Any],
    unit_start: int,
) -> None:
    """Apply the regulariser ``name`` to a stack of the engine (``(k, *view)`` tensors), in place.

    ``hyperparameters`` holds the numbers of :func:`regularizer_numbers` and, for CPR, each tensor's step
    count under :data:`STEP`; ``buffers`` holds CPR's ``(k, 1, ..., 1)`` state; ``unit_start`` is the first
    dimension of a unit in the stack.
    """
    if name == "norm_loss":
        norm_loss_(param, hyperparameters["norm_loss_lr_factor"], NORM_LOSS_EPS, unit_start)
    elif name == "cpr":
        cpr_(
            param, buffers["cpr_lagrange"], buffers["cpr_kappa"], hyperparameters["cpr_mu"],
            hyperparameters["cpr_warm_start"], hyperparameters[STEP], 1,
        )
    else:
        raise ValueError(f"Invalid regularizer: {name!r} (expected one of {', '.join(REGULARIZERS)})")


def regularizer_state_dtype(param: torch.Tensor) -> torch.dtype:
    """The dtype of a regulariser's per-tensor state: float64 for float64 parameters, else float32."""
    return torch.float64 if param.dtype == torch.float64 else torch.float32


def init_regularizer_state(
    name: Optional[str], param: torch.Tensor, state: dict[str, Any], view: Sequence[int]
) -> None:
    """Add the zero per-tensor state of regulariser ``name`` that ``state`` lacks, shaped ``(1,) * len(view)``
    so that it broadcasts against the stack of ``view``\\ s."""
    for buffer in REGULARIZER_BUFFERS.get(name or "", ()):
        if buffer not in state:
            state[buffer] = torch.zeros((1,) * len(view), dtype=regularizer_state_dtype(param), device=param.device)
