"""``ParameterFilter``: which of a module's parameters a callback acts on, chosen by name patterns."""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from fnmatch import fnmatchcase
from typing import Union

import torch

Patterns = Union[str, Sequence[str], None]
"""One ``fnmatch`` pattern, a list of them, or ``None``; plain strings so that YAML configs can set them."""


class ParameterFilter:
    """Select parameters by their names in ``module.named_parameters()``.

    A parameter is selected when it matches one of ``include`` (every parameter when ``include`` is
    ``None``) and none of ``exclude``. Patterns are case-sensitive ``fnmatch`` patterns over the full
    dotted name (``"encoder.*"``, ``"*.bias"``, ``"head.weight"``).

    Args:
        include: the patterns a parameter must match (any of them); ``None`` selects every parameter.
        exclude: the patterns that deselect a parameter (any of them).

    Example:
        >>> model = torch.nn.Sequential(torch.nn.Linear(2, 3), torch.nn.Linear(3, 1))
        >>> [name for name, _ in ParameterFilter(exclude="*.bias").named_parameters(model)]
        ['0.weight', '1.weight']
        >>> [name for name, _ in ParameterFilter(include=["1.*"]).named_parameters(model)]
        ['1.weight', '1.bias']
    """

    def __init__(self, include: Patterns = None, exclude: Patterns = None) -> None:
        self.include = None if include is None else _patterns("include", include, allow_empty=False)
        self.exclude = () if exclude is None else _patterns("exclude", exclude, allow_empty=True)

    def __call__(self, name: str) -> bool:
        """Whether the parameter called ``name`` is selected."""
        if self.include is not None and not any(fnmatchcase(name, pattern) for pattern in self.include):
            return False
        return not any(fnmatchcase(name, pattern) for pattern in self.exclude)

    def named_parameters(self, module: torch.nn.Module) -> Iterator[tuple[str, torch.nn.Parameter]]:
        """The selected ``(name, parameter)`` pairs of ``module``, in module order (shared parameters once)."""
        return ((name, param) for name, param in module.named_parameters() if self(name))

    def selected_ids(self, module: torch.nn.Module) -> dict[int, str]:
        """``id(parameter) -> name`` for the selected parameters of ``module``."""
        return {id(param): name for name, param in self.named_parameters(module)}

    def __repr__(self) -> str:
        return f"{type(self).__name__}(include={self.include!r}, exclude={self.exclude!r})"


def _patterns(name: str, value: Patterns, allow_empty: bool) -> tuple[str, ...]:
    """``value`` as a tuple of non-empty patterns; an empty ``include`` would select nothing, so it is refused."""
    patterns = (value,) if isinstance(value, str) else value
    if (
        not isinstance(patterns, (list, tuple))
        or not (patterns or allow_empty)
        or not all(isinstance(p, str) and p for p in patterns)
    ):
        expected = "an fnmatch pattern or a list of them" + ("" if allow_empty else " (not an empty list)")
        raise ValueError(f"Invalid {name}: {value!r} (expected {expected}, such as 'net.*.weight', or None)")
    return tuple(patterns)
