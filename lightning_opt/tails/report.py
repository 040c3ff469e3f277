"""Read gradient-tail logs back from TensorBoard event files: a table of the heaviest-tailed layers over
time, and a picture comparing the runs' ``log10 |g|`` distributions (``lightning-opt tails``).

The logs are those of :class:`~lightning_opt.callbacks.GradientTailMonitor`; the tags are in
:mod:`lightning_opt.tails.tags`. A *run* is one directory holding event files; a directory given on the
command line may hold several runs (``logs/digits`` with ``version_0``, ``version_1``...).

Every event file is checked (:func:`~lightning_opt.tails.event_files.check_event_file`) before it is read:
TensorBoard's reader stops silently at a record that is cut short or fails its checksum, which would make a
damaged run look like a shorter one. A damaged file raises
:class:`~lightning_opt.tails.event_files.DamagedEventFileError` unless ``allow_damaged=True``, which reads the
records before the damage and keeps the checks in :attr:`TailRun.damaged`.

The table and the picture show the same steps, chosen once by :func:`report_steps`.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from lightning_opt.tails import tags
from lightning_opt.tails.event_files import DamagedEventFileError, EventFileCheck, check_event_file
from lightning_opt.validation import check_bool

EVENT_FILE_GLOB = "events.out.tfevents.*"
SORT_DIRECTION = {"kurtosis": -1, "q999_over_q50": -1, "hill_alpha": 1, "top1pct_energy": -1}
"""How each statistic orders layers from heaviest-tailed to lightest: ascending tail index, else descending."""


@dataclass
class Histogram:
    """One logged histogram: ``edges`` has one more entry than ``counts``."""

    step: int
    edges: list[float]
    counts: list[float]

    @property
    def total(self) -> float:
        return float(sum(self.counts))


@dataclass
class TailRun:
    """The gradient-tail logs of one run: ``statistics[(statistic, layer)] = {step: value}`` and the
    ``log10 |g|`` histograms by layer (:data:`~lightning_opt.tails.tags.WHOLE_MODEL` included);
    ``damaged`` lists the checks of its damaged event files (read up to the damage), if any."""

    name: str
    directory: Path
    statistics: dict[tuple[str, str], dict[int, float]] = field(default_factory=dict)
    log_abs_histograms: dict[str, list[Histogram]] = field(default_factory=dict)
    nonfinite: dict[int, float] = field(default_factory=dict)
    damaged: list[EventFileCheck] = field(default_factory=list)

    @property
    def layers(self) -> list[str]:
        """The layers with statistics, the whole model excluded, in first-logged order."""
        names = dict.fromkeys(layer for _, layer in self.statistics if layer != tags.WHOLE_MODEL)
        return list(names)

    @property
    def steps(self) -> list[int]:
        """Every step at which a tail statistic was logged."""
        return sorted({step for values in self.statistics.values() for step in values})


def find_run_directories(path: str | Path) -> list[Path]:
    """Every directory at or below ``path`` that directly holds an event file, sorted."""
    root = Path(path)
    if not root.exists():
        raise FileNotFoundError(f"no such log directory: {root}")
    if root.is_file():
        return [root.parent]
    return sorted({event.parent for event in root.rglob(EVENT_FILE_GLOB)})


def check_run_directory(directory: str | Path) -> list[EventFileCheck]:
    """The checks of the event files directly in ``directory`` (those TensorBoard reads), sorted by name."""
    files = sorted(
        path
        for path in Path(directory).iterdir()
        if "tfevents" in path.name and not path.name.endswith(".profile-empty") and path.is_file()
    )
    return [check_event_file(path) for path in files]


def load_run(directory: Path, name: str | None = None, allow_damaged: bool = False) -> TailRun:
    """Read one run's tail statistics and ``log10 |g|`` histograms (every logged step).

    Args:
        directory: the directory holding the run's event files.
        name: the run's name in reports (default: the directory's name).
        allow_damaged: read damaged event files up to their first damaged record (listed in
            :attr:`TailRun.damaged`) instead of raising.

    Raises:
        DamagedEventFileError: an event file is cut short or fails a checksum, and ``allow_damaged`` is
            false. The message names the file, where it is damaged and how many records precede the damage.
    """
    check_bool("allow_damaged", allow_damaged)
    damaged = [check for check in check_run_directory(directory) if check.damaged]
    if damaged and not allow_damaged:
        raise DamagedEventFileError(damaged)
    return _read_run(Path(directory), name or Path(directory).name, damaged)


def _read_run(directory: Path, name: str, damaged: list[EventFileCheck]) -> TailRun:
    """Read a run whose event files were checked (``damaged``: those found damaged)."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    accumulator = EventAccumulator(str(directory), size_guidance={"histograms": 0, "scalars": 0})
    accumulator.Reload()
    available = accumulator.Tags()
    run = TailRun(name=name, directory=directory, damaged=damaged)
    for tag in available.get("scalars", []):
        if tag == tags.NONFINITE_TAG:
            run.nonfinite = {event.step: event.value for event in accumulator.Scalars(tag)}
            continue
        parsed = tags.parse_statistic_tag(tag)
        if parsed is not None:
            run.statistics[parsed] = {event.step: event.value for event in accumulator.Scalars(tag)}
    for tag in available.get("histograms", []):
        if tag.startswith(tags.LOG_ABS_GRAD_HISTOGRAM_PREFIX):
            layer = tag[len(tags.LOG_ABS_GRAD_HISTOGRAM_PREFIX) :]
            run.log_abs_histograms[layer] = [_histogram(event) for event in accumulator.Histograms(tag)]
    return run


