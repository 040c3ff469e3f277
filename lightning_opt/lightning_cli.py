"""The LightningCLI behind ``lightning-opt fit`` (and ``validate``, ``test``, ``predict``).

This module imports Lightning; :mod:`lightning_opt.cli` imports it only when a Lightning subcommand runs, so
that ``lightning-opt optimizers`` starts without it.

Besides LightningCLI's own behaviour, :class:`LightningOptCLI`

- reports a bad optimizer, scheduler, callback, model or datamodule argument on one line that names the
  command-line key, the value and the bound (exit status 2), whether the type check of the parser or the
  class's own ``__init__`` rejects it;
- shows help without Sphinx markup;
- takes ``--regularizer.name norm_loss`` or ``cpr`` (:class:`RegularizerOptions`), which puts Norm Loss or CPR
  on the weights that would be decayed, as :func:`~lightning_opt.build_optimizer` does;
- turns Lightning's progress bar off when standard output is not a terminal (unless the command line or the
  config sets ``trainer.enable_progress_bar``) and prints one line per epoch instead;
- prints a summary after ``fit``: the validation metrics, the optimizer, the callbacks, the time and the logs.
"""

from __future__ import annotations

import argparse
import functools
import importlib
import inspect
import re
import sys
import time
import warnings
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, NoReturn, Optional

import torch
from jsonargparse import DefaultHelpFormatter
from jsonargparse.typing import PositiveInt
from lightning.pytorch import Callback, LightningDataModule, LightningModule, Trainer
from lightning.pytorch.callbacks import ModelSummary, ProgressBar
from lightning.pytorch.cli import LightningArgumentParser, LightningCLI, SaveConfigCallback
from lightning.pytorch.loggers import TensorBoardLogger
from typing_extensions import override

import lightning_opt  # noqa: F401  (makes AdaLo, NSGDA, AdamAtan2... resolvable by short name)
import lightning_opt.callbacks  # noqa: F401  (makes LossFeeder, SoftClip... resolvable by short name)
import lightning_opt.recipes.digits  # noqa: F401  (makes DigitsClassifier / DigitsDataModule resolvable by short name)
from lightning_opt.cli import DESCRIPTION, PROG, qualify_optimizer_names, unknown_optimizer_message
from lightning_opt.engine.base import BaseOptimizer
from lightning_opt.factories import param_groups_for_weight_decay, regularizer_group_keys
from lightning_opt.optim.lookahead import Lookahead
from lightning_opt.transforms.constraints import REGULARIZER_KEYS

DEFAULT_MODEL = "lightning_opt.recipes.digits.DigitsClassifier"
"""The model used when neither the config nor the command line names one."""

DEFAULT_DATA = "lightning_opt.recipes.digits.DigitsDataModule"
"""The datamodule used when neither the config nor the command line names one."""

RECIPE_MODULES = ("lightning_opt.recipes.", "recipes.")
"""Modules of the package's own recipes, whose ``configure_optimizers`` ``--optimizer`` replaces by design."""

_OVERRIDE_WARNING = r".*configure_optimizers` will be overridden by"

_PROBED_MODULES = ("lightning_opt.", "torch.optim.")
"""Optimizers whose constructor is cheap and free of side effects: checked right after parsing."""


# ------------------------------------------------------------------------------------------------ help text
_ROLE = re.compile(r":(?:py:)?(?:mod|class|func|meth|attr|obj|data|exc|ref|doc|const):`~?([^`<]*?)(?:\s*<[^>]*>)?`")
_LITERAL = re.compile(r"``([^`]+)``")
_SEE_ABOVE = re.compile(r"[,;]?\s*(?:\(\s*)?see above(?:\s*\))?", re.IGNORECASE)


def plain_help(text: str) -> str:
    """Help text without Sphinx markup: roles become their target, literals lose their backticks.

    A role ``:class:`~pkg.mod.Name``` becomes ``Name``, ``:mod:`pkg.mod``` becomes ``pkg.mod``, ````x````
    becomes ``x``, and "see above" (which points into a docstring the help does not show) is dropped.

    Args:
        text: a help string or description taken from a docstring.

    Example:
        >>> plain_help("see :mod:`lightning_opt.transforms` and :class:`~torch.optim.SGD`; ``lr``, see above.")
        'see lightning_opt.transforms and SGD; lr.'
    """
    text = _ROLE.sub(lambda match: match.group(1).split(".")[-1] if "~" in match.group(0) else match.group(1), text)
    return _SEE_ABOVE.sub("", _LITERAL.sub(r"\1", text))


