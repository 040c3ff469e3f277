"""``lightning-opt study NAME``: run a study's cells (resuming), then write its markdown table and PNG.

Example::

    lightning-opt study lr                                     # digits, 5 optimizers x 7 step sizes x 3 seeds
    lightning-opt study lr --optimizers AdamW AdaLo --seeds 0 1 2 --trainer.max_epochs 20
    lightning-opt study warmup --config my_model.yaml --metric val_loss --mode min
    lightning-opt study time --target 0.95
    lightning-opt study memory --dry-run                       # the cells and the first command, nothing run

Options of ``lightning-opt fit`` that start with ``--trainer.``, ``--model.``, ``--data.``, ``--optimizer.`` or
``--num_threads`` (or anything after ``--``) are given to every cell, last, so they win over the config's values.

Outputs, for study ``NAME`` on config ``CONFIG`` (the config file's name without ``.yaml``; overlays join it with
``+``), in ``--out`` (default ``docs/studies/NAME``): ``CONFIG.md`` (how it was run and the tables), ``CONFIG.png``
and ``CONFIG.cells.json`` (every finished cell, by key: rerunning the command skips them). Each cell's logs go to
``--runs-dir`` (default ``logs/studies/NAME/CONFIG/<key>``).
"""

from __future__ import annotations

import argparse
import math
import platform
import shlex
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any, NoReturn, Optional

from lightning_opt.studies.base import FALLBACK_DEFAULTS, RECIPE_DEFAULTS, Results, Study, StudyOptions, final_metric
from lightning_opt.studies.cells import Cell, FitBase, ResultStore, cell_key
from lightning_opt.studies.knobs import StepKnob, class_path, default_knob, parse_knob
from lightning_opt.studies.runner import fit_command, prepared_configs, run_cells, subprocess_executor

PROG = "lightning-opt study"

FORWARDED_PREFIXES = ("--trainer.", "--model.", "--data.", "--optimizer.", "--num_threads")
"""``lightning-opt fit`` options a study forwards to every cell."""

_RESERVED = (
    "--optimizer", "--seed_everything", "--config", "--lr_scheduler", "--trainer.accelerator",
    "--trainer.default_root_dir", "--trainer.callbacks",
)  # fmt: skip
"""``fit`` options the study sets itself (``--accelerator``, ``--seeds``, ``--config``, each cell's directory and
its probe callback; ``--trainer.callbacks+=...``, which appends, may be forwarded)."""


class StudyArgumentError(Exception):
    """A bad option of ``lightning-opt study``, explained on one line."""


class _Parser(argparse.ArgumentParser):
    """argparse whose errors are one line, ``lightning-opt study: error: ...``, exit status 2."""

    def error(self, message: str) -> NoReturn:  # type: ignore[override]
        fail(message)


def fail(message: str) -> NoReturn:
    """Print ``lightning-opt study: error: message`` as one line on stderr and exit with status 2."""
    print(f"{PROG}: error: {' '.join(message.split())}", file=sys.stderr)
    sys.exit(2)


