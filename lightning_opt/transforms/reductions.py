"""Sums and norms over the trailing dimensions of a tensor, written once for plain and stacked tensors.

The engine runs an update over a *stack*: ``k`` parameters of one shape viewed as a ``(k, units, width)``
tensor (see :mod:`lightning_opt.engine.stacks`). A reduction per parameter tensor is then a reduction over
the dimensions from 1 on, and one per output unit (a row of a weight) over the dimensions from 2 on; on a
plain tensor, over every dimension, or over the dimensions from 1 on. So every reduction here takes
``start``, the first dimension reduced, and keeps the reduced dimensions, so that the result broadcasts
against its input.

Sums accumulate in at least float32, so bfloat16 and float16 tensors work.
"""

from __future__ import annotations

import math

import torch

PER_TENSOR = 1
"""``start`` for a reduction per parameter tensor of a stack (the update functions' tensors)."""


def accumulation_dtype(tensor: torch.Tensor) -> torch.dtype:
    """The dtype sums of ``tensor`` accumulate in: at least float32."""
    return torch.promote_types(tensor.dtype, torch.float32)


def sum_from(tensor: torch.Tensor, start: int) -> torch.Tensor:
    """Sum ``tensor`` over its dimensions ``start, start + 1, ...``, keeping them (size 1).

    Accumulated and returned in at least float32.

    Args:
        tensor: any tensor.
        start: the first dimension summed; 0 sums everything (a 0-d tensor is returned as it is, in the
            accumulation dtype).

    Example:
        >>> sum_from(torch.arange(6.0).view(1, 2, 3), 2)
        tensor([[[ 3.],
                 [12.]]])
    """
    dtype = accumulation_dtype(tensor)
    dims = tuple(range(start, tensor.dim()))
    if not dims:
        return tensor.to(dtype)
    outer = math.prod(tensor.shape[:start])
    if tensor.device.type == "cpu" and torch.compiler.is_compiling() and not _statically_one(outer):
        # Inductor's C++ backend (torch 2.13) fails to generate code for a partial reduction fused with
        # the elementwise update that reads it ("KeyError: 'buf0'" in its outer-loop fusion). The same
        # sums as a matrix-vector product, an external kernel that it does not fuse, compile.
        rows = tensor.reshape(outer, -1).to(dtype)
        sums = rows @ torch.ones(rows.shape[1], 1, dtype=dtype, device=tensor.device)
        return sums.view(*tensor.shape[:start], *([1] * len(dims)))
    return tensor.sum(dim=dims, keepdim=True, dtype=dtype)


def norm_from(tensor: torch.Tensor, start: int) -> torch.Tensor:
    """The Euclidean norm over dimensions ``start, ...`` (kept), accumulated in at least float32.

    Example:
        >>> norm_from(torch.tensor([[3.0, 4.0], [0.0, 1.0]]), 1)
        tensor([[5.],
                [1.]])
    """
    wide = tensor.to(accumulation_dtype(tensor))
    return sum_from(wide * wide, start).sqrt()


def count_from(tensor: torch.Tensor, start: int) -> int:
    """How many elements one reduction over dimensions ``start, ...`` covers (at least 1, so that a mean of
    an empty tensor divides by 1).

    >>> count_from(torch.zeros(5, 4, 3), 1)
    12
    """
    return max(math.prod(tensor.shape[start:]), 1)


def _statically_one(size: object) -> bool:
    """Whether ``size`` is the Python integer 1 (under dynamic shapes, a size that dynamo specialised)."""
    return isinstance(size, int) and size == 1