class PlainHelpFormatter(DefaultHelpFormatter):
    """jsonargparse's help formatter, with the Sphinx markup of docstring-derived help removed."""

    @override
    def _get_help_string(self, action: argparse.Action) -> str:
        return plain_help(super()._get_help_string(action))

    @override
    def _format_text(self, text: str) -> str:
        return super()._format_text(plain_help(text))

    @override
    def start_section(self, heading: Optional[str]) -> None:
        super().start_section(None if heading is None else plain_help(heading))


# ------------------------------------------------------------------------------------------------ regulariser
@dataclass
class RegularizerOptions:
    """A parameter-side regulariser on the decayed parameters, instead of their weight decay (``--regularizer``).

    With a ``name``, ``--optimizer`` (one of the package's optimizers, or :class:`~lightning_opt.Lookahead`
    around one) gets two groups, split as :func:`~lightning_opt.build_optimizer` splits them: the weights
    with Norm Loss or CPR (:mod:`lightning_opt.transforms.constraints`) and no weight decay, and the biases,
    norm gains and embeddings with neither. Unset numbers take the regulariser's defaults. In a config::

        regularizer:
          name: cpr
          cpr_warm_start: 500

    Args:
        name: norm_loss (Norm Loss, arXiv:2103.06583) or cpr (CPR, arXiv:2311.09058); null for none.
        norm_loss_factor: Norm Loss's factor (default 1e-4); only with name norm_loss.
        cpr_mu: the step of CPR's Lagrange multipliers (default 1.0); only with name cpr.
        cpr_warm_start: the update after which CPR fixes each tensor's bound (default 1000); only with name cpr.
        keep_weight_decay: also apply --optimizer.weight_decay to the regularised weights (Ranger21 runs Norm
            Loss beside weight decay); by default the regulariser replaces it.

    Example:
        >>> RegularizerOptions("cpr", cpr_warm_start=500).group_keys()
        {'regularizer': 'cpr', 'cpr_mu': 1.0, 'cpr_warm_start': 500}
    """

    name: Optional[str] = None
    norm_loss_factor: Optional[float] = None
    cpr_mu: Optional[float] = None
    cpr_warm_start: Optional[int] = None
    keep_weight_decay: bool = False

    def numbers(self) -> dict[str, Any]:
        """The numbers that were set (not ``None``), by group key."""
        return {key: getattr(self, key) for key in ("norm_loss_factor", "cpr_mu", "cpr_warm_start")
                if getattr(self, key) is not None}

    def group_keys(self) -> dict[str, Any]:
        """The decayed group's keys (:func:`~lightning_opt.factories.regularizer_group_keys`); ``{}`` without
        a name. ``ValueError`` naming ``--regularizer.<key>`` and its value for a bad one."""
        numbers = self.numbers()
        if self.name is None:
            given = {**numbers, **({"keep_weight_decay": True} if self.keep_weight_decay else {})}
            if given:
                key, value = next(iter(given.items()))
                raise ValueError(f"Invalid --regularizer.{key}: {value!r} (given without --regularizer.name)")
            return {}
        allowed = REGULARIZER_KEYS.get(self.name, ()) if isinstance(self.name, str) else ()
        for key, value in numbers.items():
            if allowed and key not in allowed:
                raise ValueError(
                    f"Invalid --regularizer.{key}: {value!r} (not a key of --regularizer.name {self.name}, which "
                    f"takes {', '.join(allowed)})"
                )
        try:
            return regularizer_group_keys(self.name, numbers)
        except ValueError as error:
            message = str(error)
            match = re.match(r"Invalid (\w+): ", message)
            key = "name" if match is None or match.group(1) == "regularizer" else match.group(1)
            raise ValueError(f"Invalid --regularizer.{key}: " + message.split(": ", 1)[1]) from error


# ------------------------------------------------------------------------------------------------ errors
class ArgumentProblem(Exception):
    """A bad command-line or config value, explained on one line."""


_COMPONENTS: tuple[tuple[type, str], ...] = (
    (torch.optim.Optimizer, "optimizer"),
    (torch.optim.lr_scheduler.LRScheduler, "lr_scheduler"),
    (torch.optim.lr_scheduler.ReduceLROnPlateau, "lr_scheduler"),
    (Callback, "trainer.callbacks"),
    (LightningModule, "model"),
    (LightningDataModule, "data"),
)
"""The classes LightningCLI builds from the command line, and the key that configures each."""

# What torch.optim calls an argument in its messages ("Invalid learning rate: -1.0").
_TORCH_ARGUMENT_WORDS = {
    "learning rate": "lr",
    "epsilon value": "eps",
    "weight_decay value": "weight_decay",
    "momentum value": "momentum",
    "beta parameter at index 0": "betas",
    "beta parameter at index 1": "betas",
}


