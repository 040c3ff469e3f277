"""Study ``accumulation``: a big batch of B x N against micro-batches of B with N accumulation steps, with and
without :class:`~lightning_opt.ExactAccumulation`.

Each optimizer runs at its defaults in three modes:

- ``big``: ``--data.batch_size B*N`` (the reference);
- ``accumulated``: ``--data.batch_size B --trainer.accumulate_grad_batches N``, Lightning's accumulation, which
  weights every micro-batch ``1 / N`` (so a shorter last micro-batch, or a partial window at the end of an epoch,
  tilts the step);
- ``exact``: the same with the :class:`~lightning_opt.ExactAccumulation` callback, which weights each micro-batch
  by its share of the window's samples.

With a shuffling sampler drawn from the same seed, the big batch of an optimizer step holds exactly the samples of
the N micro-batches of the accumulated step, so ``exact`` should follow ``big`` up to floating-point summation
order, and ``accumulated`` differs by the windows that are not full. The table gives the final metric, the steps
and the largest gap to the big batch's mean validation curve; the figure overlays the three curves per optimizer.
When the datamodule validates with the same batch size, do not forward ``--trainer.limit_val_batches``: the modes
would then validate on different numbers of samples.
"""

from __future__ import annotations

import json
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
    validation_curve,
)
from lightning_opt.studies.cells import Setting
from lightning_opt.studies.stats import summarize

DEFAULT_OPTIMIZERS = ("AdamW", "AdaLo", "AdamAtan2", "NSGDA", "Lamb")
MODES = ("big", "accumulated", "exact")
"""The three ways of taking a step over B x N samples (see the module's docstring)."""

EXACT_CALLBACK = json.dumps({"class_path": "lightning_opt.ExactAccumulation"})


def settings(options: StudyOptions, optimizer: str) -> list[Setting]:
    """The three modes at the optimizer's defaults.

    Example:
        >>> from lightning_opt.studies.knobs import StepKnob
        >>> options = StudyOptions(("AdamW",), {"AdamW": "torch.optim.AdamW"}, {"AdamW": StepKnob("lr", 1e-3)})
        >>> for setting in settings(options, "AdamW"):
        ...     print(setting.label(), setting.args[:4])
        mode=big, batch=128, accumulate=1 ('--data.batch_size', '128')
        mode=accumulated, batch=32, accumulate=4 ('--data.batch_size', '32', '--trainer.accumulate_grad_batches', '4')
        mode=exact, batch=32, accumulate=4 ('--data.batch_size', '32', '--trainer.accumulate_grad_batches', '4')
    """
    batch, steps, arg = options.batch, options.accumulate, f"--{options.batch_arg}"
    micro = (arg, str(batch), "--trainer.accumulate_grad_batches", str(steps))
    return [
        Setting({"mode": "big", "batch": batch * steps, "accumulate": 1}, (arg, str(batch * steps))),
        Setting({"mode": "accumulated", "batch": batch, "accumulate": steps}, micro),
        Setting(
            {"mode": "exact", "batch": batch, "accumulate": steps},
            micro + (f"--trainer.callbacks+={EXACT_CALLBACK}",),
        ),
    ]


def _mode_label(mode: str, options: StudyOptions) -> str:
    if mode == "big":
        return f"big batch {options.batch * options.accumulate}"
    suffix = " + ExactAccumulation" if mode == "exact" else ""
    return f"{options.batch} x {options.accumulate} accumulated{suffix}"


def _largest_gap(records: list[dict], reference: list[dict], metric: str) -> float:
    """The largest absolute difference, over the epochs both have, between two mean validation curves."""
    epochs, summaries = validation_curve(records, metric)
    ref_epochs, ref_summaries = validation_curve(reference, metric)
    ref = dict(zip(ref_epochs, (s.mean for s in ref_summaries)))
    gaps = [abs(s.mean - ref[epoch]) for epoch, s in zip(epochs, summaries) if epoch in ref]
    return max(gaps) if gaps and all(math.isfinite(gap) for gap in gaps) else math.nan