def build_parser(studies: Sequence[str]) -> argparse.ArgumentParser:
    """The parser of ``lightning-opt study``."""
    parser = _Parser(
        prog=PROG,
        allow_abbrev=False,
        description="Run a study of the optimizers on a lightning-opt config: each cell (optimizer x setting x "
        "seed) a 'lightning-opt fit' in its own process, resumable; then a markdown table and a PNG. Options of "
        "fit starting with --trainer., --model., --data., --optimizer. or --num_threads (and anything after --) "
        "are given to every cell.",
    )
    parser.add_argument("name", metavar="NAME", help=f"the study: {', '.join(studies)}")
    parser.add_argument(
        "--config", "-c", action="append", metavar="CONFIG",
        help="a lightning-opt config (file or packaged name); repeat for overlays (default: digits)",
    )
    parser.add_argument("--optimizers", nargs="+", metavar="NAME", help="optimizers to compare (default: the study's)")
    parser.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2], metavar="SEED", help="default: 0 1 2")
    parser.add_argument("--out", type=Path, help="where the table, PNG and results go (default: docs/studies/NAME)")
    parser.add_argument("--runs-dir", type=Path, help="where each cell's logs go (default: logs/studies/NAME/CONFIG)")
    parser.add_argument("--accelerator", default="cpu", help="--trainer.accelerator of every cell (default: cpu)")
    parser.add_argument("--metric", help="the validation metric (default: the config's, e.g. val_acc for digits)")
    parser.add_argument("--mode", choices=("max", "min"), help="whether larger or smaller --metric is better")
    parser.add_argument("--band", type=float, help="lr: the good band, a fraction of the best mean (digits: 0.01)")
    parser.add_argument(
        "--diverged", type=float, help="a final metric worse than this counts as diverged (digits: val_acc 0.5)"
    )
    parser.add_argument("--target", type=float, help="time: the metric to reach (digits: val_acc 0.95)")
    parser.add_argument("--points", type=int, default=7, help="lr: grid points per optimizer (default: 7)")
    parser.add_argument("--decades", type=float, default=3.0, help="lr: decades the grid spans (default: 3)")
    parser.add_argument(
        "--knob", action="append", default=[], metavar="NAME=ARG:CENTRE[:inverse]",
        help="an optimizer's step knob and the value grids centre on, e.g. AdamW=lr:3e-4 or AdaLo=kappa:3:inverse "
        "(default: kappa 3 for AdaLo, lr 1e-2 for Adafactor, the lr default for others)",
    )
    parser.add_argument(
        "--scales", nargs="+", type=float, default=[1.0, 10.0],
        help="warmup: step scales, times each optimizer's default step (default: 1 10)",
    )
    parser.add_argument("--warmup-epochs", type=int, default=5, help="warmup: epochs of the warm-up (default: 5)")
    parser.add_argument(
        "--warmup-start", type=float, default=0.1, help="warmup: the first epoch's step factor (default: 0.1)"
    )
    parser.add_argument(
        "--norms", nargs="+", default=["layernorm", "none"], metavar="VALUE",
        help="norm: the values of the model's normalisation argument (default: layernorm none)",
    )
    parser.add_argument(
        "--norm-arg", default="model.norm", metavar="ARG",
        help="norm: the model's normalisation argument (default: model.norm)",
    )
    parser.add_argument("--batch", type=int, default=32, help="accumulation: the micro-batch size B (default: 32)")
    parser.add_argument(
        "--accumulate", type=int, default=4, help="accumulation: N micro-batches per step; big batch B x N (default: 4)"
    )
    parser.add_argument(
        "--batch-arg", default="data.batch_size", metavar="ARG",
        help="accumulation: the datamodule's batch-size argument (default: data.batch_size)",
    )
    parser.add_argument(
        "--clips", nargs="+", default=["none", "softclip", "agc"], metavar="CLIP",
        help="tails: the gradient clippings compared, of none, softclip, agc (default: all three)",
    )
    parser.add_argument(
        "--tail-every", type=int, default=45,
        help="tails: log the tail statistics every this many optimizer steps (default: 45, an epoch of digits)",
    )
    parser.add_argument("--retry-failed", action="store_true", help="run again the cells whose fit failed")
    parser.add_argument("--dry-run", action="store_true", help="list the cells and the first command; run nothing")
    return parser


def split_forwarded(argv: Sequence[str]) -> tuple[list[str], list[str]]:
    """Split the command line into the study's own arguments and the ``fit`` arguments it forwards.

    Raises:
        StudyArgumentError: an option the study sets itself (``--optimizer``, ``--seed_everything``...) given
            for ``fit``.

    Example:
        >>> split_forwarded(["lr", "--seeds", "0", "--trainer.max_epochs", "2", "--", "--model.dropout", "0.1"])
        (['lr', '--seeds', '0'], ['--trainer.max_epochs', '2', '--model.dropout', '0.1'])
    """
    own: list[str] = []
    forwarded: list[str] = []
    args, tail = list(argv), []
    if "--" in args:
        cut = args.index("--")
        args, tail = args[:cut], args[cut + 1 :]
    index = 0
    while index < len(args):
        arg = args[index]
        if arg.startswith(FORWARDED_PREFIXES):
            forwarded.append(arg)
            if "=" not in arg and index + 1 < len(args) and not args[index + 1].startswith("--"):
                forwarded.append(args[index + 1])
                index += 1
        else:
            own.append(arg)
        index += 1
    forwarded += tail
    for arg in forwarded:
        key = arg.split("=", 1)[0]
        if key in _RESERVED:
            hint = "append with --trainer.callbacks+=..." if key == "--trainer.callbacks" else (
                "use --optimizers, --seeds, --config, --accelerator, --runs-dir"
            )
            raise StudyArgumentError(f"Invalid {key}: the study sets it for each cell ({hint})")
    return own, forwarded