def _argument_of(message: str, parameters: Sequence[str]) -> Optional[str]:
    """The ``__init__`` argument an ``Invalid <name>: ...`` message is about, if one can be told."""
    match = re.match(r"Invalid (.+?)(?: value)?: ", message)
    if match is None:
        return None
    name = match.group(1)
    name = _TORCH_ARGUMENT_WORDS.get(name, _TORCH_ARGUMENT_WORDS.get(f"{name} value", name))
    if name in parameters:
        return name
    if re.fullmatch(r"beta\d", name) and "betas" in parameters:  # check_betas names beta1 / beta2
        return "betas"
    return None


def _rejecting_component(error: BaseException) -> Optional[tuple[str, object, BaseException]]:
    """The key and object of the outermost CLI-built class whose ``__init__`` raised ``error``, and the error.

    jsonargparse re-raises a callback's error as the cause of its own, so the causes are searched too.
    """
    seen: set[int] = set()
    pending: list[Optional[BaseException]] = [error]
    while pending:
        current = pending.pop(0)
        if current is None or id(current) in seen:
            continue
        seen.add(id(current))
        traceback = current.__traceback__
        while traceback is not None:
            frame = traceback.tb_frame
            owner = frame.f_locals.get("self") if frame.f_code.co_name == "__init__" else None
            for base, key in _COMPONENTS:
                if owner is not None and isinstance(owner, base):
                    return key, owner, current
            traceback = traceback.tb_next
        pending += [current.__cause__, current.__context__]
    return None


def explain_init_error(error: BaseException, config: Any) -> Optional[str]:
    """One line for a ``ValueError`` raised by the ``__init__`` of a class built from the command line.

    Args:
        error: the exception, with its traceback.
        config: the parsed config of the subcommand, for the value the user gave.

    Returns:
        ``"Invalid --optimizer.betas: [1.5, 0.9] (AdaLo: Invalid beta1: 1.5 (expected < 1.0))"``, or ``None``
        when the error did not come from such an ``__init__``.
    """
    found = _rejecting_component(error)
    if found is None:
        return None
    key, owner, cause = found
    cls = type(owner)
    message = " ".join(str(cause).split())
    parameters = list(inspect.signature(cls.__init__).parameters)
    argument = _argument_of(message, parameters)
    if argument is None:
        return f"Invalid --{key} {cls.__name__}: {message}"
    value = _given_value(config, key, cls, argument)
    shown = " " if value is _MISSING else f": {value!r} "
    return f"Invalid --{key}.{argument}{shown}({cls.__name__}: {message})"


_MISSING = object()


def _given_value(config: Any, key: str, cls: type, argument: str) -> Any:
    """The value of ``argument`` given for the component at ``key`` of class ``cls``, or ``_MISSING``."""
    try:
        node = config[key]
    except (KeyError, TypeError):
        return _MISSING
    nodes = node if isinstance(node, list) else [node]
    for item in nodes:
        class_path = getattr(item, "class_path", None) if item is not None else None
        if class_path is None or class_path.rsplit(".", 1)[-1] != cls.__name__:
            continue
        init_args = getattr(item, "init_args", None)
        if init_args is not None and argument in init_args:
            value = init_args[argument]
            return list(value) if isinstance(value, tuple) else value
    return _MISSING


_PARSER_KEY = re.compile(r'Parser key "([^"]+)":')
_CLASS_PATH = re.compile(r"Problem with given class_path '([^']+)':")
_LITERAL_GOT = re.compile(r"Expected a typing\.Literal\[(.*)\]\. Got value: (.*)")
_EXPECTED_GOT = re.compile(r"Expected a (?:<class ')?([\w\[\], .]+?)(?:'>)?\. Got value: (.*)")