def table(options: StudyOptions, results: Results) -> str:
    """Per optimizer and mode: final metric, optimizer steps, divergences, largest gap to the big batch's curve."""
    grouped = group(results, lambda cell: (cell.optimizer, cell.setting.values["mode"]))
    rows = []
    for optimizer in options.optimizers:
        reference = grouped.get((optimizer, "big"), [])
        for mode in MODES:
            records = grouped.get((optimizer, mode), [])
            ok = [record for record in records if record.get("status") == "ok"]
            steps = summarize(float((record.get("probe") or {}).get("steps") or math.nan) for record in ok)
            gap = math.nan if mode == "big" else _largest_gap(ok, reference, options.metric)
            failed = failed_count(records)
            bad = sum(diverged(record, options) for record in ok)
            rows.append([
                f"`{optimizer}`", _mode_label(mode, options),
                summarize(final_metric(record, options.metric) for record in ok).format(4),
                "n/a" if not steps.n else f"{steps.mean:.0f}",
                f"{bad}/{len(ok)}" + (f" ({failed} failed)" if failed else ""),
                "reference" if mode == "big" else ("n/a" if math.isnan(gap) else f"{gap:.3g}"),
            ])  # fmt: skip
    intro = (
        f"Micro-batch B = {options.batch}, N = {options.accumulate} accumulation steps (`{options.batch_arg}`, "
        f"`trainer.accumulate_grad_batches`); each optimizer at its defaults. Gap: the largest difference, over the "
        f"validations, between the mode's mean {options.metric} curve and the big batch's."
    )
    headers = ["optimizer", "mode", f"final {options.metric}", "steps", "diverged", "largest gap to big batch"]
    return f"{intro}\n\n{markdown_table(headers, rows)}"


def plot(options: StudyOptions, results: Results, path: Path) -> None:
    """Top row: the three modes' validation curves overlaid (mean over seeds, min–max shaded), one column per
    optimizer. Bottom row: each accumulated mode's mean curve minus the big batch's (0: the same training)."""
    grouped = group(results, lambda cell: (cell.optimizer, cell.setting.values["mode"]))
    columns = len(options.optimizers)
    figure, _ = new_figure(max(4.0, 3.2 * columns), 6.4, columns=0)
    styles = {"big": "-", "accumulated": "--", "exact": ":"}
    for column, optimizer in enumerate(options.optimizers):
        curves = figure.add_subplot(2, columns, column + 1)
        differences = figure.add_subplot(2, columns, columns + column + 1)
        means: dict[str, dict[int, float]] = {}
        for index, mode in enumerate(MODES):
            epochs, summaries = validation_curve(grouped.get((optimizer, mode), []), options.metric)
            if not epochs:
                continue
            means[mode] = {epoch: s.mean for epoch, s in zip(epochs, summaries)}
            curves.plot(epochs, [s.mean for s in summaries], color=colour(index), linestyle=styles[mode],
                        linewidth=1.4, label=_mode_label(mode, options))
            curves.fill_between(epochs, [s.low for s in summaries], [s.high for s in summaries], color=colour(index),
                                alpha=0.12)
        for index, mode in enumerate(MODES):
            if mode == "big" or mode not in means or "big" not in means:
                continue
            shared = sorted(set(means[mode]) & set(means["big"]))
            differences.plot(
                shared, [means[mode][epoch] - means["big"][epoch] for epoch in shared], color=colour(index),
                linestyle=styles[mode], linewidth=1.2, label=_mode_label(mode, options),
            )
        differences.axhline(0.0, color="grey", linewidth=0.8)
        curves.set_title(optimizer, fontsize=9)
        differences.set_xlabel("epoch", fontsize=8)
        for axes in (curves, differences):
            axes.grid(alpha=0.3)
            axes.legend(fontsize=6)
        if column == 0:
            curves.set_ylabel(f"{options.metric} (mean over seeds, min–max shaded)", fontsize=8)
            differences.set_ylabel(f"minus the big batch's mean {options.metric}", fontsize=8)
    save_figure(figure, path)


STUDY = Study(
    name="accumulation",
    summary="gradient accumulation: a big batch B x N against N accumulated micro-batches of B, with and without "
    "ExactAccumulation",
    default_optimizers=DEFAULT_OPTIMIZERS,
    settings=settings,
    table=table,
    plot=plot,
)

__all__ = ["DEFAULT_OPTIMIZERS", "MODES", "STUDY", "plot", "settings", "table"]
