"""``lightning-opt``: LightningCLI with every optimizer of the package resolvable by its short name.

The model and datamodule default to the digits recipe (:mod:`lightning_opt.recipes.digits`) but any
``LightningModule`` / ``LightningDataModule`` can be given by class path. Besides LightningCLI's own
subcommands (``fit``, ``validate``, ``test``, ``predict``) there is ``lightning-opt optimizers``, which
lists the registry, and ``lightning-opt tails LOGDIR...``, the gradient-tail report of logged runs
(:mod:`lightning_opt.tails.command`).

Example::

    lightning-opt optimizers
    lightning-opt fit --config configs/digits.yaml                                  # AdaLo
    lightning-opt fit --config configs/digits.yaml --optimizer AdamAtan2 --optimizer.lr 3e-3
    lightning-opt fit --config configs/digits.yaml --optimizer.help AdaLo           # its arguments
    lightning-opt tails logs/digits                                                 # gradient tails
"""

from __future__ import annotations

import difflib
import sys
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, Optional

import torch
from jsonargparse.typing import PositiveInt
from lightning.pytorch import LightningDataModule, LightningModule, Trainer
from lightning.pytorch.cli import LightningArgumentParser, LightningCLI
from lightning.pytorch.loggers import TensorBoardLogger

import lightning_opt  # noqa: F401  (makes AdaLo, NSGDA, AdamAtan2... resolvable by short name)
import lightning_opt.recipes.digits  # noqa: F401  (makes DigitsClassifier / DigitsDataModule resolvable by short name)
from lightning_opt.registry import REGISTRY, OptimizerSpec

DEFAULT_MODEL = "lightning_opt.recipes.digits.DigitsClassifier"
"""The model used when neither the config nor the command line names one."""

DEFAULT_DATA = "lightning_opt.recipes.digits.DigitsDataModule"
"""The datamodule used when neither the config nor the command line names one."""

OPTIMIZERS_COMMAND = "optimizers"
"""The extra subcommand that prints the registry."""

TAILS_COMMAND = "tails"
"""The extra subcommand that reports gradient tails from TensorBoard logs."""

DESCRIPTION = (
    "Train with post-Adam optimizers (--optimizer AdaLo, NSGDA, AdamAtan2...). "
    f"'lightning-opt {OPTIMIZERS_COMMAND}' lists them all; 'lightning-opt {TAILS_COMMAND} LOGDIR' reports "
    "gradient tails logged by GradientTailMonitor. 'lightning-opt --version' prints the version."
)


class LightningOptCLI(LightningCLI):
    """LightningCLI whose model and datamodule default to the digits recipe and that reports each fit.

    Any ``LightningModule`` / ``LightningDataModule`` may replace the defaults (``--model
    my_pkg.MyModel``, or ``model: class_path: ...`` in a config). After ``fit`` it prints, on rank zero
    only, the final validation metrics, the optimizer, the wall time and where the logs went.

    Args:
        args: command-line style arguments (``["fit", "--config", "configs/digits.yaml"]``); ``None``
            reads ``sys.argv``.
        run: run the subcommand; with ``False`` the arguments carry no subcommand and only the model,
            datamodule and trainer are built.
        **kwargs: passed on to :class:`~lightning.pytorch.cli.LightningCLI` (``trainer_defaults``,
            ``parser_kwargs``...).

    Example::

        cli = LightningOptCLI(["fit", "--trainer.max_epochs=1", "--optimizer", "NSGDA"])
    """

    def __init__(self, args: Sequence[str] | None = None, run: bool = True, **kwargs: Any) -> None:
        self._fit_started: float | None = None
        kwargs.setdefault("save_config_kwargs", {"overwrite": True})
        kwargs.setdefault("parser_kwargs", {"prog": "lightning-opt", "description": DESCRIPTION})
        super().__init__(
            LightningModule,
            LightningDataModule,
            subclass_mode_model=True,
            subclass_mode_data=True,
            args=None if args is None else qualify_optimizer_names(args),
            run=run,
            **kwargs,
        )

    def add_arguments_to_parser(self, parser: LightningArgumentParser) -> None:
        """Make the digits recipe the default model and datamodule; add ``--num_threads``."""
        parser.add_argument(
            "--num_threads",
            type=Optional[PositiveInt],
            default=None,
            help=(
                "CPU threads for intra-op parallelism (torch.set_num_threads). Small models train several "
                "times faster with 1, above all on a busy machine; null keeps torch's default."
            ),
        )
        parser.set_defaults({"model": {"class_path": DEFAULT_MODEL}, "data": {"class_path": DEFAULT_DATA}})

    def parse_arguments(self, parser: LightningArgumentParser, args: Any) -> None:
        """Reject a mistyped ``--optimizer NAME`` with the list of names, then parse as LightningCLI does."""
        argv = sys.argv[1:] if args is None else args
        if isinstance(argv, (list, tuple)):
            for name in _optimizer_names_in(argv):
                problem = unknown_optimizer_message(name)
                if problem is not None:
                    parser.error(problem)
        super().parse_arguments(parser, args)

    def before_instantiate_classes(self) -> None:
        """Apply ``--num_threads`` before anything runs."""
        num_threads = self._get(self.config, "num_threads")
        if num_threads is not None:
            torch.set_num_threads(num_threads)

    def before_fit(self) -> None:
        """Start the clock of the fit."""
        self._fit_started = time.perf_counter()

    def after_fit(self) -> None:
        """Print the result of the fit on rank zero."""
        if not self.trainer.is_global_zero:
            return
        seconds = None if self._fit_started is None else time.perf_counter() - self._fit_started
        print(format_fit_report(self.trainer, seconds), flush=True)


