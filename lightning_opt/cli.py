"""``lightning-opt``: LightningCLI with every optimizer of the package resolvable by its short name.

The model and datamodule default to the digits recipe (:mod:`lightning_opt.recipes.digits`) but any
``LightningModule`` / ``LightningDataModule`` can be given by class path. Besides LightningCLI's own
subcommands (``fit``, ``validate``, ``test``, ``predict``) there is ``lightning-opt optimizers``, which
lists the registry, ``lightning-opt tails LOGDIR...``, the gradient-tail report of logged runs
(:mod:`lightning_opt.tails.command`), and ``lightning-opt study NAME``, which runs a study of the optimizers
(:mod:`lightning_opt.studies.command`).

This module is the light entry point: it imports torch and the registry, not Lightning, so that
``lightning-opt optimizers`` starts quickly. The Lightning subcommands import
:mod:`lightning_opt.lightning_cli` (the ``LightningOptCLI`` class and the fit report) when they run.

Example::

    lightning-opt optimizers
    lightning-opt fit --config configs/digits.yaml                                  # AdaLo
    lightning-opt fit --config configs/digits.yaml --optimizer AdamAtan2 --optimizer.lr 3e-3
    lightning-opt fit --config configs/digits.yaml --optimizer.help AdaLo           # its arguments
    lightning-opt tails logs/digits                                                 # gradient tails
    lightning-opt study lr --optimizers AdamW AdaLo                                 # a study: table and PNG
"""

from __future__ import annotations

import difflib
import importlib
import sys
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import torch

from lightning_opt.arguments import map_option_values
from lightning_opt.factories import optimizer_class_for_name, torch_optimizer_names
from lightning_opt.registry import REGISTRY, OptimizerSpec, find_spec

# Lightning is imported only by the subcommands that need it: the LightningCLI subclass, the fit report and
# the defaults (DEFAULT_MODEL...) live in lightning_opt.lightning_cli; ``lightning_opt.cli.LightningOptCLI``
# still works (module __getattr__ below).
_LIGHTNING_NAMES = ("LightningOptCLI", "DEFAULT_MODEL", "DEFAULT_DATA", "format_fit_report", "describe_optimizer")

PROG = "lightning-opt"
"""The command's name in usage lines and error messages."""

OPTIMIZERS_COMMAND = "optimizers"
"""The extra subcommand that prints the registry."""

TAILS_COMMAND = "tails"
"""The extra subcommand that reports gradient tails from TensorBoard logs."""

STUDY_COMMAND = "study"
"""The extra subcommand that runs a study (``lightning-opt study NAME``) and writes its table and PNG."""

DESCRIPTION = (
    "Train with post-Adam optimizers (--optimizer AdaLo, NSGDA, AdamAtan2...). "
    f"'lightning-opt {OPTIMIZERS_COMMAND}' lists them all; 'lightning-opt {TAILS_COMMAND} LOGDIR' reports "
    "gradient tails logged by GradientTailMonitor; "
    f"'lightning-opt {STUDY_COMMAND} NAME' runs a study (lr, warmup, norm, accumulation, tails, time, memory). "
    "'lightning-opt --version' prints the version."
)


def __getattr__(name: str) -> Any:
    """``LightningOptCLI`` and the fit report, imported (with Lightning) on first use (PEP 562)."""
    if name in _LIGHTNING_NAMES:
        return getattr(importlib.import_module("lightning_opt.lightning_cli"), name)
    raise AttributeError(f"module 'lightning_opt.cli' has no attribute {name!r}")


def unknown_optimizer_message(name: str) -> str | None:
    """Explain why ``--optimizer name`` cannot resolve, or return ``None`` if it may.

    Only bare names are judged: a dotted class path, a JSON/YAML value or a file is left to LightningCLI.
    A bare name resolves when it names a registered optimizer or a ``torch.optim`` class, in any case (see
    :func:`qualify_optimizer_names`), or when it is the exact name of another ``torch.optim.Optimizer``
    subclass that is defined. The suggestions for a typo are drawn from the first two kinds only.

    Args:
        name: the value given after ``--optimizer`` (or ``--optimizer.help``).

    Example:
        >>> unknown_optimizer_message("AdaLo") is None
        True
        >>> unknown_optimizer_message("adamw") is None  # registry and torch.optim names: any case
        True
        >>> print(unknown_optimizer_message("adaloo").splitlines()[0])
        Invalid --optimizer: 'adaloo' is not the name of an optimizer. Did you mean 'AdaLo' or 'AdaNorm' or 'Adam'?
    """
    if "." in name or name[:1] in "{[" or name.lower() in ("null", "none") or Path(name).is_file():
        return None
    if optimizer_class_for_name(name) is not None:
        return None
    if name in {cls.__name__ for cls in _subclasses(torch.optim.Optimizer)}:
        return None
    # Suggestions come from the names of the naming rule only (the registry's, then torch.optim's), not from
    # whatever other package happens to be imported, so that the same typo always gets the same answer.
    lowered = {known_name.lower(): known_name for known_name in (*REGISTRY, *sorted(torch_optimizer_names()))}
    close = [lowered[match] for match in difflib.get_close_matches(name.lower(), list(lowered), n=3, cutoff=0.6)]
    hint = f" Did you mean {' or '.join(repr(c) for c in close)}?" if close else ""
    return (
        f"Invalid --optimizer: {name!r} is not the name of an optimizer.{hint}\n"
        f"  lightning-opt's optimizers: {', '.join(REGISTRY)} (details: lightning-opt {OPTIMIZERS_COMMAND})\n"
        "  also accepted: any torch.optim class (Adam, AdamW, SGD...) or a full class path (my_pkg.MyOptimizer)"
    )


