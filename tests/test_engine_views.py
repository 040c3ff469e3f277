"""The engine's views and shaped state buffers: an optimizer that sees each parameter in its own layout (the
last two dimensions as a matrix) and keeps state that is not of the parameter's shape (a factored second
moment, one number per tensor), stepped eagerly and compiled, stacked and in place, against a float64
re-derivation written per tensor without the engine."""

from __future__ import annotations

import io
import math
from typing import Any

import pytest
import torch

from lightning_opt.engine import BaseOptimizer, Flags, Hyperparameters
from lightning_opt.engine.stacks import STACK_NUMEL, plan_stacks, units_view, view_unit_start
from lightning_opt.transforms.gradient import apply_gradient_transforms
from lightning_opt.transforms.reductions import PER_TENSOR, sum_from


def matrices_view(shape: torch.Size) -> tuple[int, ...]:
    """``(batch, rows, cols)``: the last two dimensions as a matrix (a 1-D or 0-d parameter: one row)."""
    rows, cols = (shape[-2], shape[-1]) if len(shape) >= 2 else (1, max(shape.numel(), 1))
    return shape.numel() // (rows * cols), rows, cols


class FactoredRMS(BaseOptimizer):
    """A test optimizer: momentum over ``g / sqrt(v)`` with ``v`` factored over the view's last two dimensions
    (rows and columns of squared-gradient EMAs), plus one number per tensor (the sum of its gradients)."""

    buffer_names = ("row", "col", "total", "momentum")
    stack_view = staticmethod(matrices_view)

    def __init__(self, params: Any, lr: float = 1e-2, beta: float = 0.9, **options: Any) -> None:
        super().__init__(params, {"lr": lr, "beta": beta}, **options)

    def buffer_shapes(self, shape: torch.Size) -> dict[str, tuple[int, ...]]:
        batch, rows, cols = matrices_view(shape)
        return {"row": (batch, rows, 1), "col": (batch, 1, cols), "total": (1, 1, 1), "momentum": shape}

    def group_hyperparameters(self, group: dict[str, Any]) -> tuple[dict[str, float], dict[str, Any]]:
        return {"neg_lr": -group["lr"], "beta": group["beta"]}, {}

    def tensor_hyperparameters(self, group: dict[str, Any], steps: torch.Tensor) -> dict[str, torch.Tensor]:
        return {"bias_correction": 1.0 - group["beta"] ** steps}

    @staticmethod
    def update(
        param: torch.Tensor, grad: torch.Tensor, buffers: dict[str, torch.Tensor], hp: Hyperparameters, flags: Flags
    ) -> None:
        square = grad * grad + 1e-30
        row, col = buffers["row"], buffers["col"]
        row.lerp_(square.mean(dim=-1, keepdim=True), 1.0 - hp["beta"])
        col.lerp_(square.mean(dim=-2, keepdim=True), 1.0 - hp["beta"])
        v = row * col / row.mean(dim=-2, keepdim=True) / hp["bias_correction"]
        buffers["momentum"].mul_(hp["beta"]).add_(grad / v.sqrt())
        buffers["total"].add_(sum_from(grad, PER_TENSOR))
        param.add_(buffers["momentum"] * hp["neg_lr"])


def reference_step(param: torch.Tensor, grad: torch.Tensor, state: dict[str, torch.Tensor], step: int,
                   lr: float = 1e-2, beta: float = 0.9) -> None:
    """One step of :class:`FactoredRMS` on one tensor in float64, written without the engine's stacks."""
    batch, rows, cols = matrices_view(param.shape)
    g = grad.double().reshape(batch, rows, cols)
    square = g * g + 1e-30
    state["row"] = beta * state["row"] + (1 - beta) * square.mean(dim=2, keepdim=True)
    state["col"] = beta * state["col"] + (1 - beta) * square.mean(dim=1, keepdim=True)
    v = state["row"] * state["col"] / state["row"].mean(dim=1, keepdim=True) / (1 - beta**step)
    state["momentum"] = beta * state["momentum"] + (g / v.sqrt()).reshape(param.shape)
    state["total"] = state["total"] + g.sum()
    param -= lr * state["momentum"]


