"""Argument checks shared by every optimizer and callback.

Each check raises ``ValueError("Invalid <name>: <value>")`` so that a bad hyper-parameter is reported at
construction time with the argument's name and the offending value, in the style of ``torch.optim``.

Besides the obvious ranges (``lr >= 0``, ``0 <= beta < 1``), the optimizers refuse values that are legal
numbers but cannot train a float32 model, with two package-wide bounds:

- :data:`FLOAT32_MAX`: every number an update reads (the folded ``-lr * a``, ``1 - lr * weight_decay``,
  a clipping threshold...) is converted to the parameter's dtype or to a float32 scalar tensor on the
  compiled path; a number beyond float32's range fails there ("cannot be converted without overflow")
  or becomes ``inf``.
- :data:`MAX_STEP_SIZE` (``2**24``): the largest step size an optimizer may ever take, that is the
  multiplier of its update direction (a unit-sized direction for AdamAtan2 and NSGDA, the gradient
  momentum for AdaLo). float32 has a 24-bit significand, so a weight of order 1 moved by ``2**24`` or more
  is lost entirely in the rounding of the sum: one step destroys the model. Real step sizes are below 10.
- :func:`check_decay_factor`: decoupled weight decay multiplies the weights by ``1 - step * weight_decay``;
  that factor must stay in ``[0, 1]`` (below 0 the "decay" flips every weight's sign, and below -1 it grows
  them geometrically until they overflow).
"""

from __future__ import annotations

import inspect
import math
from collections.abc import Callable, Mapping, Sequence
from typing import Any, TypeVar

T = TypeVar("T")

__all__ = [
    "FLOAT32_MAX",
    "MAX_STEP_SIZE",
    "check_betas",
    "check_bool",
    "check_choice",
    "check_decay_factor",
    "check_float",
    "check_float32",
    "check_param_group",
    "check_param_groups",
    "check_positive_int",
    "check_probability",
    "check_step_size",
    "in_parameter_group",
]

FLOAT32_MAX = 3.4028234663852886e38
"""``torch.finfo(torch.float32).max``: the largest number an update may read (see the module docstring)."""
MAX_STEP_SIZE = 2.0**24
"""Step sizes must stay below this (16777216); see the module docstring for why."""


def _invalid(name: str, value: Any, why: str = "") -> ValueError:
    suffix = f" ({why})" if why else ""
    return ValueError(f"Invalid {name}: {value!r}{suffix}")


def check_float(
    name: str,
    value: Any,
    *,
    low: float | None = None,
    high: float | None = None,
    low_inclusive: bool = True,
    high_inclusive: bool = True,
) -> float:
    """Return ``value`` as a finite ``float`` inside the given bounds, or raise ``ValueError``.

    Args:
        name: the argument's name, quoted in the error message.
        value: the value to check; ``bool`` is rejected, any other real number is accepted.
        low: lower bound, or ``None`` for none.
        high: upper bound, or ``None`` for none.
        low_inclusive: whether ``value == low`` is allowed.
        high_inclusive: whether ``value == high`` is allowed.

    Example:
        >>> check_float("beta1", 0.9, low=0.0, high=1.0, high_inclusive=False)
        0.9
    """
    if isinstance(value, bool) or not _is_real(value):
        raise _invalid(name, value, "expected a real number")
    try:
        number = float(value)
    except OverflowError:  # an int >= 2**1024 (10**400, say) has no float
        raise _invalid(name, value, "expected a finite number") from None
    if not math.isfinite(number):
        raise _invalid(name, value, "expected a finite number")
    if low is not None and (number < low or (number == low and not low_inclusive)):
        raise _invalid(name, value, f"expected {'>=' if low_inclusive else '>'} {low}")
    if high is not None and (number > high or (number == high and not high_inclusive)):
        raise _invalid(name, value, f"expected {'<=' if high_inclusive else '<'} {high}")
    return number


