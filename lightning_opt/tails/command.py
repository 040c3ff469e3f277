"""``lightning-opt tails LOGDIR [LOGDIR ...]``: the gradient-tail report of one or more runs.

Prints, per run, the whole model and its heaviest-tailed layers at a few steps (a markdown table) and
writes a PNG that overlays the runs' ``log10 |g|`` distributions at those steps, from the event files
that :class:`~lightning_opt.callbacks.GradientTailMonitor` wrote.

Example::

    lightning-opt tails logs/digits/version_0 logs/digits_softclip/version_0 --output tails.png
    lightning-opt tails logs/digits --steps 0 500 2500 --layer net.0.weight --sort-by kurtosis

Every event file is checked first: one that is cut short or fails a checksum stops the command with status
2 and a one-line message naming it (where it is damaged, how many records precede the damage), unless
``--allow-damaged`` is given: then the records before the damage are reported, with a warning on stderr
and a line under the run's table (the way to read a run that is still being written, whose last record may
be partial).
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

from lightning_opt.tails import tags
from lightning_opt.tails.event_files import DamagedEventFileError
from lightning_opt.tails.report import SORT_DIRECTION, format_table, load_runs, plot_distributions, report_steps


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="lightning-opt tails",
        description="Gradient tails of logged runs: a table of the heaviest-tailed layers over time and a "
        "PNG comparing the runs' log10|g| distributions (logs of lightning_opt's GradientTailMonitor).",
    )
    parser.add_argument("logdirs", nargs="+", help="run directories, or directories holding several runs")
    parser.add_argument(
        "--steps",
        nargs="+",
        type=int,
        help="steps to show, in the tables and the PNG alike: the nearest steps logged with both statistics and "
        "histograms; default: first, middle, last",
    )
    parser.add_argument(
        "--layer", default=tags.WHOLE_MODEL, help="the layer drawn in the PNG (default: the whole model)"
    )
    parser.add_argument(
        "--sort-by", default="hill_alpha", choices=sorted(SORT_DIRECTION), help="what makes a tail heavy"
    )
    parser.add_argument("--top", type=int, default=10, help="how many layers each table lists (default: 10)")
    parser.add_argument("--output", default="tails.png", help="where to write the PNG (default: tails.png)")
    parser.add_argument("--no-plot", action="store_true", help="print the tables only")
    parser.add_argument(
        "--allow-damaged",
        action="store_true",
        help="report what can be read from event files that are cut short or fail a checksum (the records "
        "before the damage) instead of stopping with status 2; also for a run still being written, whose last "
        "record may be partial",
    )
    return parser


def run(argv: Sequence[str]) -> int:
    """Run the command; returns the exit status (2 for bad arguments, no tail logs found or a damaged event
    file without ``--allow-damaged``)."""
    parser = build_parser()
    options = parser.parse_args(list(argv))
    if options.top < 1:
        parser.error(f"Invalid --top: {options.top} (expected a positive integer)")
    try:
        runs = load_runs(options.logdirs, allow_damaged=options.allow_damaged)
    except FileNotFoundError as error:
        parser.error(str(error))
    except DamagedEventFileError as error:  # one line: the usage is no help here
        parser.exit(2, f"{parser.prog}: error: {error}; pass --allow-damaged to report the records read\n")
    if not runs:
        parser.error(
            f"no gradient-tail statistics under {' '.join(options.logdirs)}: train with "
            "lightning_opt.callbacks.GradientTailMonitor and a TensorBoardLogger first"
        )
    for tail_run in runs:
        for check in tail_run.damaged:
            print(f"{parser.prog}: warning: damaged event file {check.describe()}", file=sys.stderr)
    # The same steps in the tables and in the picture.
    chosen = report_steps(runs, options.steps, options.layer)
    for index, (tail_run, steps) in enumerate(zip(runs, chosen)):
        if index:
            print()
        print(format_table(tail_run, steps, options.sort_by, options.top, options.layer))
    if not options.no_plot:
        try:
            path = plot_distributions(runs, options.output, options.steps, options.layer)
        except ValueError as error:
            parser.error(str(error))
        print(f"\nwrote {path}")
    return 0


if __name__ == "__main__":
    sys.exit(run(sys.argv[1:]))
