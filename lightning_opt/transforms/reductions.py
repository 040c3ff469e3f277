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


def sum_from(tensor: torch.Tensor, start: int, by_rows: bool = False) -> torch.Tensor:
    """Sum ``tensor`` over its dimensions ``start, start + 1, ...``, keeping them (size 1).

    Accumulated and returned in at least float32.

    Args:
        tensor: any tensor.
        start: the first dimension summed; 0 sums everything (a 0-d tensor is returned as it is, in the
            accumulation dtype).
        by_rows: compiled for a CPU, sum over the last dimension first, then the row sums (see
            :func:`_compiling_for_cpu`): faster for an expression that the graph does not also store.

    Example:
        >>> sum_from(torch.arange(6.0).view(1, 2, 3), 2)
        tensor([[[ 3.],
                 [12.]]])
    """
    dtype = accumulation_dtype(tensor)
    dims = tuple(range(start, tensor.dim()))
    if not dims:
        return tensor.to(dtype)
    if by_rows and len(dims) > 1 and _compiling_for_cpu(tensor):
        tensor = tensor.sum(dim=-1, keepdim=True, dtype=dtype)
    if _needs_matrix_product(tensor, start):
        outer = math.prod(tensor.shape[:start])
        rows = tensor.reshape(outer, -1).to(dtype)
        sums = rows @ torch.ones(rows.shape[1], 1, dtype=dtype, device=tensor.device)
        return sums.view(*tensor.shape[:start], *([1] * len(dims)))
    return tensor.sum(dim=dims, keepdim=True, dtype=dtype)


def norm_from(tensor: torch.Tensor, start: int, by_rows: bool = False) -> torch.Tensor:
    """The Euclidean norm over dimensions ``start, ...`` (kept), accumulated in at least float32; ``by_rows``
    as in :func:`sum_from`.

    Example:
        >>> norm_from(torch.tensor([[3.0, 4.0], [0.0, 1.0]]), 1)
        tensor([[5.],
                [1.]])
    """
    dtype = accumulation_dtype(tensor)
    dims = tuple(range(start, tensor.dim()))
    if not dims:
        return tensor.to(dtype).abs()
    if _needs_matrix_product(tensor, start) or (by_rows and _compiling_for_cpu(tensor)):
        wide = tensor.to(dtype)
        return sum_from(wide * wide, start, by_rows).sqrt()
    # no squared copy: a temporary as large as the tensor costs its page faults at every step (eager)
    return torch.linalg.vector_norm(tensor, dim=dims, keepdim=True, dtype=dtype)


ROW_BLOCK = 16
"""Rows that :func:`reduce_rows` reduces together first, when the row count is a multiple of it."""


def reduce_rows(tensor: torch.Tensor, reduction: str, start: int) -> torch.Tensor:
    """Sum or max of ``tensor`` over its dimensions ``start, ..., -2``, keeping them (size 1): one value per
    entry of the last dimension, such as the column sums or maxima of a stack of matrices.

    The rows (the reduced dimensions, merged) are reduced in blocks of :data:`ROW_BLOCK` first, then the
    blocks, when the row count is a multiple of :data:`ROW_BLOCK`. Same values (sums up to rounding), about
    twice as fast on a CPU: Inductor's C++ code for a plain reduction over rows walks the whole column
    of a group of 8 columns before the next group, one row (often a page) apart at each element; with the
    blocks it reads 16 rows at a time (standard set, 2 threads, compiled with dynamic sizes: column sums
    8.7 -> 4.2 ms, against 3.8 ms for row sums). Eagerly it is a little faster too (ATen's ``amax`` over
    rows: 4.4 -> 3.0 ms).

    Args:
        tensor: a tensor of at least ``start + 2`` dimensions (for a negative ``start``, of at least 2).
        reduction: ``"sum"`` or ``"amax"``; sums are returned in at least float32.
        start: the first dimension reduced; every dimension from it to the second-last is.

    Example:
        >>> reduce_rows(torch.arange(64.0).view(32, 2), "sum", 0)
        tensor([[ 992., 1024.]])
        >>> reduce_rows(torch.arange(24.0).view(2, 3, 2, 2), "amax", 1).shape
        torch.Size([2, 1, 1, 2])
    """
    if reduction not in ("sum", "amax"):
        raise ValueError(f"Invalid reduction: {reduction!r} (expected 'sum' or 'amax')")
    shape = tensor.shape
    start = start % tensor.dim()
    if reduction == "sum":
        tensor = tensor.to(accumulation_dtype(tensor))
    rows = math.prod(shape[start:-1])
    matrix = tensor.reshape(*shape[:start], rows, shape[-1])
    reduce = torch.sum if reduction == "sum" else torch.amax
    if rows % ROW_BLOCK == 0 and rows > ROW_BLOCK:
        blocks = matrix.view(*shape[:start], rows // ROW_BLOCK, ROW_BLOCK, shape[-1])
        reduced = reduce(reduce(blocks, dim=-2), dim=-2, keepdim=True)
    else:
        reduced = reduce(matrix, dim=-2, keepdim=True)
    return reduced.view(*shape[:start], *([1] * (len(shape) - start - 1)), shape[-1])


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
    if not _compiling_for_cpu(tensor):
        return False
    outer = math.prod(tensor.shape[:start])
    return not (isinstance(outer, int) and outer == 1)  # an int under dynamic shapes: a size dynamo specialised


def _compiling_for_cpu(tensor: torch.Tensor) -> bool:
    """Whether ``tensor`` is traced by ``torch.compile`` for Inductor's C++ backend.

    There, ``by_rows`` sums (:func:`sum_from`) are faster for an expression that the graph does not store:
    Inductor splits a sum over whole tensors among the threads less well than one per row (standard set, 2
    threads, Adafactor's sum of ``g^2 / v`` per tensor: 5.6 -> 3.8 ms a step), and the matrix-vector product
    of :func:`_needs_matrix_product` then reads one number per row instead of a temporary of the input's size
    (``g * g``), whose page faults cost about four reads of it at every step. Row sums of an expression that
    the same graph stores (a momentum just updated) make Inductor stage it in such a temporary instead
    (NSGDA's first pass: 13 -> 48 ms a step), so they are not the default.
    """
    return tensor.device.type == "cpu" and torch.compiler.is_compiling()
