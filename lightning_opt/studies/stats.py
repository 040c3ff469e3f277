"""The statistics of a study's tables: mean, spread, the good band of a grid, the first time a target is reached.

Pure Python (no torch, no Lightning), so that the tables can be recomputed from a study's ``cells.json`` alone.
"""

from __future__ import annotations

import math
import statistics
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Literal, Optional

Mode = Literal["max", "min"]
"""Whether a larger (``"max"``: accuracy) or a smaller (``"min"``: loss) metric is better."""


@dataclass(frozen=True)
class Summary:
    """Mean and spread of the finite values of one quantity over seeds.

    Args:
        n: the number of finite values summarised.
        nonfinite: how many values were NaN or infinite (left out of the other fields).
        mean: their mean (NaN when ``n == 0``).
        std: their sample standard deviation (``n - 1`` in the denominator; NaN when ``n < 2``).
        low: the smallest value (NaN when ``n == 0``).
        high: the largest value (NaN when ``n == 0``).
    """

    n: int
    nonfinite: int
    mean: float
    std: float
    low: float
    high: float

    def format(self, digits: int = 3) -> str:
        """``mean ± std (min–max)``, ``digits`` significant digits (two for the std); ``n/a`` without a finite value.

        Example:
            >>> summarize([0.9, 0.95, 1.0]).format()
            '0.95 ± 0.05 (0.9–1)'
            >>> summarize([0.9]).format()
            '0.9 (1 seed)'
            >>> summarize([0.9, float("nan")]).format()
            '0.9 (1 seed) +1 non-finite'
        """
        if self.n == 0:
            text = "n/a"
        elif self.n == 1:
            text = f"{self.mean:.{digits}g} (1 seed)"
        else:
            text = f"{self.mean:.{digits}g} ± {self.std:.2g} ({self.low:.{digits}g}–{self.high:.{digits}g})"
        return text + (f" +{self.nonfinite} non-finite" if self.nonfinite else "")


def summarize(values: Iterable[Optional[float]]) -> Summary:
    """Summarise ``values``; ``None`` and non-finite values are counted in ``nonfinite`` and left out.

    Args:
        values: one value per seed.

    Example:
        >>> s = summarize([1.0, 2.0, 3.0, float("inf")])
        >>> (s.n, s.nonfinite, s.mean, s.std, s.low, s.high)
        (3, 1, 2.0, 1.0, 1.0, 3.0)
    """
    finite: list[float] = []
    nonfinite = 0
    for value in values:
        if value is None or not math.isfinite(value):
            nonfinite += 1
        else:
            finite.append(float(value))
    if not finite:
        return Summary(0, nonfinite, math.nan, math.nan, math.nan, math.nan)
    std = statistics.stdev(finite) if len(finite) > 1 else math.nan
    return Summary(len(finite), nonfinite, statistics.fmean(finite), std, min(finite), max(finite))


def better(a: float, b: float, mode: Mode) -> bool:
    """Whether ``a`` is strictly better than ``b`` (NaN is never better, and everything finite beats NaN).

    Example:
        >>> better(0.9, 0.8, "max"), better(0.9, 0.8, "min"), better(0.1, float("nan"), "min")
        (True, False, True)
    """
    if math.isnan(a):
        return False
    if math.isnan(b):
        return True
    return a > b if mode == "max" else a < b


def best_of(values: Iterable[float], mode: Mode) -> float:
    """The best finite value of ``values`` (NaN if none is finite).

    Example:
        >>> best_of([0.5, float("nan"), 0.7], "max"), best_of([0.5, 0.7], "min")
        (0.7, 0.5)
    """
    best = math.nan
    for value in values:
        if math.isfinite(value) and better(value, best, mode):
            best = value
    return best


def within_band(value: float, best: float, band: float, mode: Mode) -> bool:
    """Whether ``value`` is at most ``band`` (a fraction of ``|best|``) worse than ``best``.

    Args:
        value: a mean over seeds.
        best: the best mean of the study.
        band: the relative tolerance, e.g. 0.01 for "within 1 % of the best".
        mode: whether larger or smaller is better.

    Example:
        >>> within_band(0.962, 0.97, 0.01, "max"), within_band(0.95, 0.97, 0.01, "max")
        (True, False)
        >>> within_band(1.02, 1.0, 0.05, "min"), within_band(1.06, 1.0, 0.05, "min")
        (True, False)
    """
    if not (math.isfinite(value) and math.isfinite(best)):
        return False
    slack = band * abs(best)
    return value >= best - slack if mode == "max" else value <= best + slack


