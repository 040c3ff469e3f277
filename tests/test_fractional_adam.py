"""FractionalAdam and the Grunwald-Letnikov pieces (lightning_opt.transforms.fractional) against a float64
re-derivation written here from the definition: coefficients from the Gamma function, the past gradients in a
list (newest first) rather than the package's ring buffer, Adam in its textbook form; torch.optim.Adam as the
oracle for alpha = 0 and for the first step."""

from __future__ import annotations

import math
import re

import pytest
import torch
from torch._inductor.utils import run_and_get_code

from lightning_opt import FractionalAdam, get_spec
from lightning_opt.engine.stacks import STACK_NUMEL
from lightning_opt.transforms.fractional import (
    grunwald_letnikov,
    grunwald_letnikov_coefficients,
    grunwald_letnikov_ring_,
    ring_weights,
)

F64 = torch.float64
SHAPES = [(), (7,), (5, 3), (5, 3), (2, 3, 4), (STACK_NUMEL + 3,)]


def gamma_coefficient(alpha: float, j: int) -> float:
    """(-1)^j binom(alpha, j) = (-1)^j Gamma(alpha + 1) / (Gamma(j + 1) Gamma(alpha - j + 1)) for non-integer alpha."""
    return (-1) ** j * math.gamma(alpha + 1) / (math.gamma(j + 1) * math.gamma(alpha - j + 1))


class FractionalAdamFromTheDefinition:
    """Per tensor: f_t = sum_{j=0}^{min(K, t-1)} c_j g_{t-j}; m, v Adam's EMAs of f; p -= lr (m/bc1) / (sqrt(v/bc2) +
    eps) (AdamW decay p -= lr wd p first)."""

    def __init__(self, values, lr, betas, eps, weight_decay, alpha, history):
        self.params = [v.clone() for v in values]
        self.lr, self.betas, self.eps, self.wd, self.alpha, self.history = lr, betas, eps, weight_decay, alpha, history
        self.past = [[] for _ in values]  # newest first
        self.m = [torch.zeros_like(v) for v in values]
        self.v = [torch.zeros_like(v) for v in values]
        self.t = [0 for _ in values]

    def step(self, grads):
        b1, b2 = self.betas
        for i, g in enumerate(grads):
            if g is None:
                continue
            self.t[i] += 1
            t = self.t[i]
            f = g.clone()
            for j, old in enumerate(self.past[i], start=1):
                f = f + gamma_coefficient(self.alpha, j) * old
            self.past[i] = [g.clone(), *self.past[i]][: self.history]
            self.m[i] = b1 * self.m[i] + (1 - b1) * f
            self.v[i] = b2 * self.v[i] + (1 - b2) * f * f
            update = (self.m[i] / (1 - b1**t)) / (torch.sqrt(self.v[i] / (1 - b2**t)) + self.eps)
            self.params[i] = self.params[i] * (1 - self.lr * self.wd) - self.lr * update


def run(kwargs, steps=12, skip=None, compile=False, shapes=SHAPES, transpose=False):
    generator = torch.Generator().manual_seed(3)
    values = [torch.randn(shape, generator=generator, dtype=F64) for shape in shapes]
    params = [torch.nn.Parameter(v.clone()) for v in values]
    if transpose:  # a non-contiguous parameter: the transpose of a contiguous one
        params[2] = torch.nn.Parameter(values[2].clone().t().contiguous().t())
    optimizer = FractionalAdam(params, compile=compile, **kwargs)
    full = {"lr": 1e-3, "betas": (0.9, 0.999), "eps": 1e-8, "weight_decay": 0.0, "alpha": 0.2, "history": 4}
    full.update(kwargs)
    reference = FractionalAdamFromTheDefinition(values, **full)
    worst = 0.0
    for step in range(steps):
        grads = [torch.randn(shape, generator=generator, dtype=F64) for shape in shapes]
        if skip is not None and step % 3 == 1:
            grads[skip] = None  # one tensor of a stack falls behind: the tensors of one stack differ in step
        for p, g in zip(params, grads):
            p.grad = None if g is None else g.clone()
        optimizer.step()
        reference.step(grads)
        for p, expected in zip(params, reference.params):
            torch.testing.assert_close(p.detach(), expected, rtol=1e-10, atol=1e-12)
            worst = max(worst, float((p.detach() - expected).abs().max()) if p.numel() else 0.0)
    return optimizer, params, worst


