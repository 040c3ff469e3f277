"""Study ``tails``: the gradients' tail statistics over training, per optimizer, with and without SoftClip and AGC.

Each optimizer runs at its defaults with :class:`~lightning_opt.callbacks.GradientTailMonitor` logging the four
tail statistics of the whole model's gradients (:data:`~lightning_opt.tails.tags.STATISTICS`: excess kurtosis,
``q99.9 / q50`` of ``|g|``, Hill's tail index, the share of ``sum(g**2)`` in the largest 1 %) every
``tail_every`` optimizer steps, and with one of the clippings of ``clips``:

- ``none``: the gradients as the backward pass leaves them;
- ``softclip``: :class:`~lightning_opt.SoftClip` at its defaults (the seed author's per-unit soft clip);
- ``agc``: :class:`~lightning_opt.AdaptiveGradientClipping` at its defaults (NFNets' unit-wise clipping).

The clipping runs before the monitor (callbacks run in list order), so the statistics are those of the gradients
the optimizer gets. After each cell the statistics are read back from its TensorBoard event files
(:func:`lightning_opt.tails.report.load_runs`) into its record. The table gives, per optimizer and clipping, the
median of each statistic over the logged steps (mean ± std over seeds) and the final metric; the figure draws each
statistic against the step.
"""

from __future__ import annotations

import json
import math
import statistics as pystatistics
from pathlib import Path
from typing import Any, Optional

from lightning_opt.studies.base import (
    Results,
    Study,
    StudyOptions,
    colour,
    failed_count,
    final_metric,
    group,
    markdown_table,
    metric_value,
    new_figure,
    save_figure,
)
from lightning_opt.studies.cells import Setting
from lightning_opt.studies.stats import summarize

DEFAULT_OPTIMIZERS = ("AdamW", "AdaLo", "AdamAtan2", "NSGDA", "Lamb")
STATISTICS = ("kurtosis", "q999_over_q50", "hill_alpha", "top1pct_energy")
"""The statistics, as :data:`lightning_opt.tails.tags.STATISTICS` names them (checked by the tests)."""

CLIPS: dict[str, Optional[str]] = {
    "none": None,
    "softclip": "lightning_opt.SoftClip",
    "agc": "lightning_opt.AdaptiveGradientClipping",
}
"""The clippings, by ``--clips`` name: the callback's class path (``None``: no clipping)."""

LINE_STYLES = ("-", "--", ":", "-.")


def monitor_callback(every: int) -> str:
    """The ``--trainer.callbacks+=`` value of the monitor: statistics every ``every`` optimizer steps; histograms
    only at the first logged step (a million steps apart), since the study reads only the statistics.

    Example:
        >>> monitor_callback(45)
        '{"class_path": "lightning_opt.callbacks.GradientTailMonitor", "init_args": {"every_n_steps": 45, \
"histogram_every_n_steps": 1000000}}'
    """
    init = {"every_n_steps": every, "histogram_every_n_steps": 1_000_000}
    return json.dumps({"class_path": "lightning_opt.callbacks.GradientTailMonitor", "init_args": init})


def settings(options: StudyOptions, optimizer: str) -> list[Setting]:
    """One setting per clipping: the clipping callback (if any), then the monitor."""
    found = []
    for clip in options.clips:
        args: tuple[str, ...] = ()
        if CLIPS[clip] is not None:
            args += (f"--trainer.callbacks+={json.dumps({'class_path': CLIPS[clip]})}",)
        args += (f"--trainer.callbacks+={monitor_callback(options.tail_every)}",)
        found.append(Setting({"clip": clip}, args))
    return found


def collect(run_dir: Path) -> dict[str, Any]:
    """The whole model's tail statistics logged in ``run_dir``: ``{statistic: [[step, value or None], ...]}``.

    Raises:
        ValueError: no tail statistics were logged there (the monitor did not run), or an event file is damaged.
    """
    from lightning_opt.tails import tags
    from lightning_opt.tails.report import load_runs

    runs = [run for run in load_runs([run_dir]) if run.statistics]
    if not runs:
        raise ValueError(f"no gradient tail statistics were logged under {run_dir}")
    found: dict[str, list[list[Any]]] = {}
    for statistic in STATISTICS:
        series = runs[0].statistics.get((statistic, tags.WHOLE_MODEL), {})
        found[statistic] = [[step, value if math.isfinite(value) else None] for step, value in sorted(series.items())]
    return {"statistics": found}


