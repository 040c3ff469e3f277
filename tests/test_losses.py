"""``soft_median``: the exact median as the temperature vanishes (the mean of the two middle values for an even
count, not ``torch.median``'s lower one), no zero-padding bias, invariances, gradients and argument checks."""

from __future__ import annotations

from typing import Any

import pytest
import torch

from lightning_opt.losses import soft_median

SMALL = 1e-3  # ranks: the neighbours of the median get weight exp(-1 / SMALL), zero in any float


def exact_median(values: torch.Tensor) -> float:
    """The textbook median: the middle value, or the mean of the two middle values for an even count."""
    ordered = sorted(values.tolist())
    middle = len(ordered) // 2
    return ordered[middle] if len(ordered) % 2 else (ordered[middle - 1] + ordered[middle]) / 2


def zero_padded_soft_median(losses: torch.Tensor) -> torch.Tensor:
    """The seed's even-count handling, restated for comparison: append one zero, then centre on the middle rank."""
    if losses.numel() % 2 == 0:
        losses = torch.cat([losses, losses.new_zeros(1)])
    temperature = max(0.1, 0.5 * float(losses.std()))
    ranks = torch.arange(losses.numel(), dtype=losses.dtype)
    weights = torch.softmax(-(ranks - (losses.numel() - 1) / 2).abs() / temperature, dim=0)
    return (weights * losses.sort().values).sum()


# ----------------------------------------------------------------- the median and the mean at the extremes
@pytest.mark.parametrize("count", [1, 2, 3, 4, 7, 10, 101, 1000])
def test_tends_to_the_exact_median_as_the_temperature_vanishes(count: int) -> None:
    values = torch.randn(count, generator=torch.Generator().manual_seed(count), dtype=torch.float64) * 5 + 3

    assert soft_median(values, temperature=SMALL).item() == pytest.approx(exact_median(values), abs=1e-12)


def test_even_count_gives_the_mean_of_the_two_middle_values_not_the_lower_one() -> None:
    values = torch.tensor([4.0, 1.0, 3.0, 2.0])

    assert soft_median(values, temperature=SMALL) == 2.5
    assert torch.median(values) == 2.0  # why torch.median is not the oracle for an even count


@pytest.mark.parametrize(
    ("values", "expected"),
    [
        ([1.0, 2.0, 2.0, 2.0, 5.0], 2.0),
        ([1.0, 2.0, 2.0, 3.0], 2.0),
        ([0.0, 2.0, 2.0, 2.0, 2.0, 9.0], 2.0),
        ([7.0, 7.0], 7.0),
        ([3.0, 3.0, 3.0], 3.0),
        ([-1.0, 5.0, 5.0, 100.0], 5.0),
    ],
)
def test_ties(values: list[float], expected: float) -> None:
    assert soft_median(torch.tensor(values, dtype=torch.float64), temperature=SMALL).item() == pytest.approx(expected)
    assert exact_median(torch.tensor(values)) == expected


@pytest.mark.parametrize("count", [2, 5, 6])
def test_tends_to_the_mean_as_the_temperature_grows(count: int) -> None:
    values = torch.randn(count, generator=torch.Generator().manual_seed(0), dtype=torch.float64)

    assert soft_median(values, temperature=1e9).item() == pytest.approx(values.mean().item(), abs=1e-9)


# ----------------------------------------------------------------- no zero-padding bias
@pytest.mark.parametrize("count", [2, 4, 6, 8, 64])
def test_even_counts_have_no_pull_towards_zero(count: int) -> None:
    losses = 10.0 + 0.01 * torch.randn(count, generator=torch.Generator().manual_seed(count), dtype=torch.float64)

    result = soft_median(losses).item()

    assert losses.min().item() <= result <= losses.max().item()
    assert result == pytest.approx(exact_median(losses), abs=0.01)
    if count <= 8:  # the padded zero's weight fades as the count grows, but for few losses it is plain
        assert zero_padded_soft_median(losses).item() < losses.min().item() - 0.2  # outside the losses' range


