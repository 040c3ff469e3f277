"""Command-line argument rewriting shared by ``lightning-opt`` and the recipes' config lookup."""

from __future__ import annotations

from collections.abc import Callable, Collection, Sequence
from typing import Any


def map_option_values(argv: Sequence[Any], keys: Collection[str], transform: Callable[[str], str]) -> list[Any]:
    """A copy of ``argv`` in which the value of every option in ``keys`` went through ``transform``.

    Both spellings are handled: ``--key=value`` and ``--key value``. Entries that are not strings (a
    LightningCLI ``args`` list may hold dicts) are left alone.

    Args:
        argv: command-line arguments without the program name.
        keys: the option names whose values are rewritten (``"--optimizer"``, ``"-c"``...).
        transform: maps one value to its replacement; its exceptions propagate.

    Example:
        >>> map_option_values(["fit", "--x", "a", "--x=b", "--y", "c"], {"--x"}, str.upper)
        ['fit', '--x', 'A', '--x=B', '--y', 'c']
    """
    result = list(argv)
    for index, arg in enumerate(result):
        if not isinstance(arg, str):
            continue
        key, equals, value = arg.partition("=")
        if key not in keys:
            continue
        if equals:
            result[index] = f"{key}={transform(value)}"
        elif index + 1 < len(result) and isinstance(result[index + 1], str):
            result[index + 1] = transform(result[index + 1])
    return result
