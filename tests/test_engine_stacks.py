"""The engine's stacks: small tensors of one shape stepped together, large ones in place, with state that
stays per-parameter from the outside (``optimizer.state[p]``, checkpoints) and is shared storage inside."""

from __future__ import annotations

import io
import pickle

import pytest
import torch

from lightning_opt import NSGDA, AdaLo, AdamAtan2
from lightning_opt.engine.stacks import CHUNK, STACK_NUMEL, plan_stacks

SMALL, LARGE = (4, 3), (STACK_NUMEL // 64 + 1, 64)  # 12 elements; just over STACK_NUMEL


def _params(shapes: list[tuple[int, ...]], seed: int = 0) -> list[torch.nn.Parameter]:
    generator = torch.Generator().manual_seed(seed)
    return [torch.nn.Parameter(torch.randn(shape, generator=generator)) for shape in shapes]


def _set_grads(params: list[torch.Tensor], step: int) -> None:
    generator = torch.Generator().manual_seed(1000 + step)
    for p in params:
        p.grad = torch.randn(p.shape, generator=generator)


def test_plan_stacks_small_tensors_by_shape_and_runs_large_and_odd_ones_alone() -> None:
    transposed = torch.nn.Parameter(torch.randn(5, 3).t())
    params = _params([SMALL, SMALL, (), (), (7,), LARGE, LARGE, (0, 4)]) + [transposed]
    optimizer = AdamAtan2(params)
    for p in params:
        optimizer.init_state(p, optimizer.state[p])
    plan = plan_stacks(params, optimizer.state.__getitem__, optimizer.buffer_names)
    (chunks,) = plan.chunks.values()
    summary = [[(tuple(s.shape), len(s.params), s.copied, s.stacked_shape, s.unit_start) for s in c] for c in chunks]
    assert summary == [  # chunks of stacks of one kind
        [((4, 3), 2, True, (2, 4, 3), 2)],
        [((), 2, True, (2, 1, 1), 1)],
        [((7,), 1, False, (1, 1, 7), 1)],
        [(LARGE, 1, False, (1, *LARGE), 2), (LARGE, 1, False, (1, *LARGE), 2)],
        [((3, 5), 1, True, (1, 3, 5), 2)],  # not contiguous: through a contiguous copy
    ]
    assert plan.empty == [params[7]]


def test_chunks_hold_at_most_chunk_stacks_of_one_kind() -> None:
    params = _params([(64 + i, 300) for i in range(CHUNK + 3)] + [(5,)])  # large, distinct shapes: in place
    optimizer = AdaLo(params)
    for p in params:
        optimizer.init_state(p, optimizer.state[p])
    (chunks,) = plan_stacks(params, optimizer.state.__getitem__, optimizer.buffer_names).chunks.values()
    assert [len(chunk) for chunk in chunks] == [CHUNK, 3, 1]
    assert all(len({stack.kind for stack in chunk}) == 1 for chunk in chunks)


@pytest.mark.parametrize("compile", [False, True], ids=["eager", "compiled"])
def test_state_of_a_stack_is_per_parameter_views_of_one_storage(compile: bool) -> None:
    params = _params([SMALL] * 3 + [LARGE])
    optimizer = AdamAtan2(params, compile=compile)
    _set_grads(params, 0)
    optimizer.step()
    small = [optimizer.state[p] for p in params[:3]]
    for name in ("exp_avg", "exp_avg_sq"):
        storages = {state[name].untyped_storage().data_ptr() for state in small}
        assert len(storages) == 1  # one stacked buffer
        assert small[0][name].untyped_storage().nbytes() == 3 * 12 * 4  # and nothing more
        assert all(state[name].shape == SMALL for state in small)
    large = optimizer.state[params[3]]
    assert large["exp_avg"].untyped_storage().nbytes() == params[3].numel() * 4  # its own buffer, in place
    assert [float(state["step"]) for state in small] == [1.0, 1.0, 1.0]


def _reference_run(cls: type, shapes: list[tuple[int, ...]], steps: int, **kwargs: object) -> list[torch.Tensor]:
    """The same steps with every parameter in an optimizer of its own: nothing is stacked."""
    params = _params(shapes)
    optimizers = [cls([p], **kwargs) for p in params]
    for step in range(steps):
        _set_grads(params, step)
        for optimizer in optimizers:
            optimizer.step(**({"loss": 0.5 + step} if cls is AdaLo else {}))
    return [p.detach().clone() for p in params]


@pytest.mark.parametrize("cls", [AdaLo, NSGDA, AdamAtan2])
@pytest.mark.parametrize("compile", [False, True], ids=["eager", "compiled"])
def test_a_stack_steps_each_tensor_as_if_it_were_alone(cls: type, compile: bool) -> None:
    """Reductions per tensor (NSGDA's norm, the cautious mask's rescale) and per unit (the gradient
    transforms) stay per tensor inside a stack."""
    shapes = [SMALL] * 4 + [(), (), (5,), (5,), (2, 3, 2, 2), (2, 3, 2, 2), LARGE]
    # agc_clipping above the weight decay: at 0.01 both, a clipped 0-d gradient cancels NSGDA's L2 term to
    # within rounding, and its normalised step m / (|m| + eps) is then rounding noise
    kwargs: dict[str, object] = {"grad_transforms": ("centralize", "adaptive_clip", "soft_clip"), "agc_clipping": 0.05}
    if cls is AdamAtan2:
        kwargs.update(cautious=True, nesterov=True)
    expected = _reference_run(cls, shapes, 3, **kwargs)
    params = _params(shapes)
    optimizer = cls(params, compile=compile, **kwargs)
    for step in range(3):
        _set_grads(params, step)
        optimizer.step(**({"loss": 0.5 + step} if cls is AdaLo else {}))
    for p, e in zip(params, expected):
        torch.testing.assert_close(p.detach(), e, rtol=2e-6, atol=2e-7)


@pytest.mark.parametrize("compile", [False, True], ids=["eager", "compiled"])
def test_each_tensor_of_a_chunk_gets_the_bias_corrections_of_its_own_step_count(compile: bool) -> None:
    """Stacks of one kind share a chunk and one vector of step counts; tensors that skipped steps (no
    gradient) have smaller counts, and each must read its own row of the chunk's bias corrections."""
    shapes = [SMALL, SMALL, (2, 5), (2, 5), (2, 5), (3, 7), (3, 7)]  # three copied stacks of one kind
    skips = {0: [1, 3], 1: [3], 2: [0, 4, 5]}  # step -> the parameters without a gradient

    def run(params: list[torch.nn.Parameter], optimizers: list[torch.optim.Optimizer]) -> list[torch.Tensor]:
        for step in range(4):
            _set_grads(params, step)
            for index in skips.get(step, []):
                params[index].grad = None
            for optimizer in optimizers:
                optimizer.step()
        return [p.detach().clone() for p in params]

    alone = _params(shapes)
    expected = run(alone, [AdamAtan2([p], weight_decay=0.0) for p in alone])
    stacked = _params(shapes)
    optimizer = AdamAtan2(stacked, weight_decay=0.0, compile=compile)
    got = run(stacked, [optimizer])
    (chunks,) = list(optimizer._plans.values())[-1].chunks.values()  # the last step's: every parameter
    assert [len(chunk) for chunk in chunks] == [3]  # the three stacks in one chunk
    assert [float(optimizer.state[p]["step"]) for p in stacked] == [3.0, 3.0, 4.0, 2.0, 3.0, 3.0, 4.0]
    for p, e in zip(got, expected):
        torch.testing.assert_close(p, e, rtol=2e-6, atol=2e-7)


def test_a_state_tensor_replaced_from_outside_is_used_by_the_next_step() -> None:
    params = _params([SMALL] * 3)
    optimizer = AdaLo(params, weight_decay=0.0)
    _set_grads(params, 0)
    optimizer.step(loss=1.0)
    replacement = torch.full(SMALL, 2.0)
    optimizer.state[params[1]]["exp_avg"] = replacement
    optimizer.state[params[1]]["step"] = torch.tensor(10.0)
    for p in params:
        p.grad = torch.zeros_like(p)
    optimizer.step(loss=1.0)
    beta1 = optimizer.param_groups[0]["betas"][0]
    torch.testing.assert_close(optimizer.state[params[1]]["exp_avg"], beta1 * replacement)
    assert [float(optimizer.state[p]["step"]) for p in params] == [2.0, 11.0, 2.0]


def test_tensors_without_elements_count_steps_and_change_nothing() -> None:
    params = _params([(0,), (0, 3), SMALL])
    optimizer = AdamAtan2(params, compile=True)
    for step in range(2):
        _set_grads(params, step)
        optimizer.step()
    assert [float(optimizer.state[p]["step"]) for p in params] == [2.0, 2.0, 2.0]
    assert optimizer.state[params[1]]["exp_avg"].shape == (0, 3)


@pytest.mark.parametrize("how", ["state_dict", "pickle"])
def test_a_resume_from_a_checkpoint_of_stacked_state_is_bit_identical(how: str) -> None:
    shapes = [SMALL] * 5 + [(), (), LARGE]
    straight_params = _params(shapes)
    straight = AdamAtan2(straight_params, cautious=True)
    resumed_params = _params(shapes)
    first = AdamAtan2(resumed_params, cautious=True)
    for step in range(2):
        for params, optimizer in ((straight_params, straight), (resumed_params, first)):
            _set_grads(params, step)
            optimizer.step()
    if how == "state_dict":
        buffer = io.BytesIO()
        torch.save(first.state_dict(), buffer)
        buffer.seek(0)
        second = AdamAtan2(resumed_params, cautious=True)
        second.load_state_dict(torch.load(buffer, weights_only=True))
    else:
        second = pickle.loads(pickle.dumps(first))
        resumed_params = [group_param for group in second.param_groups for group_param in group["params"]]
    for step in range(2, 4):
        for params, optimizer in ((straight_params, straight), (resumed_params, second)):
            _set_grads(params, step)
            optimizer.step()
    for a, b in zip(straight_params, resumed_params):
        assert torch.equal(a, b)
    for a, b in zip(straight_params, resumed_params):
        for key, value in straight.state[a].items():
            assert torch.equal(second.state[b][key], value), key