def explain_parse_error(message: str) -> Optional[str]:
    """One line for jsonargparse's nested report of a bad value (above all inside a class given by name).

    Args:
        message: the message jsonargparse passes to ``parser.error``.

    Returns:
        ``"Invalid --optimizer.mode: 'aggressive' (AdaLo expects one of 'adversarial', 'compliant')"``, or
        ``None`` for a message of another shape (then jsonargparse's own report is shown).

    Example:
        >>> explain_parse_error('''Parser key "optimizer":
        ...   Does not validate against any of the Union subtypes
        ...   Errors:
        ...     - Problem with given class_path 'lightning_opt.AdaLo':
        ...         Parser key "kappa":
        ...           Expected a <class 'float'>. Got value: big
        ...     - Expected a <class 'NoneType'>''')
        "Invalid --optimizer.kappa: 'big' (AdaLo expects float)"
    """
    lines = message.splitlines()
    if not lines:
        return None
    first_key = _PARSER_KEY.match(lines[0].strip())
    if first_key is None:
        return None
    key, owner, class_path, detail = first_key.group(1), None, None, lines[1].strip() if len(lines) > 1 else ""
    for index, line in enumerate(lines[1:], start=1):
        found = _CLASS_PATH.search(line)
        if found is None:
            continue
        class_path = found.group(1)
        owner = class_path.rsplit(".", 1)[-1]
        rest = [item.strip() for item in lines[index + 1 :]]
        nested = _PARSER_KEY.match(rest[0]) if rest else None
        if nested is not None:
            key, rest = f"{key}.{nested.group(1)}", rest[1:]
        detail = rest[0] if rest else ""
        break
    else:
        union = _union_mismatch(lines)
        if union is not None:  # an Optional[...] key without a class path (--regularizer.cpr_mu abc)
            return f"Invalid --{key}: {union[0]!r} (expected {union[1]})"
        if not _EXPECTED_GOT.search(detail) and not _LITERAL_GOT.search(detail):
            return None  # a key without a class path: only a plain type mismatch is shortened
    who = f"{owner} expects" if owner else "expected"
    literal = _LITERAL_GOT.search(detail)
    if literal:
        return f"Invalid --{key}: {literal.group(2)!r} ({who} one of {literal.group(1)})"
    expected = _EXPECTED_GOT.search(detail)
    if expected:
        return f"Invalid --{key}: {expected.group(2)!r} ({who} {expected.group(1)})"
    return f"Invalid --{key} ({class_path}): {detail}" if detail else f"Invalid --{key} ({class_path})"


_SUBTYPES = re.compile(r"^\s*Subtypes: \[(.*)\]\s*$")
_GIVEN_VALUE = re.compile(r"^\s*Given value: (.*)$")


def _union_mismatch(lines: Sequence[str]) -> Optional[tuple[str, str]]:
    """The given value and the expected types (``"float or null"``) of jsonargparse's report on a value that
    fits none of a ``Union``'s types, or ``None`` for another report."""
    if len(lines) < 2 or "Does not validate against any of the Union subtypes" not in lines[1]:
        return None
    subtypes = next((m.group(1) for m in map(_SUBTYPES.match, lines) if m), None)
    given = next((m.group(1) for m in map(_GIVEN_VALUE.match, lines) if m), None)
    if subtypes is None or given is None:
        return None
    names = re.sub(r"<class '(?:[\w]+\.)*(\w+)'>", r"\1", subtypes)
    names = re.sub(r"typing\.Literal\[([^\]]*)\]", r"one of \1", names).replace("NoneType", "null")
    parts = [part.strip() for part in re.split(r",\s*(?![^\[]*\])(?=[a-z]|one of)", names) if part.strip()]
    return given, " or ".join(parts)


