"""Griffe extension for the API reference (used by ``mkdocs.yml``; not part of the package).

Two things the sources say in their own way:

* The wheel installs the repository's ``recipes/`` folder as ``lightning_opt.recipes`` (``package-dir`` in
  ``pyproject.toml``), but griffe reads the checkout, where ``lightning_opt/`` has no ``recipes`` folder. The
  extension loads ``recipes/`` and attaches it to ``lightning_opt`` under that name, so the reference shows the
  import paths users type.
* The docstrings head their doctests ``Example:``, which griffe's Google-style parser takes for a plain
  admonition (the ``>>>`` lines would be read as Markdown). The extension reads them as ``Examples:`` sections,
  rendered as code.
"""

from __future__ import annotations

import re
from typing import Any

import griffe

_EXAMPLE_HEADER = re.compile(r"^(\s*)Example:[ \t]*$", flags=re.MULTILINE)


class LightningOptReference(griffe.Extension):
    """Attach ``recipes`` to ``lightning_opt`` and read ``Example:`` as an examples section."""

    def on_package(self, *, pkg: griffe.Module, loader: griffe.GriffeLoader, **kwargs: Any) -> None:
        if pkg.name != "lightning_opt":
            return
        if "recipes" not in pkg.members:
            pkg.set_member("recipes", loader.load("recipes", try_relative_path=False))
        _rename_example_sections(pkg)


def _rename_example_sections(obj: griffe.Object) -> None:
    if obj.docstring is not None:
        obj.docstring.value = _EXAMPLE_HEADER.sub(r"\1Examples:", obj.docstring.value)
    for member in obj.members.values():
        if not member.is_alias:
            _rename_example_sections(member)
