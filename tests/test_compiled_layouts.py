"""The compiled path when the set of parameters with gradients changes from step to step.

Each set gets its own compiled graph (no recompiles, so dynamo's recompile limit, a hard error under
``fullgraph=True``, is never reached); past ``max_compiled_layouts`` sets, further ones run eagerly.
"""

from __future__ import annotations

import warnings

import pytest
import torch
from torch._dynamo.utils import counters

from lightning_opt import AdaLo


def test_changing_sets_of_gradients_compile_once_each_then_fall_back_to_eager() -> None:
    compiled_params = [torch.zeros(3, requires_grad=True) for _ in range(5)]
    eager_params = [p.detach().clone().requires_grad_() for p in compiled_params]
    compiled, eager = AdaLo(compiled_params, compile=True), AdaLo(eager_params)
    compiled.max_compiled_layouts = 2
    graphs_before = counters["stats"]["unique_graphs"]
    fallback_warnings = []
    for step in range(8):
        with_grad = step % 4 + 2  # 2, 3, 4, 5, 2, 3, 4, 5 tensors with a gradient: four different sets
        for i, (c, e) in enumerate(zip(compiled_params, eager_params)):
            grad = torch.full((3,), float(i + step + 1)) if i < with_grad else None
            c.grad, e.grad = grad, None if grad is None else grad.clone()
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            compiled.step(loss=0.5 + step)
        fallback_warnings += [step for w in caught if "further sets run eagerly" in str(w.message)]
        eager.step(loss=0.5 + step)
        for c, e in zip(compiled_params, eager_params):
            torch.testing.assert_close(c, e, rtol=1e-6, atol=1e-7)
    assert fallback_warnings == [2]  # the third set is the first beyond the cap; warned once only
    assert counters["stats"]["unique_graphs"] - graphs_before == 2  # the first two sets, compiled once each
    assert len(compiled._compiled_runners[(0, torch.device("cpu"), torch.float32)]) == 2


class UncompilableStep(AdaLo):
    """An AdaLo whose update asks for a host value, a graph break that ``fullgraph=True`` refuses."""

    @staticmethod
    def update(param, grad, buffers, hp, flags):
        if float(grad.abs().sum()) >= 0.0:  # always true, but dynamo cannot compile it into one graph
            AdaLo.update(param, grad, buffers, hp, flags)


def test_a_phase_that_fails_to_compile_runs_eagerly_with_the_same_numbers():
    values = [torch.randn(4, 3), torch.randn(5)]
    compiled_params = [torch.nn.Parameter(v.clone()) for v in values]
    eager_params = [torch.nn.Parameter(v.clone()) for v in values]
    compiled = UncompilableStep(compiled_params, compile=True)
    eager = AdaLo(eager_params)
    for step in range(3):
        for params in (compiled_params, eager_params):
            for p, v in zip(params, values):
                p.grad = v * (step + 1)
        if step == 0:
            with pytest.warns(UserWarning, match="torch.compile failed for phase 'update'"):
                compiled.step(loss=1.0)
        else:
            compiled.step(loss=1.0)  # no second warning, no second attempt
        eager.step(loss=1.0)
        for c, e in zip(compiled_params, eager_params):
            torch.testing.assert_close(c, e, rtol=0, atol=0)
