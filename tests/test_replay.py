"""Compiled steps after the first skip dynamo's guards (:mod:`lightning_opt.engine.replay`), and go through them
again whenever an input changed in a way those guards would see: the numbers always match the eager path."""

from __future__ import annotations

import pytest
import torch

from lightning_opt import NSGDA, AdaLo
from lightning_opt.engine import replay as replay_module
from lightning_opt.engine.base import BaseOptimizer

SHAPES = [(130, 130), (140, 130), (8, 4), (8, 4), (5,)]  # two run alone in place (> STACK_NUMEL), two stacked


def make_pair(cls: type, **kwargs) -> tuple[list[torch.Tensor], list[torch.Tensor], BaseOptimizer, BaseOptimizer]:
    torch.manual_seed(0)
    compiled_params = [torch.nn.Parameter(torch.randn(shape)) for shape in SHAPES]
    eager_params = [torch.nn.Parameter(p.detach().clone()) for p in compiled_params]
    return compiled_params, eager_params, cls(compiled_params, compile=True, **kwargs), cls(eager_params, **kwargs)


def step_both(compiled_params, eager_params, compiled, eager, grads, loss=1.0) -> None:
    for c, e, grad in zip(compiled_params, eager_params, grads):
        c.grad, e.grad = grad, grad.clone()
    compiled.step(loss=loss) if isinstance(compiled, AdaLo) else compiled.step()
    eager.step(loss=loss) if isinstance(eager, AdaLo) else eager.step()
    for c, e in zip(compiled_params, eager_params):
        torch.testing.assert_close(c, e, rtol=1e-5, atol=1e-6)


def counts(optimizer: BaseOptimizer) -> tuple[int, int]:
    """Guarded and replayed calls over every chunk and phase of ``optimizer``."""
    replays = [
        replay
        for plan in optimizer._plans.values()
        for chunks in plan.chunks.values()
        for chunk in chunks
        for replay in chunk.replays.values()
    ]
    return sum(r.guarded_calls for r in replays), sum(r.replayed_calls for r in replays)


def random_grads() -> list[torch.Tensor]:
    return [torch.randn(shape) for shape in SHAPES]


@pytest.mark.parametrize("cls", [AdaLo, NSGDA])
def test_steps_after_the_first_replay_the_compiled_code_with_the_eager_numbers(cls: type) -> None:
    compiled_params, eager_params, compiled, eager = make_pair(cls)
    step_both(compiled_params, eager_params, compiled, eager, random_grads())
    guarded, replayed = counts(compiled)
    assert guarded > 0 and replayed == 0
    for step in range(3):
        step_both(compiled_params, eager_params, compiled, eager, random_grads(), loss=0.5 - 0.1 * step)
    assert counts(compiled) == (guarded, 3 * guarded)


def test_a_gradient_of_another_layout_goes_through_the_guards() -> None:
    """A column-major gradient of a matrix run in place reaches the graph as a strided view: the code compiled for
    row-major gradients must not run on it (inductor's own stride assertion would stop the step)."""
    compiled_params, eager_params, compiled, eager = make_pair(AdaLo)
    step_both(compiled_params, eager_params, compiled, eager, random_grads())
    step_both(compiled_params, eager_params, compiled, eager, random_grads())
    guarded, _ = counts(compiled)
    column_major = [grad.t().contiguous().t() if grad.dim() == 2 else grad for grad in random_grads()]
    step_both(compiled_params, eager_params, compiled, eager, column_major, loss=0.7)
    assert counts(compiled)[0] > guarded
    step_both(compiled_params, eager_params, compiled, eager, random_grads(), loss=0.6)  # and back


def test_a_parameter_moved_to_other_memory_goes_through_the_guards() -> None:
    compiled_params, eager_params, compiled, eager = make_pair(NSGDA)
    step_both(compiled_params, eager_params, compiled, eager, random_grads())
    guarded, _ = counts(compiled)
    compiled_params[0].data = compiled_params[0].data.clone()  # same layout, new address
    step_both(compiled_params, eager_params, compiled, eager, random_grads())
    assert counts(compiled)[0] == guarded + 1  # the chunk of that parameter's first phase only
    step_both(compiled_params, eager_params, compiled, eager, random_grads())
    assert counts(compiled)[0] == guarded + 1


def test_a_change_of_global_state_goes_through_the_guards() -> None:
    compiled_params, eager_params, compiled, eager = make_pair(NSGDA)
    step_both(compiled_params, eager_params, compiled, eager, random_grads())
    guarded, _ = counts(compiled)
    before = torch.are_deterministic_algorithms_enabled()
    torch.use_deterministic_algorithms(not before)
    try:
        step_both(compiled_params, eager_params, compiled, eager, random_grads())
    finally:
        torch.use_deterministic_algorithms(before)
    assert counts(compiled)[0] == 2 * guarded


def test_replay_can_be_switched_off(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(replay_module, "ENABLED", False)
    compiled_params, eager_params, compiled, eager = make_pair(AdaLo)
    for _ in range(3):
        step_both(compiled_params, eager_params, compiled, eager, random_grads())
    guarded, replayed = counts(compiled)
    assert replayed == 0 and guarded > 0 and guarded % 3 == 0
