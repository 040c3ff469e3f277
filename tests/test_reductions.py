"""``reduce_rows``: column sums and maxima in row blocks, against plain float64 reductions, eager and compiled."""

from __future__ import annotations

import pytest
import torch

from lightning_opt.transforms.reductions import ROW_BLOCK, reduce_rows

# (shape, start): rows a multiple of ROW_BLOCK (blocked), exactly ROW_BLOCK, fewer, not a multiple, several
# dimensions merged into the rows (blocked and not), a stack dimension kept, and one row
CASES = [
    ((64, 24), 0),
    ((2, 96, 40), 1),
    ((3, ROW_BLOCK, 8), 1),
    ((5, 7), 0),
    ((2, 50, 9), 1),
    ((2, 4, 8, 6), 1),
    ((2, 3, 5, 6), 1),
    ((3, 1, 12), 1),
]


def reference(tensor: torch.Tensor, reduction: str, start: int) -> torch.Tensor:
    dims = tuple(range(start, tensor.dim() - 1))
    wide = tensor.double()
    return wide.sum(dim=dims, keepdim=True) if reduction == "sum" else wide.amax(dim=dims, keepdim=True)


@pytest.mark.parametrize("shape, start", CASES)
@pytest.mark.parametrize("reduction", ["sum", "amax"])
def test_reduce_rows_matches_a_float64_reduction_over_the_same_dimensions(
    shape: tuple[int, ...], start: int, reduction: str
) -> None:
    tensor = torch.randn(shape, generator=torch.Generator().manual_seed(len(shape) + sum(shape)))
    result = reduce_rows(tensor, reduction, start)
    expected = reference(tensor, reduction, start)
    assert result.shape == expected.shape
    if reduction == "amax":  # a max does not round: exact
        assert torch.equal(result.double(), expected)
    else:
        torch.testing.assert_close(result.double(), expected, rtol=1e-6, atol=1e-5)


@pytest.mark.parametrize("reduction", ["sum", "amax"])
def test_compiled_reduce_rows_matches_eager_over_shapes_of_one_dynamic_graph(reduction: str) -> None:
    torch._dynamo.reset()  # the lambda's code is the same for both reductions: a fresh count of recompilations
    compiled = torch.compile(lambda x: reduce_rows(x, reduction, 1), dynamic=True, fullgraph=True)
    for shape, start in CASES:
        if start != 1:
            continue
        tensor = torch.randn(shape, generator=torch.Generator().manual_seed(sum(shape)))
        torch.testing.assert_close(
            compiled(tensor).double(), reference(tensor, reduction, 1), rtol=1e-6, atol=1e-5, msg=str(shape)
        )


def test_sums_of_low_precision_tensors_accumulate_in_float32() -> None:
    tensor = torch.full((64, 3), 1.0 / 3.0, dtype=torch.bfloat16)
    result = reduce_rows(tensor, "sum", 0)
    assert result.dtype == torch.float32
    torch.testing.assert_close(result.double(), reference(tensor, "sum", 0), rtol=1e-6, atol=0.0)
    assert reduce_rows(tensor, "amax", 0).dtype == torch.bfloat16


def test_an_unknown_reduction_is_refused_naming_it() -> None:
    with pytest.raises(ValueError, match="Invalid reduction: 'mean'"):
        reduce_rows(torch.ones(4, 4), "mean", 0)


@pytest.mark.parametrize("reduction", ["sum", "amax"])
def test_non_contiguous_tensors_are_reduced_as_their_values(reduction: str) -> None:
    tensor = torch.randn(2, 40, 32, 6).transpose(1, 3)  # (2, 6, 32, 40): merged rows 6 x 32 = 192, strided
    assert not tensor.is_contiguous()
    torch.testing.assert_close(
        reduce_rows(tensor, reduction, 1).double(), reference(tensor, reduction, 1), rtol=1e-6, atol=1e-5
    )
