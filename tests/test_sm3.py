"""SM3 against pytorch_optimizer's SM3 (an independent implementation of the same rule), and what is specific to
ours: the four-dimensional layout, the memory of the accumulators, optional momentum, the 0-d deviation."""

from __future__ import annotations

import pytest
import torch

from lightning_opt import SM3
from lightning_opt.optim.sm3 import sm3_view

pytorch_optimizer = pytest.importorskip("pytorch_optimizer")

F64 = torch.float64
SHAPES = [(), (7,), (5, 3), (4, 3, 2, 2), (6, 1), (0,), (3, 2, 4)]
CASES = [
    {},  # pytorch_optimizer's defaults: lr 0.1, no momentum, beta 0 (SM3-II)
    {"lr": 0.05, "momentum": 0.9},
    {"lr": 0.02, "beta": 0.9, "eps": 1e-8},
    {"lr": 0.03, "momentum": 0.5, "beta": 0.99},
]


def _run_pair(case: dict, shapes: list, dtype: torch.dtype, steps: int, compile: bool = False):
    generator = torch.Generator().manual_seed(0)
    ours = [torch.randn(shape, generator=generator, dtype=dtype).requires_grad_() for shape in shapes]
    theirs = [p.detach().clone().requires_grad_() for p in ours]
    initial = [p.detach().clone() for p in ours]
    optimizer = SM3(ours, compile=compile, **case)
    public = pytorch_optimizer.SM3(theirs, foreach=False, **case)
    for _ in range(steps):
        for mine, other in zip(ours, theirs):
            grad = torch.randn(mine.shape, generator=generator, dtype=dtype)
            mine.grad, other.grad = grad.clone(), grad.clone()
        optimizer.step()
        public.step()
    return ours, theirs, initial, optimizer, public


# 0-d parameters with beta > 0 follow our documented rule (max), not pytorch_optimizer's copy: left out there.
RUNS = [(case, False) for case in CASES] + [(CASES[3], True)]


@pytest.mark.parametrize(("case", "compile"), RUNS, ids=[f"case{i}" for i in range(len(CASES))] + ["case3-compiled"])
def test_sm3_matches_pytorch_optimizer(case: dict, compile: bool) -> None:
    shapes = [s for s in SHAPES if s != () or case.get("beta", 0.0) == 0.0]
    dtype = torch.float32 if compile else F64
    ours, theirs, initial, optimizer, public = _run_pair(case, shapes, dtype, 20, compile)
    tolerance = {"rtol": 1e-5, "atol": 1e-6} if compile else {"rtol": 1e-12, "atol": 1e-13}
    for mine, other, start in zip(ours, theirs, initial):
        torch.testing.assert_close(mine, other, **tolerance)
        assert mine.numel() == 0 or not torch.equal(mine, start), "the parameters did not move"
        if mine.numel() == 0 or mine.dim() == 0:
            continue
        # the accumulators of the dimensions the parameter has are pytorch_optimizer's, in our layout
        padding = 4 - mine.dim()
        for i in range(mine.dim()):
            theirs_acc = public.state[other][f"accumulator_{i}"]
            torch.testing.assert_close(
                optimizer.state[mine][f"accumulator_{i + padding}"], theirs_acc.reshape(1, *theirs_acc.shape)
                .reshape([1] * padding + list(theirs_acc.shape)), **tolerance
            )


def test_the_padded_accumulators_hold_the_max_over_the_tensor_and_never_win_the_min() -> None:
    ours, theirs, _, optimizer, _ = _run_pair({}, [(5, 3)], F64, 3)
    state = optimizer.state[ours[0]]
    assert state["accumulator_0"].shape == state["accumulator_1"].shape == (1, 1, 1, 1)
    assert state["accumulator_0"] == state["accumulator_2"].max() == state["accumulator_3"].max()
    torch.testing.assert_close(ours[0], theirs[0], rtol=1e-12, atol=1e-13)


def test_state_is_one_number_per_slice_of_each_dimension() -> None:
    """The memory claim: a (768, 3072) weight keeps 768 + 3072 + 2 numbers without momentum; with momentum,
    one buffer of its shape more; a bias keeps one accumulator per entry, a 0-d parameter one number."""
    weight, bias, scalar = (torch.nn.Parameter(torch.zeros(shape)) for shape in ((768, 3072), (768,), ()))
    for momentum, extra in ((0.0, 0), (0.9, 1)):
        optimizer = SM3([weight, bias, scalar], momentum=momentum)
        for p in (weight, bias, scalar):
            p.grad = torch.ones_like(p)
        optimizer.step()
        counts = [sum(t.numel() for k, t in optimizer.state[p].items() if k != "step") for p in (weight, bias, scalar)]
        assert counts == [768 + 3072 + 2 + extra * weight.numel(), 768 + 3 + extra * 768, 4 + extra]
        assert ("momentum_buffer" in optimizer.state[weight]) == (momentum > 0)
    assert (768 + 3072 + 2) * 4 / weight.numel() < 0.0066  # bytes per parameter, float32


