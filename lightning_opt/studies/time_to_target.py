"""Study ``time``: wall time and optimizer steps until the validation metric first reaches a target.

Each optimizer runs with its defaults. The probe stamps every validation with the seconds since the start of
training (``time.perf_counter``: process start-up, data preparation and the sanity check are not counted;
validation time is) and the optimizer step; the first validation at or beyond the target gives both. The
resolution is the validation interval (an epoch unless the config sets ``val_check_interval``), and wall times
depend on the machine and its load: compare them within one study run.
"""

from __future__ import annotations

from pathlib import Path

from lightning_opt.studies.base import (
    Results,
    Study,
    StudyOptions,
    colour,
    failed_count,
    final_metric,
    group,
    history,
    markdown_table,
    metric_value,
    new_figure,
    save_figure,
)
from lightning_opt.studies.cells import Setting
from lightning_opt.studies.stats import first_reaching, summarize

DEFAULT_OPTIMIZERS = ("AdamW", "AdaLo", "AdamAtan2", "NSGDA", "Lamb")


def settings(options: StudyOptions, optimizer: str) -> list[Setting]:
    """One setting: the optimizer's defaults."""
    return [Setting()]


def table(options: StudyOptions, results: Results) -> str:
    """Per optimizer: how many seeds reached the target, the seconds and steps it took them, the final metric."""
    assert options.target is not None
    grouped = group(results, lambda cell: cell.optimizer)
    rows = []
    for optimizer, records in grouped.items():
        ok = [record for record in records if record.get("status") == "ok"]
        reached = [first_reaching(history(r), options.metric, options.target, options.mode) for r in ok]
        hits = [hit for hit in reached if hit is not None]
        rows.append([
            f"`{optimizer}`",
            f"{len(hits)}/{len(ok)}" + (f" ({failed_count(records)} failed)" if failed_count(records) else ""),
            summarize(seconds for seconds, _ in hits).format(),
            summarize(float(step) for _, step in hits).format(),
            summarize(final_metric(record, options.metric) for record in ok).format(),
        ])
    side = ">=" if options.mode == "max" else "<="
    intro = (
        f"Target: {options.metric} {side} {options.target:g}. Seconds from the start of training to the first "
        "validation that reached it (validation time included, start-up not), and optimizer steps; over the seeds "
        "that reached it."
    )
    headers = ["optimizer", "reached", "seconds to target", "steps to target", f"final {options.metric}"]
    return f"{intro}\n\n{markdown_table(headers, rows)}"


def plot(options: StudyOptions, results: Results, path: Path) -> None:
    """The metric against wall time, one line per run (colour per optimizer), and the target."""
    assert options.target is not None
    figure, (axes,) = new_figure(7.0, 4.2)
    labelled: set[str] = set()
    for cell, record in results:
        validations = history(record)
        if record.get("status") != "ok" or not validations:
            continue
        index = options.optimizers.index(cell.optimizer)
        xs = [float(entry["seconds"]) for entry in validations]
        ys = [metric_value(entry.get("metrics", {}).get(options.metric)) for entry in validations]
        axes.plot(
            xs, ys, color=colour(index), linewidth=1.2, alpha=0.8,
            label=cell.optimizer if cell.optimizer not in labelled else None,
        )
        labelled.add(cell.optimizer)
    axes.axhline(options.target, color="grey", linestyle="--", linewidth=1, label=f"target {options.target:g}")
    axes.set_xlabel("seconds since the start of training")
    axes.set_ylabel(options.metric)
    axes.set_title("time to target: one line per seed", fontsize=9)
    axes.grid(alpha=0.3)
    axes.legend(fontsize=7)
    save_figure(figure, path)


STUDY = Study(
    name="time",
    summary="time to target: wall time and steps until the validation metric reaches a target, optimizer defaults",
    default_optimizers=DEFAULT_OPTIMIZERS,
    settings=settings,
    table=table,
    plot=plot,
    needs_target=True,
)

__all__ = ["DEFAULT_OPTIMIZERS", "STUDY", "plot", "settings", "table"]
