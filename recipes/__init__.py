"""Small, real training tasks (a ``LightningModule`` and a ``LightningDataModule`` each), runnable by config.

Every recipe trains in about a minute on a laptop CPU, so optimizers can be compared end to end::

    lightning-opt fit --config configs/digits.yaml --optimizer NSGDA   # in a checkout of the repository
    lightning-opt fit --config digits --optimizer NSGDA                # anywhere: the config installed with the wheel

The recipes live in the repository's top-level ``recipes/`` folder and install as ``lightning_opt.recipes``;
their YAML configs, the top-level ``configs/`` folder, install as ``lightning_opt/configs``. This module
finds those configs by name (:func:`find_config`) without importing Lightning.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from pathlib import Path

from lightning_opt.arguments import map_option_values

CONFIG_DIR: Path = Path(__file__).resolve().parent.parent / "configs"
"""The folder of the recipes' YAML configs. It lies beside this package in both layouts: ``configs/`` beside
``recipes/`` in a checkout (and its editable install), ``lightning_opt/configs`` beside ``lightning_opt/recipes``
in an installed wheel."""

CONFIG_FLAGS = ("--config", "-c")
"""The command-line flags whose value :func:`resolve_config_arguments` resolves."""

_NAME = re.compile(r"[\w.-]+(/[\w.-]+)*")


def config_names() -> list[str]:
    """The names of the packaged configs: paths relative to :data:`CONFIG_DIR` without ``.yaml``.

    Example:
        >>> config_names()[:2]
        ['callbacks/agc_then_tails', 'callbacks/softclip_then_tails']
        >>> "digits" in config_names()
        True
    """
    return sorted(path.relative_to(CONFIG_DIR).with_suffix("").as_posix() for path in CONFIG_DIR.rglob("*.yaml"))


def find_config(value: str) -> str:
    """What ``--config value`` should read: the file itself if it exists, else the packaged config of that name.

    A value that is not name-like (inline YAML or JSON such as ``{"trainer": ...}``, an absolute path) is
    returned unchanged for LightningCLI to judge. A name-like one that is no file is looked up in
    :data:`CONFIG_DIR` as ``NAME``, ``NAME.yaml`` and, so that the repository's commands work outside a
    checkout, without a leading ``configs/``.

    Args:
        value: the value given after ``--config`` (or ``-c``).

    Returns:
        ``value`` or the path of the packaged config, as a string.

    Raises:
        ValueError: if ``value`` is name-like, is no file and names no packaged config; the message lists
            the packaged names.

    Example:
        >>> Path(find_config("digits")) == CONFIG_DIR / "digits.yaml"
        True
        >>> find_config('{"seed_everything": 1}')
        '{"seed_everything": 1}'
    """
    if not isinstance(value, str) or _NAME.fullmatch(value) is None or ".." in value.split("/"):
        return value
    if Path(value).is_file():
        return value
    names = [value, value[len("configs/") :] if value.startswith("configs/") else value]
    for name in names:
        for candidate in (CONFIG_DIR / name, CONFIG_DIR / f"{name}.yaml"):
            if candidate.is_file():
                return str(candidate)
    raise ValueError(
        f"--config {value!r}: no such file, and no config of that name is installed with lightning-opt. "
        f"Installed configs: {', '.join(config_names())} (e.g. --config digits)"
    )


def resolve_config_arguments(argv: Sequence[str]) -> list[str]:
    """Command-line arguments with each ``--config NAME`` (``--config=NAME``, ``-c NAME``) made a path.

    Args:
        argv: command-line arguments without the program name.

    Returns:
        A copy of ``argv`` in which every config value went through :func:`find_config`.

    Raises:
        ValueError: from :func:`find_config`, for a value that is neither a file nor a packaged name.

    Example:
        >>> args = resolve_config_arguments(["fit", "--config", "digits", "--config=callbacks/agc_then_tails"])
        >>> [Path(arg).relative_to(CONFIG_DIR).as_posix() for arg in args[2:3]]
        ['digits.yaml']
        >>> args[3] == "--config=" + str(CONFIG_DIR / "callbacks" / "agc_then_tails.yaml")
        True
    """
    return map_option_values(argv, CONFIG_FLAGS, find_config)