def load_runs(paths: Iterable[str | Path], allow_damaged: bool = False) -> list[TailRun]:
    """Every run under the given paths that holds tail statistics.

    A run is named by its directory relative to the argument it was found under (``version_0``), by
    the argument itself when that is the run's directory, and with the argument as a prefix when
    several arguments were given.

    Args:
        paths: run directories, or directories holding runs.
        allow_damaged: see :func:`load_run`.

    Raises:
        DamagedEventFileError: some event files are damaged (all of them are checked before any is read,
            and the error lists them all) and ``allow_damaged`` is false.
    """
    check_bool("allow_damaged", allow_damaged)
    roots = [Path(path) for path in paths]
    found: list[tuple[Path, str, list[EventFileCheck]]] = []
    for root in roots:
        for directory in find_run_directories(root):
            relative = directory.relative_to(root) if root.is_dir() else Path(".")
            if relative == Path("."):
                name = str(root)
            else:
                name = str(root / relative) if len(roots) > 1 else str(relative)
            found.append((directory, name, [c for c in check_run_directory(directory) if c.damaged]))
    damaged = [check for _, _, checks in found for check in checks]
    if damaged and not allow_damaged:
        raise DamagedEventFileError(damaged)
    runs = []
    for directory, name, checks in found:
        run = _read_run(directory, name, checks)
        if run.statistics:
            runs.append(run)
    return runs


def _histogram(event) -> Histogram:
    value = event.histogram_value
    limits = list(value.bucket_limit)
    width = limits[1] - limits[0] if len(limits) > 1 else 1.0
    return Histogram(step=event.step, edges=[limits[0] - width, *limits], counts=list(value.bucket))


# ------------------------------------------------------------------------------------------- the table
def nearest_step(available: Sequence[int], wanted: int) -> int:
    """The logged step closest to ``wanted`` (the earlier one on a tie).

    >>> nearest_step([0, 10, 20], 14), nearest_step([0, 10, 20], 15), nearest_step([0, 10, 20], 99)
    (10, 10, 20)
    """
    return min(available, key=lambda step: (abs(step - wanted), step))


def default_steps(run_steps: Sequence[int], count: int = 3) -> list[int]:
    """``count`` logged steps spread evenly from the first to the last.

    >>> default_steps(list(range(0, 101, 10)))
    [0, 50, 100]
    """
    if not run_steps:
        return []
    if len(run_steps) <= count:
        return list(run_steps)
    wanted = [run_steps[0] + (run_steps[-1] - run_steps[0]) * i / (count - 1) for i in range(count)]
    return sorted({nearest_step(run_steps, round(w)) for w in wanted})


def candidate_steps(run: TailRun, layer: str = tags.WHOLE_MODEL) -> list[int]:
    """The steps the report can show for ``run``: those with both tail statistics and a ``log10 |g|``
    histogram of ``layer`` (what the table and the picture need); failing that, the histogram steps; for a
    run without histograms of ``layer``, the statistic steps."""
    statistic_steps = run.steps
    histogram_steps = sorted({h.step for h in run.log_abs_histograms.get(layer, [])})
    if not histogram_steps:
        return statistic_steps
    both = sorted(set(histogram_steps).intersection(statistic_steps))
    return both or histogram_steps


