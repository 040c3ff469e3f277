"""The compiled path: which stacks compile, and how compiled graphs are kept and shared.

Graphs have dynamic sizes and are keyed by the kind of stack (which sizes are 1, copied or in place, the
flags), so neither the number of tensors nor the set of parameters with gradients changes the graphs: a set
that changes from step to step compiles nothing again. Optimizers whose stacks are of the same kind share
the compiled graphs.
"""

from __future__ import annotations

import gc
import os
import warnings

import pytest
import torch
from torch._dynamo.utils import counters

from lightning_opt import NSGDA, AdaLo, AdamAtan2
from lightning_opt.engine import compiled as compiled_module
from lightning_opt.engine.compiled import clear_shared_runners


def test_changing_sets_of_gradients_compile_nothing_again() -> None:
    compiled_params = [torch.zeros(3, requires_grad=True) for _ in range(5)]
    eager_params = [p.detach().clone().requires_grad_() for p in compiled_params]
    compiled, eager = AdaLo(compiled_params, compile=True), AdaLo(eager_params)
    clear_shared_runners()  # so that this test compiles its own graphs, whatever ran before it
    graphs_before = counters["stats"]["unique_graphs"]
    for step in range(8):
        with_grad = step % 4 + 2  # 2, 3, 4, 5, 2, 3, 4, 5 tensors with a gradient: four different sets
        for i, (c, e) in enumerate(zip(compiled_params, eager_params)):
            grad = torch.full((3,), float(i + step + 1)) if i < with_grad else None
            c.grad, e.grad = grad, None if grad is None else grad.clone()
        with torch._dynamo.config.patch(error_on_recompile=step > 0):
            compiled.step(loss=0.5 + step)
        eager.step(loss=0.5 + step)
        for c, e in zip(compiled_params, eager_params):
            torch.testing.assert_close(c, e, rtol=1e-6, atol=1e-7)
    assert counters["stats"]["unique_graphs"] - graphs_before == 1  # one stack of 2 to 5 tensors: one graph
    steps = [int(compiled.state[p]["step"]) for p in compiled_params]
    assert steps == [8, 8, 6, 4, 2]  # each tensor counts the steps it took


def test_more_tensors_of_a_kind_compile_nothing_again() -> None:
    """The compile cost does not grow with the number of tensors: small matrices run as one stack whatever
    their number; large ones run in place in chunks of at most CHUNK (8), so once a chunk of 8 has compiled,
    more of them compile nothing."""
    clear_shared_runners()
    graphs = []
    for small, large in ((5, 2), (500, 40), (1000, 16)):
        params = [torch.nn.Parameter(torch.randn(16, 16)) for _ in range(small)]
        params += [torch.nn.Parameter(torch.randn(130, 128 + i)) for i in range(large)]  # > STACK_NUMEL each
        optimizer = AdamAtan2(params, compile=True, cautious=True)
        for p in params:
            p.grad = torch.randn_like(p)
        before = counters["stats"]["unique_graphs"]
        optimizer.step()
        graphs.append(counters["stats"]["unique_graphs"] - before)
    # a copied stack of small matrices and a chunk of 2 large matrices; then a chunk of 8; then nothing
    assert graphs == [2, 1, 0]


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


# ----------------------------------------------------------------------- layouts that must compile
def _transposed(generator: torch.Generator) -> torch.Tensor:
    return torch.randn(5, 3, generator=generator).t()


def _channels_last(generator: torch.Generator) -> torch.Tensor:
    return torch.randn(4, 3, 2, 5, generator=generator).contiguous(memory_format=torch.channels_last)


def _four_d(generator: torch.Generator) -> torch.Tensor:
    return torch.randn(4, 3, 2, 5, generator=generator)


def _matrix(generator: torch.Generator) -> torch.Tensor:
    return torch.randn(8, 32, generator=generator)  # rows of 32: vectorised rows failed, (4, 3) did not


LAYOUTS = {"transposed": _transposed, "channels_last": _channels_last, "4d": _four_d, "matrix": _matrix}
LAYOUT_CASES = [
    pytest.param(AdamAtan2, {}, "transposed", id="AdamAtan2-transposed"),
    pytest.param(AdamAtan2, {}, "channels_last", id="AdamAtan2-channels_last"),
    pytest.param(AdaLo, {"grad_transforms": ["centralize"]}, "4d", id="AdaLo-centralize-4d"),
    pytest.param(AdamAtan2, {"grad_transforms": ["centralize"]}, "4d", id="AdamAtan2-centralize-4d"),
    pytest.param(AdaLo, {"grad_transforms": ["centralize"]}, "matrix", id="AdaLo-centralize-matrix"),
]


@pytest.mark.parametrize(("cls", "kwargs", "layout"), LAYOUT_CASES)
def test_layout_compiles_and_matches_eager(cls: type, kwargs: dict, layout: str) -> None:
    """Each of these fell back to eager with "torch.compile failed" (a non-contiguous ``out=`` tensor in
    atan2; inductor's ``KeyError: 'buf6'`` for centralize on 4-D weights and on matrices); the warning is an
    error here."""
    generator = torch.Generator().manual_seed(0)
    make = LAYOUTS[layout]
    values = [make(generator), torch.randn(4, generator=generator)]
    compiled_params = [torch.nn.Parameter(v.clone(memory_format=torch.preserve_format)) for v in values]
    eager_params = [torch.nn.Parameter(v.clone(memory_format=torch.preserve_format)) for v in values]
    assert compiled_params[0].stride() == values[0].stride()
    compiled, eager = cls(compiled_params, compile=True, **kwargs), cls(eager_params, **kwargs)
    loss = {"loss": 0.5} if cls is AdaLo else {}
    clear_shared_runners()  # so that this test compiles its own graph, whatever ran before it
    graphs_before = counters["stats"]["unique_graphs"]
    with warnings.catch_warnings():
        warnings.filterwarnings("error", message=".*torch.compile failed")
        for step in range(3):
            grads = [make(generator), torch.randn(4, generator=generator)]
            for params in (compiled_params, eager_params):
                for p, g in zip(params, grads):
                    p.grad = g.clone(memory_format=torch.preserve_format)
            compiled.step(**loss)
            eager.step(**loss)
            for c, e in zip(compiled_params, eager_params):
                torch.testing.assert_close(c, e, rtol=1e-6, atol=1e-6)
    # compiled once per kind of stack (the weight, the bias), never fell back or recompiled
    assert counters["stats"]["unique_graphs"] - graphs_before == 2
    assert compiled_params[0].stride() == values[0].stride()