def check_forwarded(cells: Sequence[Cell], forwarded: Sequence[str]) -> None:
    """Refuse a forwarded ``fit`` option that a study's setting sets (e.g. ``--optimizer.lr`` in study ``lr``):
    given last, it would silently override the setting in every cell.

    Raises:
        StudyArgumentError: naming the option.

    Example:
        >>> from lightning_opt.studies.cells import Setting
        >>> cell = Cell("AdamW", "torch.optim.AdamW", Setting({"lr": 0.01}, ("--optimizer.lr", "0.01")), 0)
        >>> check_forwarded([cell], ["--trainer.max_epochs", "2"])
        >>> check_forwarded([cell], ["--optimizer.lr=0.1"])
        Traceback (most recent call last):
        ...
        lightning_opt.studies.command.StudyArgumentError: Invalid --optimizer.lr: the study varies it in its cells
    """
    varied = {arg.split("=", 1)[0] for cell in cells for arg in cell.setting.args if arg.startswith("--")}
    varied.discard("--trainer.callbacks+")
    for arg in forwarded:
        key = arg.split("=", 1)[0]
        if key in varied:
            raise StudyArgumentError(f"Invalid {key}: the study varies it in its cells")


def shown_path(path: str) -> str:
    """``path`` relative to the working directory where it lies below it (so that a table written in one
    checkout reads the same in every other), else as given.

    Example:
        >>> shown_path(str(Path.cwd() / "configs" / "digits.yaml"))
        'configs/digits.yaml'
        >>> shown_path("/elsewhere/digits.yaml")
        '/elsewhere/digits.yaml'
    """
    try:
        return Path(path).resolve().relative_to(Path.cwd().resolve()).as_posix()
    except ValueError:
        return path


def config_tag(configs: Sequence[str]) -> str:
    """The name of a study's outputs: the config files' names without ``.yaml``, joined with ``+``.

    Example:
        >>> config_tag(["configs/digits.yaml", "/x/callbacks/agc_then_tails.yaml"])
        'digits+agc_then_tails'
    """
    return "+".join(Path(config).stem for config in configs)