def check_float32(name: str, value: Any) -> float:
    """Return ``value`` if it is a number in ``(0, FLOAT32_MAX]``: positive and representable in float32.

    For positive constants that an update or a gradient transform reads in float32 (a floor, a scale).

    Example:
        >>> check_float32("eps", 3.5e38)
        Traceback (most recent call last):
        ...
        ValueError: Invalid eps: 3.5e+38 (expected <= 3.4028234663852886e+38)
    """
    return check_float(name, value, low=0.0, low_inclusive=False, high=FLOAT32_MAX)


def check_probability(name: str, value: Any) -> float:
    """Return ``value`` if it lies in ``[0, 1)``, the range of an EMA coefficient such as ``beta1``."""
    return check_float(name, value, low=0.0, high=1.0, high_inclusive=False)


def check_positive_int(name: str, value: Any) -> int:
    """Return ``value`` if it is an ``int`` greater than zero (``bool`` is rejected)."""
    if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
        raise _invalid(name, value, "expected an integer > 0")
    return value


def check_bool(name: str, value: Any) -> bool:
    """Return ``value`` if it is a ``bool``; a truthy string or number is an error, not a guess."""
    if not isinstance(value, bool):
        raise _invalid(name, value, "expected True or False")
    return value


def check_choice(name: str, value: Any, choices: Sequence[str]) -> str:
    """Return ``value`` if it is one of ``choices``."""
    if value not in choices:
        raise _invalid(name, value, f"expected one of {', '.join(map(repr, choices))}")
    return value


def _is_real(value: Any) -> bool:
    if isinstance(value, (str, bytes)):  # float("0.5") works, but a string is not a number
        return False
    try:
        float(value)
    except OverflowError:  # a huge int is a real number; check_float reports it as not finite
        return True
    except (TypeError, ValueError):
        return False
    # Tensors with more than one element and complex numbers fail float(); 0-d tensors pass.
    return not isinstance(value, complex)


def check_betas(betas: Any) -> tuple[float, float]:
    """Return ``(beta1, beta2)`` if ``betas`` is a pair of numbers in ``[0, 1)``."""
    try:
        beta1, beta2 = betas
    except (TypeError, ValueError):
        raise _invalid("betas", betas, "expected a pair (beta1, beta2)") from None
    return check_probability("beta1", beta1), check_probability("beta2", beta2)


def check_step_size(name: str, value: Any, step_size: float, formula: str, **numbers: float) -> None:
    """Raise ``ValueError`` naming ``name`` unless the largest possible step size is below :data:`MAX_STEP_SIZE`.

    Args:
        name: the argument blamed in the message.
        value: its value.
        step_size: the largest step size the optimizer can take with these hyper-parameters.
        formula: how ``step_size`` was computed, quoted in the message (``"lr * a * pi / 2 with a={a:g}"``);
            a ``str.format`` template filled with ``numbers``, only when the check fails (it runs every step).
        numbers: the values the template names.

    Example:
        >>> check_step_size("lr", 1e20, 1e20, "lr")
        Traceback (most recent call last):
        ...
        ValueError: Invalid lr: 1e+20 (the largest step size lr = 1e+20 must be below 2**24 = 16777216)
    """
    if not step_size < MAX_STEP_SIZE:  # also catches nan
        formula = formula.format(**numbers)
        raise _invalid(name, value, f"the largest step size {formula} = {step_size:.4g} must be below 2**24 = 16777216")


