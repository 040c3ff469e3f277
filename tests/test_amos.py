"""Amos against pytorch_optimizer's Amos (an independent implementation of the same rule), and what is specific to
ours: per-tensor state of shape (1, 1), the target scale eta per shape, optional momentum, the extra_l2 sign."""

from __future__ import annotations

import math

import pytest
import torch

from lightning_opt import Amos
from lightning_opt.optim.amos import target_scale

pytorch_optimizer = pytest.importorskip("pytorch_optimizer")

F64 = torch.float64
SHAPES = [(), (7,), (5, 3), (4, 3, 2, 2), (6, 1), (0,), (3, 2, 4), (40, 30)]
CASES = [
    {},  # pytorch_optimizer's defaults: lr 1e-3, beta 0.999, no momentum, c_coef = d_coef = 0.25
    {"lr": 0.05, "beta": 0.99, "momentum": 0.9},
    {"lr": 0.3, "beta": 0.9},  # the decay b grows fast: the c and d factors matter
    {"lr": 0.1, "beta": 0.95, "momentum": 0.5, "c_coef": 0.5, "d_coef": 0.1},
]


def _public(case: dict, params: list) -> torch.optim.Optimizer:
    public = pytorch_optimizer.Amos(params, foreach=False, **{k: v for k, v in case.items() if not k.endswith("coef")})
    public.c_coef, public.d_coef = case.get("c_coef", 0.25), case.get("d_coef", 0.25)  # not group values there
    return public


RUNS = [(case, False) for case in CASES] + [(CASES[3], True)]


@pytest.mark.parametrize(("case", "compile"), RUNS, ids=[f"case{i}" for i in range(len(CASES))] + ["case3-compiled"])
def test_amos_matches_pytorch_optimizer(case: dict, compile: bool) -> None:
    dtype = torch.float32 if compile else F64
    generator = torch.Generator().manual_seed(0)
    ours = [torch.randn(shape, generator=generator, dtype=dtype).requires_grad_() for shape in SHAPES]
    theirs = [p.detach().clone().requires_grad_() for p in ours]
    initial = [p.detach().clone() for p in ours]
    optimizer, public = Amos(ours, compile=compile, **case), _public(case, theirs)
    for _ in range(20):
        for mine, other in zip(ours, theirs):
            grad = torch.randn(mine.shape, generator=generator, dtype=dtype)
            mine.grad, other.grad = grad.clone(), grad.clone()
        optimizer.step()
        public.step()
    for mine, other, start in zip(ours, theirs, initial):
        if mine.numel() == 0:
            continue
        motion = float((other.detach() - start).abs().max())
        assert motion > 0, "the parameters did not move"
        # float32: each step rounds the parameter (|p| ~ 1) to ~6e-8, whatever the size of the step
        tolerance = 1e-6 * (1 + 20 * 6e-8 / motion) if compile else 1e-11
        torch.testing.assert_close(mine, other, rtol=0, atol=tolerance * motion)
        state, public_state = optimizer.state[mine], public.state[other]
        for name in ("exp_avg_sq", "decay"):
            torch.testing.assert_close(state[name].reshape(()), public_state[name], rtol=1e-5 if compile else 1e-11,
                                       atol=0)
        assert float(state["target_scale"]) == pytest.approx(public.get_scale(other), rel=1e-7)


def test_state_is_three_numbers_per_tensor_and_momentum_only_when_asked() -> None:
    params = [torch.nn.Parameter(torch.zeros(shape)) for shape in ((768, 3072), (768,), ())]
    for momentum in (0.0, 0.9):
        optimizer = Amos(params, momentum=momentum)
        for p in params:
            p.grad = torch.ones_like(p)
        optimizer.step()
        for p in params:
            state = optimizer.state[p]
            assert {name: tuple(state[name].shape) for name in ("exp_avg_sq", "decay", "target_scale")} == {
                "exp_avg_sq": (1, 1), "decay": (1, 1), "target_scale": (1, 1)
            }
            assert ("exp_avg" in state) == (momentum > 0.0)
            if momentum:
                assert state["exp_avg"].shape == p.shape


