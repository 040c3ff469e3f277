"""What a study is: a declaration of its grid (the settings it runs each optimizer with), its table and its figure.

A study gets :class:`StudyOptions` (the command line's), returns the settings per optimizer, and turns the
finished cells into markdown and a PNG. Running, resuming and keying the cells is the runner's job
(:mod:`lightning_opt.studies.runner`), the same for every study.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional

from lightning_opt.studies.cells import Cell, Setting
from lightning_opt.studies.knobs import StepKnob
from lightning_opt.studies.stats import Mode, Summary, summarize, worse_than


@dataclass(frozen=True)
class MetricDefaults:
    """The metric a recipe's studies read by default, and the thresholds that go with it.

    Args:
        metric: the logged validation metric (``val_acc``, ``val_loss``).
        mode: ``"max"`` if larger is better, ``"min"`` if smaller is.
        band: the good band of the learning-rate study, relative to the best mean (0.01: within 1 %).
        diverged: a final metric worse than this counts as a divergence (besides non-finite losses), or ``None``.
        target: the target of the time-to-target study, or ``None`` (then ``--target`` is required).
    """

    metric: str
    mode: Mode
    band: float
    diverged: Optional[float] = None
    target: Optional[float] = None


RECIPE_DEFAULTS: dict[str, MetricDefaults] = {
    # 10 classes: chance is 0.1; a run below 0.5 at the end did not train. AdaLo and AdamW reach ~0.97.
    "digits": MetricDefaults("val_acc", "max", band=0.01, diverged=0.5, target=0.95),
    # the byte-level transformer (with and without its normalisation layers): validation loss in nats per byte;
    # no target until the recipe's results are measured (give --target to the time study)
    "char_lm": MetricDefaults("val_loss", "min", band=0.02),
    "char_lm_nonorm": MetricDefaults("val_loss", "min", band=0.02),
}
"""Per packaged config (by file name without ``.yaml``): the metric and thresholds its studies use by default."""

FALLBACK_DEFAULTS = MetricDefaults("val_loss", "min", band=0.05)
"""For a config not in :data:`RECIPE_DEFAULTS`: validation loss, within 5 % of the best, no target."""


@dataclass
class StudyOptions:
    """The options of one study run (the command line's, with defaults filled in).

    Args:
        optimizers: the optimizers' names, as given (row labels).
        class_paths: their full class paths, by name.
        knobs: the step knob of each optimizer, by name (studies that do not vary it may lack an optimizer's).
        seeds: the seeds every cell runs with.
        metric: the validation metric read.
        mode: whether larger (``"max"``) or smaller (``"min"``) is better.
        band: the good band of the learning-rate study (relative to the best mean).
        diverged: the final-metric threshold of a divergence, or ``None``.
        target: the target of the time-to-target study, or ``None``.
        points: learning-rate study: grid points per optimizer.
        decades: learning-rate study: the decades the grid spans.
        scales: warm-up study: the step scales (times the default step) each optimizer runs at.
        warmup_epochs: warm-up study: the epochs of the linear warm-up.
        warmup_start: warm-up study: the factor of the first epoch's step.
        norms: norm study: the values of the model's normalisation argument.
        norm_arg: norm study: that argument, as ``fit`` spells it after ``--`` (``model.norm``).
        batch: accumulation study: the micro-batch size B.
        accumulate: accumulation study: the accumulation steps N (the big batch is B x N).
        batch_arg: accumulation study: the datamodule's batch-size argument (``data.batch_size``).
        clips: tails study: the gradient clippings compared (``none``, ``softclip``, ``agc``).
        tail_every: tails study: the tail statistics are logged every this many optimizer steps.
        description: a line about the run for the table's header (config, command).
    """

    optimizers: tuple[str, ...]
    class_paths: dict[str, str]
    knobs: dict[str, StepKnob]
    seeds: tuple[int, ...] = (0, 1, 2)
    metric: str = "val_acc"
    mode: Mode = "max"
    band: float = 0.01
    diverged: Optional[float] = None
    target: Optional[float] = None
    points: int = 7
    decades: float = 3.0
    scales: tuple[float, ...] = (1.0, 10.0)
    warmup_epochs: int = 5
    warmup_start: float = 0.1
    norms: tuple[str, ...] = ("layernorm", "none")
    norm_arg: str = "model.norm"
    batch: int = 32
    accumulate: int = 4
    batch_arg: str = "data.batch_size"
    clips: tuple[str, ...] = ("none", "softclip", "agc")
    tail_every: int = 45
    description: list[str] = field(default_factory=list)


Results = list[tuple[Cell, dict[str, Any]]]
"""``(cell, record)`` of every cell of a study, in grid order (records of failed cells included)."""


@dataclass(frozen=True)
class Study:
    """A study: its name, what it measures, its grid, its table and its figure.

    Args:
        name: the ``lightning-opt study NAME``.
        summary: one line on what it measures.
        default_optimizers: the optimizers it compares unless ``--optimizers`` is given.
        settings: ``settings(options, optimizer) -> [Setting, ...]``, the settings of one optimizer's cells.
        table: ``table(options, results) -> markdown``.
        plot: ``plot(options, results, path)`` writes the PNG.
        needs_target: the study reads ``options.target`` (and needs one).
        uses_knob: the study varies each optimizer's step knob (and needs one per optimizer).
        collect: ``collect(run_dir) -> dict``, what the study reads from a finished cell's directory besides the
            probe (e.g. logged tail statistics), saved in the cell's record as ``collected``; or ``None``.
    """

    name: str
    summary: str
    default_optimizers: tuple[str, ...]
    settings: Callable[[StudyOptions, str], list[Setting]]
    table: Callable[[StudyOptions, Results], str]
    plot: Callable[[StudyOptions, Results, Path], None]
    needs_target: bool = False
    uses_knob: bool = False
    collect: Optional[Callable[[Path], dict[str, Any]]] = None


# ------------------------------------------------------------------------------------------------ reading records
def history(record: Mapping[str, Any]) -> list[dict[str, Any]]:
    """The validations a cell's probe recorded (empty for a failed cell without a probe file)."""
    probe = record.get("probe") or {}
    return list(probe.get("validations") or [])


def metric_value(value: Any) -> float:
    """A recorded metric as a float: numbers as they are, ``"nan"`` / ``"inf"`` (how the probe writes non-finite
    values) as NaN / inf, anything else NaN.

    Example:
        >>> metric_value(0.5), metric_value("inf"), metric_value(None)
        (0.5, inf, nan)
    """
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        return float(value)
    if isinstance(value, str):
        try:
            return float(value)
        except ValueError:
            return math.nan
    return math.nan


def final_metric(record: Mapping[str, Any], metric: str) -> float:
    """The metric at a cell's last validation (NaN if it failed or never validated)."""
    validations = history(record)
    if record.get("status") != "ok" or not validations:
        return math.nan
    return metric_value(validations[-1].get("metrics", {}).get(metric))


def diverged(record: Mapping[str, Any], options: StudyOptions) -> bool:
    """Whether an ``ok`` cell diverged: a non-finite training loss, or a final metric that is non-finite or worse
    than ``options.diverged``."""
    probe = record.get("probe") or {}
    if probe.get("nonfinite_losses"):
        return True
    return worse_than(final_metric(record, options.metric), options.diverged, options.mode)


def validation_curve(records: Sequence[Mapping[str, Any]], metric: str) -> tuple[list[int], list[Summary]]:
    """The metric at each validation epoch, summarised over the records (seeds) of ``ok`` cells: the epochs
    and a :class:`~lightning_opt.studies.stats.Summary` per epoch.

    Example:
        >>> records = [{"status": "ok", "probe": {"validations": [{"epoch": 0, "metrics": {"m": v}}]}}
        ...            for v in (1.0, 3.0)]
        >>> epochs, summaries = validation_curve(records, "m")
        >>> epochs, summaries[0].mean
        ([0], 2.0)
    """
    by_epoch: dict[int, list[float]] = {}
    for record in records:
        if record.get("status") != "ok":
            continue
        for entry in history(record):
            by_epoch.setdefault(int(entry["epoch"]), []).append(metric_value(entry.get("metrics", {}).get(metric)))
    epochs = sorted(by_epoch)
    return epochs, [summarize(by_epoch[epoch]) for epoch in epochs]


def group(results: Results, by: Callable[[Cell], Any]) -> dict[Any, list[dict[str, Any]]]:
    """The records of ``results`` grouped by ``by(cell)``, groups in first-seen order."""
    grouped: dict[Any, list[dict[str, Any]]] = {}
    for cell, record in results:
        grouped.setdefault(by(cell), []).append(record)
    return grouped


def failed_count(records: Iterable[Mapping[str, Any]]) -> int:
    """How many records are of cells whose process failed."""
    return sum(1 for record in records if record.get("status") != "ok")


# ------------------------------------------------------------------------------------------------ output
def markdown_table(headers: Sequence[str], rows: Sequence[Sequence[Any]]) -> str:
    """A GitHub markdown table.

    Example:
        >>> print(markdown_table(["a", "b"], [[1, 2]]))
        | a | b |
        |---|---|
        | 1 | 2 |
    """
    lines = ["| " + " | ".join(headers) + " |", "|" + "|".join("---" for _ in headers) + "|"]
    lines += ["| " + " | ".join(str(cell) for cell in row) + " |" for row in rows]
    return "\n".join(lines)


def new_figure(width: float, height: float, columns: int = 1) -> tuple[Any, list[Any]]:
    """A matplotlib figure on an Agg canvas (no pyplot, no display) and its ``columns`` axes in one row
    (``columns=0``: none, for a figure that lays out its own)."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    figure = Figure(figsize=(width, height), dpi=110)
    FigureCanvasAgg(figure)
    axes = [figure.add_subplot(1, columns, index + 1) for index in range(columns)]
    return figure, axes


def save_figure(figure: Any, path: Path) -> None:
    """Lay out and write ``figure`` as a PNG at ``path`` (its folder created)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    figure.tight_layout()
    figure.savefig(path)


def colour(index: int) -> str:
    """Matplotlib's default colour cycle (``C0``, ``C1``...)."""
    return f"C{index % 10}"


__all__ = [
    "FALLBACK_DEFAULTS",
    "RECIPE_DEFAULTS",
    "MetricDefaults",
    "Results",
    "Study",
    "StudyOptions",
    "diverged",
    "failed_count",
    "final_metric",
    "group",
    "history",
    "markdown_table",
    "metric_value",
    "validation_curve",
]
