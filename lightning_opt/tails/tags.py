"""The TensorBoard tags that :class:`~lightning_opt.callbacks.GradientTailMonitor` writes and
``lightning-opt tails`` reads, defined once.

Tags are grouped by their first path component, which is how TensorBoard's UI groups cards: one
section per statistic, one chart per layer inside it, the whole model first.

>>> statistic_tag("kurtosis", "net.0.weight")
'grad_tail_kurtosis/net.0.weight'
>>> parse_statistic_tag("grad_tail_hill_alpha/model")
('hill_alpha', 'model')
>>> parse_statistic_tag("param/net.0.weight") is None
True
"""

from __future__ import annotations

STATISTICS: tuple[str, ...] = ("kurtosis", "q999_over_q50", "hill_alpha", "top1pct_energy")
"""The tail statistics, in the order tables show them:

- ``kurtosis``: excess kurtosis of the gradient entries (0 for a Gaussian, grows with the tails);
- ``q999_over_q50``: the 99.9th percentile of ``|g|`` over its median;
- ``hill_alpha``: Hill's estimate of the tail index over the largest ``|g|`` (smaller is heavier;
  a Student-t with ``nu`` degrees of freedom has index ``nu``);
- ``top1pct_energy``: the share of ``sum(g**2)`` carried by the largest 1% of entries.
"""

WHOLE_MODEL = "model"
"""The layer name under which statistics of all watched gradients together are logged."""

STATISTIC_PREFIX = "grad_tail_"
PARAM_HISTOGRAM_PREFIX = "param/"
GRAD_HISTOGRAM_PREFIX = "grad/"
LOG_ABS_GRAD_HISTOGRAM_PREFIX = "grad_log10_abs/"
NONFINITE_TAG = "grad_tail_nonfinite/model"
"""How many gradient entries were inf or NaN at a logged step (all watched parameters together)."""


def statistic_tag(statistic: str, name: str) -> str:
    """The scalar tag of one tail statistic of one layer (or of :data:`WHOLE_MODEL`)."""
    if statistic not in STATISTICS:
        raise ValueError(f"Invalid statistic: {statistic!r} (expected one of {', '.join(STATISTICS)})")
    return f"{STATISTIC_PREFIX}{statistic}/{name}"


def parse_statistic_tag(tag: str) -> tuple[str, str] | None:
    """``(statistic, layer)`` for a tag made by :func:`statistic_tag`, else ``None``."""
    if not tag.startswith(STATISTIC_PREFIX) or "/" not in tag:
        return None
    statistic, name = tag[len(STATISTIC_PREFIX) :].split("/", 1)
    return (statistic, name) if statistic in STATISTICS else None


def param_histogram_tag(name: str) -> str:
    """The histogram tag of a parameter's values."""
    return f"{PARAM_HISTOGRAM_PREFIX}{name}"


def grad_histogram_tag(name: str) -> str:
    """The histogram tag of a parameter's gradient."""
    return f"{GRAD_HISTOGRAM_PREFIX}{name}"


def log_abs_grad_histogram_tag(name: str) -> str:
    """The histogram tag of ``log10 |g|`` (fixed bins, so runs and steps compare bin by bin)."""
    return f"{LOG_ABS_GRAD_HISTOGRAM_PREFIX}{name}"