def test_view_pads_to_four_dimensions_and_merges_leading_ones_beyond() -> None:
    assert sm3_view(torch.Size([])) == (1, 1, 1, 1)
    assert sm3_view(torch.Size([7])) == (1, 1, 1, 7)
    assert sm3_view(torch.Size([2, 3, 4, 5, 6, 7])) == (24, 5, 6, 7)


def test_five_dimensional_parameters_use_a_finer_cover_of_merged_leading_dimensions() -> None:
    """(2, 3, 4, 5, 6) is seen as (6, 4, 5, 6): pytorch_optimizer's SM3 on the reshaped tensor is the oracle."""
    generator = torch.Generator().manual_seed(1)
    mine = torch.randn(2, 3, 4, 5, 6, generator=generator, dtype=F64, requires_grad=True)
    other = mine.detach().clone().reshape(6, 4, 5, 6).requires_grad_()
    optimizer, public = SM3([mine], momentum=0.5), pytorch_optimizer.SM3([other], momentum=0.5, foreach=False)
    for _ in range(5):
        grad = torch.randn(mine.shape, generator=generator, dtype=F64)
        mine.grad, other.grad = grad.clone(), grad.reshape(6, 4, 5, 6).clone()
        optimizer.step()
        public.step()
    torch.testing.assert_close(mine.detach().reshape(6, 4, 5, 6), other.detach(), rtol=1e-12, atol=1e-13)
    assert optimizer.state[mine]["accumulator_0"].shape == (6, 1, 1, 1)


def test_zero_dimensional_parameters_with_beta_keep_the_max_as_every_other_parameter() -> None:
    """Documented deviation: pytorch_optimizer copies nu into a 0-d accumulator when beta > 0; we keep
    max(accumulator, nu), as it does for every other tensor. Same numbers while nu does not decrease."""
    ours, theirs = torch.tensor(1.0, dtype=F64, requires_grad=True), torch.tensor(1.0, dtype=F64, requires_grad=True)
    optimizer = SM3([ours], beta=0.5)
    public = pytorch_optimizer.SM3([theirs], beta=0.5, foreach=False)
    for grad in (2.0, 0.0):
        ours.grad, theirs.grad = torch.tensor(grad, dtype=F64), torch.tensor(grad, dtype=F64)
        optimizer.step()
        public.step()
    assert float(optimizer.state[ours]["accumulator_3"].squeeze()) == 2.0  # max(2.0, 0.5 * 2.0)
    assert float(public.state[theirs]["accumulator_0"]) == 1.0  # 0.5 * 2.0


def test_a_group_momentum_needs_momentum_buffers() -> None:
    first, second = torch.nn.Parameter(torch.ones(3)), torch.nn.Parameter(torch.ones(3))
    with pytest.raises(ValueError, match=r"^Invalid momentum: 0\.9 \(this SM3 was built with momentum=0\.0 "
                                         r"and keeps no momentum buffer.*"
                                         r"\[parameter group 1\]$"):
        SM3([{"params": [first]}, {"params": [second], "momentum": 0.9}])
    optimizer = SM3([first])
    with pytest.raises(ValueError, match=r"^Invalid momentum: 0\.5 .*\[parameter group 1\]$"):
        optimizer.add_param_group({"params": [second], "momentum": 0.5})
    assert len(optimizer.param_groups) == 1
    first.grad = torch.ones(3)
    optimizer.param_groups[0]["momentum"] = 0.9  # a scheduler, say
    with pytest.raises(ValueError, match=r"^Invalid momentum: 0\.9 .*\[parameter group 0\]$"):
        optimizer.step()
    assert torch.equal(first, torch.ones(3))
    # with momentum buffers, a group may turn momentum off (its buffers are then left alone)
    optimizer = SM3([{"params": [first]}, {"params": [second], "momentum": 0.0}], momentum=0.9)
    first.grad, second.grad = torch.ones(3), torch.ones(3)
    optimizer.step()
    assert torch.equal(optimizer.state[second]["momentum_buffer"], torch.zeros(3))
    assert not torch.equal(optimizer.state[first]["momentum_buffer"], torch.zeros(3))


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"lr": 1e5, "beta": 0.9999999}, r"^Invalid lr: 100000\.0 \(the largest step size lr / sqrt\(1 - beta\) with "
         r"beta=1 = 3\.16\d*e\+08 must be below 2\*\*24 = 16777216\)$"),
        ({"beta": 1.0}, r"^Invalid beta: 1\.0 \(expected < 1\.0\)$"),
        ({"eps": 0.0}, r"^Invalid eps: 0\.0 \(expected > 0\.0\)$"),
        ({"momentum": "0.9"}, r"^Invalid momentum: '0\.9' \(expected a real number\)$"),
    ],
)
def test_invalid_arguments_name_the_argument_and_the_bound(kwargs: dict, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        SM3([torch.nn.Parameter(torch.ones(2))], **kwargs)


def test_sm3_refuses_sharded_statistics_flag() -> None:
    assert SM3.whole_tensor_statistics is True
