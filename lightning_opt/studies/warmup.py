"""Study ``warmup``: each optimizer with and without a linear warm-up, at its default step and at larger ones.

The warm-up is ``torch.optim.lr_scheduler.LinearLR`` given through ``--lr_scheduler``: LightningCLI steps such a
scheduler once per **epoch** (it returns ``[optimizer], [scheduler]``, Lightning's default interval), so the step
is ``warmup_start`` times the optimizer's in the first epoch and reaches it linearly after ``warmup_epochs``
epochs. The scheduler multiplies ``param_groups[i]["lr"]``, which for AdaLo is the multiplier of its loss-driven
step: the warm-up scales AdaLo's step too.

Each optimizer runs at every step scale of ``scales`` (its knob at ``scale`` times its default step: ``lr`` x
scale, AdaLo's ``kappa`` / scale). A run **diverged** if a training loss was NaN or infinite, or its final metric
is non-finite or worse than the ``diverged`` threshold.
"""

from __future__ import annotations

import math
from pathlib import Path

from lightning_opt.studies.base import (
    Results,
    Study,
    StudyOptions,
    colour,
    diverged,
    failed_count,
    final_metric,
    group,
    markdown_table,
    new_figure,
    save_figure,
)
from lightning_opt.studies.cells import Setting
from lightning_opt.studies.stats import summarize

DEFAULT_OPTIMIZERS = ("AdamW", "AdaLo", "AdamAtan2", "NSGDA", "Lamb")
WARMUPS = ("none", "linear")


def settings(options: StudyOptions, optimizer: str) -> list[Setting]:
    """Per step scale, the run without and the run with the warm-up."""
    knob = options.knobs[optimizer]
    schedule = (
        "--lr_scheduler", "torch.optim.lr_scheduler.LinearLR",
        "--lr_scheduler.start_factor", repr(float(options.warmup_start)),
        "--lr_scheduler.end_factor", "1.0",
        "--lr_scheduler.total_iters", str(options.warmup_epochs),
    )  # fmt: skip
    found = []
    for scale in options.scales:
        step = (f"--optimizer.{knob.name}", repr(knob.scaled(scale)))
        for warmup in WARMUPS:
            args = step + (schedule if warmup == "linear" else ())
            found.append(Setting({"step_scale": float(scale), "warmup": warmup}, args))
    return found


def _groups(results: Results) -> dict[tuple[str, float, str], list[dict]]:
    return group(
        results, lambda cell: (cell.optimizer, cell.setting.values["step_scale"], cell.setting.values["warmup"])
    )


def table(options: StudyOptions, results: Results) -> str:
    """Per optimizer and step scale: final metric and divergences without and with the warm-up."""
    grouped = _groups(results)
    rows = []
    for optimizer in options.optimizers:
        knob = options.knobs[optimizer]
        for scale in options.scales:
            row = [f"`{optimizer}`", f"×{scale:g} ({knob.name}={knob.scaled(scale):.3g})"]
            for warmup in WARMUPS:
                records = grouped.get((optimizer, float(scale), warmup), [])
                ok = [record for record in records if record.get("status") == "ok"]
                finals = summarize(final_metric(record, options.metric) for record in ok)
                bad = sum(diverged(record, options) for record in ok)
                row += [finals.format(), f"{bad}/{len(ok)}" + (f" ({failed_count(records)} failed)" if
                                                                 failed_count(records) else "")]
            rows.append(row)
    threshold = (
        f", or a final {options.metric} {'below' if options.mode == 'max' else 'above'} {options.diverged:g}"
        if options.diverged is not None else ""
    )
    intro = (
        f"Warm-up: LinearLR from {options.warmup_start:g}x to 1x over {options.warmup_epochs} epochs (stepped once per "
        f"epoch by LightningCLI). Diverged: a non-finite training loss{threshold}."
    )
    headers = [
        "optimizer", "step (knob)", f"no warm-up: final {options.metric}", "diverged",
        f"warm-up: final {options.metric}", "diverged",
    ]
    return f"{intro}\n\n{markdown_table(headers, rows)}"


def plot(options: StudyOptions, results: Results, path: Path) -> None:
    """Bars of the mean final metric (± std) per optimizer and step scale, without (hatched) and with warm-up;
    the number of diverged runs written over each bar."""
    grouped = _groups(results)
    labels = [(optimizer, scale) for optimizer in options.optimizers for scale in options.scales]
    figure, (axes,) = new_figure(max(6.0, 0.9 * len(labels) + 2), 4.2)
    width = 0.38
    for position, (optimizer, scale) in enumerate(labels):
        index = options.optimizers.index(optimizer)
        for offset, warmup in ((-width / 2, "none"), (width / 2, "linear")):
            records = [r for r in grouped.get((optimizer, float(scale), warmup), []) if r.get("status") == "ok"]
            summary = summarize(final_metric(record, options.metric) for record in records)
            height = summary.mean if summary.n else 0.0
            axes.bar(
                position + offset, height, width, yerr=0.0 if math.isnan(summary.std) else summary.std, capsize=2,
                color=colour(index), alpha=0.55 if warmup == "none" else 0.95, hatch="//" if warmup == "none" else "",
                edgecolor="black", linewidth=0.5,
            )
            bad = sum(diverged(record, options) for record in records)
            if bad:
                axes.annotate(f"{bad} div.", (position + offset, height), ha="center", va="bottom", fontsize=6)
    axes.set_xticks(range(len(labels)), [f"{o}\n×{s:g}" for o, s in labels], fontsize=7)
    axes.set_ylabel(f"final {options.metric} (mean ± std)")
    axes.set_title("warm-up: hatched = none, solid = linear warm-up; x: step scale", fontsize=9)
    axes.grid(alpha=0.3, axis="y")
    save_figure(figure, path)


STUDY = Study(
    name="warmup",
    summary="with and without a linear warm-up (LinearLR per epoch), at several step scales: divergences and final "
    "metric",
    default_optimizers=DEFAULT_OPTIMIZERS,
    settings=settings,
    table=table,
    plot=plot,
    uses_knob=True,
)

__all__ = ["DEFAULT_OPTIMIZERS", "STUDY", "WARMUPS", "plot", "settings", "table"]