def report_steps(
    runs: Sequence[TailRun], wanted: Sequence[int] | None = None, layer: str = tags.WHOLE_MODEL
) -> list[list[int]]:
    """The steps the report shows, one list per run with one step per panel of the picture: the table of a
    run shows the distinct steps of its list, the picture's panel ``i`` draws each run at its ``i``-th step.

    The panels are the first run's steps nearest to ``wanted`` (default: its first, middle and last), taken
    from :func:`candidate_steps`, so that its table and its curves show the same steps; every other
    run shows, in each panel, its own candidate step nearest to that panel's step.

    Args:
        runs: the runs of the report, the reference first.
        wanted: the steps asked for (``--steps``); ``None`` for the default.
        layer: the layer drawn in the picture (whose histograms the steps need).

    Example:
        >>> a = TailRun("a", Path("a"), statistics={("kurtosis", "model"): {0: 1.0, 10: 1.0, 20: 1.0}})
        >>> b = TailRun("b", Path("b"), statistics={("kurtosis", "model"): {5: 1.0, 25: 1.0}})
        >>> report_steps([a, b]), report_steps([a, b], wanted=[14, 99])
        ([[0, 10, 20], [5, 5, 25]], [[10, 20], [5, 25]])
    """
    if not runs:
        return []
    reference = candidate_steps(runs[0], layer)
    if not reference:
        panels: list[int] = []
    elif wanted:
        panels = sorted({nearest_step(reference, step) for step in wanted})
    else:
        panels = default_steps(reference)
    chosen = [panels]
    for run in runs[1:]:
        candidates = candidate_steps(run, layer)
        chosen.append([nearest_step(candidates, step) for step in panels] if candidates else [])
    return chosen


def heaviest_layers(run: TailRun, sort_by: str = "hill_alpha", top: int = 10) -> list[str]:
    """The ``top`` layers with the heaviest tails by the median of ``sort_by`` over all logged steps."""
    if sort_by not in SORT_DIRECTION:
        raise ValueError(f"Invalid sort_by: {sort_by!r} (expected one of {', '.join(SORT_DIRECTION)})")
    direction = SORT_DIRECTION[sort_by]

    def key(layer: str) -> float:
        values = [v for v in run.statistics.get((sort_by, layer), {}).values() if math.isfinite(v)]
        return direction * _median(values) if values else math.inf

    return sorted(run.layers, key=key)[:top]


def format_table(
    run: TailRun,
    steps: Sequence[int] | None = None,
    sort_by: str = "hill_alpha",
    top: int = 10,
    layer: str = tags.WHOLE_MODEL,
) -> str:
    """A markdown table: the whole model, then the heaviest-tailed layers, each statistic at each step.

    Columns are ``statistic@step`` for the steps :func:`report_steps` chooses for this run alone (the
    logged steps nearest to ``steps``; default: first, middle, last), the steps the picture of ``layer``
    draws. Statistics missing at a step show as ``-``; damaged event files are listed under the table.
    """
    logged = run.steps
    chosen = sorted(set(report_steps([run], steps, layer)[0]))
    header = ["layer"] + [f"{_short(stat)}@{step}" for stat in tags.STATISTICS for step in chosen]
    rows = []
    for name in [tags.WHOLE_MODEL, *heaviest_layers(run, sort_by, top)]:
        cells = [name]
        for stat in tags.STATISTICS:
            values = run.statistics.get((stat, name), {})
            cells += [_format(values.get(step)) for step in chosen]
        rows.append(cells)
    lines = [f"{run.name}: heaviest-tailed layers by {sort_by} (median over {len(logged)} logged steps)"]
    lines.append("| " + " | ".join(header) + " |")
    lines.append("|" + "---|" * len(header))
    lines += ["| " + " | ".join(cells) + " |" for cells in rows]
    bad = {step: n for step, n in run.nonfinite.items() if n}
    if bad:
        lines.append(f"non-finite gradient entries at {len(bad)} logged steps (first at step {min(bad)})")
    lines += [f"partial data: damaged event file {check.describe()}" for check in run.damaged]
    return "\n".join(lines)


def _short(statistic: str) -> str:
    return {"kurtosis": "kurt", "q999_over_q50": "q999/q50", "hill_alpha": "alpha", "top1pct_energy": "top1%"}[
        statistic
    ]


def _format(value: float | None) -> str:
    if value is None:
        return "-"
    if not math.isfinite(value):
        return "nan" if math.isnan(value) else ("inf" if value > 0 else "-inf")
    return f"{value:.3g}" if abs(value) < 1e4 else f"{value:.2e}"


def _median(values: Sequence[float]) -> float:
    ordered = sorted(values)
    middle = len(ordered) // 2
    return ordered[middle] if len(ordered) % 2 else 0.5 * (ordered[middle - 1] + ordered[middle])


# ----------------------------------------------------------------------------------------- the picture
RUN_COLOURS = ("tab:blue", "tab:red", "tab:green", "tab:orange", "tab:purple", "tab:brown", "tab:pink", "tab:gray")


