"""``GradientTailMonitor``: tail statistics and histograms of the gradients, every N optimizer steps."""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import lightning.pytorch as pl
import numpy as np
import torch
from lightning.fabric.loggers import TensorBoardLogger
from lightning.pytorch.callbacks import Callback
from lightning.pytorch.utilities import rank_zero_warn
from tensorboard.compat.proto.summary_pb2 import Summary
from torch.utils.tensorboard import SummaryWriter
from typing_extensions import override

from lightning_opt.callbacks.parameter_filter import ParameterFilter
from lightning_opt.tails import tags
from lightning_opt.tails.statistics import Workspace, _layerwise_rows_cpu, layerwise_tail_statistics
from lightning_opt.validation import check_bool, check_positive_int

__all__ = [
    "HISTOGRAM_INTERVAL_FACTOR",
    "LOG10_ABS_BUCKET_LIMITS",
    "LOG10_ABS_RANGE",
    "MAX_HISTOGRAM_BINS",
    "GradientTailMonitor",
]

LOG10_ABS_RANGE: tuple[float, float] = (-10.0, 1.0)
"""The range of the fixed ``log10 |g|`` histograms: ``|g|`` from ``1e-10`` to ``10``."""

LOG10_ABS_BINS_PER_DECADE = 10
_LOG10_LOW, _LOG10_HIGH = LOG10_ABS_RANGE
_LOG10_BINS = round((_LOG10_HIGH - _LOG10_LOW) * LOG10_ABS_BINS_PER_DECADE)  # 110

LOG10_ABS_BUCKET_LIMITS: tuple[float, ...] = tuple(
    round(_LOG10_LOW + (i + 1) / LOG10_ABS_BINS_PER_DECADE, 10) for i in range(_LOG10_BINS)
)
"""The right edges of the 110 fixed ``log10 |g|`` buckets (-9.9, -9.8, ..., 1.0): the same at every step of
every run, so that histograms compare bucket by bucket and per-layer counts add up to the whole model's."""

HISTOGRAM_INTERVAL_FACTOR = 20
"""Without ``every_n_steps`` nor ``histogram_every_n_steps``, histograms are written every
``HISTOGRAM_INTERVAL_FACTOR * trainer.log_every_n_steps`` optimizer steps (statistics every
``log_every_n_steps``), and at the first logged step."""

MAX_HISTOGRAM_BINS = 1024
"""The most buckets a ``param/`` or ``grad/`` histogram may have. TensorBoard redraws a histogram in about 30
buckets; each bucket is built and checksummed in Python at every histogram step (``histogram_bins=10**7``
took 17 s and 3 GB per step on a 2,080-parameter model)."""

_CHUNK_ELEMENTS = 2**22
"""The ``log10 |g|`` pass handles the gradients in groups of at most this many entries (bounds its memory)."""


