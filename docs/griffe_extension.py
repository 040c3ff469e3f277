"""Griffe extension for the API reference (used by ``mkdocs.yml``; not part of the package).

Two things the sources say in their own way:

* The wheel installs the repository's ``recipes/`` folder as ``lightning_opt.recipes`` (``package-dir`` in
  ``pyproject.toml``), but griffe reads the checkout, where ``lightning_opt/`` has no ``recipes`` folder. The
  extension loads ``recipes/`` and attaches it to ``lightning_opt`` under that name, so the reference shows the
  import paths users type.
* The docstrings head their doctests ``Example:``, which griffe's Google-style parser takes for a plain
  admonition (the ``>>>`` lines would be read as Markdown). The extension reads them as ``Examples:`` sections,
  rendered as code.
* The docstrings also use two reStructuredText forms that Markdown would show as plain text: Sphinx roles
  (``:class:`~pkg.Name```), shown as the code ``Name``, and literal blocks (a paragraph ending in ``::`` and an
  indented block), shown as code blocks.
"""

from __future__ import annotations

import re
from typing import Any

import griffe

_EXAMPLE_HEADER = re.compile(r"^(\s*)Example:[ \t]*$", flags=re.MULTILINE)
_SPHINX_ROLE = re.compile(r":(?:py:)?(?:class|meth|func|mod|attr|data|obj|exc|const):`(~?)([^`]+)`")


class LightningOptReference(griffe.Extension):
    """Attach ``recipes`` to ``lightning_opt``; read ``Example:`` as examples, Sphinx roles and ``::`` as code."""

    def on_package(self, *, pkg: griffe.Module, loader: griffe.GriffeLoader, **kwargs: Any) -> None:
        if pkg.name != "lightning_opt":
            return
        if "recipes" not in pkg.members:
            pkg.set_member("recipes", loader.load("recipes", try_relative_path=False))
        _docstrings_to_markdown(pkg)


def _docstrings_to_markdown(obj: griffe.Object) -> None:
    """Rewrite the docstrings of ``obj`` and of its members (not aliases) in place, as described above."""
    if obj.docstring is not None:
        text = _EXAMPLE_HEADER.sub(r"\1Examples:", obj.docstring.value)
        text = _SPHINX_ROLE.sub(lambda match: f"`{_role_text(match)}`", text)
        obj.docstring.value = _fence_literal_blocks(text)
    for member in obj.members.values():
        if not member.is_alias:
            _docstrings_to_markdown(member)


def _role_text(match: re.Match[str]) -> str:
    """``:class:`~a.b.C``` reads ``C``; ``:meth:`a.b``` reads ``a.b``."""
    shorten, target = match.groups()
    return target.rsplit(".", 1)[-1] if shorten else target


def _indent(line: str) -> int:
    return len(line) - len(line.lstrip())


def _fence_literal_blocks(text: str) -> str:
    """Turn each reStructuredText literal block (``para::`` + indented block) into a fenced Markdown block."""
    lines = text.split("\n")
    out: list[str] = []
    index = 0
    while index < len(lines):
        line = lines[index]
        start = index + 1
        while start < len(lines) and not lines[start].strip():
            start += 1
        if not line.rstrip().endswith("::") or start == len(lines) or _indent(lines[start]) <= _indent(line):
            out.append(line)
            index += 1
            continue
        end = start
        while end < len(lines) and (not lines[end].strip() or _indent(lines[end]) > _indent(line)):
            end += 1
        while not lines[end - 1].strip():
            end -= 1
        head = line.rstrip()[:-1]  # "Paragraph::" reads "Paragraph:"; a lone "::" disappears
        if head.strip() != ":":
            out += [head, ""]
        margin, block = " " * _indent(line), lines[start:end]
        depth = min(_indent(block_line) for block_line in block if block_line.strip())
        out += [margin + "```", *[margin + block_line[depth:] for block_line in block], margin + "```"]
        index = end
    return "\n".join(out)