LINE_STYLES = ("-", "--", ":", "-.")
"""Run ``i`` is drawn with ``LINE_STYLES[i % 4]`` and a line that thins with ``i``, so that runs whose curves
coincide stay distinguishable (a thick solid line under a thinner dashed one)."""


def draw_distributions(
    runs: Sequence[TailRun], steps: Sequence[int] | None = None, layer: str = tags.WHOLE_MODEL
) -> Any:
    """The figure of :func:`plot_distributions` (a ``matplotlib.figure.Figure``), not saved.

    Each curve is a ``StepPatch`` whose ``gid`` is ``"<run name>@<step>"`` (the step it draws) and whose
    label is the run's name and Hill tail index; panel ``i`` draws each run at its ``i``-th step of
    :func:`report_steps`, the panel's title names the step, and a run drawn at another step than the
    first run's says so in its label.

    Raises:
        ValueError: no run has ``log10 |g|`` histograms of ``layer``.
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    if not any(run.log_abs_histograms.get(layer) for run in runs):
        layers = sorted({name for run in runs for name in run.log_abs_histograms})
        if layers:
            hint = (
                f" (layers with histograms: {', '.join(layers)}; per-layer histograms cover the first "
                "GradientTailMonitor(max_histograms=...) watched parameters)"
            )
        else:
            last = max((step for run in runs for step in run.steps), default=0)
            hint = (
                f": the runs logged statistics up to step {last} but no histogram; GradientTailMonitor writes them "
                "at its first logged step and every histogram_every_n_steps optimizer steps (default 20 x "
                f"log_every_n_steps): pass GradientTailMonitor(histogram_every_n_steps=N) with N <= {last + 1}, "
                "and a TensorBoardLogger"
            )
        raise ValueError(f"no run has log10|g| histograms for layer {layer!r}{hint}")
    chosen = report_steps(runs, steps, layer)
    panels = chosen[0]
    figure, axes = plt.subplots(1, len(panels), figsize=(4.2 * len(panels), 3.6), sharey=True, squeeze=False)
    for column, (axis, panel_step) in enumerate(zip(axes[0], panels)):
        for index, (run, run_steps) in enumerate(zip(runs, chosen)):
            histograms = {h.step: h for h in run.log_abs_histograms.get(layer, [])}
            histogram = histograms.get(run_steps[column]) if run_steps else None
            if histogram is None or histogram.total <= 0:
                continue
            step = histogram.step
            shares = [count / histogram.total for count in histogram.counts]
            alpha = run.statistics.get(("hill_alpha", layer), {}).get(step)
            details = [f"alpha {alpha:.2f}"] if alpha is not None else []
            if step != panel_step:
                details.append(f"at step {step}")
            axis.stairs(
                shares,
                histogram.edges,
                color=RUN_COLOURS[index % len(RUN_COLOURS)],
                linestyle=LINE_STYLES[index % len(LINE_STYLES)],
                linewidth=max(1.0, 2.6 - 0.6 * index),
                label=run.name + (f" ({', '.join(details)})" if details else ""),
                gid=f"{run.name}@{step}",
                zorder=2 + index,
            )
        axis.set_yscale("log")
        axis.set_title(f"step {panel_step}")
        axis.set_xlabel("log10 |g|")
        axis.grid(alpha=0.3)
        axis.legend(fontsize=7, loc="upper left")
    axes[0][0].set_ylabel(f"share of entries ({layer})")
    figure.suptitle(f"gradient magnitude distributions ({layer}); alpha: Hill tail index, smaller is heavier")
    figure.tight_layout()
    return figure


def plot_distributions(
    runs: Sequence[TailRun], output: str | Path, steps: Sequence[int] | None = None, layer: str = tags.WHOLE_MODEL
) -> Path:
    """Draw each run's ``log10 |g|`` distribution of ``layer`` at the chosen steps, one panel per step.

    Each curve is the share of gradient entries per 0.1 decade of ``|g|`` (log-scaled y axis, so the
    tails stay visible), labelled with the run's Hill tail index at that step, in the run's own colour and
    line style. The steps are those of :func:`report_steps` (the ones the tables show): by default the
    first, middle and last steps of the first run; every other run at its nearest logged step.

    Args:
        runs: the runs to compare (the first one sets the panels' steps).
        output: the PNG's path (its folder is created).
        steps: the steps asked for (nearest logged ones are drawn); ``None`` for the default.
        layer: the layer drawn (default: the whole model).

    Returns:
        The path of the PNG written.

    Raises:
        ValueError: no run has ``log10 |g|`` histograms of ``layer``; the message says what to change.
    """
    import matplotlib.pyplot as plt

    figure = draw_distributions(runs, steps, layer)
    path = Path(output)
    path.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(path, dpi=110)
    plt.close(figure)
    return path
