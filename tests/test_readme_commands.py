"""Every command the README tells a reader to run works from a fresh checkout after its setup (no activated venv).

The setup (``bash scripts/setup.sh``, run by ``scripts/train.sh`` and ``scripts/test.sh``) creates ``.venv``; a
command that starts with a bare ``python`` or ``lightning-opt`` only works with that venv activated, so the README
writes ``.venv/bin/python`` etc. (or a ``make`` target).
"""

from __future__ import annotations

import re
from pathlib import Path

README = Path(__file__).resolve().parents[1] / "README.md"

VENV_COMMANDS = ("python", "python3", "lightning-opt", "tensorboard", "pytest", "pip")
"""Programs that live in .venv/bin after the setup."""

SHELL_LANGUAGES = ("", "bash", "sh", "shell", "console", "text")
_FENCE = re.compile(r"^```([\w-]*)\s*\n(.*?)^```", re.MULTILINE | re.DOTALL)
_INLINE = re.compile(r"(?<!`)`([^`]+)`(?!`)")


def bare_commands(markdown: str) -> list[str]:
    """Shell lines of fenced blocks, and inline code spans, that start a venv program without ``.venv/bin/``.

    In fenced shell blocks every command (also after ``&&``, ``;``, ``|``) counts; among inline spans, those that
    start with ``python``, ``pytest`` or ``pip`` (prose names the ``lightning-opt`` command without a path).

    Example:
        >>> bare_commands("Run `python x.py`, then `.venv/bin/python y.py`.\\n```bash\\nlightning-opt fit\\n```\\n")
        ['lightning-opt fit', 'python x.py']
    """
    found = []
    for language, body in _FENCE.findall(markdown):
        if language not in SHELL_LANGUAGES:
            continue
        for line in body.splitlines():
            command_part = line.split("#", 1)[0]
            for command in re.split(r"&&|\|\||;|\|", command_part):
                words = command.split()
                if words and words[0] in VENV_COMMANDS:
                    found.append(line.strip())
    prose = _FENCE.sub("", markdown)
    for span in _INLINE.findall(prose):
        words = " ".join(span.split()).split(" ")
        if words[0] in ("python", "python3", "pytest", "pip") and len(words) > 1:
            found.append(" ".join(words))
    return found


def test_readme_commands_use_the_venv() -> None:
    assert bare_commands(README.read_text()) == []