SHAPES = [(6, 5), (6, 5), (6, 5), (), (7,), (4, 2, 3, 3), (4, 2, 3, 3), (STACK_NUMEL // 32 + 1, 32), (3, 1)]


def _params(shapes: list[tuple[int, ...]]) -> list[torch.nn.Parameter]:
    generator = torch.Generator().manual_seed(0)
    return [torch.nn.Parameter(torch.randn(shape, generator=generator)) for shape in shapes]


def _grads(params: list[torch.Tensor], step: int) -> list[torch.Tensor]:
    generator = torch.Generator().manual_seed(100 + step)
    return [torch.randn(p.shape, generator=generator) for p in params]


def _fresh_reference_state(shape: tuple[int, ...]) -> dict[str, torch.Tensor]:
    batch, rows, cols = matrices_view(torch.Size(shape))
    return {
        "row": torch.zeros(batch, rows, 1, dtype=torch.float64),
        "col": torch.zeros(batch, 1, cols, dtype=torch.float64),
        "total": torch.zeros(1, 1, 1, dtype=torch.float64),
        "momentum": torch.zeros(shape, dtype=torch.float64),
    }


def test_view_unit_start_finds_rows_in_any_view_or_says_none() -> None:
    assert view_unit_start(torch.Size([6, 5]), units_view(torch.Size([6, 5]))) == 2
    assert view_unit_start(torch.Size([6, 5]), matrices_view(torch.Size([6, 5]))) == 3  # (1, 6, 5)
    assert view_unit_start(torch.Size([4, 2, 3, 3]), matrices_view(torch.Size([4, 2, 3, 3]))) is None  # (8, 3, 3)
    assert view_unit_start(torch.Size([1, 2, 3, 3]), (2, 3, 3)) == 1  # one unit: the whole tensor
    assert view_unit_start(torch.Size([7]), (1, 1, 7)) == 1


def test_plan_keeps_the_view_and_the_shapes_of_buffers_not_shaped_like_the_parameter() -> None:
    params = _params(SHAPES)
    optimizer = FactoredRMS(params)
    for p in params:
        optimizer.init_state(p, optimizer.state[p])
    assert optimizer.state[params[0]]["row"].shape == (1, 6, 1)
    assert optimizer.state[params[0]]["momentum"].shape == (6, 5)
    (chunks,) = plan_stacks(params, optimizer.state.__getitem__, optimizer.buffer_names, matrices_view).chunks.values()
    stacks = {tuple(stack.shape): stack for chunk in chunks for stack in chunk}
    assert stacks[(6, 5)].stacked_shape == (3, 1, 6, 5) and stacks[(6, 5)].copied
    assert stacks[(6, 5)].buffer_shapes == {"row": (1, 6, 1), "col": (1, 1, 5), "total": (1, 1, 1)}
    assert stacks[(4, 2, 3, 3)].unit_start is None
    assert len({stack.kind for chunk in chunks for stack in chunk}) == len(chunks)  # a chunk is one kind
    # a buffer of size 1 (here a 1-column factor) is a different kind: dynamo specialises sizes of 1
    assert stacks[(3, 1)].kind != stacks[(6, 5)].kind


@pytest.mark.parametrize("compile", [False, True], ids=["eager", "compiled"])
def test_shaped_buffers_and_views_match_a_float64_reference_per_tensor(compile: bool) -> None:
    params = _params(SHAPES)
    expected = [p.detach().double().clone() for p in params]
    reference_states = [_fresh_reference_state(p.shape) for p in params]
    optimizer = FactoredRMS(params, compile=compile)
    for step in range(1, 5):
        for p, g in zip(params, _grads(params, step)):
            p.grad = g
        optimizer.step()
        for p, ref, state, g in zip(params, expected, reference_states, _grads(params, step)):
            reference_step(ref, g, state, step)
    for p, ref, state in zip(params, expected, reference_states):
        torch.testing.assert_close(p.detach().double(), ref, rtol=1e-5, atol=1e-5)
        for name in ("row", "col", "total", "momentum"):
            got = optimizer.state[p][name]
            assert got.shape == state[name].shape, name
            torch.testing.assert_close(got.double(), state[name], rtol=1e-4, atol=1e-5)


def test_grad_transforms_apply_in_units_even_when_the_view_splits_them() -> None:
    """A (4, 2, 3, 3) weight seen as (8, 3, 3) matrices: each output unit spans two of them, so the engine
    transforms the gradient in the default view first; the result is that of transforming p.grad itself."""
    params = _params([(4, 2, 3, 3), (6, 5), (7,)])
    twins = [torch.nn.Parameter(p.detach().clone()) for p in params]
    transforms = ("centralize", "soft_clip")
    optimizer = FactoredRMS(params, grad_transforms=transforms)
    plain = FactoredRMS(twins)
    for step in range(1, 4):
        for p, twin, g in zip(params, twins, _grads(params, step)):
            p.grad = g
            twin.grad = apply_gradient_transforms(g, twin.detach(), transforms, {})
        optimizer.step()
        plain.step()
    for p, twin in zip(params, twins):
        torch.testing.assert_close(p, twin, rtol=1e-6, atol=1e-6)


def test_shaped_state_resumes_bit_identically_from_a_weights_only_checkpoint() -> None:
    params, twins = _params(SHAPES), _params(SHAPES)
    optimizer, resumed = FactoredRMS(params), FactoredRMS(twins)
    for p, twin, g in zip(params, twins, _grads(params, 1)):
        p.grad, twin.grad = g, g.clone()
    optimizer.step()
    resumed.step()
    buffer = io.BytesIO()
    torch.save(optimizer.state_dict(), buffer)
    buffer.seek(0)
    resumed.load_state_dict(torch.load(buffer, weights_only=True))
    for step in range(2, 4):
        for p, twin, g in zip(params, twins, _grads(params, step)):
            p.grad, twin.grad = g, g.clone()
        optimizer.step()
        resumed.step()
    for p, twin in zip(params, twins):
        assert torch.equal(p, twin)
        assert all(torch.equal(optimizer.state[p][n], resumed.state[twin][n]) for n in optimizer.buffer_names)


def test_a_view_that_loses_elements_is_refused_naming_it() -> None:
    class Broken(FactoredRMS):
        stack_view = staticmethod(lambda shape: (math.prod(shape) + 1,))

    optimizer = Broken(_params([(3, 2)]))
    optimizer.param_groups[0]["params"][0].grad = torch.ones(3, 2)
    with pytest.raises(ValueError, match=r"Invalid view: \(7,\) does not hold the 6 elements"):
        optimizer.step()


@pytest.mark.own_process  # a process group of its own, not left behind in the pytest process
def test_optimizers_with_whole_tensor_statistics_refuse_sharded_dtensors(tmp_path: Any) -> None:
    """FSDP2 shards parameters as DTensors: a factored moment or a norm over the local shard would be wrong,
    so such an optimizer refuses them at construction, naming the parameter and its placements; replicated
    DTensors and elementwise optimizers are accepted."""
    import torch.distributed as dist
    from torch.distributed.device_mesh import init_device_mesh
    from torch.distributed.tensor import Replicate, Shard, distribute_tensor

    from lightning_opt import AdamAtan2

    class WholeTensor(FactoredRMS):
        whole_tensor_statistics = True

    dist.init_process_group("gloo", init_method=f"file://{tmp_path / 'store'}", rank=0, world_size=1)
    try:
        mesh = init_device_mesh("cpu", (1,))
        sharded = torch.nn.Parameter(distribute_tensor(torch.randn(4, 3), mesh, [Shard(0)]))
        replicated = torch.nn.Parameter(distribute_tensor(torch.randn(4, 3), mesh, [Replicate()]))
        with pytest.raises(ValueError, match=r"Invalid params: WholeTensor .* shape \(4, 3\) is a DTensor sharded as"):
            WholeTensor([sharded])
        optimizer = WholeTensor([torch.nn.Parameter(torch.randn(2))])
        with pytest.raises(ValueError, match="DTensor sharded"):
            optimizer.add_param_group({"params": [sharded]})
        assert len(optimizer.param_groups) == 1  # left as it was
        WholeTensor([replicated])
        AdamAtan2([sharded])  # elementwise: accepted
    finally:
        dist.destroy_process_group()


class ThreePhases(BaseOptimizer):
    """A test optimizer in three phases: the last reads the gradient and what the first returned."""

    phases = ("total", "square", "move")

    def __init__(self, params: Any, lr: float = 1e-2, **options: Any) -> None:
        super().__init__(params, {"lr": lr}, **options)

    def group_hyperparameters(self, group: dict[str, Any]) -> tuple[dict[str, float], dict[str, Any]]:
        return {"lr": group["lr"]}, {}

    @staticmethod
    def total(param: torch.Tensor, grad: torch.Tensor, buffers: Any, hp: Hyperparameters, flags: Flags) -> Any:
        return {"g_sum": sum_from(grad, PER_TENSOR)}

    @staticmethod
    def square(param: torch.Tensor, grad: torch.Tensor, buffers: Any, hp: Hyperparameters, flags: Flags) -> Any:
        return {"g_square": sum_from(grad * grad, PER_TENSOR)}

    @staticmethod
    def move(param: torch.Tensor, grad: torch.Tensor, buffers: Any, hp: Hyperparameters, flags: Flags) -> None:
        count = grad[0].numel()
        param.sub_((grad - hp["g_sum"] / count) / (hp["g_square"] / count + 1e-3).sqrt() * hp["lr"])


@pytest.mark.parametrize("compile", [False, True], ids=["eager", "compiled"])
def test_later_phases_read_the_transformed_gradient_and_every_earlier_result(compile: bool) -> None:
    """Gradient transforms run once, in the first phase; every later phase reads their result as ``grad``, and
    each phase reads what all earlier phases returned (here the last one reads the first one's sum)."""
    shapes = [(6, 5), (6, 5), (7,), (STACK_NUMEL // 32 + 1, 32)]
    params = _params(shapes)
    expected = [p.detach().double().clone() for p in params]
    transforms = ("soft_clip", "centralize")
    optimizer = ThreePhases(params, compile=compile, grad_transforms=transforms)
    for step in range(1, 3):
        for p, g in zip(params, _grads(params, step)):
            p.grad = g
        optimizer.step()
        for ref, g in zip(expected, _grads(params, step)):
            t = apply_gradient_transforms(g.double(), ref, transforms, {})
            ref -= (t - t.mean()) / ((t * t).mean() + 1e-3).sqrt() * 1e-2
    for p, ref in zip(params, expected):
        torch.testing.assert_close(p.detach().double(), ref, rtol=1e-5, atol=1e-6)
