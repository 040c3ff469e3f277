"""Robust aggregates of per-example losses."""

from __future__ import annotations

import torch

from lightning_opt.validation import check_bool, check_float

__all__ = ["DEFAULT_MIN_TEMPERATURE", "soft_median"]

DEFAULT_MIN_TEMPERATURE = 0.1
"""The smallest default temperature of :func:`soft_median`."""


def soft_median(
    losses: torch.Tensor, temperature: float | None = None, dim: int | None = None, keepdim: bool = False
) -> torch.Tensor:
    r"""A differentiable median: a softmax-weighted average of the sorted values, centred on the middle rank.

    With the values sorted, ``x_(0) <= ... <= x_(n-1)``, and the middle position ``c = (n - 1) / 2``::

        w_k = softmax_k(-|k - c| / temperature)        soft_median = sum_k w_k * x_(k)

    For an even ``n``, ``c`` is a half-integer, so the two middle values get equal weights and the others
    symmetric ones: no padding is needed (the seed's version appends a zero to even inputs, which pulls
    the result towards 0: four losses of about 10 gave 8.7). The weights depend on the ranks only, so
    the result is a convex combination of the inputs and always lies between their minimum and maximum;
    it is invariant to permutations and ``soft_median(x + a) = soft_median(x) + a``.

    ``temperature`` is measured in ranks (positions in the sorted order). As it tends to 0 the result
    tends to the exact median (for an even ``n`` the mean of the two middle values); as it grows, the
    weights become uniform and the result tends to the mean. The weight of a value ``d`` ranks from the
    middle is proportional to ``exp(-d / temperature)`` whatever its size, so a fixed temperature of
    about 1 rank or less gives an outlier in the tail almost no weight.

    The default is the seed's ``max(0.1, 0.5 * std)``, with ``std`` the (unbiased) standard deviation of
    the values: widely spread losses are averaged over more ranks. That default mixes units (a spread of
    values sets a width in ranks): with it ``soft_median(a * x) != a * soft_median(x)`` in general, and
    one large outlier inflates ``std`` and so widens the window (see the example). Pass a fixed
    ``temperature`` for a scale-equivariant, outlier-resistant estimate. The default temperature is
    computed without gradient: it sets the width of the window and is not part of the estimate, so the
    gradient with respect to each input is exactly its weight (non-negative, summing to 1). The gradient
    flows through the sort's values; the sort orders ties arbitrarily, which does not change the result.

    bfloat16 and float16 inputs are weighted and summed in float32, and the result is cast back.
    Infinite or NaN inputs give a non-finite result.

    Args:
        losses: a floating-point tensor of any shape with at least one element (along ``dim``).
        temperature: the softmax temperature, in ranks, ``> 0``; ``None`` for ``max(0.1, 0.5 * std)``
            (per slice when ``dim`` is given).
        dim: the dimension to reduce; ``None`` (default) reduces all the elements to one value.
        keepdim: keep the reduced dimension with size 1 (only with ``dim``).

    Returns:
        A 0-d tensor for ``dim=None``, otherwise ``losses`` reduced along ``dim``; the dtype of ``losses``.

    Raises:
        ValueError: ``losses`` is not a floating-point tensor or is empty, or ``temperature`` is not a
            finite number ``> 0``.

    Example:
        >>> losses = torch.tensor([0.3, 9.0, 0.2, 0.4])             # one outlier
        >>> losses.mean()
        tensor(2.4750)
        >>> soft_median(losses, temperature=0.01)                   # the exact median: (0.3 + 0.4) / 2
        tensor(0.3500)
        >>> soft_median(losses, temperature=0.5)
        tensor(0.8566)
        >>> soft_median(losses)                # default: 0.5 * std = 2.18 ranks, widened by the outlier
        tensor(1.9950)
        >>> soft_median(torch.tensor([[1.0, 2.0, 6.0], [5.0, 4.0, 0.0]]), temperature=0.5, dim=1)
        tensor([2.3195, 3.6805])

    References:
        The soft median of the seed post's section on Adam's gradient long tail (5.3, "Adam的梯度長尾問題"),
        an untested sketch there, proposed as a robust alternative to averaging the losses.
    """
    if not isinstance(losses, torch.Tensor):
        raise ValueError(f"Invalid losses: {type(losses).__name__} (expected a floating-point tensor)")
    if not losses.is_floating_point():
        raise ValueError(f"Invalid losses: a tensor of dtype {losses.dtype} (expected a floating-point tensor)")
    if temperature is not None:
        temperature = check_float("temperature", temperature, low=0.0, low_inclusive=False)
    check_bool("keepdim", keepdim)
    if keepdim and dim is None:
        raise ValueError("Invalid keepdim: True (needs dim; dim=None reduces every element to one value)")

    values = losses.reshape(-1) if dim is None else losses
    axis = -1 if dim is None else dim
    if values.dim() == 0:  # a 0-d tensor with dim=0 or dim=-1: a single value, as torch.median treats it
        values = values.reshape(1)
    count = values.shape[axis]  # IndexError for a dim out of range, as in torch
    if count == 0:
        raise ValueError(f"Invalid losses: no elements along dim {dim} (shape {tuple(losses.shape)})")

    compute_dtype = torch.promote_types(values.dtype, torch.float32)  # ranks up to 2**24 exact; bf16 is not
    ordered = torch.sort(values.to(compute_dtype), dim=axis).values
    if temperature is None:
        with torch.no_grad():
            if count == 1:
                spread = torch.zeros_like(ordered)
            else:
                spread = ordered.std(dim=axis, keepdim=True)
            width: torch.Tensor | float = (0.5 * spread).clamp_min(DEFAULT_MIN_TEMPERATURE)
    else:
        width = temperature
    shape = [1] * ordered.dim()
    shape[axis] = count
    ranks = torch.arange(count, device=ordered.device, dtype=compute_dtype).reshape(shape)
    weights = torch.softmax(-(ranks - (count - 1) / 2).abs() / width, dim=axis)
    result = (weights * ordered).sum(dim=axis, keepdim=keepdim)
    if losses.dim() == 0:
        result = result.reshape(())
    return result.to(losses.dtype)