def test_equal_losses_give_that_loss_for_odd_and_even_counts() -> None:
    for count in range(1, 9):
        assert soft_median(torch.full((count,), 10.0)).item() == pytest.approx(10.0, rel=1e-6)
        assert soft_median(torch.full((count,), 10.0, dtype=torch.float64)).item() == pytest.approx(10.0, rel=1e-15)


# ----------------------------------------------------------------- invariances
@pytest.mark.parametrize("temperature", [None, 0.3, 2.0])
def test_permutation_invariance(temperature: float | None) -> None:
    generator = torch.Generator().manual_seed(1)
    values = torch.rand(12, generator=generator)

    reference = soft_median(values, temperature)
    for _ in range(5):
        shuffled = values[torch.randperm(12, generator=generator)]
        assert torch.equal(soft_median(shuffled, temperature), reference)


@pytest.mark.parametrize("temperature", [None, 0.5])
@pytest.mark.parametrize("count", [1, 6, 7])
def test_shift_equivariance_and_a_gradient_that_sums_to_one(temperature: float | None, count: int) -> None:
    values = torch.randn(count, generator=torch.Generator().manual_seed(2), dtype=torch.float64, requires_grad=True)

    result = soft_median(values, temperature)
    result.backward()

    shift = 123.25
    assert soft_median(values.detach() + shift, temperature).item() == pytest.approx(result.item() + shift, abs=1e-9)
    assert values.grad.sum().item() == pytest.approx(1.0, abs=1e-12)  # d/dc soft_median(x + c) = 1
    assert (values.grad >= 0).all()  # a convex combination: each input's gradient is its weight


def test_an_outlier_far_in_rank_gets_almost_no_weight_with_a_fixed_temperature() -> None:
    """The weights depend on ranks, not values: 10 ranks from the middle at temperature 0.5 is e**-20."""
    values = torch.cat([1.0 + 0.01 * torch.randn(20, generator=torch.Generator().manual_seed(7)), torch.tensor([1e3])])
    values = values.double().requires_grad_(True)

    result = soft_median(values, temperature=0.5)
    result.backward()

    assert result.item() == pytest.approx(exact_median(values.detach()), abs=0.01)
    assert values.grad[-1] < 1e-8


def test_scale_equivariance_holds_for_a_fixed_temperature() -> None:
    values = torch.randn(9, generator=torch.Generator().manual_seed(3), dtype=torch.float64)

    assert soft_median(7.0 * values, 0.8).item() == pytest.approx(7.0 * soft_median(values, 0.8).item())


# ----------------------------------------------------------------- gradients
@pytest.mark.parametrize("temperature", [0.05, 0.5, 3.0])
@pytest.mark.parametrize("count", [1, 2, 5, 8])
def test_gradcheck_float64(temperature: float, count: int) -> None:
    values = torch.randn(count, generator=torch.Generator().manual_seed(count), dtype=torch.float64) * 2
    values.requires_grad_(True)

    assert torch.autograd.gradcheck(lambda x: soft_median(x, temperature), (values,))


def test_gradcheck_along_a_dim() -> None:
    values = torch.randn(3, 6, generator=torch.Generator().manual_seed(4), dtype=torch.float64, requires_grad=True)

    assert torch.autograd.gradcheck(lambda x: soft_median(x, 0.7, dim=1), (values,))
    assert torch.autograd.gradcheck(lambda x: soft_median(x, 0.7, dim=0, keepdim=True), (values,))


def test_default_temperature_gradient_is_the_weights() -> None:
    """The default temperature is a constant of the step: the gradient equals the softmax weights of the ranks."""
    values = torch.tensor([3.0, -1.0, 2.0, 8.0, 0.5], dtype=torch.float64, requires_grad=True)
    temperature = max(0.1, 0.5 * values.detach().std().item())

    soft_median(values).backward()

    ranks = torch.arange(5, dtype=torch.float64)
    weights = torch.softmax(-(ranks - 2).abs() / temperature, dim=0)
    order = values.detach().argsort()
    torch.testing.assert_close(values.grad[order], weights)


