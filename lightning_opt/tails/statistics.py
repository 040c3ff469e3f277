"""Tail statistics of a set of gradient entries: how far a gradient is from Gaussian, in four numbers.

Every statistic is computed in float64 over the *finite* entries of the input (inf and NaN entries are
dropped: callers that care count them), treats the input as a flat bag of numbers, and returns a
Python float. None of them raises or warns on a degenerate input; they return NaN where the statistic
is undefined:

- fewer than :data:`MIN_ENTRIES` finite entries (empty input included): every statistic is NaN;
- constant input: ``kurtosis`` and ``hill_alpha`` are NaN (zero spread, and ties in the tail);
- ``q999_over_q50`` is NaN when the median of ``|g|`` is 0 (at least half the entries are exactly 0);
- ``hill_alpha`` is NaN when the ``(k+1)``-th largest ``|g|`` is 0 or equals the largest ones;
- all-zero input: every statistic is NaN.

:func:`tail_statistics` gives all four at once, keyed by :data:`lightning_opt.tails.tags.STATISTICS`;
:func:`batched_tail_statistics` computes them for many tensors at once, and
:func:`layerwise_tail_statistics` for many tensors and their concatenation, with the count of non-finite
entries (what :class:`~lightning_opt.callbacks.GradientTailMonitor` uses): numpy on the CPU, one sort
pass without host synchronisation on accelerators. The single-statistic functions
(:func:`excess_kurtosis`, :func:`q999_over_q50`, :func:`hill_alpha`, :func:`top1pct_energy`) are direct,
readable torch implementations of the same definitions, and the tests hold all of them to numpy/scipy.

Example:
    >>> import torch
    >>> values = torch.linspace(-1.0, 1.0, 1001)
    >>> stats = tail_statistics(values)
    >>> round(stats["kurtosis"], 3)  # a uniform distribution: 9/5 - 3
    -1.2
    >>> round(stats["q999_over_q50"], 3), round(stats["top1pct_energy"], 4)
    (2.0, 0.0326)

References:
    B. M. Hill, "A Simple General Approach to Inference About the Tail of a Distribution",
    Ann. Statist. 3(5), 1975. U. Simsekli, L. Sagun, M. Gurbuzbalaban, "A Tail-Index Analysis of
    Stochastic Gradient Noise in Deep Neural Networks", ICML 2019, arXiv:1901.06053.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from itertools import accumulate

import numpy as np
import torch

from lightning_opt.tails.tags import STATISTICS

__all__ = [
    "HILL_MIN_K",
    "MIN_ENTRIES",
    "Workspace",
    "batched_tail_statistics",
    "excess_kurtosis",
    "hill_alpha",
    "hill_k",
    "layerwise_tail_statistics",
    "q999_over_q50",
    "strided_subsample",
    "tail_statistics",
    "top1pct_energy",
    "top_count",
]

MIN_ENTRIES = 20
"""Below this many finite entries every statistic is NaN (too few for a tail to mean anything)."""

HILL_MIN_K = 10
"""The smallest number of order statistics Hill's estimator uses."""


_NAN = float("nan")