@pytest.mark.parametrize(
    "kwargs",
    [
        {"alpha": 0.3, "history": 4, "lr": 1e-2},
        {"alpha": -0.7, "history": 2, "lr": 1e-2, "weight_decay": 0.1},
        {"alpha": 0.9, "history": 7, "lr": 1e-2, "betas": (0.5, 0.9)},
        {"alpha": 0.45, "history": 1},
    ],
    ids=lambda k: f"alpha{k['alpha']}-K{k['history']}",
)
def test_matches_the_definition_over_shapes_and_steps(kwargs):
    run(kwargs)


def test_tensors_of_one_stack_at_different_steps_and_non_contiguous():
    """Two (5, 3) tensors stacked together, one skipping every third step: each uses its own ring position."""
    run({"alpha": 0.6, "history": 3, "lr": 1e-2}, steps=14, skip=3, transpose=True)


def test_compiled_matches_the_definition():
    """Compiled, with the two (5, 3) tensors of one stack at different steps (each writes its own ring slot)."""
    run({"alpha": -0.4, "history": 3, "lr": 1e-2}, steps=8, compile=True, shapes=[(5, 3), (5, 3), (7,)], skip=0)


def test_compiled_step_writes_the_ring_slot_in_place_without_a_copy_of_the_history():
    """Compiled, writing this step's gradient into its slot by ``index_put_`` made inductor copy the whole
    history (K times the parameter) into a temporary and back at every step: K * 4 bytes per parameter of
    extra peak memory, and 4 K accesses more (read and write in, read and write back). The graph must allocate
    nothing of the history's size."""
    shapes = [(130, 131), (STACK_NUMEL + 3,)]
    params = [torch.nn.Parameter(torch.randn(shape)) for shape in shapes]
    optimizer = FractionalAdam(params, history=4, compile=True)
    for p in params:
        p.grad = torch.randn(p.shape)
    codes = run_and_get_code(optimizer.step)[1]
    assert codes, "nothing was compiled"
    allocated = [shape for code in codes for shape in re.findall(r"empty_strided_cpu\((\([^)]*\))", code)]
    assert all(set(shape) <= set("(1, )") for shape in allocated), allocated  # single numbers only
    for p in params:
        history = optimizer.state[p]["grad_history"]
        assert torch.equal(history[0].reshape(p.shape), p.grad) and not history[1:].any()  # step 1: slot 0


def test_alpha_zero_is_torch_adam_and_the_first_step_is_adams():
    """alpha = 0: c_j = 0 for j >= 1, torch.optim.AdamW exactly (up to rounding); any alpha: step 1 is Adam's."""
    generator = torch.Generator().manual_seed(0)
    for alpha, steps in ((0.0, 10), (0.7, 1)):
        values = [torch.randn(4, 3, generator=generator, dtype=F64), torch.randn(6, generator=generator, dtype=F64)]
        ours = [torch.nn.Parameter(v.clone()) for v in values]
        theirs = [torch.nn.Parameter(v.clone()) for v in values]
        a = FractionalAdam(ours, lr=1e-2, alpha=alpha, weight_decay=0.1)
        b = torch.optim.AdamW(theirs, lr=1e-2, weight_decay=0.1)
        for _ in range(steps):
            for p, q in zip(ours, theirs):
                p.grad = torch.randn(p.shape, generator=generator, dtype=F64)
                q.grad = p.grad.clone()
            a.step()
            b.step()
        for p, q in zip(ours, theirs):
            torch.testing.assert_close(p, q, rtol=1e-12, atol=1e-14)


def test_the_first_steps_use_the_gradients_there_are():
    """Step 2 with K = 3: f = g_2 - alpha g_1 (not divided by a partial sum of coefficients, nor waiting for K)."""
    p = torch.nn.Parameter(torch.zeros(3, dtype=F64))
    optimizer = FractionalAdam([p], alpha=0.5, history=3, betas=(0.0, 0.5), lr=1.0, eps=1e-30)
    g1, g2 = torch.tensor([1.0, 2.0, -1.0], dtype=F64), torch.tensor([3.0, 1.5, -0.25], dtype=F64)
    p.grad = g1
    optimizer.step()
    p.grad = g2
    before = p.detach().clone()
    optimizer.step()
    f = g2 - 0.5 * g1  # beta1 = 0: the step is f / sqrt(v_hat), v from g_1 (step 1's f) and f
    v_hat = (0.25 * g1 * g1 + 0.5 * f * f) / 0.75
    torch.testing.assert_close(before - p.detach(), f / v_hat.sqrt(), rtol=1e-12, atol=0)