def check_decay_factor(name: str, value: Any, step_times_decay: float, formula: str, **numbers: float) -> None:
    """Raise ``ValueError`` naming ``name`` unless the decoupled decay factor ``1 - step * weight_decay`` is in [0, 1].

    Args:
        name: the argument blamed in the message.
        value: its value.
        step_times_decay: the largest ``step size * weight_decay`` the optimizer can reach.
        formula: how ``step_times_decay`` was computed, quoted in the message (``"{lr:g} * weight_decay"``), a
            template filled with ``numbers`` as in :func:`check_step_size`.
        numbers: the values the template names.

    Example:
        >>> check_decay_factor("weight_decay", 2.0, 2.0, "lr * weight_decay")
        Traceback (most recent call last):
        ...
        ValueError: Invalid weight_decay: 2.0 (the decay factor 1 - lr * weight_decay = -1 must stay in [0, 1]: \
expected lr * weight_decay <= 1)
    """
    if not step_times_decay <= 1.0:
        factor, formula = 1.0 - step_times_decay, formula.format(**numbers)
        why = f"the decay factor 1 - {formula} = {factor:.4g} must stay in [0, 1]: expected {formula} <= 1"
        raise _invalid(name, value, why)


def in_parameter_group(index: int, check: Callable[..., T], values: Mapping[str, Any]) -> T:
    """``check(**values)``, with ``[parameter group <index>]`` appended to the message of a ``ValueError``.

    Optimizers validate each parameter group's own hyper-parameters with the function that validates their
    constructor arguments; the suffix says which group was wrong.

    Example:
        >>> in_parameter_group(2, check_probability, {"name": "momentum", "value": 1.5})
        Traceback (most recent call last):
        ...
        ValueError: Invalid momentum: 1.5 (expected < 1.0) [parameter group 2]
    """
    try:
        return check(**values)
    except ValueError as error:
        raise ValueError(f"{error} [parameter group {index}]") from None


def check_param_group(
    index: int, group: Mapping[str, Any], defaults: Mapping[str, Any], check: Callable[..., dict[str, Any]]
) -> dict[str, Any]:
    """Validate one parameter group with the function that validates the optimizer's constructor arguments.

    Every argument of ``check`` is taken from the group, or from ``defaults`` where the group does not set
    it, so that a bound that involves two hyper-parameters (``lr / kappa``) sees the values the group will
    use. A ``ValueError`` names the group (see :func:`in_parameter_group`).

    Args:
        index: the group's position in ``optimizer.param_groups``.
        group: the parameter group (its ``"params"`` are ignored).
        defaults: the optimizer's defaults.
        check: returns the validated, normalised values as a dict, keyed by its argument names.

    Returns:
        What ``check`` returns.

    Example:
        >>> def check(lr):
        ...     return {"lr": check_float("lr", lr, low=0.0)}
        >>> check_param_group(1, {"params": [], "lr": -1}, {"lr": 0.1}, check)
        Traceback (most recent call last):
        ...
        ValueError: Invalid lr: -1 (expected >= 0.0) [parameter group 1]
    """
    names = _argument_names(check)
    return in_parameter_group(index, check, {name: group.get(name, defaults[name]) for name in names})


def check_param_groups(optimizer: Any, check: Callable[..., dict[str, Any]]) -> None:
    """Validate every parameter group of ``optimizer`` before a step, as :func:`check_param_group` does.

    A scheduler (or the user) may have changed a group's ``lr`` since construction. Only groups whose values
    changed since they were last found valid are checked again, so the cost per step is a tuple comparison
    per group (the snapshots live in the optimizer's ``__dict__``, outside its state_dict and pickles).

    Args:
        optimizer: a ``torch.optim.Optimizer`` whose ``defaults`` hold every argument of ``check``.
        check: as in :func:`check_param_group`.
    """
    names = _argument_names(check)
    checked = optimizer.__dict__.setdefault("_checked_group_values", {})
    for index, group in enumerate(optimizer.param_groups):
        values = tuple(group.get(name, optimizer.defaults[name]) for name in names)
        if checked.get(index) != values:
            in_parameter_group(index, check, dict(zip(names, values)))
            checked[index] = values


def _argument_names(check: Callable[..., Any]) -> tuple[str, ...]:
    names = _ARGUMENTS.get(check)
    if names is None:
        names = _ARGUMENTS[check] = tuple(inspect.signature(check).parameters)
    return names


_ARGUMENTS: dict[Callable[..., Any], tuple[str, ...]] = {}