def hill_k(n: int) -> int:
    """The default number ``k`` of largest ``|g|`` in Hill's estimator: ``max(10, floor(n / 100))``.

    The largest 1% is a standard fixed-fraction choice. Its bias, measured on ``10**6`` Student-t samples
    (whose tail index is ``nu``), is small for heavy tails and grows as the tail lightens: ``nu = 2``
    gives 1.99 (std 0.02 over seeds), ``nu = 3`` gives 2.87 (std 0.02: within 5% of 3), ``nu = 4``
    gives 3.64, ``nu = 5`` gives 4.21; a Gaussian (no finite index) gives about 9. ``k = sqrt(n)``
    has less bias at ``nu = 5`` (4.76) but three times the spread at ``nu = 2, 3``, which would make
    step-to-step curves noisy; the heavy-tailed range is the one this statistic is for.

    >>> hill_k(1_000_000), hill_k(500)
    (10000, 10)
    """
    return max(HILL_MIN_K, n // 100)


def top_count(n: int) -> int:
    """How many entries "the largest 1%" of ``n`` entries is: ``ceil(n / 100)``, computed exactly.

    >>> top_count(700), top_count(701), top_count(1)
    (7, 8, 1)
    """
    return -(-n // 100)


def strided_subsample(values: torch.Tensor | Sequence[torch.Tensor], max_elements: int | None) -> torch.Tensor:
    """A deterministic, evenly spread subsample of at most ``max_elements`` entries.

    ``values`` is flattened (a sequence of tensors is read as the concatenation of their flattened
    entries, in order). Up to ``max_elements`` entries everything is returned; above, every ``s``-th
    entry is kept, ``s = ceil(n / max_elements)``, starting with the first. For a sequence the result
    equals subsampling the concatenation, without building the concatenation.

    Args:
        values: a tensor, or tensors read one after the other.
        max_elements: the cap; ``None`` keeps everything.

    Example:
        >>> strided_subsample(torch.arange(10), 4).tolist()
        [0, 3, 6, 9]
        >>> strided_subsample([torch.arange(5), torch.arange(5, 10)], 4).tolist()
        [0, 3, 6, 9]
    """
    _check_max_elements(max_elements)
    tensors = [values] if isinstance(values, torch.Tensor) else list(values)
    flats = [t.reshape(-1) for t in tensors]
    total = sum(t.numel() for t in flats)
    if max_elements is None or total <= max_elements:
        return flats[0] if len(flats) == 1 else torch.cat(flats)
    stride = -(-total // max_elements)
    pieces = []
    start = 0
    for flat in flats:
        first = (-start) % stride  # the first index of this tensor that falls on the global stride
        pieces.append(flat[first::stride])
        start += flat.numel()
    return pieces[0] if len(pieces) == 1 else torch.cat(pieces)


class Workspace:
    """Buffers that the CPU path reuses from one call to the next.

    A caller that computes statistics again and again (the monitor, every N steps) passes one to
    :func:`layerwise_tail_statistics`: its temporaries of the total size (float64 deviations and their
    squares, sorted magnitudes, the concatenated input) are then allocated once, not at every call.
    Not thread-safe.
    """

    def __init__(self) -> None:
        self._numpy: dict[str, np.ndarray] = {}
        self._torch: dict[str, torch.Tensor] = {}

    def array(self, name: str, size: int, dtype: np.dtype | type) -> np.ndarray:
        """A numpy buffer of ``size`` entries (contents undefined)."""
        buffer = self._numpy.get(name)
        if buffer is None or buffer.size < size or buffer.dtype != np.dtype(dtype):
            buffer = self._numpy[name] = np.empty(max(size, 1), dtype=dtype)
        return buffer[:size]

    def tensor(self, name: str, size: int, dtype: torch.dtype) -> torch.Tensor:
        """A CPU tensor of ``size`` entries (contents undefined)."""
        buffer = self._torch.get(name)
        if buffer is None or buffer.numel() < size or buffer.dtype != dtype:
            buffer = self._torch[name] = torch.empty(max(size, 1), dtype=dtype)
        return buffer[:size]


def _check_max_elements(max_elements: int | None) -> None:
    if max_elements is not None and (
        isinstance(max_elements, bool) or not isinstance(max_elements, int) or max_elements < 1
    ):
        raise ValueError(f"Invalid max_elements: {max_elements!r} (expected an integer > 0 or None)")


def _finite_float64(values: torch.Tensor) -> torch.Tensor:
    """The finite entries of ``values``, flattened, as float64 (on the CPU for MPS, which has no float64)."""
    flat = values.detach().reshape(-1)
    if flat.device.type == "mps":
        flat = flat.cpu()
    flat = flat.to(torch.float64)
    return flat[torch.isfinite(flat)]


def excess_kurtosis(values: torch.Tensor) -> float:
    """Excess kurtosis ``E[(x - mean)^4] / var^2 - 3`` with population moments (0 for a Gaussian).

    Args:
        values: the entries (any shape; non-finite entries are dropped).

    Returns:
        The excess kurtosis; NaN for fewer than :data:`MIN_ENTRIES` finite entries or a constant input.

    Example:
        >>> excess_kurtosis(torch.tensor([-1.0, 1.0] * 10))  # two points: the smallest possible value
        -2.0
        >>> excess_kurtosis(torch.ones(100))
        nan
    """
    x = _finite_float64(values)
    if x.numel() < MIN_ENTRIES or bool(x.max() == x.min()):
        return _NAN
    d = x - x.mean()
    var = (d * d).mean()
    return float((d**4).mean() / (var * var) - 3.0)


def _quantile_sorted(ascending: torch.Tensor, q: float) -> float:
    """The ``q``-quantile of sorted values, interpolating linearly (numpy's default ``"linear"`` method)."""
    position = q * (ascending.numel() - 1)
    low = math.floor(position)
    high = min(low + 1, ascending.numel() - 1)
    fraction = position - low
    a, b = float(ascending[low]), float(ascending[high])
    return a + fraction * (b - a)


def q999_over_q50(values: torch.Tensor) -> float:
    """The 99.9th percentile of ``|g|`` divided by its median.

    Percentiles interpolate linearly between order statistics, as ``numpy.quantile``'s default does;
    they come from one sort, so there is no size limit (``torch.quantile`` refuses more than ``2**24``
    entries).

    Args:
        values: the entries (any shape; non-finite entries are dropped).

    Returns:
        The ratio (1 for a constant input); NaN for fewer than :data:`MIN_ENTRIES` finite entries or
        a zero median.

    Example:
        >>> round(q999_over_q50(torch.arange(1.0, 1002.0)), 6)  # q999 = 1000, q50 = 501
        1.996008
    """
    a = _finite_float64(values).abs()
    if a.numel() < MIN_ENTRIES:
        return _NAN
    ascending = torch.sort(a).values
    median = _quantile_sorted(ascending, 0.5)
    return _quantile_sorted(ascending, 0.999) / median if median > 0 else _NAN


def hill_alpha(values: torch.Tensor, k: int | None = None) -> float:
    """Hill's estimate of the tail index of ``|g|``: ``k / sum_{i<=k} log(X_(i) / X_(k+1))``.

    ``X_(1) >= X_(2) >= ...`` are the ``|g|`` sorted in decreasing order. If ``P(|g| > x)`` decays like
    ``x**-alpha``, the estimate approaches ``alpha``: a Student-t with ``nu`` degrees of freedom has
    ``alpha = nu``, an alpha-stable law (Simsekli et al.) its ``alpha < 2``; smaller is heavier.

    Args:
        values: the entries (any shape; non-finite entries are dropped).
        k: how many of the largest ``|g|`` to use; ``None`` uses :func:`hill_k` (the largest 1%, at
            least 10), whose bias is documented there.

    Returns:
        The estimate; NaN for fewer than :data:`MIN_ENTRIES` finite entries, ``k >= n``, a zero
        ``X_(k+1)`` or a tail of ties (``X_(1) == X_(k+1)``).

    Example:
        >>> x = 1.0 / torch.linspace(1.0, 0.0, 100_001)[:-1] ** 0.5  # an exact Pareto quantile grid, alpha 2
        >>> round(hill_alpha(x), 1)
        2.0

    References:
        B. M. Hill, Ann. Statist. 3(5), 1163-1174, 1975.
    """
    if k is not None and (isinstance(k, bool) or not isinstance(k, int) or k < 1):
        raise ValueError(f"Invalid k: {k!r} (expected an integer > 0 or None)")
    a = _finite_float64(values).abs()
    n = a.numel()
    k = hill_k(n) if k is None else k
    if n < MIN_ENTRIES or k >= n:
        return _NAN
    top = torch.topk(a, k + 1).values  # sorted, largest first
    if not bool(top[k] > 0):
        return _NAN
    log_excess = torch.log(top[:k] / top[k]).sum()
    return float(k / log_excess) if bool(log_excess > 0) else _NAN


def top1pct_energy(values: torch.Tensor) -> float:
    """The share of ``sum(g**2)`` carried by the ``ceil(n / 100)`` entries of largest ``|g|``.

    It is 0.01 when every entry has the same magnitude and approaches 1 when a few entries dominate.

    Args:
        values: the entries (any shape; non-finite entries are dropped).

    Returns:
        The share in ``(0, 1]``; NaN for fewer than :data:`MIN_ENTRIES` finite entries or all zeros.

    Example:
        >>> top1pct_energy(torch.tensor([10.0] + [1.0] * 99))  # 100 / (100 + 99)
        0.5025125628140703
    """
    x = _finite_float64(values)
    n = x.numel()
    if n < MIN_ENTRIES:
        return _NAN
    energy = (x * x).sum()
    if not bool(energy > 0):
        return _NAN
    top = torch.topk(x.abs(), top_count(n)).values
    return float((top * top).sum() / energy)


def tail_statistics(values: torch.Tensor, max_elements: int | None = None) -> dict[str, float]:
    """All four tail statistics of ``values``, keyed by :data:`~lightning_opt.tails.tags.STATISTICS`.

    Same definitions as :func:`excess_kurtosis`, :func:`q999_over_q50`, :func:`hill_alpha` (default
    ``k``) and :func:`top1pct_energy`, computed together from one sort.

    Args:
        values: the entries (any shape; non-finite entries are dropped).
        max_elements: above this many entries, compute on :func:`strided_subsample` ``(values,
            max_elements)`` instead (every ``s``-th entry); ``None`` uses everything.

    Example:
        >>> stats = tail_statistics(torch.tensor([-1.0, 1.0] * 50))
        >>> stats["kurtosis"], stats["q999_over_q50"], stats["top1pct_energy"]
        (-2.0, 1.0, 0.01)
        >>> stats["hill_alpha"]  # a tail of ties
        nan
        >>> tail_statistics(torch.tensor([]))["kurtosis"]
        nan

    References:
        B. M. Hill, "A Simple General Approach to Inference About the Tail of a Distribution",
        Ann. Statist. 3(5), 1975 (``hill_alpha``). U. Simsekli, L. Sagun, M. Gurbuzbalaban, "A Tail-Index
        Analysis of Stochastic Gradient Noise in Deep Neural Networks", arXiv:1901.06053, 2019 (why the
        tails of gradient noise matter).
    """
    sample = strided_subsample(values.detach(), max_elements)
    row = batched_tail_statistics([sample])[0].tolist()
    return dict(zip(STATISTICS, row))


def batched_tail_statistics(segments: Sequence[torch.Tensor]) -> torch.Tensor:
    """The tail statistics of many tensors at once, as a float64 tensor of shape ``(len(segments), 4)``.

    Row ``i`` holds the statistics of ``segments[i]`` in :data:`~lightning_opt.tails.tags.STATISTICS`
    order, with the definitions and NaN rules of :func:`tail_statistics`; the result lives on the
    segments' device (which they must share; the CPU for MPS). Two algorithms, chosen by device:

    - CPU (and MPS, copied to the CPU): in numpy, one vectorised pass per moment over all the tensors
      (``ufunc.reduceat``, float64) and one ``numpy.sort`` of ``|g|`` per tensor (in the tensor's own
      float type when that is float32: the same order as in float64, and numpy's SIMD sort of float32 is
      several times faster than ``torch.sort`` on a CPU). Few calls, which is what makes the callback
      cheap: on a small model their per-call overhead, not the arithmetic, is the cost.
    - accelerators: all tensors concatenated and handled together, with one global sort of ``|g|``, one
      stable sort by segment and segment sums with ``index_add_``: the number of kernel launches does
      not depend on the number of tensors, and nothing synchronises with the host (the caller reads the
      result when it wants, in one transfer). Memory is about 15 float64 buffers of the total length:
      cap the input with :func:`strided_subsample` or split it into calls.

    Example:
        >>> rows = batched_tail_statistics([torch.linspace(-1.0, 1.0, 1001), torch.ones(5)])
        >>> rows.shape, round(float(rows[0, 0]), 3), bool(rows[1].isnan().all())
        (torch.Size([2, 4]), -1.2, True)
    """
    if segments and segments[0].device.type in ("cpu", "mps"):
        rows, _ = _cpu_rows([s.detach() for s in segments], whole=False)
        return torch.tensor(rows, dtype=torch.float64).reshape(len(rows), len(STATISTICS))
    return _sorted_batched_statistics(segments)


def layerwise_tail_statistics(
    tensors: Sequence[torch.Tensor], max_elements: int | None = None, workspace: Workspace | None = None
) -> tuple[torch.Tensor, torch.Tensor]:
    """The statistics of each tensor and of all of them together, and how many entries are not finite.

    This is what :class:`~lightning_opt.callbacks.GradientTailMonitor` computes at a logged step: row ``i``
    of the ``(len(tensors) + 1, 4)`` float64 result holds :func:`tail_statistics` ``(tensors[i],
    max_elements)``, the last row :func:`tail_statistics` of the concatenation of all the (flattened)
    tensors, with the same cap; the second result is a 0-d int64 tensor counting the inf and NaN entries of
    all the tensors (every entry, whatever the cap). A :class:`Workspace` makes repeated calls on the
    CPU allocate nothing large. The tensors must share a device; the results stay
    on it (on the CPU for the CPU and MPS), unsynchronised on an accelerator (see
    :func:`batched_tail_statistics` for both algorithms). On the CPU, up to the cap, the tensors are
    converted to float64 once and the whole-model row reuses that array.

    Example:
        >>> rows, nonfinite = layerwise_tail_statistics([torch.ones(50), torch.tensor([-1.0, 1.0] * 50)])
        >>> [round(k, 3) for k in rows[:, 0].tolist()], int(nonfinite)  # kurtosis: constant, +-1, together
        ([nan, -2.0, -1.5], 0)
    """
    _check_max_elements(max_elements)
    width = len(STATISTICS)
    if not tensors:
        return torch.full((1, width), _NAN, dtype=torch.float64), torch.zeros((), dtype=torch.int64)
    tensors = [t.detach() for t in tensors]
    cpu_rows = _layerwise_rows_cpu(tensors, max_elements, workspace)
    if cpu_rows is not None:
        rows, nonfinite = cpu_rows
        return torch.tensor(rows, dtype=torch.float64), torch.tensor(nonfinite, dtype=torch.int64)
    total = sum(t.numel() for t in tensors)
    on_cpu = tensors[0].device.type in ("cpu", "mps")
    samples = [strided_subsample(t, max_elements) for t in tensors]
    whole = strided_subsample(tensors, max_elements)
    if on_cpu:
        table = batched_tail_statistics([*samples, whole])
        nonfinite = sum(t.numel() - int(torch.isfinite(t).sum()) for t in tensors)
        return table, torch.tensor(nonfinite, dtype=torch.int64)
    return _layerwise_sorted(tensors, [*samples, whole], max_elements if max_elements is not None else total)


def _layerwise_rows_cpu(
    tensors: Sequence[torch.Tensor], max_elements: int | None, workspace: Workspace | None = None
) -> tuple[list[list[float]], int] | None:
    """The common case of :func:`layerwise_tail_statistics` as plain Python lists (what the monitor logs):
    tensors on the CPU (or MPS), all of them within the cap. ``None`` otherwise."""
    if tensors[0].device.type not in ("cpu", "mps") or (
        max_elements is not None and sum(t.numel() for t in tensors) > max_elements
    ):
        return None
    return _cpu_rows(tensors, whole=True, workspace=workspace)


def _cpu_rows(
    tensors: Sequence[torch.Tensor], whole: bool, workspace: Workspace | None = None
) -> tuple[list[list[float]], int]:
    """Rows for each tensor (and, with ``whole``, their concatenation) on the CPU, non-finite entries
    dropped, and how many entries were not finite."""
    sizes = [t.numel() for t in tensors]
    values = _flat_numpy(tensors, workspace)
    rows = _numpy_rows(values, sizes, whole, workspace)
    if rows is not None:  # every entry finite
        return rows, 0
    starts = [0, *accumulate(sizes)]
    rows = [_numpy_statistics(values[starts[i] : starts[i + 1]]) for i in range(len(sizes))]
    if whole:
        rows.append(_numpy_statistics(values))
    return rows, values.size - int(np.count_nonzero(np.isfinite(values)))


def _flat_numpy(tensors: Sequence[torch.Tensor], workspace: Workspace | None = None) -> np.ndarray:
    """The tensors' entries, concatenated, as a numpy array of their own float type (half types widened to
    float32, which numpy reads; never narrowed)."""
    parts = [t.detach().reshape(-1).cpu() for t in tensors]
    dtype = parts[0].dtype
    if len(parts) == 1:
        flat = parts[0]
    elif workspace is not None and all(p.dtype == dtype for p in parts):
        flat = torch.cat(parts, out=workspace.tensor("flat", sum(p.numel() for p in parts), dtype))
    else:
        flat = torch.cat(parts)
    if flat.dtype in (torch.float16, torch.bfloat16) or not flat.dtype.is_floating_point:
        flat = flat.float() if flat.dtype != torch.int64 else flat.double()
    return flat.numpy()


def _layerwise_sorted(
    tensors: Sequence[torch.Tensor], parts: Sequence[torch.Tensor], budget: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """The accelerator path of :func:`layerwise_tail_statistics`: the rows of ``parts`` (the samples, then
    the whole) in sorted batches of at most ``budget`` entries (a larger part alone), and the non-finite
    count of ``tensors``, all left on the device."""
    tables, start, size = [], 0, 0
    for i, part in enumerate(parts):
        if i > start and size + part.numel() > budget:
            tables.append(_sorted_batched_statistics(parts[start:i]))
            start, size = i, 0
        size += part.numel()
    tables.append(_sorted_batched_statistics(parts[start:]))
    nonfinite = torch.stack([t.numel() - torch.isfinite(t).sum() for t in tensors]).sum()
    return torch.cat(tables), nonfinite


def _numpy_statistics(x: np.ndarray) -> list[float]:
    """The four statistics of a numpy vector, non-finite entries dropped."""
    finite = np.isfinite(x)
    if not finite.all():
        x = x[finite]
    rows = _numpy_rows(x, [x.size], whole=False)
    if rows is None:  # finite values whose sum overflows float64: nothing meaningful to compute
        return [_NAN] * len(STATISTICS)
    return rows[0]


def _numpy_rows(
    values: np.ndarray, sizes: Sequence[int], whole: bool, workspace: Workspace | None = None
) -> list[list[float]] | None:
    """Rows of statistics for consecutive segments of ``sizes`` entries tiling ``values`` and, with
    ``whole``, a last row for all of them; ``None`` if some entry is not finite (or a sum overflows).

    ``values`` keeps the gradients' float type: sorting float32 gives the same order as float64 and is
    faster, and every sum is accumulated in float64 (``dtype=`` of the ufuncs). The work is organised for
    a small model trained on a CPU, where the cost of a call, not the arithmetic, dominates (and, in a
    training loop, each *distinct* numpy routine runs cold, at several times its warm cost):

    - the central sums ``M2, M3, M4`` of every segment come from one subtraction and three
      ``add.reduceat`` passes; the whole's from the segments' (exact: each segment's deviations sum to 0)
      with ``M2 = sum(M2_i + n_i d_i^2)`` and ``M4 = sum(M4_i + 4 d_i M3_i + 6 d_i^2 M2_i + n_i d_i^4)``,
      ``d_i`` the segment mean minus the overall mean, so the whole costs no further pass;
    - non-finite entries show up in the sums (finite float32 values cannot overflow a float64 sum);
    - ``|g|`` is sorted in place, one segment at a time, then, made of sorted runs, as a whole: no copies.
    """
    segments = [*sizes, values.size] if whole else list(sizes)
    rows = [[_NAN] * len(STATISTICS) for _ in segments]
    nonempty = [i for i, n in enumerate(sizes) if n]
    if not nonempty or not any(n >= MIN_ENTRIES for n in segments):
        return rows if np.isfinite(values).all() else None
    counts = np.array([sizes[i] for i in nonempty], dtype=np.int64)
    at = np.cumsum(counts) - counts  # add.reduceat from each start runs to the next: the segment's end
    sums = np.add.reduceat(values, at, dtype=np.float64)
    total = float(np.add.reduce(sums))
    if not math.isfinite(total):
        return None
    means = sums / counts
    buffers = workspace or Workspace()
    d = buffers.array("deviation", values.size, np.float64)
    for j, i in enumerate(nonempty):  # segment by segment: no array of repeated means to build
        np.subtract(values[at[j] : at[j] + counts[j]], means[j], out=d[at[j] : at[j] + counts[j]])
    d2 = np.square(d, out=buffers.array("square", values.size, np.float64))
    central = np.zeros((3, len(sizes)))
    central[0, nonempty] = np.add.reduceat(d2, at)
    if whole:
        central[1, nonempty] = np.add.reduceat(np.multiply(d2, d, out=d), at)
    central[2, nonempty] = np.add.reduceat(np.square(d2, out=d2), at)
    m2, m3, m4 = central.tolist()
    mean = [0.0] * len(sizes)
    for j, i in enumerate(nonempty):
        mean[i] = float(means[j])
    if whole:
        grand = total / values.size
        whole_m2 = whole_m4 = 0.0
        for i in nonempty:
            n, delta = sizes[i], mean[i] - grand
            whole_m2 += m2[i] + n * delta * delta
            whole_m4 += m4[i] + 4.0 * delta * m3[i] + 6.0 * delta * delta * m2[i] + n * delta**4
        m2, m4, mean = [*m2, whole_m2], [*m4, whole_m4], [*mean, grand]
    magnitudes = np.abs(values, out=buffers.array("magnitude", values.size, values.dtype))
    starts = [0, *accumulate(sizes)]
    for i, n in enumerate(segments):
        if n < MIN_ENTRIES:
            continue
        if i < len(sizes):
            ordered = magnitudes[starts[i] : starts[i] + n]
            ordered.sort()
        else:
            magnitudes.sort()
            ordered = magnitudes
        variance = m2[i] / n
        # A constant input has zero variance in exact arithmetic, but its float mean may be off by an ulp:
        # equal magnitudes and a variance at rounding level mean a constant (+c and -c mixed cannot get
        # there: their variance is at least 4 c^2 / n).
        largest = float(ordered[-1])
        constant = float(ordered[0]) == largest and variance <= 1e-20 * largest * largest
        kurtosis = m4[i] / n / (variance * variance) - 3.0 if variance > 0 and not constant else _NAN
        energy = m2[i] + n * mean[i] * mean[i]  # sum x^2: two non-negative terms, no cancellation
        ratio, hill, top_energy = _order_statistics(ordered)
        rows[i] = [kurtosis, ratio, hill, top_energy / energy if energy > 0 else _NAN]
    return rows


def _order_statistics(ordered: np.ndarray) -> tuple[float, float, float]:
    """``(q999 / q50, Hill's alpha, sum of the squares of the top 1%)`` of ``|g|`` from its values sorted in
    increasing order (at least :data:`MIN_ENTRIES` of them). One sort gives them all: numpy's vectorised
    sort is about as fast as two ``numpy.partition`` calls (median, then the top ``k + 1``) at the sizes
    of layers, with fewer calls."""
    n = ordered.size
    k, k_top = hill_k(n), top_count(n)

    def quantile(q: float) -> float:  # linear interpolation between order statistics, as numpy does
        position = q * (n - 1)
        low = math.floor(position)
        v_low, v_high = float(ordered[low]), float(ordered[min(low + 1, n - 1)])
        return v_low + (position - low) * (v_high - v_low)

    median = quantile(0.5)
    ratio = quantile(0.999) / median if median > 0 else _NAN
    top = ordered[n - k - 1 :].astype(np.float64)  # the k + 1 largest, increasing: top[0] = X_(k+1)
    x_k = float(top[0])
    log_excess = float(np.log(top[1:] / x_k).sum()) if x_k > 0 else 0.0
    hill = k / log_excess if log_excess > 0 else _NAN
    # Plain reductions, never np.dot: numpy's multithreaded BLAS can cost milliseconds on a busy machine.
    top_energy = float(np.square(top[k + 1 - k_top :]).sum())
    return ratio, hill, top_energy


def _sorted_batched_statistics(segments: Sequence[torch.Tensor]) -> torch.Tensor:
    """The accelerator algorithm of :func:`batched_tail_statistics` (it also runs, slowly, on the CPU)."""
    count = len(segments)
    device = segments[0].device if count else torch.device("cpu")
    if device.type == "mps":  # no float64 on MPS
        device = torch.device("cpu")
    if count == 0:
        return torch.empty(0, len(STATISTICS), dtype=torch.float64, device=device)
    sizes = [s.numel() for s in segments]
    total = sum(sizes)
    if total == 0:
        return torch.full((count, len(STATISTICS)), _NAN, dtype=torch.float64, device=device)
    flat = torch.cat([s.detach().reshape(-1).to(device) for s in segments]).to(torch.float64)

    sizes_t = torch.tensor(sizes, device=device)
    seg = torch.repeat_interleave(torch.arange(count, device=device), sizes_t, output_size=total)
    offsets = torch.cumsum(sizes_t, 0) - sizes_t
    last_index = total - 1

    def segment_sum(x: torch.Tensor) -> torch.Tensor:
        return torch.zeros(count, dtype=x.dtype, device=device).index_add_(0, seg, x)

    finite = torch.isfinite(flat)
    m = segment_sum(finite.to(torch.int64))  # finite entries per segment
    mf = m.to(torch.float64)

    # Excess kurtosis: two-pass central moments.
    x = torch.where(finite, flat, 0.0)
    mean = segment_sum(x) / mf
    d = torch.where(finite, x - mean[seg], 0.0)
    d2 = d * d
    m2 = segment_sum(d2) / mf
    kurtosis = segment_sum(d2 * d2) / mf / (m2 * m2) - 3.0
    # A constant input has zero variance in exact arithmetic, but its float mean may be off by an ulp.
    # amax/amin of the finite entries (the sort below is of |x|, which cannot tell +c from -c).
    vmax = torch.full((count,), -math.inf, dtype=torch.float64, device=device)
    vmin = torch.full((count,), math.inf, dtype=torch.float64, device=device)
    vmax.scatter_reduce_(0, seg, torch.where(finite, flat, -math.inf), "amax")
    vmin.scatter_reduce_(0, seg, torch.where(finite, flat, math.inf), "amin")
    kurtosis = torch.where(vmax > vmin, kurtosis, _NAN)

    # |g| sorted in decreasing order inside each segment; non-finite entries become -1 and sort last.
    a = torch.where(finite, flat.abs(), -1.0)
    a_sorted, order = torch.sort(a, descending=True)
    if count > 1:
        by_segment = torch.sort(seg[order], stable=True).indices
        a_sorted = a_sorted[by_segment]
    rank = torch.arange(total, device=device) - offsets[seg]  # 0 for the largest |g| of its segment

    def quantile(q: float) -> torch.Tensor:
        # Linear interpolation at position q * (m - 1) of the increasing order; the increasing index i
        # is the decreasing index m - 1 - i.
        position = q * (mf - 1.0)
        low = torch.floor(position)
        fraction = position - low
        low_i = low.to(torch.int64)
        high_i = torch.minimum(low_i + 1, m - 1)
        v_low = a_sorted[(offsets + m - 1 - low_i).clamp(0, last_index)]
        v_high = a_sorted[(offsets + m - 1 - high_i).clamp(0, last_index)]
        return v_low + fraction * (v_high - v_low)

    median = quantile(0.5)
    ratio = torch.where(median > 0, quantile(0.999) / median, _NAN)

    # Hill: k / sum_{i<k} log(X_i / X_k) with 0-based decreasing order statistics X.
    k = torch.clamp(m // 100, min=HILL_MIN_K)
    x_k = a_sorted[(offsets + k).clamp(max=last_index)]
    in_top = rank < k[seg]
    # log of the ratio, not a difference of logs, which would cancel when the tail is narrow
    log_excess = segment_sum(torch.where(in_top, torch.log(a_sorted / x_k[seg]), 0.0))
    hill = torch.where((x_k > 0) & (log_excess > 0), k.to(torch.float64) / log_excess, _NAN)

    # Share of sum(g^2) in the ceil(m / 100) largest |g|.
    squares = torch.where(a_sorted >= 0, a_sorted * a_sorted, 0.0)
    energy = segment_sum(squares)
    top_energy = segment_sum(torch.where(rank < ((m + 99) // 100)[seg], squares, 0.0))
    share = top_energy / energy  # 0 / 0 = NaN for all zeros

    rows = torch.stack([kurtosis, ratio, hill, share], dim=1)
    return torch.where((m >= MIN_ENTRIES)[:, None], rows, _NAN)