def _series(record: dict[str, Any], statistic: str) -> list[tuple[int, float]]:
    collected = record.get("collected") or {}
    points = (collected.get("statistics") or {}).get(statistic) or []
    return [(int(step), math.nan if value is None else float(value)) for step, value in points]


def _median(record: dict[str, Any], statistic: str) -> float:
    values = [value for _, value in _series(record, statistic) if math.isfinite(value)]
    return pystatistics.median(values) if values else math.nan


def clipped_share(record: dict[str, Any]) -> float:
    """The share of units the clipping callback clipped at the last step it logged (``<name>/clipped_units``),
    NaN without a clipping.

    Example:
        >>> clipped_share({"probe": {"final_metrics": {"SoftClip/clipped_units": 0.25, "val_acc": 0.9}}})
        0.25
    """
    probe = record.get("probe") or {}
    metrics = probe.get("final_metrics") or {}
    values = [metric_value(value) for name, value in metrics.items() if name.endswith("/clipped_units")]
    return values[0] if values else math.nan


def table(options: StudyOptions, results: Results) -> str:
    """Per optimizer and clipping: the median over training of each statistic (over seeds), and the final metric."""
    grouped = group(results, lambda cell: (cell.optimizer, cell.setting.values["clip"]))
    rows = []
    for optimizer in options.optimizers:
        for clip in options.clips:
            records = grouped.get((optimizer, clip), [])
            ok = [record for record in records if record.get("status") == "ok"]
            failed = failed_count(records)
            row = [f"`{optimizer}`", clip]
            row += [summarize(_median(record, statistic) for record in ok).format() for statistic in STATISTICS]
            row += [
                "" if clip == "none" else summarize(clipped_share(record) for record in ok).format(2),
                summarize(final_metric(record, options.metric) for record in ok).format(),
                f"{len(ok)}" + (f" ({failed} failed)" if failed else ""),
            ]
            rows.append(row)
    intro = (
        "Tail statistics of the whole model's gradients (after the clipping, as the optimizer gets them), logged "
        f"every {options.tail_every} optimizer steps; per run the median over the logged steps, then mean ± std "
        "(min–max) over seeds. Heavier tails: larger kurtosis, q99.9/q50 and top-1% energy share, smaller Hill "
        "index. Units clipped: the share of units (rows of a weight) the clipping scaled down at the last step."
    )
    headers = [
        "optimizer", "clipping", "kurtosis", "q99.9/q50", "Hill index", "top-1% energy", "units clipped (last step)",
        f"final {options.metric}", "runs",
    ]  # fmt: skip
    return f"{intro}\n\n{markdown_table(headers, rows)}"


def plot(options: StudyOptions, results: Results, path: Path) -> None:
    """One panel per statistic against the optimizer step: colour per optimizer, line style per clipping; the
    mean over seeds at each logged step."""
    grouped = group(results, lambda cell: (cell.optimizer, cell.setting.values["clip"]))
    figure, panels = new_figure(13.0, 3.6, columns=len(STATISTICS))
    for axes, statistic in zip(panels, STATISTICS):
        for index, optimizer in enumerate(options.optimizers):
            for style, clip in zip(LINE_STYLES, options.clips):
                by_step: dict[int, list[float]] = {}
                for record in grouped.get((optimizer, clip), []):
                    if record.get("status") == "ok":
                        for step, value in _series(record, statistic):
                            by_step.setdefault(step, []).append(value)
                steps = sorted(by_step)
                means = [summarize(by_step[step]).mean for step in steps]
                if steps:
                    axes.plot(steps, means, color=colour(index), linestyle=style, linewidth=1.1,
                              label=f"{optimizer}, {clip}")
        axes.set_title(statistic, fontsize=9)
        axes.set_xlabel("optimizer step", fontsize=8)
        if statistic == "kurtosis":
            axes.set_yscale("symlog")  # excess kurtosis may be negative
        elif statistic == "q999_over_q50":
            axes.set_yscale("log")
        axes.grid(alpha=0.3)
    panels[-1].legend(fontsize=6)
    save_figure(figure, path)


STUDY = Study(
    name="tails",
    summary="gradient tails: tail statistics over training per optimizer, without clipping, with SoftClip, with AGC",
    default_optimizers=DEFAULT_OPTIMIZERS,
    settings=settings,
    table=table,
    plot=plot,
    collect=collect,
)

__all__ = ["CLIPS", "DEFAULT_OPTIMIZERS", "STATISTICS", "STUDY", "collect", "monitor_callback", "plot", "settings",
           "table"]