def build_options(study: Study, args: argparse.Namespace, configs: Sequence[str]) -> StudyOptions:
    """The options of a run, validated, with the config's defaults filled in.

    Raises:
        StudyArgumentError: a value out of range, an unknown optimizer, a missing target or mode.
    """
    defaults = RECIPE_DEFAULTS.get(Path(configs[0]).stem, FALLBACK_DEFAULTS)
    metric = args.metric or defaults.metric
    if metric != defaults.metric and args.mode is None:
        raise StudyArgumentError(f"Invalid --metric {metric!r}: give --mode max or --mode min with it")
    same = metric == defaults.metric
    mode = args.mode or defaults.mode
    band = args.band if args.band is not None else (defaults.band if same else FALLBACK_DEFAULTS.band)
    diverged = args.diverged if args.diverged is not None else (defaults.diverged if same else None)
    target = args.target if args.target is not None else (defaults.target if same else None)
    _check(math.isfinite(band) and band >= 0, "--band", band, "a fraction >= 0, e.g. 0.01")
    _check(diverged is None or math.isfinite(diverged), "--diverged", diverged, "a finite number")
    _check(target is None or math.isfinite(target), "--target", target, "a finite number")
    if study.needs_target and target is None:
        raise StudyArgumentError(
            f"Invalid --target: study {study.name!r} needs one (no default for {metric!r} on this config), "
            f"e.g. --target 0.95"
        )
    _check(args.points >= 2, "--points", args.points, "an integer >= 2")
    _check(math.isfinite(args.decades) and args.decades > 0, "--decades", args.decades, "a number > 0")
    _check(all(math.isfinite(s) and s > 0 for s in args.scales), "--scales", args.scales, "numbers > 0")
    _check(len(set(args.scales)) == len(args.scales), "--scales", args.scales, "distinct values")
    _check(args.warmup_epochs >= 1, "--warmup-epochs", args.warmup_epochs, "an integer >= 1")
    _check(0 < args.warmup_start <= 1, "--warmup-start", args.warmup_start, "a factor in (0, 1]")
    _check(all(seed >= 0 for seed in args.seeds), "--seeds", args.seeds, "integers >= 0")
    _check(len(set(args.seeds)) == len(args.seeds), "--seeds", args.seeds, "distinct seeds")
    _check(len(set(args.norms)) == len(args.norms) and len(args.norms) >= 2, "--norms", args.norms,
           "two or more distinct values")
    _check(_is_argument(args.norm_arg), "--norm-arg", args.norm_arg, "an argument such as model.norm")
    _check(args.batch >= 1, "--batch", args.batch, "an integer >= 1")
    _check(args.accumulate >= 2, "--accumulate", args.accumulate, "an integer >= 2")
    _check(_is_argument(args.batch_arg), "--batch-arg", args.batch_arg, "an argument such as data.batch_size")
    from lightning_opt.studies.tails import CLIPS

    _check(set(args.clips) <= set(CLIPS) and len(set(args.clips)) == len(args.clips), "--clips", args.clips,
           f"distinct values of {', '.join(CLIPS)}")
    _check(args.tail_every >= 1, "--tail-every", args.tail_every, "an integer >= 1")
    optimizers = tuple(args.optimizers or study.default_optimizers)
    _check(len(set(optimizers)) == len(optimizers), "--optimizers", list(optimizers), "distinct names")
    paths: dict[str, str] = {}
    knobs: dict[str, StepKnob] = {}
    given: dict[str, StepKnob] = {}
    for text in args.knob:
        try:
            label, knob = parse_knob(text, optimizers)
        except ValueError as error:
            raise StudyArgumentError(f"Invalid --knob: {error}") from None
        given[label] = knob
    for name in optimizers:
        try:
            paths[name] = class_path(name)
        except ValueError as error:
            raise StudyArgumentError(f"Invalid --optimizers: {error}") from None
        if name in given:
            knobs[name] = given[name]
            continue
        try:
            knobs[name] = default_knob(name)
        except ValueError as error:
            if study.uses_knob:  # the others run each optimizer at its defaults and need no step knob
                raise StudyArgumentError(f"Invalid --optimizers: {error}") from None
    return StudyOptions(
        optimizers=optimizers, class_paths=paths, knobs=knobs, seeds=tuple(args.seeds), metric=metric, mode=mode,
        band=band, diverged=diverged, target=target, points=args.points, decades=args.decades,
        scales=tuple(float(s) for s in args.scales), warmup_epochs=args.warmup_epochs, warmup_start=args.warmup_start,
        norms=tuple(args.norms), norm_arg=args.norm_arg, batch=args.batch, accumulate=args.accumulate,
        batch_arg=args.batch_arg, clips=tuple(args.clips), tail_every=args.tail_every,
    )  # fmt: skip


def _is_argument(text: str) -> bool:
    """Whether ``text`` looks like a ``fit`` argument without its dashes (``model.norm``)."""
    parts = text.split(".")
    return len(parts) >= 2 and all(part.isidentifier() for part in parts)


def _check(ok: bool, key: str, value: Any, expected: str) -> None:
    if not ok:
        raise StudyArgumentError(f"Invalid {key}: {value!r} (expected {expected})")


def plan_cells(study: Study, options: StudyOptions) -> list[Cell]:
    """Every cell of the study: optimizer-major, then setting, then seed."""
    return [
        Cell(name, options.class_paths[name], setting, seed)
        for name in options.optimizers
        for setting in study.settings(options, name)
        for seed in options.seeds
    ]


def write_report(study: Study, options: StudyOptions, results: Results, out: Path, tag: str) -> tuple[Path, Path]:
    """Write ``out/TAG.md`` (the description and the table) and ``out/TAG.png``; return their paths."""
    out.mkdir(parents=True, exist_ok=True)
    figure = out / f"{tag}.png"
    study.plot(options, results, figure)
    lines = [f"# Study `{study.name}` on `{tag}`", "", study.summary[:1].upper() + study.summary[1:] + ".", ""]
    lines += [f"- {line}" for line in options.description]
    lines += ["", study.table(options, results), "", f"![{study.name} on {tag}]({figure.name})", ""]
    table = out / f"{tag}.md"
    table.write_text("\n".join(lines))
    return table, figure