def test_target_scale_follows_the_shape() -> None:
    assert target_scale(torch.Size([])) == target_scale(torch.Size([9])) == 0.5
    assert target_scale(torch.Size([10, 50])) == pytest.approx(math.sqrt(2 / 50))
    assert target_scale(torch.Size([8, 16, 3, 3])) == pytest.approx(0.25)
    assert target_scale(torch.Size([3, 0])) == pytest.approx(math.sqrt(2))  # no elements: never used


def test_extra_l2_decays_towards_zero_as_in_the_authors_code() -> None:
    """Documented deviation: u = d (... + (gamma / 2 + extra_l2) p), as jestimator writes it; pytorch_optimizer
    uses (gamma - extra_l2) / 2, which grows the weights. With a zero gradient only the decay acts."""
    ours = torch.nn.Parameter(torch.full((4, 4), 2.0, dtype=F64))
    theirs = torch.nn.Parameter(ours.detach().clone())
    optimizer, public = Amos([ours], extra_l2=0.1), pytorch_optimizer.Amos([theirs], extra_l2=0.1, foreach=False)
    ours.grad, theirs.grad = torch.zeros_like(ours), torch.zeros_like(theirs)
    optimizer.step()
    public.step()
    torch.testing.assert_close(ours.detach(), torch.full((4, 4), 2.0 * (1 - 0.1), dtype=F64))
    torch.testing.assert_close(theirs.detach(), torch.full((4, 4), 2.0 * (1 + 0.05), dtype=F64))


def test_a_group_momentum_needs_momentum_buffers() -> None:
    first, second = torch.nn.Parameter(torch.ones(3)), torch.nn.Parameter(torch.ones(3))
    with pytest.raises(ValueError, match=r"^Invalid momentum: 0\.9 \(this Amos was built with momentum=0\.0 "
                                         r"and keeps no momentum buffer.*"
                                         r"\[parameter group 1\]$"):
        Amos([{"params": [first]}, {"params": [second], "momentum": 0.9}])
    optimizer = Amos([{"params": [first]}, {"params": [second], "momentum": 0.0}], momentum=0.9)
    first.grad, second.grad = torch.ones(3), torch.ones(3)
    optimizer.step()
    assert torch.equal(optimizer.state[second]["exp_avg"], torch.zeros(3))
    assert not torch.equal(optimizer.state[first]["exp_avg"], torch.zeros(3))


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"lr": 2e7}, r"^Invalid lr: 20000000\.0 \(the largest step size lr \* sqrt\(2\) \(the largest target scale\) "
         r"= 2\.828e\+07 must be below 2\*\*24 = 16777216\)$"),
        ({"beta": 1.0}, r"^Invalid beta: 1\.0 \(expected < 1\.0\)$"),
        ({"eps": 0.0}, r"^Invalid eps: 0\.0 \(expected > 0\.0\)$"),
        ({"extra_l2": -1.0}, r"^Invalid extra_l2: -1\.0 \(expected >= 0\.0\)$"),
        ({"c_coef": float("nan")}, r"^Invalid c_coef: nan \(expected a finite number\)$"),
        ({"d_coef": 1e39}, r"^Invalid d_coef: 1e\+39 \(expected <= 3\.4028234663852886e\+38\)$"),
        ({"momentum": True}, r"^Invalid momentum: True \(expected a real number\)$"),
    ],
)
def test_invalid_arguments_name_the_argument_and_the_bound(kwargs: dict, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        Amos([torch.nn.Parameter(torch.ones(2))], **kwargs)


def test_amos_refuses_sharded_statistics_flag() -> None:
    assert Amos.whole_tensor_statistics is True