class LightningOptParser(LightningArgumentParser):
    """LightningCLI's parser: help without Sphinx markup; a bad value inside a class given by name on one line."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        kwargs.setdefault("formatter_class", PlainHelpFormatter)  # also for --optimizer.help, a new parser
        super().__init__(*args, **kwargs)

    @override
    def error(self, message: str, ex: Optional[Exception] = None) -> NoReturn:
        line = explain_parse_error(message)
        if line is None or not self.exit_on_error:
            super().error(message, ex)
        exit_with_one_line(self.prog, line)


def exit_with_one_line(prog: str, line: str) -> NoReturn:
    """Write ``prog: error: line`` (one line) to stderr and exit with status 2, as argparse does."""
    prog = prog.replace(" [options]", "")
    sys.stderr.write(f"{prog}: error: {' '.join(line.split())}\n")
    sys.exit(2)


# ------------------------------------------------------------------------------------------------ the CLI
class LightningOptCLI(LightningCLI):
    """LightningCLI whose model and datamodule default to the digits recipe and that reports each fit.

    Any ``LightningModule`` / ``LightningDataModule`` may replace the defaults (``--model
    my_pkg.MyModel``, or ``model: class_path: ...`` in a config). After ``fit`` it prints, on rank zero
    only, the final validation metrics, the optimizer, the callbacks, the wall time and where the logs went.

    ``--optimizer`` replaces the model's own ``configure_optimizers``. For the package's recipes that is the
    documented way to choose an optimizer, so Lightning's warning about it is not shown; for any other model
    it is, since there the replaced method may have done something (parameter groups, a scheduler).

    Without a terminal on standard output (``lightning-opt fit ... > log``), the progress bar is off and one
    line per epoch is printed instead, unless ``trainer.enable_progress_bar`` is given.

    Args:
        args: command-line style arguments (``["fit", "--config", "configs/digits.yaml"]``); ``None``
            reads ``sys.argv``.
        run: run the subcommand; with ``False`` the arguments carry no subcommand and only the model,
            datamodule and trainer are built.
        **kwargs: passed on to LightningCLI (``trainer_defaults``, ``parser_kwargs``...).

    Example::

        cli = LightningOptCLI(["fit", "--trainer.max_epochs=1", "--optimizer", "NSGDA"])
    """

    def __init__(self, args: Sequence[str] | None = None, run: bool = True, **kwargs: Any) -> None:
        self._fit_started: float | None = None
        kwargs.setdefault("save_config_kwargs", {"overwrite": True})
        kwargs.setdefault("parser_kwargs", {"prog": PROG, "description": DESCRIPTION})
        kwargs.setdefault("parser_class", LightningOptParser)
        super().__init__(
            LightningModule,
            LightningDataModule,
            subclass_mode_model=True,
            subclass_mode_data=True,
            args=None if args is None else qualify_optimizer_names(args),
            run=run,
            **kwargs,
        )

    @override
    def add_arguments_to_parser(self, parser: LightningArgumentParser) -> None:
        """Make the digits recipe the default model and datamodule; add ``--num_threads`` and ``--regularizer``."""
        parser.add_argument(
            "--num_threads",
            type=Optional[PositiveInt],
            default=None,
            help=(
                "CPU threads for intra-op parallelism (torch.set_num_threads). Small models train several "
                "times faster with 1, above all on a busy machine; null keeps torch's default."
            ),
        )
        parser.add_class_arguments(RegularizerOptions, "regularizer", fail_untyped=True)
        parser.set_defaults({"model": {"class_path": DEFAULT_MODEL}, "data": {"class_path": DEFAULT_DATA}})

    @override
    def parse_arguments(self, parser: LightningArgumentParser, args: Any) -> None:
        """Reject a mistyped ``--optimizer NAME`` with the list of names, then parse as LightningCLI does."""
        argv = sys.argv[1:] if args is None else args
        if isinstance(argv, (list, tuple)):
            for name in _optimizer_names_in(argv):
                problem = unknown_optimizer_message(name)
                if problem is not None:
                    parser.error(problem)
        super().parse_arguments(parser, args)
        self._check_optimizer_arguments()
        self._check_regularizer_arguments()

    def _check_optimizer_arguments(self) -> None:
        """Build the package's or torch's optimizer once on a probe tensor, so that a bad argument is reported
        before anything else runs (seeding, data, model); other optimizer classes are left to the real build."""
        config, prog = self._parsed_subcommand()
        node = config.get("optimizer")
        cls = _import_class(getattr(node, "class_path", None))
        if cls is None or not cls.__module__.startswith(_PROBED_MODULES):
            return
        kwargs = _built_init_args(getattr(node, "init_args", None))
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                cls([torch.zeros(2, 2, requires_grad=True)], **kwargs)
        except (ValueError, TypeError) as error:
            line = explain_init_error(error, config)
            if line is not None:
                exit_with_one_line(prog, line)

    def _parsed_subcommand(self) -> tuple[Any, str]:
        """The parsed config of the subcommand (or the whole config without one) and the program name to
        report problems under (``lightning-opt fit``)."""
        subcommand = self.config.get("subcommand")
        config = self.config[subcommand] if subcommand else self.config
        return config, f"{self.parser.prog} {subcommand or ''}".strip()

    def _check_regularizer_arguments(self) -> None:
        """Refuse a bad ``--regularizer`` right after parsing, on one line: a bad key or value, no
        ``--optimizer``, an optimizer that does not run the regularisers (torch's), or one that refuses the
        group (Norm Loss with Adafactor's ``lr=None``)."""
        config, prog = self._parsed_subcommand()
        options = _regularizer_options(config)
        try:
            keys = options.group_keys()
        except ValueError as error:
            exit_with_one_line(prog, str(error))
        if not keys:
            return
        node = config.get("optimizer")
        outer, engine = _optimizer_classes(node)
        shown = f"--regularizer.name: {options.name!r}"
        if outer is None:
            exit_with_one_line(prog, f"Invalid {shown} (needs --optimizer, one of the package's optimizers)")
        if engine is None or not issubclass(engine, BaseOptimizer):
            name = (engine or outer).__name__
            flag = "--optimizer.optimizer" if _is_lookahead(outer) else "--optimizer"
            exit_with_one_line(
                prog,
                f"Invalid {shown} with {flag} {name} (not one of the package's optimizers, which run the "
                "regularisers; see lightning-opt optimizers)",
            )
        kwargs = _engine_init_args(node, outer)
        probe = torch.zeros(2, 2, requires_grad=True)
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                engine([{"params": [probe], **keys}], **kwargs)
        except (ValueError, TypeError) as error:
            message = " ".join(str(error).split())
            exit_with_one_line(prog, f"Invalid {shown} ({engine.__name__}: {message})")

    @override
    def _add_configure_optimizers_method_to_model(self, subcommand: Optional[str]) -> None:
        """Install ``--optimizer`` as LightningCLI does, with two differences: with ``--regularizer.name`` the
        optimizer gets the model's decayed group (with the regulariser) and exempt group, split as
        :func:`~lightning_opt.build_optimizer` splits them; and an optimizer class that builds its parameter
        groups from the model (a ``module_param_groups`` static method: :class:`~lightning_opt.optim.muon.Muon`,
        whose hidden matrices and other tensors take different updates) gets those groups instead of
        ``model.parameters()`` (split further, with a regulariser)."""
        groups = self._module_param_groups(subcommand)
        if groups is None:
            super()._add_configure_optimizers_method_to_model(subcommand)
            return
        model = self.model
        # LightningCLI passes model.parameters() to the optimizer: for this one call, it yields the groups
        model.parameters = lambda *args, **kwargs: iter(groups)  # type: ignore[method-assign]
        try:
            super()._add_configure_optimizers_method_to_model(subcommand)
        finally:
            del model.parameters

    def _module_param_groups(self, subcommand: Optional[str]) -> Optional[list[dict[str, Any]]]:
        """The groups ``--optimizer`` gets from the model (the ``--regularizer`` split, the class's own
        ``module_param_groups``, or both), or ``None`` for ``model.parameters()``."""
        if not isinstance(getattr(self, "model", None), torch.nn.Module):
            return None
        config = self.config.get(str(subcommand), self.config) if subcommand else self.config
        node = config.get("optimizer")
        outer, engine = _optimizer_classes(node)
        options = _regularizer_options(config)
        keys = options.group_keys()  # checked after parsing already
        groups: Optional[list[dict[str, Any]]] = None
        if keys and outer is not None:
            groups = param_groups_for_weight_decay(self.model, 0.0, decayed_keys=keys)
            if options.keep_weight_decay:  # the decayed group takes the optimizer's weight_decay
                groups = [
                    {k: v for k, v in group.items() if k != "weight_decay"} if "regularizer" in group else group
                    for group in groups
                ]
        build = getattr(engine if _is_lookahead(outer) else outer, "module_param_groups", None)
        if callable(build) and (not _is_lookahead(outer) or groups is not None):
            return build(self.model, groups)
        return groups

    @override
    def before_instantiate_classes(self) -> None:
        """Apply ``--num_threads``; switch the progress bar off when stdout is not a terminal."""
        config = self.config[self.subcommand] if self.subcommand else self.config
        num_threads = config.get("num_threads")
        if num_threads is not None:
            torch.set_num_threads(num_threads)
        self._epoch_lines = False
        if config.get("trainer.enable_progress_bar") is None and not _is_terminal(sys.stdout):
            if not any(_is_progress_bar(item) for item in _as_list(config.get("trainer.callbacks"))):
                config["trainer.enable_progress_bar"] = False
                self._epoch_lines = True

    @override
    def instantiate_classes(self) -> None:
        """Build the classes; a bad argument of one of them ends the command with one line (exit status 2)."""
        config = self.config[self.subcommand] if self.subcommand else self.config
        with warnings.catch_warnings():
            if _is_recipe(config.get("model.class_path")):
                warnings.filterwarnings("ignore", _OVERRIDE_WARNING)
            try:
                super().instantiate_classes()
            except (ValueError, TypeError) as error:
                line = explain_init_error(error, config)
                if line is None:
                    raise
                exit_with_one_line(f"{self.parser.prog} {self.subcommand or ''}".strip(), line)
        if self._epoch_lines:
            self.trainer.callbacks.append(EpochLines())

    def before_fit(self) -> None:
        """Start the clock of the fit."""
        self._fit_started = time.perf_counter()

    def after_fit(self) -> None:
        """Print the result of the fit on rank zero."""
        if not self.trainer.is_global_zero:
            return
        seconds = None if self._fit_started is None else time.perf_counter() - self._fit_started
        print(format_fit_report(self.trainer, seconds), flush=True)


class EpochLines(Callback):
    """Print one line per training epoch: the epoch and the epoch-level metrics (rank zero only).

    What ``lightning-opt fit`` uses instead of the progress bar when standard output is not a terminal.

    Example::

        Trainer(enable_progress_bar=False, callbacks=[EpochLines()])   # epoch 1/60: train_loss_epoch 0.53, ...
    """

    @override
    def on_train_epoch_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        if not trainer.is_global_zero or trainer.sanity_checking:
            return
        metrics = trainer.callback_metrics
        shown = [
            f"{name} {float(value):.4g}"
            for name, value in sorted(metrics.items())
            if not name.endswith("_step") and isinstance(value, torch.Tensor) and value.numel() == 1
        ]
        total = "" if trainer.max_epochs is None or trainer.max_epochs < 0 else f"/{trainer.max_epochs}"
        print(f"epoch {trainer.current_epoch + 1}{total}: " + ", ".join(shown), flush=True)


def _is_terminal(stream: Any) -> bool:
    try:
        return bool(stream.isatty())
    except (AttributeError, ValueError):
        return False


def _as_list(value: Any) -> list[Any]:
    if value is None:
        return []
    return list(value) if isinstance(value, (list, tuple)) else [value]


def _is_progress_bar(item: Any) -> bool:
    """Whether a configured callback (an object or a ``class_path`` node) is a progress bar."""
    if isinstance(item, ProgressBar):
        return True
    cls = _import_class(getattr(item, "class_path", None))
    return cls is not None and issubclass(cls, ProgressBar)


def _as_built(value: Any) -> Any:
    """An init argument as the real build passes it: a nested ``class_path`` / ``init_args`` (a callable argument,
    such as Lookahead's ``optimizer``) becomes ``functools.partial(cls, **init_args)``."""
    if isinstance(value, dict) and "class_path" in value:
        cls = _import_class(value["class_path"])
        if cls is not None:
            init_args = value.get("init_args") or {}
            return functools.partial(cls, **{name: _as_built(item) for name, item in init_args.items()})
    return value


def _regularizer_options(config: Any) -> RegularizerOptions:
    """``--regularizer`` of a parsed config (defaults where the config has none)."""
    node = config.get("regularizer") if hasattr(config, "get") else None
    if isinstance(node, RegularizerOptions):
        return node
    values = node.as_dict() if hasattr(node, "as_dict") else dict(node or {})
    return RegularizerOptions(**values)


def _optimizer_classes(node: Any) -> tuple[Optional[type], Optional[type]]:
    """The class ``--optimizer`` names and the one that steps: the same, or the inner optimizer of a
    :class:`~lightning_opt.Lookahead` (``--optimizer.optimizer``); ``None`` where none can be told."""
    outer = _import_class(_get(node, "class_path"))
    if outer is None or not issubclass(outer, Lookahead):
        return outer, outer
    inner = _get(_get(node, "init_args"), "optimizer")
    return outer, _import_class(_get(inner, "class_path"))


def _is_lookahead(cls: Optional[type]) -> bool:
    return cls is not None and issubclass(cls, Lookahead)


def _engine_init_args(node: Any, outer: type) -> dict[str, Any]:
    """The init arguments of the optimizer that steps (Lookahead's inner one), as the real build passes them."""
    init_args = _get(node, "init_args")
    if issubclass(outer, Lookahead):
        init_args = _get(_get(init_args, "optimizer"), "init_args")
    return _built_init_args(init_args)


def _built_init_args(init_args: Any) -> dict[str, Any]:
    """A class's parsed ``init_args`` (a jsonargparse Namespace, a dict or ``None``) as keyword arguments, with
    nested class nodes built as the real build builds them."""
    values = init_args.as_dict() if hasattr(init_args, "as_dict") else dict(init_args or {})
    return {name: _as_built(value) for name, value in values.items()}


def _get(node: Any, key: str) -> Any:
    """``node[key]`` of a dict or jsonargparse Namespace, or ``None``."""
    if isinstance(node, dict):
        return node.get(key)
    return getattr(node, key, None) if node is not None else None


def _import_class(class_path: Any) -> Optional[type]:
    if not isinstance(class_path, str) or "." not in class_path:
        return None
    module, _, name = class_path.rpartition(".")
    try:
        found = getattr(importlib.import_module(module), name, None)
    except ImportError:
        return None
    return found if isinstance(found, type) else None


def _is_recipe(class_path: Any) -> bool:
    return isinstance(class_path, str) and class_path.startswith(RECIPE_MODULES)


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


# ------------------------------------------------------------------------------------------------ the report
def format_fit_report(trainer: Trainer, seconds: float | None) -> str:
    """Describe a finished fit: validation metrics, optimizer(s), callbacks, wall time and log directory.

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
    lines.append(f"  callbacks:  {describe_callbacks(trainer.callbacks)}")
    logger = trainer.logger
    log_dir = getattr(logger, "log_dir", None) if logger is not None else None
    if log_dir is None:
        lines.append("  logs:       none (no logger)")
    else:
        lines.append(f"  logs:       {log_dir}")
    if isinstance(logger, TensorBoardLogger):
        lines.append(f"  view with:  tensorboard --logdir {logger.root_dir}   (every version of '{logger.name}')")
    return "\n".join(lines)


def describe_callbacks(callbacks: Sequence[Callback]) -> str:
    """The names of the callbacks that act on the run, in order; display and bookkeeping ones left out.

    Args:
        callbacks: ``trainer.callbacks``.

    Example:
        >>> from lightning.pytorch.callbacks import TQDMProgressBar
        >>> from lightning_opt.callbacks import LossFeeder, SoftClip
        >>> describe_callbacks([LossFeeder(), SoftClip(), TQDMProgressBar()])
        'LossFeeder, SoftClip'
    """
    hidden = (ProgressBar, ModelSummary, SaveConfigCallback, EpochLines)  # display and bookkeeping only
    names = [_callback_label(callback) for callback in callbacks if not isinstance(callback, hidden)]
    return ", ".join(names) if names else "none"


def _callback_label(callback: Callback) -> str:
    """The class name; for the package's callbacks their ``name`` (class name plus filter) where they have one."""
    name = getattr(callback, "name", None)
    if type(callback).__module__.startswith("lightning_opt.") and isinstance(name, str) and name:
        return name
    return type(callback).__name__


def describe_optimizer(optimizer: torch.optim.Optimizer) -> str:
    """``Name(hyper=value, ...)`` from the optimizer's defaults (the first group's values where they differ).

    Only the constructor's arguments are shown, not the bookkeeping an optimizer keeps beside them in its
    defaults (AdaLo's ``lr_scales_step``). ``agc_clipping`` is shown only when ``"adaptive_clip"`` is among
    the ``grad_transforms``, which is the only time it acts. A regulariser chosen by parameter groups
    (Norm Loss, CPR) follows, with its numbers and how many tensors it acts on.

    Args:
        optimizer: any ``torch.optim.Optimizer``.

    Example:
        >>> describe_optimizer(torch.optim.SGD([torch.zeros(1, requires_grad=True)], lr=0.1))[:16]
        'SGD(lr=0.1, mome'
    """
    inner = getattr(optimizer, "optimizer", None)
    if isinstance(inner, torch.optim.Optimizer) and inner is not optimizer:  # a wrapper: Lookahead(k=5, ..., SGD(...))
        names = [name for name in inspect.signature(type(optimizer)).parameters if name not in ("params", "optimizer")]
        own = [f"{name}={getattr(optimizer, name)!r}" for name in names if hasattr(optimizer, name)]
        return f"{type(optimizer).__name__}({', '.join([*own, describe_optimizer(inner)])})"
    group = optimizer.param_groups[0] if optimizer.param_groups else {}
    arguments = _argument_names(type(optimizer))
    values = {
        key: group.get(key, default)
        for key, default in optimizer.defaults.items()
        if arguments is None or key in arguments
    }
    if "agc_clipping" in values and "adaptive_clip" not in (values.get("grad_transforms") or ()):
        del values["agc_clipping"]
    shown = ", ".join(f"{key}={value!r}" for key, value in values.items() if not callable(value))
    return f"{type(optimizer).__name__}({shown})" + _describe_regularizers(optimizer)


def _describe_regularizers(optimizer: torch.optim.Optimizer) -> str:
    """`` + cpr(cpr_mu=1.0, cpr_warm_start=1000) on 3 of 6 tensors`` for each regulariser the groups choose."""
    total = sum(len(group["params"]) for group in optimizer.param_groups)
    found: dict[tuple[str, tuple[tuple[str, Any], ...]], int] = {}
    for group in optimizer.param_groups:
        name = group.get("regularizer")
        if isinstance(name, str):
            numbers = tuple((key, group[key]) for key in REGULARIZER_KEYS.get(name, ()) if key in group)
            found[(name, numbers)] = found.get((name, numbers), 0) + len(group["params"])
    return "".join(
        f" + {name}({', '.join(f'{key}={value!r}' for key, value in numbers)}) on {count} of {total} tensors"
        for (name, numbers), count in found.items()
    )


def _argument_names(cls: type) -> Optional[set[str]]:
    """The names of ``cls.__init__``'s arguments, or ``None`` when its signature cannot be read."""
    try:
        return set(inspect.signature(cls.__init__).parameters)
    except (TypeError, ValueError):
        return None


__all__ = [
    "DEFAULT_DATA",
    "DEFAULT_MODEL",
    "EpochLines",
    "LightningOptCLI",
    "LightningOptParser",
    "PlainHelpFormatter",
    "RegularizerOptions",
    "describe_callbacks",
    "describe_optimizer",
    "explain_init_error",
    "explain_parse_error",
    "format_fit_report",
    "plain_help",
]