def test_coefficients_are_the_generalised_binomials():
    for alpha in (-0.9, -0.3, 0.25, 0.5, 0.99):
        ours = grunwald_letnikov_coefficients(alpha, 10)
        assert ours[0] == 1.0
        for j in range(1, 11):
            assert math.isclose(ours[j], gamma_coefficient(alpha, j), rel_tol=1e-12)
        # |c_j| decreases for |alpha| < 1; the partial sums are binom(K - alpha, K)
        assert all(abs(a) > abs(b) for a, b in zip(ours, ours[1:]))
        for k in range(11):
            expected = math.gamma(k - alpha + 1) / (math.gamma(k + 1) * math.gamma(1 - alpha))
            assert math.isclose(sum(ours[: k + 1]), expected, rel_tol=1e-12)
    assert grunwald_letnikov_coefficients(0.0, 3) == [1.0, 0.0, 0.0, 0.0]


def test_ring_buffer_equals_the_newest_first_sum_at_every_step():
    """The ring buffer with ring_weights gives the plain newest-first sum, for tensors at different steps."""
    generator = torch.Generator().manual_seed(5)
    k, history, alpha = 3, 4, 0.35
    ring = torch.zeros(k, history, 2, 5, dtype=F64)
    steps = torch.tensor([0.0, 2.0, 5.0], dtype=F64)  # each tensor's count before this step
    past = [[torch.randn(2, 5, generator=generator, dtype=F64) for _ in range(int(s))] for s in steps]
    for i, grads in enumerate(past):  # fill each ring as the optimizer would have
        for t, g in enumerate(grads, start=1):
            ring[i, (t - 1) % history] = g
    for _ in range(6):
        steps = steps + 1
        grad = torch.randn(k, 2, 5, generator=generator, dtype=F64)
        weights, slot = ring_weights(alpha, history, steps)
        out = grunwald_letnikov_ring_(ring, grad, [w.view(k, 1, 1) for w in weights], slot.view(k, 1, 1))
        for i in range(k):
            newest_first = torch.zeros(0, 2, 5, dtype=F64)
            if past[i]:
                newest_first = torch.stack(list(reversed(past[i]))[:history])
            expected = grunwald_letnikov(grad[i], newest_first, alpha)
            torch.testing.assert_close(out[i], expected, rtol=1e-12, atol=1e-14)
            past[i].append(grad[i].clone())


def test_history_is_per_group_and_cannot_change_after_the_first_step():
    a, b = torch.nn.Parameter(torch.randn(3, 2)), torch.nn.Parameter(torch.randn(4))
    optimizer = FractionalAdam([{"params": [a], "history": 2}, {"params": [b]}], history=5)
    a.grad, b.grad = torch.randn_like(a), torch.randn_like(b)
    optimizer.step()
    assert optimizer.state[a]["grad_history"].shape == (2, 3, 2)
    assert optimizer.state[b]["grad_history"].shape == (5, 1, 4)
    optimizer.param_groups[0]["history"] = 3
    with pytest.raises(ValueError, match="Invalid history: 3"):
        optimizer.step()


def test_state_read_before_the_first_step_does_not_break_it():
    # Reading optimizer.state[p] before any step leaves an empty entry (state is a defaultdict); the history
    # check once took that entry for a kept buffer and raised KeyError: 'grad_history'.
    a = torch.nn.Parameter(torch.randn(3, 2))
    optimizer = FractionalAdam([a], history=3)
    assert dict(optimizer.state[a]) == {}
    a.grad = torch.randn_like(a)
    optimizer.step()
    assert optimizer.state[a]["grad_history"].shape == (3, 3, 2)


@pytest.mark.parametrize(
    ("kwargs", "name"),
    [
        ({"alpha": 1.0}, "alpha"),
        ({"alpha": -1.0}, "alpha"),
        ({"alpha": "0.5"}, "alpha"),
        ({"history": 0}, "history"),
        ({"history": 65}, "history"),
        ({"history": 3.0}, "history"),
    ],
)
def test_invalid_alpha_and_history(kwargs, name):
    with pytest.raises(ValueError, match=f"Invalid {name}"):
        FractionalAdam([torch.nn.Parameter(torch.zeros(2))], **kwargs)


def test_state_memory_is_history_plus_two_tensors_and_documented():
    spec = get_spec("FractionalAdam")
    p = torch.nn.Parameter(torch.randn(8, 16))
    optimizer = FractionalAdam([p], history=4)
    p.grad = torch.randn_like(p)
    optimizer.step()
    state_bytes = sum(v.numel() * v.element_size() for k, v in optimizer.state[p].items() if k != "step")
    assert state_bytes == (4 + 2) * 4 * p.numel() == spec.state_buffers * 4 * p.numel()
    doc = " ".join(FractionalAdam.__doc__.split())
    assert "``(history + 2) * 4`` bytes per float32 parameter" in doc and "``history * 4`` for the gradients" in doc


def test_name_does_not_collide_with_torch_optim():
    assert not hasattr(torch.optim, "FractionalAdam")