@dataclass(frozen=True)
class Band:
    """The grid points whose mean is within the band of the best, for one optimizer.

    Args:
        good: the good grid values, in grid order.
        points: how many grid points there were.
        scales: the step scales (relative to the default step) of the good points, ascending.
    """

    good: tuple[float, ...]
    points: int
    scales: tuple[float, ...]

    @property
    def decades(self) -> float:
        """``log10`` of the largest over the smallest good step scale; 0 for one good point, NaN for none.

        Example:
            >>> Band(good=(1e-3, 1e-2), points=7, scales=(1.0, 10.0)).decades
            1.0
        """
        if not self.scales:
            return math.nan
        return math.log10(self.scales[-1] / self.scales[0])


def good_band(
    means: Mapping[float, float], scales: Mapping[float, float], best: float, band: float, mode: Mode
) -> Band:
    """The grid values of one optimizer whose mean over seeds is within ``band`` of ``best``.

    Args:
        means: grid value -> mean final metric over seeds (NaN if a seed diverged to a non-finite value).
        scales: grid value -> the step scale it gives, relative to the default (``value / default``, or
            ``default / value`` for a knob that divides the step, such as AdaLo's ``kappa``).
        best: the best mean of every optimizer in the study.
        band: the relative tolerance (see :func:`within_band`).
        mode: whether larger or smaller is better.

    Example:
        >>> means = {1e-4: 0.80, 1e-3: 0.965, 1e-2: 0.97, 1e-1: 0.90}
        >>> b = good_band(means, {v: v / 1e-3 for v in means}, best=0.97, band=0.01, mode="max")
        >>> b.good, len(b.good), b.points, b.decades
        ((0.001, 0.01), 2, 4, 1.0)
    """
    good = tuple(value for value, mean in means.items() if within_band(mean, best, band, mode))
    return Band(good=good, points=len(means), scales=tuple(sorted(scales[value] for value in good)))


def first_reaching(
    history: Sequence[Mapping[str, object]], metric: str, target: float, mode: Mode
) -> Optional[tuple[float, int]]:
    """The first validation of ``history`` at which ``metric`` reached ``target``: ``(seconds, step)``.

    Args:
        history: the validations of a run, in order, each with ``seconds``, ``step`` and ``metrics``
            (what :class:`~lightning_opt.studies.probe.StudyProbe` records).
        metric: the metric's name.
        target: the value to reach (``>=`` for ``mode="max"``, ``<=`` for ``"min"``).
        mode: whether larger or smaller is better.

    Returns:
        The seconds since the start of training and the optimizer step of that validation, or ``None``.

    Example:
        >>> history = [{"seconds": 1.0, "step": 45, "metrics": {"val_acc": 0.9}},
        ...            {"seconds": 2.0, "step": 90, "metrics": {"val_acc": 0.96}}]
        >>> first_reaching(history, "val_acc", 0.95, "max")
        (2.0, 90)
        >>> first_reaching(history, "val_acc", 0.99, "max") is None
        True
    """
    for entry in history:
        metrics = entry.get("metrics")
        value = metrics.get(metric) if isinstance(metrics, Mapping) else None
        if isinstance(value, (int, float)) and math.isfinite(value):
            if (value >= target) if mode == "max" else (value <= target):
                return float(entry["seconds"]), int(entry["step"])  # type: ignore[arg-type]
    return None


def worse_than(value: float, threshold: Optional[float], mode: Mode) -> bool:
    """Whether a final ``value`` counts as diverged: non-finite, or beyond ``threshold`` on the bad side.

    Example:
        >>> worse_than(0.3, 0.5, "max"), worse_than(0.9, 0.5, "max"), worse_than(float("nan"), None, "min")
        (True, False, True)
    """
    if not math.isfinite(value):
        return True
    if threshold is None:
        return False
    return value < threshold if mode == "max" else value > threshold


__all__ = [
    "Band",
    "Mode",
    "Summary",
    "best_of",
    "better",
    "first_reaching",
    "good_band",
    "summarize",
    "within_band",
    "worse_than",
]
