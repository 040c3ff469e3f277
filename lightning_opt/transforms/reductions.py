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
    if _needs_matrix_product(tensor, start):
        outer = math.prod(tensor.shape[:start])
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
    dtype = accumulation_dtype(tensor)
    dims = tuple(range(start, tensor.dim()))
    if not dims:
        return tensor.to(dtype).abs()
    if _needs_matrix_product(tensor, start):
        wide = tensor.to(dtype)
        return sum_from(wide * wide, start).sqrt()
    # no squared copy: a temporary as large as the tensor costs its page faults at every step (eager)
    return torch.linalg.vector_norm(tensor, dim=dims, keepdim=True, dtype=dtype)


def count_from(tensor: torch.Tensor, start: int) -> int:
    """How many elements one reduction over dimensions ``start, ...`` covers (at least 1, so that a mean of
    an empty tensor divides by 1).

    >>> count_from(torch.zeros(5, 4, 3), 1)
    12
    """
    return max(math.prod(tensor.shape[start:]), 1)


def _needs_matrix_product(tensor: torch.Tensor, start: int) -> bool:
    """Whether a reduction over dimensions ``start, ...`` must be taken as a matrix-vector product.

    Inductor's C++ backend (torch 2.13) fails to generate code for a partial reduction (one that keeps an
    outer dimension of more than one element) fused with the elementwise update that reads it ("KeyError:
    'buf0'" in its outer-loop fusion). The same sums as a matrix-vector product, an external kernel that it
    does not fuse, compile. Eagerly, on CUDA, and for a whole-tensor reduction, the plain reduction is used.
    """
    if tensor.device.type != "cpu" or not torch.compiler.is_compiling():
        return False
    outer = math.prod(tensor.shape[:start])
    return not (isinstance(outer, int) and outer == 1)  # an int under dynamic shapes: a size dynamo specialised
