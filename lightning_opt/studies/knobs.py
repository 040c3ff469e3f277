"""The step-size knob of each optimizer: which ``__init__`` argument sets its step, its default and its direction.

Most optimizers take their step from ``lr``; AdaLo takes it from ``kappa`` (its ``lr`` is a multiplier for
schedules, 1.0 by default, and the loss-driven step is ``ell / kappa``: a larger ``kappa``, a smaller step), and
Adafactor's default ``lr=None`` means its relative step (at most ``1e-2``, times the parameter's RMS), so its grid
is centred on ``lr=1e-2``. Every other optimizer, the package's, torch's or one given by class path, uses the
default of its ``lr`` argument.
"""

from __future__ import annotations

import importlib
import inspect
import math
from dataclasses import dataclass
from typing import Optional

import torch

from lightning_opt.factories import optimizer_class_for_name
from lightning_opt.registry import find_spec


@dataclass(frozen=True)
class StepKnob:
    """An ``__init__`` argument that sets an optimizer's step size.

    Args:
        name: the argument (``lr``, ``kappa``).
        default: the value the grids are centred on.
        inverse: ``True`` if a larger value gives a smaller step (AdaLo's ``kappa``).

    Example:
        >>> knob = StepKnob("kappa", 3.0, inverse=True)
        >>> knob.grid(points=3, decades=2.0)  # smallest step first
        (30.0, 3.0, 0.3)
        >>> knob.scaled(10.0), knob.step_scale(0.3)
        (0.3, 10.0)
    """

    name: str
    default: float
    inverse: bool = False

    def __post_init__(self) -> None:
        if not (isinstance(self.default, (int, float)) and math.isfinite(self.default) and self.default > 0):
            raise ValueError(f"Invalid default of {self.name}: {self.default!r} (expected a positive number)")

    def grid(self, points: int = 7, decades: float = 3.0) -> tuple[float, ...]:
        """``points`` values spaced evenly in log scale over ``decades`` decades, centred on the default and
        rounded to three significant digits, smallest step first."""
        if points == 1:
            return (self.default,)
        exponents = [decades * (index / (points - 1) - 0.5) for index in range(points)]
        values = tuple(float(f"{self.default * 10**exponent:.3g}") for exponent in exponents)
        return tuple(reversed(values)) if self.inverse else values

    def scaled(self, factor: float) -> float:
        """The value that makes the step ``factor`` times the default step."""
        return float(f"{(self.default / factor if self.inverse else self.default * factor):.6g}")

    def step_scale(self, value: float) -> float:
        """The step that ``value`` gives, relative to the default's."""
        return self.default / value if self.inverse else value / self.default

    def describe(self) -> str:
        """``lr`` or ``kappa (divides the step)``."""
        return f"{self.name} (divides the step)" if self.inverse else self.name


KNOWN_KNOBS: dict[str, StepKnob] = {
    "AdaLo": StepKnob("kappa", 3.0, inverse=True),
    "Adafactor": StepKnob("lr", 1e-2),
}
"""Knobs that are not "the default of ``lr``", by registered name."""


def optimizer_class(name: str) -> type[torch.optim.Optimizer]:
    """The class ``--optimizer name`` stands for: a registered or ``torch.optim`` name (any case), or a class path.

    Raises:
        ValueError: naming ``name`` if it resolves to no optimizer class.

    Example:
        >>> optimizer_class("adamw").__name__, optimizer_class("lightning_opt.AdaLo").__name__
        ('AdamW', 'AdaLo')
    """
    cls = optimizer_class_for_name(name)
    if cls is None and "." in name:
        module, _, attribute = name.rpartition(".")
        try:
            cls = getattr(importlib.import_module(module), attribute, None)
        except ImportError:
            cls = None
    if not (inspect.isclass(cls) and issubclass(cls, torch.optim.Optimizer)):
        raise ValueError(
            f"{name!r} is not an optimizer: give a name of 'lightning-opt optimizers', a torch.optim class "
            "(AdamW, SGD...) or a class path (my_pkg.MyOptimizer)"
        )
    return cls


def class_path(name: str) -> str:
    """The full class path of an optimizer name, as ``lightning-opt fit`` resolves it.

    Example:
        >>> class_path("adalo"), class_path("AdamW")
        ('lightning_opt.AdaLo', 'torch.optim.AdamW')
    """
    cls = optimizer_class(name)
    if optimizer_class_for_name(name) is None:
        return name
    return f"{'lightning_opt' if find_spec(name) is not None else 'torch.optim'}.{cls.__name__}"


def default_knob(name: str) -> StepKnob:
    """The step knob of the optimizer ``name``: :data:`KNOWN_KNOBS`, else its ``lr`` argument's default.

    Raises:
        ValueError: the optimizer has no ``lr`` argument with a positive default; the message says how to
            name a knob (``--knob NAME=ARGUMENT:CENTRE``).

    Example:
        >>> default_knob("AdaLo"), default_knob("AdamW")
        (StepKnob(name='kappa', default=3.0, inverse=True), StepKnob(name='lr', default=0.001, inverse=False))
    """
    cls = optimizer_class(name)
    spec = find_spec(name) if optimizer_class_for_name(name) is cls else None
    if spec is not None and spec.name in KNOWN_KNOBS:
        return KNOWN_KNOBS[spec.name]
    default = _argument_default(cls, "lr")
    if not (isinstance(default, (int, float)) and not isinstance(default, bool) and default > 0):
        raise ValueError(
            f"{name!r} has no lr default to centre a grid on (found {default!r}): "
            f"give one with --knob {name}=lr:0.001"
        )
    return StepKnob("lr", float(default))


def parse_knob(text: str, optimizers: tuple[str, ...]) -> tuple[str, StepKnob]:
    """Read ``NAME=ARGUMENT:CENTRE`` (``AdamW=lr:3e-4``; ``AdaLo=kappa:3:inverse`` for a knob that divides the
    step) into the optimizer's label and its knob.

    Raises:
        ValueError: the text has not that form, or ``NAME`` is not among ``optimizers``.

    Example:
        >>> parse_knob("AdaLo=kappa:10:inverse", ("AdaLo",))
        ('AdaLo', StepKnob(name='kappa', default=10.0, inverse=True))
    """
    label, _, rest = text.partition("=")
    parts = rest.split(":")
    if not label or len(parts) not in (2, 3) or not parts[0] or (len(parts) == 3 and parts[2] != "inverse"):
        raise ValueError(f"{text!r} is not NAME=ARGUMENT:CENTRE[:inverse] (e.g. AdamW=lr:3e-4)")
    if label not in optimizers:
        raise ValueError(f"{text!r} names {label!r}, which is not among the study's optimizers {list(optimizers)}")
    try:
        centre = float(parts[1])
    except ValueError:
        raise ValueError(f"{text!r}: the centre {parts[1]!r} is not a number") from None
    return label, StepKnob(parts[0], centre, inverse=len(parts) == 3)


def _argument_default(cls: type, name: str) -> Optional[object]:
    try:
        parameter = inspect.signature(cls.__init__).parameters.get(name)
    except (TypeError, ValueError):
        return None
    if parameter is None or parameter.default is inspect.Parameter.empty:
        return None
    default = parameter.default
    return float(default) if isinstance(default, torch.Tensor) and default.numel() == 1 else default


__all__ = ["KNOWN_KNOBS", "StepKnob", "class_path", "default_knob", "optimizer_class", "parse_knob"]
