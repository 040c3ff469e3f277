"""Read gradient-tail logs back from TensorBoard event files: a table of the heaviest-tailed layers over
time, and a picture comparing the runs' ``log10 |g|`` distributions (``lightning-opt tails``).

The logs are those of :class:`~lightning_opt.callbacks.GradientTailMonitor`; the tags are in
:mod:`lightning_opt.tails.tags`. A *run* is one directory holding event files; a directory given on the
command line may hold several runs (``logs/digits`` with ``version_0``, ``version_1``...).
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from lightning_opt.tails import tags

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
    ``log10 |g|`` histograms by layer (:data:`~lightning_opt.tails.tags.WHOLE_MODEL` included)."""

    name: str
    directory: Path
    statistics: dict[tuple[str, str], dict[int, float]] = field(default_factory=dict)
    log_abs_histograms: dict[str, list[Histogram]] = field(default_factory=dict)
    nonfinite: dict[int, float] = field(default_factory=dict)

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


def load_run(directory: Path, name: str | None = None) -> TailRun:
    """Read one run's tail statistics and ``log10 |g|`` histograms (every logged step)."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    accumulator = EventAccumulator(str(directory), size_guidance={"histograms": 0, "scalars": 0})
    accumulator.Reload()
    available = accumulator.Tags()
    run = TailRun(name=name or directory.name, directory=directory)
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


def load_runs(paths: Iterable[str | Path]) -> list[TailRun]:
    """Every run under the given paths that holds tail statistics.

    A run is named by its directory relative to the argument it was found under (``version_0``), by
    the argument itself when that is the run's directory, and with the argument as a prefix when
    several arguments were given.
    """
    roots = [Path(path) for path in paths]
    runs = []
    for root in roots:
        for directory in find_run_directories(root):
            relative = directory.relative_to(root) if root.is_dir() else Path(".")
            if relative == Path("."):
                name = str(root)
            else:
                name = str(root / relative) if len(roots) > 1 else str(relative)
            run = load_run(directory, name)
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


def heaviest_layers(run: TailRun, sort_by: str = "hill_alpha", top: int = 10) -> list[str]:
    """The ``top`` layers with the heaviest tails by the median of ``sort_by`` over all logged steps."""
    if sort_by not in SORT_DIRECTION:
        raise ValueError(f"Invalid sort_by: {sort_by!r} (expected one of {', '.join(SORT_DIRECTION)})")
    direction = SORT_DIRECTION[sort_by]

    def key(layer: str) -> float:
        values = [v for v in run.statistics.get((sort_by, layer), {}).values() if math.isfinite(v)]
        return direction * _median(values) if values else math.inf

    return sorted(run.layers, key=key)[:top]


def format_table(run: TailRun, steps: Sequence[int] | None = None, sort_by: str = "hill_alpha", top: int = 10) -> str:
    """A markdown table: the whole model, then the heaviest-tailed layers, each statistic at each step.

    Columns are ``statistic@step`` for the chosen steps (nearest logged ones; default: first, middle,
    last). Statistics missing at a step show as ``-``.
    """
    logged = run.steps
    chosen = sorted({nearest_step(logged, s) for s in steps}) if steps else default_steps(logged)
    header = ["layer"] + [f"{_short(stat)}@{step}" for stat in tags.STATISTICS for step in chosen]
    rows = []
    for layer in [tags.WHOLE_MODEL, *heaviest_layers(run, sort_by, top)]:
        cells = [layer]
        for stat in tags.STATISTICS:
            values = run.statistics.get((stat, layer), {})
            cells += [_format(values.get(step)) for step in chosen]
        rows.append(cells)
    lines = [f"{run.name}: heaviest-tailed layers by {sort_by} (median over {len(logged)} logged steps)"]
    lines.append("| " + " | ".join(header) + " |")
    lines.append("|" + "---|" * len(header))
    lines += ["| " + " | ".join(cells) + " |" for cells in rows]
    bad = {step: n for step, n in run.nonfinite.items() if n}
    if bad:
        lines.append(f"non-finite gradient entries at {len(bad)} logged steps (first at step {min(bad)})")
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


def plot_distributions(
    runs: Sequence[TailRun], output: str | Path, steps: Sequence[int] | None = None, layer: str = tags.WHOLE_MODEL
) -> Path:
    """Draw each run's ``log10 |g|`` distribution of ``layer`` at the chosen steps, one panel per step.

    Each curve is the share of gradient entries per 0.1 decade of ``|g|`` (log-scaled y axis, so the
    tails stay visible), labelled with the run's Hill tail index at that step. Steps are matched to
    each run's nearest logged step; by default the first, middle and last steps of the first run.

    Returns:
        The path of the PNG written.
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    with_histograms = [run for run in runs if run.log_abs_histograms.get(layer)]
    if not with_histograms:
        raise ValueError(f"no run has log10|g| histograms for layer {layer!r}")
    first_steps = [h.step for h in with_histograms[0].log_abs_histograms[layer]]
    chosen = list(steps) if steps else default_steps(first_steps)
    figure, axes = plt.subplots(1, len(chosen), figsize=(4.2 * len(chosen), 3.4), sharey=True, squeeze=False)
    for axis, wanted in zip(axes[0], chosen):
        shown: list[int] = []
        for index, run in enumerate(with_histograms):
            histograms = run.log_abs_histograms[layer]
            step = nearest_step([h.step for h in histograms], wanted)
            histogram = next(h for h in histograms if h.step == step)
            shown.append(step)
            if histogram.total <= 0:
                continue
            shares = [count / histogram.total for count in histogram.counts]
            alpha = run.statistics.get(("hill_alpha", layer), {}).get(step)
            label = f"{run.name} (step {step}" + (f", alpha {alpha:.2f})" if alpha is not None else ")")
            axis.stairs(shares, histogram.edges, color=RUN_COLOURS[index % len(RUN_COLOURS)], label=label)
        axis.set_yscale("log")
        axis.set_title(f"step {shown[0]}" if len(set(shown)) == 1 else f"steps near {wanted}")
        axis.set_xlabel("log10 |g|")
        axis.legend(fontsize=7, loc="upper left")
    axes[0][0].set_ylabel(f"share of entries ({layer})")
    figure.suptitle("gradient magnitude distributions")
    figure.tight_layout()
    path = Path(output)
    path.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(path, dpi=110)
    plt.close(figure)
    return path