# ----------------------------------------------------------------- shapes and dtypes
def test_dim_reduces_each_slice_like_the_flat_version() -> None:
    values = torch.randn(4, 5, 6, generator=torch.Generator().manual_seed(5))

    for dim in (0, 1, 2, -1):
        result = soft_median(values, dim=dim)
        expected_shape = list(values.shape)
        del expected_shape[dim]
        assert list(result.shape) == expected_shape
        assert soft_median(values, dim=dim, keepdim=True).shape == values.sum(dim=dim, keepdim=True).shape
        moved = values.movedim(dim, -1).reshape(-1, values.shape[dim])
        flat = torch.stack([soft_median(row) for row in moved])  # per-slice default temperature
        torch.testing.assert_close(result.reshape(-1), flat)
    assert soft_median(values).shape == ()


def test_single_values() -> None:
    assert soft_median(torch.tensor([4.5])) == 4.5
    assert soft_median(torch.tensor(4.5)) == 4.5
    assert soft_median(torch.tensor(4.5), dim=0).shape == ()
    assert soft_median(torch.tensor([[1.0, 2.0]]), dim=0).tolist() == [1.0, 2.0]


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64, torch.bfloat16, torch.float16])
def test_dtypes(dtype: torch.dtype) -> None:
    values = torch.tensor([0.5, 3.0, 1.0, 2.0, 1.5, 40.0, 1.25, 0.75])
    values_of_dtype = values.to(dtype).requires_grad_(True)

    result = soft_median(values_of_dtype, temperature=0.5)
    result.backward()

    assert result.dtype == dtype and values_of_dtype.grad.dtype == dtype
    reference = soft_median(values.to(dtype).double(), temperature=0.5)
    tolerance = {torch.float32: 1e-6, torch.float64: 1e-12}.get(dtype, 1e-2)
    assert result.double().item() == pytest.approx(reference.item(), rel=tolerance)
    assert exact_median(values) < result.double().item() < values.double().mean().item()


def test_bfloat16_inputs_keep_exact_ranks_beyond_256_elements() -> None:
    """bfloat16 cannot count past 256 (ranks 499, 500 and 501 all round to 500): ranks are counted in float32."""
    values = torch.cat([torch.zeros(500), torch.tensor([1.0]), torch.full((500,), 5.0)])
    values = values[torch.randperm(1001, generator=torch.Generator().manual_seed(6))].to(torch.bfloat16)

    assert soft_median(values, temperature=SMALL).item() == 1.0  # not (0 + 1 + 5) / 3


# ----------------------------------------------------------------- errors
@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"losses": torch.tensor([])}, "Invalid losses: no elements"),
        ({"losses": torch.zeros(3, 0), "dim": 1}, "Invalid losses: no elements along dim 1"),
        ({"losses": torch.tensor([1, 2, 3])}, "Invalid losses: a tensor of dtype torch.int64"),
        ({"losses": [1.0, 2.0]}, "Invalid losses: list"),
        ({"temperature": -1.0}, r"Invalid temperature: -1.0 \(expected > 0.0\)"),
        ({"temperature": 0.0}, "Invalid temperature: 0.0"),
        ({"temperature": float("nan")}, "Invalid temperature: nan"),
        ({"temperature": float("inf")}, "Invalid temperature: inf"),
        ({"temperature": True}, "Invalid temperature: True"),
        ({"temperature": "0.5"}, "Invalid temperature: '0.5'"),
        ({"temperature": torch.tensor([0.5, 1.0])}, "Invalid temperature: "),
        ({"keepdim": True}, "Invalid keepdim: True"),
        ({"dim": 0, "keepdim": 1}, "Invalid keepdim: 1"),
    ],
)
def test_invalid_arguments_raise_value_error_naming_the_argument(kwargs: dict[str, Any], match: str) -> None:
    kwargs.setdefault("losses", torch.tensor([1.0, 2.0]))
    with pytest.raises(ValueError, match=match):
        soft_median(**kwargs)


def test_dim_out_of_range_raises_index_error_as_in_torch() -> None:
    with pytest.raises(IndexError):
        soft_median(torch.ones(3), dim=1)