class GradientTailMonitor(Callback):
    """Log how heavy-tailed the gradients are: four tail statistics per layer, and TensorBoard histograms.

    It acts in ``on_before_optimizer_step`` (the gradients are complete, unscaled and not yet clipped),
    on global rank zero only (under DDP the gradients there are already averaged over ranks). Steps are
    optimizer steps, counted like ``trainer.global_step``, so gradient accumulation is handled: the
    optimizer step number ``s`` (from 1) is logged when ``s`` is a multiple of ``every_n_steps``, at
    TensorBoard step ``s - 1 == trainer.global_step``, the step at which Lightning logs the
    ``training_step`` metrics of the same batch. It logs:

    - scalars, to every logger (``log_metrics``), for each watched parameter and for the whole model (all
      watched gradients together, layer name ``"model"``): ``grad_tail_<statistic>/<name>`` for each
      statistic of :data:`~lightning_opt.tails.tags.STATISTICS` (excess kurtosis, ``q99.9 / q50`` of
      ``|g|``, Hill's tail index, share of ``sum(g**2)`` in the largest 1%: see
      :mod:`lightning_opt.tails.statistics`; NaN where undefined), and ``grad_tail_nonfinite/model``, how
      many watched gradient entries are inf or NaN;
    - histograms, to TensorBoard loggers only, at the first logged step (optimizer step ``every_n_steps``,
      so that even a short run has a picture of its early gradients) and every ``histogram_every_n_steps``
      steps, for the first
      ``max_histograms`` watched parameters in module order: ``param/<name>`` (the values, if
      ``log_param_histograms``), ``grad/<name>`` (the gradient; ``histogram_bins`` equal buckets between
      each tensor's min and max), and ``grad_log10_abs/<name>``, ``log10 |g|`` in fixed 0.1-decade
      buckets from -10 to 1 (:data:`LOG10_ABS_BUCKET_LIMITS`); plus ``grad_log10_abs/model``, the
      bucket-wise sum over *all* watched parameters. Exact zeros are left out of the ``log10`` histograms;
      ``|g|`` below ``1e-10`` counts in the first bucket and above 10 in the last. Their ``min`` and ``max``
      are the fixed range, so that TensorBoard draws the fixed buckets, and their ``sum`` and
      ``sum_squares`` use bucket centres.

    Non-finite gradient entries are counted and left out of every statistic and histogram. Parameters
    whose ``grad`` is ``None`` or sparse, or that the stepping optimizer does not hold, are skipped; so are
    parameters (or gradients) on the ``meta`` device, which hold no values, with one warning naming them.
    Without a logger the callback warns once and does nothing.

    Cost: nothing happens between logged steps. At a logged step the statistics of all watched tensors
    come from a few vectorised numpy passes and one sort per tensor on the CPU (one batched sort pass on
    an accelerator, then a single device-to-host transfer), and the scalars go to TensorBoard as one
    event. Histograms cost more: TensorBoard's writer checksums every byte in pure Python (about 0.2 ms
    per ``log10`` histogram without TensorFlow installed), hence their sparser default cadence; histogram
    steps also synchronise twice more with an accelerator. Statistics of a tensor larger than
    ``max_elements`` (and of the whole model beyond it) use an evenly strided subsample of that many
    entries; counts and histograms always use every entry.

    Args:
        every_n_steps: log the statistics every this many optimizer steps; ``None`` uses the Trainer's
            ``log_every_n_steps``.
        histogram_every_n_steps: write histograms every this many optimizer steps (and at the first logged
            step); ``None`` uses ``every_n_steps`` if that is given, else ``HISTOGRAM_INTERVAL_FACTOR *
            log_every_n_steps`` (20x the Trainer's cadence, which is meant for cheap scalars).
        include: ``fnmatch`` pattern(s) on parameter names (as in ``named_parameters()``, e.g.
            ``"net.*.weight"``); only matching parameters are watched. ``None`` watches all.
        exclude: pattern(s) of parameters not to watch, applied after ``include``.
        max_histograms: per-parameter histograms are written for at most this many watched parameters
            (the first in module order); statistics and the whole-model histogram still cover all of them.
        log_param_histograms: also write histograms of the parameter values.
        histogram_bins: buckets of the ``param/`` and ``grad/`` histograms, at most
            :data:`MAX_HISTOGRAM_BINS`.
        max_elements: statistics of a tensor with more entries use a strided subsample of this size (at
            least 1000).

    Raises:
        ValueError: an argument has the wrong type or is out of range; the message names the argument, the
            value and the bound.

    Example::

        from lightning.pytorch import Trainer
        from lightning_opt.callbacks.tail_monitor import GradientTailMonitor

        trainer = Trainer(callbacks=[GradientTailMonitor()])  # the default logger is TensorBoard's
        trainer = Trainer(callbacks=[GradientTailMonitor(every_n_steps=100, include="net.*.weight")])

    References:
        U. Simsekli, L. Sagun, M. Gurbuzbalaban, "A Tail-Index Analysis of Stochastic Gradient Noise in Deep
        Neural Networks", ICML 2019, arXiv:1901.06053. B. M. Hill, "A Simple General Approach to Inference
        About the Tail of a Distribution", Ann. Statist. 3(5), 1975.
    """

    def __init__(
        self,
        every_n_steps: int | None = None,
        histogram_every_n_steps: int | None = None,
        include: str | list[str] | None = None,
        exclude: str | list[str] | None = None,
        max_histograms: int = 32,
        log_param_histograms: bool = True,
        histogram_bins: int = 32,
        max_elements: int = 2**20,
    ) -> None:
        super().__init__()
        self.every_n_steps = _optional_positive_int("every_n_steps", every_n_steps)
        self.histogram_every_n_steps = _optional_positive_int("histogram_every_n_steps", histogram_every_n_steps)
        self.parameter_filter = ParameterFilter(include, exclude)
        self.include, self.exclude = self.parameter_filter.include, self.parameter_filter.exclude
        if isinstance(max_histograms, bool) or not isinstance(max_histograms, int) or max_histograms < 0:
            raise ValueError(f"Invalid max_histograms: {max_histograms!r} (expected an integer >= 0)")
        self.max_histograms = max_histograms
        self.log_param_histograms = check_bool("log_param_histograms", log_param_histograms)
        self.histogram_bins = check_positive_int("histogram_bins", histogram_bins)
        if histogram_bins > MAX_HISTOGRAM_BINS:
            raise ValueError(
                f"Invalid histogram_bins: {histogram_bins!r} (expected an integer from 1 to {MAX_HISTOGRAM_BINS}: "
                "TensorBoard redraws a histogram in about 30 buckets, and every bucket costs time and memory at "
                "each histogram step)"
            )
        if check_positive_int("max_elements", max_elements) < 1000:
            raise ValueError(
                f"Invalid max_elements: {max_elements!r} (expected an integer >= 1000: a smaller sample leaves "
                "the 99.9th percentile and the tail estimate without data)"
            )
        self.max_elements = max_elements
        self._interval = 0  # resolved in setup; 0: disabled
        self._histogram_interval = 0
        self._watched: list[tuple[str, torch.nn.Parameter]] = []
        self._tags: dict[str, list[str]] = {}  # layer name -> its statistic tags, in STATISTICS order
        self._workspace = Workspace()  # CPU buffers reused from one logged step to the next
        self._warned_meta = False

    @override
    def setup(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        if stage != "fit":
            return
        self._interval = self.every_n_steps if self.every_n_steps is not None else trainer.log_every_n_steps
        if self.histogram_every_n_steps is not None:
            self._histogram_interval = self.histogram_every_n_steps
        elif self.every_n_steps is not None:
            self._histogram_interval = self.every_n_steps
        else:  # the Trainer's logging cadence is meant for cheap scalars; a histogram step costs ~6x more
            self._histogram_interval = HISTOGRAM_INTERVAL_FACTOR * self._interval
        if not trainer.loggers:
            rank_zero_warn(
                "GradientTailMonitor needs a logger and the Trainer has none: the monitor is disabled for this "
                "run. Pass logger=TensorBoardLogger(...) for statistics and histograms (any logger gets the "
                "statistics)."
            )
            self._interval = self._histogram_interval = 0
        elif self._interval == 0:
            rank_zero_warn(
                "GradientTailMonitor: log_every_n_steps=0 turns logging off, so the monitor logs no statistics"
                f"{'' if self._histogram_interval else ' and no histograms'}; pass GradientTailMonitor("
                "every_n_steps=N) to log them anyway."
            )

    @override
    def on_train_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        # Resolved here rather than in setup: configure_model() may create parameters after setup.
        self._watched = list(self.parameter_filter.named_parameters(pl_module))
        if (self._interval or self._histogram_interval) and not self._watched:
            rank_zero_warn(
                "GradientTailMonitor watches no parameter: no parameter name matches "
                f"include={list(self.include) if self.include else None}, exclude={list(self.exclude)}."
            )

    @override
    def on_before_optimizer_step(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, optimizer: torch.optim.Optimizer
    ) -> None:
        step = trainer.global_step  # optimizer steps already taken: this one is number step + 1
        scalars = bool(self._interval) and (step + 1) % self._interval == 0
        # Histograms also at the first logged step: a run shorter than the histogram cadence still gets one.
        first = self._interval or self._histogram_interval
        histograms = bool(self._histogram_interval) and (
            (step + 1) % self._histogram_interval == 0 or step + 1 == first
        )
        if not (scalars or histograms) or not trainer.is_global_zero:
            return
        in_optimizer = {id(p) for group in optimizer.param_groups for p in group["params"]}
        watched = [
            (name, p)
            for name, p in self._watched
            if p.grad is not None and not p.grad.is_sparse and id(p) in in_optimizer
        ]
        watched = self._without_meta(watched)
        if watched:
            self._log(trainer, watched, step, scalars, histograms)

    def _without_meta(self, watched: list[tuple[str, torch.nn.Parameter]]) -> list[tuple[str, torch.nn.Parameter]]:
        """``watched`` without parameters whose values or gradient live on the ``meta`` device (no data to
        read); the first time there are some, one warning names them."""
        kept = [(name, p) for name, p in watched if not (p.is_meta or p.grad.is_meta)]  # type: ignore[union-attr]
        if len(kept) < len(watched) and not self._warned_meta:
            self._warned_meta = True
            meta = [name for name, p in watched if p.is_meta or p.grad.is_meta]  # type: ignore[union-attr]
            shown = ", ".join(meta[:5]) + (f" and {len(meta) - 5} more" if len(meta) > 5 else "")
            rank_zero_warn(
                f"GradientTailMonitor skips {len(meta)} parameter(s) on the meta device, which hold no values "
                f"(not counted in the whole-model statistics): {shown}. Materialize them (e.g. "
                "module.to_empty(device=...) and initialize) or exclude them with GradientTailMonitor(exclude=...)."
            )
        return kept

    def _statistic_tags(self, name: str) -> list[str]:
        if name not in self._tags:
            self._tags[name] = [tags.statistic_tag(statistic, name) for statistic in tags.STATISTICS]
        return self._tags[name]

    def _log(
        self,
        trainer: pl.Trainer,
        watched: list[tuple[str, torch.nn.Parameter]],
        step: int,
        scalars: bool,
        histograms: bool,
    ) -> None:
        names = [name for name, _ in watched]
        grads = [p.grad.detach() for _, p in watched]  # type: ignore[union-attr]
        tensorboards = [logger for logger in trainer.loggers if isinstance(logger, TensorBoardLogger)]
        histograms = histograms and bool(tensorboards)
        histogrammed = min(self.max_histograms, len(watched))

        # On the CPU the statistics come back as Python floats; on an accelerator, one device-to-host
        # transfer carries the statistics, the non-finite count and the log10 counts.
        pieces: list[torch.Tensor] = []
        values: list[float] = []
        if scalars:
            cpu_rows = _layerwise_rows_cpu(grads, self.max_elements, self._workspace)
            if cpu_rows is not None:
                values = [value for row in cpu_rows[0] for value in row] + [float(cpu_rows[1])]
            else:
                statistics, nonfinite = layerwise_tail_statistics(grads, self.max_elements, self._workspace)
                pieces += [statistics.reshape(-1), nonfinite.reshape(1)]
        if histograms:
            log_counts = _log10_counts(grads)
            pieces += [log_counts[:histogrammed].reshape(-1), log_counts.sum(0)]
        host = values + (_to_host(pieces) if pieces else [])

        if scalars:
            width = len(tags.STATISTICS)
            metrics = {
                tag: host[row * width + column]
                for row, name in enumerate([*names, tags.WHOLE_MODEL])
                for column, tag in enumerate(self._statistic_tags(name))
            }
            metrics[tags.NONFINITE_TAG] = host[(len(names) + 1) * width]
            for logger in trainer.loggers:
                _log_scalars(logger, metrics, step)
            host = host[(len(names) + 1) * width + 1 :]
        if not histograms:
            return

        written: list[tuple[str, dict[str, Any]]] = []
        for i, name in enumerate([*names[:histogrammed], tags.WHOLE_MODEL]):
            counts = host[i * _LOG10_BINS : (i + 1) * _LOG10_BINS]
            written.append((tags.log_abs_grad_histogram_tag(name), _log10_histogram(counts)))
        tensors = [(tags.grad_histogram_tag(name), g) for name, g in zip(names, grads[:histogrammed])]
        if self.log_param_histograms:
            tensors += [(tags.param_histogram_tag(name), p.detach()) for name, p in watched[:histogrammed]]
        ranges = _range_histograms([t for _, t in tensors], self.histogram_bins)
        written += [(tag, histogram) for (tag, _), histogram in zip(tensors, ranges) if histogram is not None]
        for logger in tensorboards:
            writer = logger.experiment
            for tag, histogram in written:
                writer.add_histogram_raw(tag, global_step=step, **histogram)


def _optional_positive_int(name: str, value: Any) -> int | None:
    return None if value is None else check_positive_int(name, value)


def _log_scalars(logger: Any, metrics: dict[str, float], step: int) -> None:
    """Scalars to one logger: a single event for a plain TensorBoard writer, ``log_metrics`` otherwise.

    ``SummaryWriter.add_scalar`` writes one event per scalar, each checksummed in pure Python; one
    event holding every value costs a fraction of that. Loggers with a prefix, tensorboardX writers and
    every other logger go through ``log_metrics``.
    """
    if isinstance(logger, TensorBoardLogger) and not getattr(logger, "_prefix", ""):
        writer = logger.experiment
        if isinstance(writer, SummaryWriter):
            summary = Summary()
            add = summary.value.add
            for tag, value in metrics.items():
                add(tag=tag, simple_value=value)
            # The route add_scalar itself takes (_get_file_writer re-opens a closed writer).
            writer._get_file_writer().add_summary(summary, step)
            return
    logger.log_metrics(metrics, step=step)


def _chunks(sizes: Sequence[int], budget: int) -> list[tuple[int, int]]:
    """Consecutive ``(start, stop)`` index ranges whose sizes add up to at most ``budget`` (or one item)."""
    ranges: list[tuple[int, int]] = []
    start, total = 0, 0
    for i, size in enumerate(sizes):
        if i > start and total + size > budget:
            ranges.append((start, i))
            start, total = i, 0
        total += size
    if start < len(sizes):
        ranges.append((start, len(sizes)))
    return ranges


def _widened(t: torch.Tensor) -> torch.Tensor:
    """``t`` flattened, half types widened to float32 (numpy has no bfloat16, and histograms want float32)."""
    flat = t.detach().reshape(-1)
    return flat.float() if flat.dtype in (torch.float16, torch.bfloat16) else flat


def _log10_counts(grads: list[torch.Tensor]) -> torch.Tensor:
    """Counts (int64, shape ``(len, 110)``) of the finite, non-zero ``log10 |g|`` of each gradient in the
    fixed buckets, out-of-range values clamped into the end buckets.

    All the gradients go through one vectorised pass (per group of at most ``_CHUNK_ELEMENTS`` entries):
    each entry's bucket is offset by its tensor's index times 111 (the 111th bucket collects zeros and
    non-finite entries, dropped at the end) and one ``bincount`` counts them all (numpy on the CPU).
    """
    rows = []
    for start, stop in _chunks([g.numel() for g in grads], _CHUNK_ELEMENTS):
        chunk = grads[start:stop]
        flat = torch.cat([_widened(g) for g in chunk])
        sizes = [g.numel() for g in chunk]
        count = _log10_counts_numpy if flat.device.type == "cpu" else _log10_counts_torch
        rows.append(count(flat, sizes).view(len(chunk), _LOG10_BINS + 1)[:, :_LOG10_BINS])
    return rows[0] if len(rows) == 1 else torch.cat(rows)


def _log10_counts_numpy(flat: torch.Tensor, sizes: list[int]) -> torch.Tensor:
    magnitude = np.abs(flat.numpy())
    keep = np.isfinite(magnitude) & (magnitude > 0)
    log10 = np.log10(np.where(keep, magnitude, 1.0))
    bucket = np.clip(np.floor((log10 - _LOG10_LOW) * LOG10_ABS_BINS_PER_DECADE), 0, _LOG10_BINS - 1)
    offsets = np.repeat(np.arange(len(sizes)) * (_LOG10_BINS + 1), sizes)
    bucket = np.where(keep, bucket.astype(np.int64) + offsets, len(sizes) * (_LOG10_BINS + 1) - 1)
    return torch.from_numpy(np.bincount(bucket, minlength=len(sizes) * (_LOG10_BINS + 1)))


def _log10_counts_torch(flat: torch.Tensor, sizes: list[int]) -> torch.Tensor:
    magnitude = flat.abs()
    keep = torch.isfinite(magnitude) & (magnitude > 0)
    log10 = torch.log10(torch.where(keep, magnitude, 1.0))
    bucket = ((log10 - _LOG10_LOW) * LOG10_ABS_BINS_PER_DECADE).floor_().clamp_(0, _LOG10_BINS - 1)
    offsets = torch.repeat_interleave(
        torch.arange(len(sizes), device=flat.device) * (_LOG10_BINS + 1),
        torch.tensor(sizes, device=flat.device),
        output_size=flat.numel(),
    )
    bucket = torch.where(keep, bucket.to(torch.int64) + offsets, len(sizes) * (_LOG10_BINS + 1) - 1)
    # bincount without weights is allowed on CUDA under torch.use_deterministic_algorithms
    return torch.bincount(bucket, minlength=len(sizes) * (_LOG10_BINS + 1))


def _range_histograms(tensors: list[torch.Tensor], bins: int) -> list[dict[str, Any] | None]:
    """``add_histogram_raw`` arguments for each tensor: ``bins`` equal buckets between the min and the max of
    its finite entries (``[v - 1, v + 1]`` for a constant ``v``, as ``torch.histc`` does), or ``None`` if it
    has no finite entry."""
    if not tensors:
        return []
    flats = [_widened(t) for t in tensors]
    summaries = _range_histograms_numpy(flats, bins) if flats and flats[0].device.type == "cpu" else None
    if summaries is None:
        summaries = _range_histograms_torch(flats, bins)
    histograms: list[dict[str, Any] | None] = []
    for summary in summaries:
        if summary is None:
            histograms.append(None)
            continue
        low, high, num, total, total_squares, counts = summary
        width = (high - low) / bins
        histograms.append(
            dict(
                min=low,
                max=high,
                num=num,
                sum=total,
                sum_squares=total_squares,
                bucket_limits=[low + (b + 1) * width for b in range(bins - 1)] + [high],
                bucket_counts=counts,
            )
        )
    return histograms


_Summary = tuple[float, float, int, float, float, list[float]]  # low, high, num, sum, sum of squares, counts


def _range_histograms_numpy(flats: list[torch.Tensor], bins: int) -> list[_Summary | None] | None:
    """The CPU path of :func:`_range_histograms`: every tensor in one vectorised pass (``ufunc.reduceat`` for
    the extremes and sums, one ``bincount``); ``None`` if some entry is not finite (the torch path handles
    that)."""
    sizes = [f.numel() for f in flats]
    nonempty = [i for i, size in enumerate(sizes) if size]
    if not nonempty or sum(sizes) > _CHUNK_ELEMENTS:
        return None
    x = torch.cat(flats).numpy()
    if not np.isfinite(x).all():
        return None
    counts = np.array([sizes[i] for i in nonempty])
    starts = np.cumsum(counts) - counts
    low = np.minimum.reduceat(x, starts).astype(np.float64)
    high = np.maximum.reduceat(x, starts).astype(np.float64)
    constant = high <= low
    low[constant] -= 1.0
    high[constant] += 1.0
    bucket = np.floor((x - np.repeat(low, counts)) * np.repeat(bins / (high - low), counts))
    np.clip(bucket, 0, bins - 1, out=bucket)
    bucket = bucket.astype(np.int64) + np.repeat(np.arange(len(nonempty)) * bins, counts)
    histogram = np.bincount(bucket, minlength=len(nonempty) * bins).reshape(len(nonempty), bins)
    sums = np.add.reduceat(x, starts, dtype=np.float64)
    squares = np.add.reduceat(np.square(x, dtype=np.float64), starts)
    summaries: list[_Summary | None] = [None] * len(flats)
    for j, i in enumerate(nonempty):
        summaries[i] = (
            float(low[j]),
            float(high[j]),
            int(counts[j]),
            float(sums[j]),
            float(squares[j]),
            histogram[j].tolist(),
        )
    return summaries


def _range_histograms_torch(flats: list[torch.Tensor], bins: int) -> list[_Summary | None]:
    """The accelerator path of :func:`_range_histograms` (and the CPU fallback when entries are not finite):
    two transfers to the host, one for the extremes and one for the counts and sums."""
    extremes = _to_host([torch.stack(torch.aminmax(f)) if f.numel() else f.new_full((2,), math.nan) for f in flats])
    kept: list[tuple[int, torch.Tensor, float, float]] = []
    for i, flat in enumerate(flats):
        low, high = extremes[2 * i], extremes[2 * i + 1]
        if not (math.isfinite(low) and math.isfinite(high)):  # inf or NaN entries: drop them (rare)
            flat = flat[torch.isfinite(flat)]
            if flat.numel() == 0:
                continue
            low, high = (float(v) for v in torch.aminmax(flat))
        if low == high:
            low, high = low - 1.0, high + 1.0
        kept.append((i, flat, low, high))
    pieces = []
    for _, flat, low, high in kept:
        # bincount, not histc: exact int64 counts, and allowed on CUDA under torch.use_deterministic_algorithms
        bucket = ((flat.double() - low) * (bins / (high - low))).floor_().clamp_(0, bins - 1).to(torch.int64)
        pieces += [
            torch.bincount(bucket, minlength=bins),
            flat.sum(dtype=torch.float64).reshape(1),
            torch.linalg.vector_norm(flat, dtype=torch.float64).reshape(1),
        ]
    host = _to_host(pieces) if pieces else []
    summaries: list[_Summary | None] = [None] * len(flats)
    for j, (i, flat, low, high) in enumerate(kept):
        at = j * (bins + 2)
        counts, total, norm = host[at : at + bins], host[at + bins], host[at + bins + 1]
        summaries[i] = (low, high, flat.numel(), total, norm * norm, counts)
    return summaries


def _to_host(pieces: list[torch.Tensor]) -> list[float]:
    """All pieces, flattened, as one list of floats, with a single device-to-host transfer."""
    device = pieces[0].device
    if device.type == "mps":  # no float64 on MPS
        return torch.cat([p.reshape(-1).cpu().to(torch.float64) for p in pieces]).tolist()
    return torch.cat([p.reshape(-1).to(device=device, dtype=torch.float64) for p in pieces]).tolist()


def _log10_histogram(counts: list[float]) -> dict[str, Any]:
    """``add_histogram_raw`` arguments of a fixed-bucket ``log10 |g|`` histogram from its bucket counts."""
    centres = [limit - 0.5 / LOG10_ABS_BINS_PER_DECADE for limit in LOG10_ABS_BUCKET_LIMITS]
    return dict(
        min=_LOG10_LOW,
        max=_LOG10_HIGH,
        num=sum(counts),
        sum=sum(c * x for c, x in zip(counts, centres)),
        sum_squares=sum(c * x * x for c, x in zip(counts, centres)),
        bucket_limits=list(LOG10_ABS_BUCKET_LIMITS),
        bucket_counts=counts,
    )