def _subclasses(cls: type) -> set[type]:
    found: set[type] = set()
    for sub in cls.__subclasses__():
        found |= {sub} | _subclasses(sub)
    return found


def qualify_optimizer_names(argv: Sequence[str]) -> list[str]:
    """Replace a short name after ``--optimizer`` / ``--optimizer.help`` by its full class path.

    The rule is the factory's (:func:`~lightning_opt.factories.build_optimizer`): a registered name or a
    ``torch.optim`` class name, in any case (``adalo``, ``ADAMW``). LightningCLI alone matches the exact
    name among all imported ``torch.optim.Optimizer`` subclasses, so another installed package with a class
    of the same name (``adam_atan2_pytorch.AdamAtan2``) would make ``--optimizer AdamAtan2`` ambiguous once
    imported; here the package's own names, then torch's, win. Any other name is left to LightningCLI.

    Example:
        >>> qualify_optimizer_names(["fit", "--optimizer", "AdamAtan2", "--optimizer=adalo"])
        ['fit', '--optimizer', 'lightning_opt.AdamAtan2', '--optimizer=lightning_opt.AdaLo']
        >>> qualify_optimizer_names(["fit", "--optimizer.help", "adamw"])
        ['fit', '--optimizer.help', 'torch.optim.AdamW']
    """
    return map_option_values(argv, ("--optimizer", "--optimizer.help"), _class_path)


def _class_path(name: str) -> str:
    """The full class path of a registered or ``torch.optim`` short name (any case); other values unchanged."""
    cls = optimizer_class_for_name(name)
    if cls is None:
        return name
    return f"{'lightning_opt' if find_spec(name) is not None else 'torch.optim'}.{cls.__name__}"


def format_optimizer_table(registry: Mapping[str, OptimizerSpec] = REGISTRY) -> str:
    """A plain-text table of the registry: name, state buffers per parameter, loss-driven, paper, summary.

    Args:
        registry: the specs to list.

    Example:
        >>> print(format_optimizer_table().splitlines()[0])  # doctest: +NORMALIZE_WHITESPACE
        name  state/param  loss-driven  paper  summary
    """
    header = ("name", "state/param", "loss-driven", "paper", "summary")
    rows = [header] + [
        (spec.name, str(spec.state_buffers), "yes" if spec.loss_driven else "no", spec.paper or "-", spec.summary)
        for spec in registry.values()
    ]
    widths = [max(len(row[column]) for row in rows) for column in range(len(header) - 1)]
    return "\n".join(
        "  ".join([cell.ljust(width) for cell, width in zip(row[:-1], widths)] + [row[-1]]) for row in rows
    )


def _optimizers_command(argv: Sequence[str]) -> int:
    usage = f"usage: lightning-opt {OPTIMIZERS_COMMAND} [-h]\n\nList every optimizer of lightning-opt."
    if any(arg in ("-h", "--help") for arg in argv):
        print(usage)
        return 0
    if argv:
        print(f"{usage}\nerror: unexpected arguments: {' '.join(argv)}", file=sys.stderr)
        return 2
    print(format_optimizer_table())
    print(
        "\nTrain with one: lightning-opt fit --optimizer NAME (or the full path lightning_opt.NAME)."
        "\nIts arguments:  lightning-opt fit --optimizer.help NAME"
    )
    return 0


def main(args: Sequence[str] | None = None) -> int:
    """Entry point of the ``lightning-opt`` command.

    Args:
        args: the command-line arguments without the program name; ``None`` reads ``sys.argv[1:]``.

    Returns:
        The exit status (0); LightningCLI, ``tails`` and ``study`` exit with status 2 on a bad argument.

    Example:
        >>> main(["optimizers"])  # doctest: +ELLIPSIS
        name ...
        0
    """
    argv = list(sys.argv[1:] if args is None else args)
    if argv[:1] == ["--version"]:
        from importlib.metadata import version

        print(f"lightning-opt {version('lightning-opt')}")
        return 0
    if argv[:1] == [OPTIMIZERS_COMMAND]:
        return _optimizers_command(argv[1:])
    if argv[:1] == [TAILS_COMMAND]:
        from lightning_opt.tails.command import run as tails_command

        return tails_command(argv[1:])
    if argv[:1] == [STUDY_COMMAND]:
        from lightning_opt.studies.command import run as study_command

        return study_command(argv[1:])
    from lightning_opt.recipes import resolve_config_arguments

    try:
        argv = resolve_config_arguments(argv)  # --config digits: the config installed with the package
    except ValueError as error:
        print(f"lightning-opt: error: {error}", file=sys.stderr)
        return 2
    if args is None:
        # LightningCLI reads sys.argv itself; passing args as well would make it warn about the mix.
        sys.argv[1:] = qualify_optimizer_names(argv)
    from lightning_opt.lightning_cli import LightningOptCLI

    if args is None:
        LightningOptCLI()
    else:
        LightningOptCLI(argv)
    return 0


if __name__ == "__main__":
    sys.exit(main())