def unknown_optimizer_message(name: str) -> str | None:
    """Explain why ``--optimizer name`` cannot resolve, or return ``None`` if it may.

    Only bare names are judged: a dotted class path, a JSON/YAML value or a file is left to LightningCLI.
    A bare name resolves when it is the name of a ``torch.optim.Optimizer`` subclass that is defined.

    Args:
        name: the value given after ``--optimizer`` (or ``--optimizer.help``).

    Example:
        >>> unknown_optimizer_message("AdaLo") is None
        True
        >>> print(unknown_optimizer_message("adalo").splitlines()[0])
        Invalid --optimizer: 'adalo' is not the name of an optimizer. Did you mean 'AdaLo'?
    """
    if "." in name or name[:1] in "{[" or name.lower() in ("null", "none") or Path(name).is_file():
        return None
    known = {cls.__name__ for cls in _subclasses(torch.optim.Optimizer)}
    if name in known:
        return None
    same_but_case = [known_name for known_name in sorted(known) if known_name.lower() == name.lower()]
    close = same_but_case or difflib.get_close_matches(name, sorted(known), n=3, cutoff=0.6)
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


def _optimizer_names_in(argv: Sequence[Any]) -> list[str]:
    """The values given to ``--optimizer`` and ``--optimizer.help`` in command-line arguments."""
    names = []
    for index, arg in enumerate(argv):
        if not isinstance(arg, str):
            continue
        for flag in ("--optimizer", "--optimizer.help"):
            if arg == flag and index + 1 < len(argv) and isinstance(argv[index + 1], str):
                names.append(argv[index + 1])
            elif arg.startswith(flag + "="):
                names.append(arg[len(flag) + 1 :])
    return names


def qualify_optimizer_names(argv: Sequence[str]) -> list[str]:
    """Replace a registered short name after ``--optimizer`` / ``--optimizer.help`` by its full class path.

    LightningCLI looks short names up among all imported ``torch.optim.Optimizer`` subclasses, so another
    installed package with a class of the same name (``adam_atan2_pytorch.AdamAtan2``) makes
    ``--optimizer AdamAtan2`` ambiguous once imported. In ``lightning-opt`` the package's own names win.

    Example:
        >>> qualify_optimizer_names(["fit", "--optimizer", "AdamAtan2", "--optimizer=AdaLo"])
        ['fit', '--optimizer', 'lightning_opt.AdamAtan2', '--optimizer=lightning_opt.AdaLo']
    """
    result = list(argv)
    for index, arg in enumerate(result):
        key, equals, value = arg.partition("=")
        if key not in ("--optimizer", "--optimizer.help"):
            continue
        if equals and value in REGISTRY:
            result[index] = f"{key}=lightning_opt.{value}"
        elif not equals and index + 1 < len(result) and result[index + 1] in REGISTRY:
            result[index + 1] = f"lightning_opt.{result[index + 1]}"
    return result


def format_fit_report(trainer: Trainer, seconds: float | None) -> str:
    """Describe a finished fit: final validation metrics, optimizer(s), wall time and log directory.

    Args:
        trainer: the trainer after ``fit``.
        seconds: the wall time of the fit, or ``None`` if unknown.

    Returns:
        A few lines of text, the TensorBoard command last.
    """
    metrics = trainer.callback_metrics
    shown = [f"{name} {float(metrics[name]):.4f}" for name in ("val_acc", "val_loss") if name in metrics]
    lines = [
        f"fit finished: {trainer.current_epoch} epochs, {trainer.global_step} steps"
        + ("" if seconds is None else f", {seconds:.1f} s wall time"),
        "  validation: " + (", ".join(shown) if shown else "no val_acc / val_loss logged (validation did not run)"),
    ]
    lines += [f"  optimizer:  {describe_optimizer(optimizer)}" for optimizer in trainer.optimizers]
    logger = trainer.logger
    log_dir = getattr(logger, "log_dir", None) if logger is not None else None
    if log_dir is None:
        lines.append("  logs:       none (no logger)")
    else:
        lines.append(f"  logs:       {log_dir}")
    if isinstance(logger, TensorBoardLogger):
        lines.append(f"  view with:  tensorboard --logdir {logger.root_dir}   (every version of '{logger.name}')")
    return "\n".join(lines)


def describe_optimizer(optimizer: torch.optim.Optimizer) -> str:
    """``Name(hyper=value, ...)`` from the optimizer's defaults (the first group's values where they differ).

    Args:
        optimizer: any ``torch.optim.Optimizer``.

    Example:
        >>> describe_optimizer(torch.optim.SGD([torch.zeros(1, requires_grad=True)], lr=0.1))[:16]
        'SGD(lr=0.1, mome'
    """
    group = optimizer.param_groups[0] if optimizer.param_groups else {}
    values = {key: group.get(key, default) for key, default in optimizer.defaults.items()}
    shown = ", ".join(f"{key}={value!r}" for key, value in values.items() if not callable(value))
    return f"{type(optimizer).__name__}({shown})"


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
        The exit status (0); LightningCLI and ``tails`` exit with status 2 on a bad argument.

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
    from lightning_opt.recipes import resolve_config_arguments

    try:
        argv = resolve_config_arguments(argv)  # --config digits: the config installed with the package
    except ValueError as error:
        print(f"lightning-opt: error: {error}", file=sys.stderr)
        return 2
    if args is None:
        # LightningCLI reads sys.argv itself; passing args as well would make it warn about the mix.
        sys.argv[1:] = qualify_optimizer_names(argv)
        LightningOptCLI()
    else:
        LightningOptCLI(argv)
    return 0


if __name__ == "__main__":
    sys.exit(main())