def run(argv: Sequence[str], studies: Optional[dict[str, Study]] = None) -> int:
    """Run ``lightning-opt study``; returns the exit status (2 for a bad argument, 130 when interrupted)."""
    if studies is None:
        from lightning_opt.studies import STUDIES

        studies = STUDIES
    try:
        own, forwarded = split_forwarded(argv)
    except StudyArgumentError as error:
        fail(str(error))
    parser = build_parser(list(studies))
    args = parser.parse_args(own)
    if args.name not in studies:
        fail(f"Invalid NAME: {args.name!r} is not a study (expected one of {', '.join(studies)})")
    study = studies[args.name]
    from lightning_opt.recipes import find_config

    try:
        configs = [find_config(value) for value in (args.config or ["digits"])]
    except ValueError as error:
        fail(str(error))
    for config in configs:
        if not Path(config).is_file():
            fail(f"Invalid --config: {config!r} is not a file")
    try:
        options = build_options(study, args, configs)
    except StudyArgumentError as error:
        fail(str(error))
    tag = config_tag(configs)
    out = args.out or Path("docs") / "studies" / study.name
    runs_dir = args.runs_dir or Path("logs") / "studies" / study.name / tag
    base = FitBase.from_files(configs, args.accelerator, forwarded)
    cells = plan_cells(study, options)
    try:
        check_forwarded(cells, forwarded)
    except StudyArgumentError as error:
        fail(str(error))
    command = "lightning-opt study " + shlex.join(list(argv))
    options.description = [
        f"command: `{command}`",
        f"{len(cells)} runs: {len(options.optimizers)} optimizers x {len(cells) // len(options.optimizers)} "
        f"(settings x seeds), seeds {' '.join(map(str, options.seeds))}; each a `lightning-opt fit` of "
        f"{', '.join(f'`{shown_path(c)}`' for c in configs)} on `{args.accelerator}`"
        + (f" with `{shlex.join(forwarded)}`" if forwarded else ""),
        f"metric: {options.metric} ({'higher' if options.mode == 'max' else 'lower'} is better)",
        f"machine: {platform.platform()}, {platform.processor() or platform.machine()}; "
        f"lightning-opt {_version()}; written {time.strftime('%Y-%m-%d %H:%M')}",
    ]
    try:
        store = ResultStore(out / f"{tag}.cells.json")
    except ValueError as error:
        fail(f"Invalid --out: {error}")
    work = runs_dir / "_configs"
    if args.dry_run:
        keys = [cell_key(cell, base) for cell in cells]
        done = sum(store.get(key) is not None for key in keys)
        print(f"{study.name}: {len(cells)} cells, {done} already done, {len(cells) - done} to run")
        for cell, key in zip(cells, keys):
            print(f"  {key}  {cell.label()}{'  (done)' if store.get(key) else ''}")
        first = fit_command(cells[0], base, prepared_configs(base, work), runs_dir / "KEY")
        print("first command: " + shlex.join(first))
        return 0
    execute = subprocess_executor(base, prepared_configs(base, work), study.collect)
    try:
        results = run_cells(
            study.name, cells, base, store, runs_dir, execute, _describer(options), retry_failed=args.retry_failed
        )
    except KeyboardInterrupt:
        done = sum(store.get(cell_key(cell, base)) is not None for cell in cells)
        print(f"\ninterrupted: {done} of {len(cells)} cells saved in {store.path}; rerun the same command to resume",
              file=sys.stderr)
        return 130
    table, figure = write_report(study, options, results, out, tag)
    print(table.read_text())
    print(f"wrote {table}, {figure} and {store.path}")
    return 0


def _describer(options: StudyOptions) -> Any:
    def describe(record: dict[str, Any]) -> str:
        return f"{options.metric} {final_metric(record, options.metric):.4g}"

    return describe


def _version() -> str:
    import lightning_opt

    return str(lightning_opt.__version__)


__all__ = [
    "FORWARDED_PREFIXES",
    "StudyArgumentError",
    "build_options",
    "build_parser",
    "check_forwarded",
    "config_tag",
    "plan_cells",
    "run",
    "split_forwarded",
    "write_report",
]
