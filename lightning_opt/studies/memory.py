"""Study ``memory``: optimizer-state bytes per parameter and the peak memory of the training process.

Each optimizer runs with its defaults. At the end of training the probe counts the bytes of every tensor in
``optimizer.state`` and the trainable parameters, and reads the process's peak resident memory (``ru_maxrss``:
the interpreter, torch, Lightning and the data included, so on a small model the optimizer's share is small) and,
on CUDA, torch's peak allocated memory. ``SGD`` (no momentum: no state) is among the default optimizers as the
baseline; the table gives each optimizer's peak above the lowest mean peak of the study.
"""

from __future__ import annotations

import math
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
    new_figure,
    save_figure,
)
from lightning_opt.studies.cells import Setting
from lightning_opt.studies.stats import summarize

DEFAULT_OPTIMIZERS = ("SGD", "AdamW", "AdaLo", "AdamAtan2", "NSGDA", "Adafactor", "SM3", "SMMF", "Amos")
MIB = 2**20


def settings(options: StudyOptions, optimizer: str) -> list[Setting]:
    """One setting: the optimizer's defaults."""
    return [Setting()]


def _probe_value(record: dict[str, Any], name: str) -> Optional[float]:
    value = (record.get("probe") or {}).get(name)
    return float(value) if isinstance(value, (int, float)) and not isinstance(value, bool) else None


def bytes_per_parameter(record: dict[str, Any]) -> Optional[float]:
    """The optimizer state's bytes per trainable parameter at the end of a cell's run.

    Example:
        >>> bytes_per_parameter({"probe": {"state_bytes": 800, "parameters": 100}})
        8.0
    """
    state, params = _probe_value(record, "state_bytes"), _probe_value(record, "parameters")
    return None if state is None or not params else state / params


def table(options: StudyOptions, results: Results) -> str:
    """Per optimizer: state bytes per parameter, state size, peak RSS (and above the lowest), final metric."""
    grouped = group(results, lambda cell: cell.optimizer)
    peaks = {
        optimizer: summarize(_mib(_probe_value(r, "peak_rss_bytes")) for r in records if r.get("status") == "ok")
        for optimizer, records in grouped.items()
    }
    lowest = min((peak.mean for peak in peaks.values() if peak.n), default=math.nan)
    cuda = any(_probe_value(record, "cuda_peak_bytes") for _, record in results)
    rows = []
    for optimizer, records in grouped.items():
        ok = [record for record in records if record.get("status") == "ok"]
        per_param = summarize(bytes_per_parameter(record) for record in ok)
        state_kib = summarize(
            None if _probe_value(r, "state_bytes") is None else _probe_value(r, "state_bytes") / 1024  # type: ignore[operator]
            for r in ok
        )
        params = {int(_probe_value(record, "parameters") or 0) for record in ok}
        row = [
            f"`{optimizer}`",
            "n/a" if not per_param.n else f"{per_param.mean:.3g}",
            "n/a" if not state_kib.n else f"{state_kib.mean:.4g}",
            ", ".join(f"{count:,}" for count in sorted(params)) or "n/a",
            peaks[optimizer].format(4),
            "n/a" if not peaks[optimizer].n else f"{peaks[optimizer].mean - lowest:+.1f}",
        ]
        if cuda:
            row.append(summarize(_mib(_probe_value(r, "cuda_peak_bytes")) for r in ok).format())
        row += [
            summarize(final_metric(record, options.metric) for record in ok).format(),
            str(failed_count(records)),
        ]
        rows.append(row)
    headers = ["optimizer", "state B/param", "state KiB", "parameters", "peak RSS MiB", "vs lowest MiB"]
    headers += (["CUDA peak MiB"] if cuda else []) + [f"final {options.metric}", "failed runs"]
    intro = (
        "State: every tensor in optimizer.state at the end of training, per trainable parameter. Peak RSS: the "
        "training process's peak resident memory (interpreter, torch, Lightning and data included)."
    )
    return f"{intro}\n\n{markdown_table(headers, rows)}"


def plot(options: StudyOptions, results: Results, path: Path) -> None:
    """Two bar charts: state bytes per parameter, and peak RSS (mean ± std) per optimizer."""
    grouped = group(results, lambda cell: cell.optimizer)
    names = list(grouped)
    figure, (state_axes, rss_axes) = new_figure(max(7.0, 1.1 * len(names) + 3), 4.0, columns=2)
    for position, optimizer in enumerate(names):
        ok = [record for record in grouped[optimizer] if record.get("status") == "ok"]
        per_param = summarize(bytes_per_parameter(record) for record in ok)
        peak = summarize(_mib(_probe_value(record, "peak_rss_bytes")) for record in ok)
        index = options.optimizers.index(optimizer)
        state_axes.bar(position, per_param.mean if per_param.n else 0.0, color=colour(index))
        rss_axes.bar(
            position, peak.mean if peak.n else 0.0, yerr=0.0 if math.isnan(peak.std) else peak.std, capsize=3,
            color=colour(index),
        )
    for axes, label in ((state_axes, "optimizer state, bytes per parameter"), (rss_axes, "peak RSS of the run, MiB")):
        axes.set_xticks(range(len(names)), names, rotation=45, ha="right", fontsize=7)
        axes.set_ylabel(label, fontsize=8)
        axes.grid(alpha=0.3, axis="y")
    state_axes.set_title("optimizer state", fontsize=9)
    rss_axes.set_title("whole process (mean ± std over seeds)", fontsize=9)
    save_figure(figure, path)


def _mib(value: Optional[float]) -> Optional[float]:
    return None if value is None else value / MIB


STUDY = Study(
    name="memory",
    summary="memory: optimizer-state bytes per parameter and peak process memory, optimizer defaults",
    default_optimizers=DEFAULT_OPTIMIZERS,
    settings=settings,
    table=table,
    plot=plot,
)

__all__ = ["DEFAULT_OPTIMIZERS", "STUDY", "bytes_per_parameter", "plot", "settings", "table"]
