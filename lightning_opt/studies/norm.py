"""Study ``norm``: each optimizer on the same model with and without normalisation layers.

The model must take its normalisation as an ``__init__`` argument (``--norm-arg``, ``model.norm`` by default):
the digits MLP's ``norm`` (``none`` or ``layernorm``, :class:`~lightning_opt.recipes.digits.DigitsClassifier`)
and the byte-level transformer's (``layernorm``, ``rmsnorm`` or ``none``, ``--config char_lm``). Each optimizer
runs with its defaults at every value of ``--norms``; the table gives the final metric, the divergences and,
per optimizer, the gap between the best and the worst normalisation (small when the optimizer does not need
the layers). The figure overlays the validation curves (mean over seeds, min–max shaded), one panel per
optimizer.
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
    validation_curve,
)
from lightning_opt.studies.cells import Setting
from lightning_opt.studies.stats import summarize

DEFAULT_OPTIMIZERS = ("AdamW", "AdaLo", "AdamAtan2", "NSGDA", "Lamb")


def settings(options: StudyOptions, optimizer: str) -> list[Setting]:
    """One setting per normalisation value, the optimizer at its defaults.

    Example:
        >>> from lightning_opt.studies.knobs import StepKnob
        >>> options = StudyOptions(("AdamW",), {"AdamW": "torch.optim.AdamW"}, {"AdamW": StepKnob("lr", 1e-3)})
        >>> [setting.args for setting in settings(options, "AdamW")]
        [('--model.norm', 'layernorm'), ('--model.norm', 'none')]
    """
    return [Setting({"norm": value}, (f"--{options.norm_arg}", value)) for value in options.norms]


def table(options: StudyOptions, results: Results) -> str:
    """Per optimizer and normalisation: final metric (mean ± std over seeds), divergences; the gap per optimizer."""
    grouped = group(results, lambda cell: (cell.optimizer, cell.setting.values["norm"]))
    rows = []
    for optimizer in options.optimizers:
        means = {}
        for norm in options.norms:
            records = grouped.get((optimizer, norm), [])
            ok = [record for record in records if record.get("status") == "ok"]
            finals = summarize(final_metric(record, options.metric) for record in ok)
            means[norm] = finals.mean if finals.n and not finals.nonfinite else math.nan
            bad = sum(diverged(record, options) for record in ok)
            failed = failed_count(records)
            rows.append([
                f"`{optimizer}`", f"`{norm}`", finals.format(),
                f"{bad}/{len(ok)}" + (f" ({failed} failed)" if failed else ""),
            ])  # fmt: skip
        finite = [mean for mean in means.values() if math.isfinite(mean)]
        gap = max(finite) - min(finite) if len(finite) == len(means) else math.nan
        rows[-1].append("n/a" if math.isnan(gap) else f"{gap:.3g}")
        for row in rows[-len(options.norms) : -1]:
            row.append("")
    intro = (
        f"Each optimizer at its defaults, with the model's `{options.norm_arg}` set to each value. Gap: the best "
        f"minus the worst mean final {options.metric} over the normalisations (n/a if one diverged to a non-finite "
        "value)."
    )
    headers = ["optimizer", options.norm_arg, f"final {options.metric}", "diverged", "gap between norms"]
    return f"{intro}\n\n{markdown_table(headers, rows)}"


def plot(options: StudyOptions, results: Results, path: Path) -> None:
    """Validation curves per optimizer (one panel each), one line per normalisation, mean over seeds."""
    grouped = group(results, lambda cell: (cell.optimizer, cell.setting.values["norm"]))
    columns = len(options.optimizers)
    figure, panels = new_figure(max(4.0, 3.2 * columns), 3.6, columns=columns)
    for axes, optimizer in zip(panels, options.optimizers):
        for index, norm in enumerate(options.norms):
            epochs, summaries = validation_curve(grouped.get((optimizer, norm), []), options.metric)
            if not epochs:
                continue
            axes.plot(epochs, [s.mean for s in summaries], color=colour(index), label=norm)
            axes.fill_between(epochs, [s.low for s in summaries], [s.high for s in summaries], color=colour(index),
                              alpha=0.15)
        axes.set_title(optimizer, fontsize=9)
        axes.set_xlabel("epoch", fontsize=8)
        axes.grid(alpha=0.3)
        axes.legend(fontsize=7, title=options.norm_arg, title_fontsize=7)
    panels[0].set_ylabel(f"{options.metric} (mean over seeds, min–max shaded)", fontsize=8)
    save_figure(figure, path)


STUDY = Study(
    name="norm",
    summary="normalisation layers: each optimizer on the model with and without them",
    default_optimizers=DEFAULT_OPTIMIZERS,
    settings=settings,
    table=table,
    plot=plot,
)

__all__ = ["DEFAULT_OPTIMIZERS", "STUDY", "plot", "settings", "table"]
