"""Argument checks shared by every optimizer and callback.

Each check raises ``ValueError("Invalid <name>: <value>")`` so that a bad hyper-parameter is reported at
construction time with the argument's name and the offending value, in the style of ``torch.optim``.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

__all__ = [
    "check_betas",
    "check_bool",
    "check_choice",
    "check_float",
    "check_positive_int",
    "check_probability",
]


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
    number = float(value)
    if not math.isfinite(number):
        raise _invalid(name, value, "expected a finite number")
    if low is not None and (number < low or (number == low and not low_inclusive)):
        raise _invalid(name, value, f"expected {'>=' if low_inclusive else '>'} {low}")
    if high is not None and (number > high or (number == high and not high_inclusive)):
        raise _invalid(name, value, f"expected {'<=' if high_inclusive else '<'} {high}")
    return number


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