# ----------------------------------------------------------------------- compiled code is shared
def _resident_mib() -> float:
    with open("/proc/self/statm") as statm:
        return int(statm.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20


def test_optimizers_of_one_layout_share_one_compiled_graph_and_do_not_leak() -> None:
    """A sweep that rebuilds a compiled optimizer over the same model compiles once. Before the runners
    were shared, every optimizer compiled its own graph and kept about 0.8 MiB after it was deleted."""
    model = torch.nn.Sequential(torch.nn.Linear(6, 5), torch.nn.Tanh(), torch.nn.Linear(5, 2))
    inputs = torch.randn(8, 6)
    clear_shared_runners()
    graphs_before = counters["stats"]["unique_graphs"]
    resident = None
    for i in range(200):
        optimizer = NSGDA(model.parameters(), lr=1e-3, compile=True)
        model.zero_grad()
        model(inputs).square().mean().backward()
        optimizer.step()
        del optimizer
        # NSGDA compiles its first phase only (the second is one of its eager_phases), and the model has two
        # kinds of stacks (weights, biases): two graphs, compiled by the first optimizer only
        assert counters["stats"]["unique_graphs"] - graphs_before == 2, f"optimizer {i} compiled again"
        if i == 9:
            gc.collect()
            resident = _resident_mib()
    gc.collect()
    assert all(torch.isfinite(p).all() for p in model.parameters())
    assert _resident_mib() - resident < 25.0  # 190 more optimizers; 150 MiB when each compiled its own


def test_the_shared_cache_is_bounded(monkeypatch: pytest.MonkeyPatch) -> None:
    clear_shared_runners()
    monkeypatch.setattr(compiled_module, "MAX_SHARED_RUNNERS", 3)
    runners = [compiled_module.shared_runner(("layout", i)) for i in range(5)]
    assert len(set(map(id, runners))) == 5
    assert list(compiled_module._shared_runners) == [("layout", 2), ("layout", 3), ("layout", 4)]
    assert compiled_module.shared_runner(("layout", 4)) is runners[4]  # a kept layout is reused
    clear_shared_runners()


def test_a_layout_that_failed_to_compile_is_not_compiled_again_by_the_next_optimizer() -> None:
    clear_shared_runners()
    for _ in range(2):
        params = [torch.nn.Parameter(torch.ones(4, 3))]
        optimizer = UncompilableStep(params, compile=True)
        params[0].grad = torch.ones(4, 3)
        frames_before = torch._dynamo.convert_frame.FRAME_COUNTER  # frames dynamo tried to compile
        with pytest.warns(UserWarning, match="torch.compile failed for phase 'update'"):
            optimizer.step(loss=1.0)
        attempts = torch._dynamo.convert_frame.FRAME_COUNTER - frames_before
        eager_params = [torch.nn.Parameter(torch.ones(4, 3))]
        eager_params[0].grad = torch.ones(4, 3)
        AdaLo(eager_params).step(loss=1.0)
        torch.testing.assert_close(params[0], eager_params[0], rtol=0, atol=0)
    assert attempts == 0  # the second optimizer ran eagerly at once, with the same warning


@pytest.mark.parametrize("regularizer", [None, "norm_loss"])
def test_an_eager_phase_runs_eagerly_under_compile_unless_it_applies_a_regulariser(regularizer: str | None) -> None:
    """NSGDA's second pass (one addcmul_ per stack) is one of its ``eager_phases``: under ``compile=True`` only
    the first pass compiles, with the numbers of the all-compiled path. A regulariser, which the last phase
    applies, compiles it again."""
    shapes = [(130, 130), (130, 131), (4, 3), (4, 3), (5,)]
    group: dict[str, object] = {"regularizer": regularizer} if regularizer else {}
    runs = {}
    for eager_phases in (NSGDA.eager_phases, frozenset()):
        kind = type("NSGDAUnderTest", (NSGDA,), {"eager_phases": eager_phases})
        generator = torch.Generator().manual_seed(0)
        params = [torch.nn.Parameter(torch.randn(shape, generator=generator)) for shape in shapes]
        optimizer = kind([{"params": params, **group}], compile=True)
        clear_shared_runners()
        for _ in range(3):
            for p in params:
                p.grad = torch.randn(p.shape, generator=generator)
            optimizer.step()
        phases = {key[0].__name__ for key in compiled_module._shared_runners}
        runs[eager_phases] = phases, [p.detach().clone() for p in params]
    (eager_phases, (phases, got)), (_, (all_phases, expected)) = runs.items()
    assert eager_phases == frozenset({"update_param"})
    assert all_phases == {"update_momentum", "update_param"}
    assert phases == ({"update_momentum"} if regularizer is None else all_phases)
    for g, e in zip(got, expected):
        torch.testing.assert_close(g, e, rtol=1e-6, atol=1e-6)
