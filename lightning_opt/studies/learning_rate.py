"""Study ``lr``: learning-rate sensitivity, the final validation metric over a grid of step sizes per optimizer.

Each optimizer runs at ``points`` values of its step knob (:mod:`lightning_opt.studies.knobs`: ``lr`` for most,
``kappa`` for AdaLo), spaced evenly in log scale over ``decades`` decades and centred on its default. The
figure compared is the width of the **good band**: the grid points whose mean over seeds is within ``band``
(relative) of the best mean of the whole study, every optimizer's included; an optimizer that needs no tuning
has many good points, spread over many decades.
"""

from __future__ import annotations

import math
from pathlib import Path

from lightning_opt.studies.base import (
    Results,
    Study,
    StudyOptions,
    colour,
    failed_count,
    final_metric,
    group,
    markdown_table,
    new_figure,
    save_figure,
)
from lightning_opt.studies.cells import Setting
from lightning_opt.studies.stats import best_of, good_band, summarize

DEFAULT_OPTIMIZERS = ("AdamW", "AdaLo", "AdamAtan2", "NSGDA", "Lamb")


def settings(options: StudyOptions, optimizer: str) -> list[Setting]:
    """One setting per grid value of the optimizer's knob."""
    knob = options.knobs[optimizer]
    return [
        Setting({knob.name: value}, (f"--optimizer.{knob.name}", repr(value)))
        for value in knob.grid(options.points, options.decades)
    ]


def _scale_key(scale: float) -> float:
    """A step scale rounded to two significant digits (the grids' rounded values differ in the third)."""
    return float(f"{scale:.2g}")


def _scale_label(scale: float) -> str:
    return f"×{scale:.2g}"


def grid_means(options: StudyOptions, results: Results) -> dict[str, dict[float, list[float]]]:
    """optimizer -> grid value -> the final metric of each seed."""
    found: dict[str, dict[float, list[float]]] = {}
    for cell, record in results:
        knob = options.knobs[cell.optimizer]
        value = float(cell.setting.values[knob.name])
        found.setdefault(cell.optimizer, {}).setdefault(value, []).append(final_metric(record, options.metric))
    return found


def table(options: StudyOptions, results: Results) -> str:
    """The good band per optimizer, then the whole grid (mean ± std (min–max) over seeds)."""
    values = grid_means(options, results)
    means = {
        optimizer: {value: _mean_or_nan(finals) for value, finals in grid.items()} for optimizer, grid in values.items()
    }
    best = best_of((mean for grid in means.values() for mean in grid.values()), options.mode)
    failures = group(results, lambda cell: cell.optimizer)
    rows = []
    for optimizer, grid in values.items():
        knob = options.knobs[optimizer]
        scales = {value: knob.step_scale(value) for value in grid}
        band = good_band(means[optimizer], scales, best, options.band, options.mode)
        own_best = best_of(means[optimizer].values(), options.mode)
        at = [value for value, mean in means[optimizer].items() if mean == own_best]
        good_range = f"{knob.name} {min(band.good):.3g}–{max(band.good):.3g}" if band.good else "none"
        rows.append([
            f"`{optimizer}`",
            knob.describe(),
            summarize(grid[at[0]]).format() if at else "n/a",
            f"{knob.name}={at[0]:.3g}" if at else "n/a",
            f"{len(band.good)}/{band.points}",
            good_range,
            "n/a" if math.isnan(band.decades) else f"{band.decades:.1f}",
            str(failed_count(failures[optimizer])),
        ])
    slack = "within {:.0%} of".format(options.band) if options.band else "equal to"
    intro = (
        f"Good band: the grid points whose mean {options.metric} over seeds is {slack} the best mean of the study "
        f"({best:.4g}); width: log10 of the largest over the smallest good step. Grid: {options.points} values "
        f"over {options.decades:g} decade{'' if options.decades == 1 else 's'} per optimizer, centred on its default."
    )
    summary = markdown_table(
        [
            "optimizer", "knob", f"best mean {options.metric} (± std, min–max)", "at", "good points", "good range",
            "width (decades)", "failed runs",
        ],
        rows,
    )
    scale_keys = sorted({_scale_key(options.knobs[o].step_scale(v)) for o, grid in values.items() for v in grid})
    grid_rows = []
    for optimizer, grid in values.items():
        knob = options.knobs[optimizer]
        by_scale = {_scale_key(knob.step_scale(value)): finals for value, finals in grid.items()}
        label = f"`{optimizer}` ({knob.name} {', '.join(f'{value:.3g}' for value in grid)})"
        grid_rows.append([label] + [summarize(by_scale[s]).format() if s in by_scale else "" for s in scale_keys])
    full = markdown_table(
        ["optimizer (its grid, smallest step first)"] + [f"step {_scale_label(s)}" for s in scale_keys], grid_rows
    )
    return f"{intro}\n\n{summary}\n\nFinal {options.metric} per step size (relative to the default step):\n\n{full}"


def plot(options: StudyOptions, results: Results, path: Path) -> None:
    """Mean final metric against the step scale (log axis), ± std as error bars, min–max shaded."""
    values = grid_means(options, results)
    figure, (axes,) = new_figure(7.0, 4.2)
    all_means = []
    for index, (optimizer, grid) in enumerate(values.items()):
        knob = options.knobs[optimizer]
        points = sorted((knob.step_scale(value), summarize(finals)) for value, finals in grid.items())
        xs = [scale for scale, summary in points if summary.n]
        stats = [summary for _, summary in points if summary.n]
        if not xs:
            continue
        means = [s.mean for s in stats]
        all_means += means
        axes.errorbar(
            xs, means, yerr=[0.0 if math.isnan(s.std) else s.std for s in stats], color=colour(index), marker="o",
            markersize=4, capsize=3, label=f"{optimizer} ({knob.name})",
        )
        axes.fill_between(xs, [s.low for s in stats], [s.high for s in stats], color=colour(index), alpha=0.15)
    best = best_of(all_means, options.mode)
    if not math.isnan(best):
        edge = best - options.band * abs(best) if options.mode == "max" else best + options.band * abs(best)
        axes.axhline(edge, color="grey", linestyle="--", linewidth=1, label=f"good band edge ({options.band:.0%})")
    axes.set_xscale("log")
    axes.set_xlabel("step size relative to the optimizer's default (lr / default, or default kappa / kappa)")
    axes.set_ylabel(f"final {options.metric}")
    seeds = len(options.seeds)
    axes.set_title(f"learning-rate sensitivity: mean over {seeds} seed{'s' if seeds > 1 else ''}, min–max shaded")
    axes.grid(alpha=0.3)
    axes.legend(fontsize=7)
    save_figure(figure, path)


def _mean_or_nan(finals: list[float]) -> float:
    """The mean over seeds, NaN if any seed's value is not finite (a grid point where a seed diverged is not good)."""
    summary = summarize(finals)
    return math.nan if summary.nonfinite or not summary.n else summary.mean


STUDY = Study(
    name="lr",
    summary="learning-rate sensitivity: final metric over a log grid of each optimizer's step knob; good-band width",
    default_optimizers=DEFAULT_OPTIMIZERS,
    settings=settings,
    table=table,
    plot=plot,
    uses_knob=True,
)

__all__ = ["DEFAULT_OPTIMIZERS", "STUDY", "grid_means", "plot", "settings", "table"]
