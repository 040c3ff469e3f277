"""AdaptiveMemorySGD and AdaptiveMemoryAdamW (arXiv:2510.04988) against a float64 re-derivation written here:
``beta_t`` found by *numerically* solving the proximal step on the two-plane model (golden-section search of its
concave dual, no closed form), then the paper's direction update, over several shapes and steps."""

from __future__ import annotations

import math

import pytest
import torch

from lightning_opt import AdaptiveMemoryAdamW, AdaptiveMemorySGD, get_spec
from lightning_opt.engine.stacks import STACK_NUMEL
from lightning_opt.transforms.momentum import adaptive_memory_coefficient, adaptive_memory_momentum_

F64 = torch.float64
SHAPES = [(), (7,), (5, 3), (5, 3), (2, 3, 4), (STACK_NUMEL + 3,)]


def dual(beta: float, g: torch.Tensor, d: torch.Tensor, lam: float, lr: float, w: torch.Tensor) -> float:
    """The value at ``beta`` of the dual of  min_u max(l_g(u), l_d(u)) + lr/2 |u|_P^2 + lam lr/2 |u - d|_P^2  over
    the step y = x - lr P^-1 u, with l_g = -lr <g, P^-1 u> (the gradient's plane) and l_d = lr <g, P^-1 d> -
    lr <d, P^-1 u> (the memory's plane through the previous iterate, its loss estimated from g), w = diag(P^-1):
    the weight beta on l_d, 1 - beta on l_g, and the inner minimum over u taken in closed form."""
    u = ((1 - beta) * g + (beta + lam) * d) / (1 + lam)
    plane_g = -lr * torch.sum(w * g * u)
    plane_d = lr * torch.sum(w * g * d) - lr * torch.sum(w * d * u)
    proximal = lr / 2 * torch.sum(w * u * u) + lam * lr / 2 * torch.sum(w * (u - d) ** 2)
    return float((1 - beta) * plane_g + beta * plane_d + proximal)


def numeric_beta(g, d, lam, beta_max, lr=0.1, w=None) -> float:
    """argmax of the concave dual over [0, beta_max], by golden-section search."""
    w = torch.ones_like(g) if w is None else w
    if float(torch.sum(w * (g - d) ** 2)) == 0.0:
        return 0.0
    low, high = 0.0, beta_max
    ratio = (math.sqrt(5) - 1) / 2
    for _ in range(200):
        a, b = high - ratio * (high - low), low + ratio * (high - low)
        if dual(a, g, d, lam, lr, w) > dual(b, g, d, lam, lr, w):
            high = b
        else:
            low = a
    return (low + high) / 2


@pytest.mark.parametrize("lam", [0.0, 0.1, 2.0])
@pytest.mark.parametrize("weighted", [False, True])
def test_closed_form_is_the_proximal_steps_optimum(lam, weighted):
    generator = torch.Generator().manual_seed(1)
    for trial in range(20):
        g = torch.randn(6, generator=generator, dtype=F64)
        d = torch.randn(6, generator=generator, dtype=F64) * (0.2 + trial / 10)
        if trial % 4 == 0:
            d = 0.7 * g + 0.1 * d  # nearly aligned: often clipped at beta_max
        w = torch.rand(6, generator=generator, dtype=F64) + 0.1 if weighted else None
        expected = numeric_beta(g, d, lam, 0.9, w=w)
        ours = float(adaptive_memory_coefficient(g, d, lam, 0.9, 0, w))
        assert math.isclose(ours, expected, abs_tol=1e-7), (trial, ours, expected)


def test_coefficient_edge_cases():
    g = torch.tensor([1.0, -2.0], dtype=F64)
    assert float(adaptive_memory_coefficient(g, g.clone(), 0.1, 0.9)) == 0.0  # d = g: any beta, 0 by convention
    assert float(adaptive_memory_coefficient(g, torch.zeros(2, dtype=F64), 0.1, 0.9)) == 0.9  # no memory: beta_max
    # memory against the gradient: ((1.1)(-|g|^2) - <-2g, 0.9 g>) / |2g|^2 = 0.7 / 4, a small coefficient
    assert math.isclose(float(adaptive_memory_coefficient(g, -g, 0.1, 0.9)), 0.175, rel_tol=1e-12)
    # per tensor of a stack: each its own coefficient
    stack_g = torch.randn(3, 2, 4, dtype=F64)
    stack_d = torch.randn(3, 2, 4, dtype=F64)
    per_tensor = adaptive_memory_coefficient(stack_g, stack_d, 0.1, 0.9, 1)
    assert per_tensor.shape == (3, 1, 1)
    for i in range(3):
        alone = adaptive_memory_coefficient(stack_g[i], stack_d[i], 0.1, 0.9)
        torch.testing.assert_close(per_tensor[i, 0, 0], alone[0, 0])


def test_direction_update_weights_sum_to_one():
    d, g = torch.tensor([2.0, -1.0], dtype=F64), torch.tensor([4.0, 3.0], dtype=F64)
    out = adaptive_memory_momentum_(d.clone(), g, 0.3, 0.5)
    torch.testing.assert_close(out, (0.8 * d + 0.7 * g) / 1.5)


class AdaptiveMemoryFromTheModel:
    """Per tensor: d_1 = g_1; then beta = numeric_beta(g, d) and d = ((beta + lam) d + (1 - beta) g) / (1 + lam).
    SGD: p -= lr wd p + lr d. AdamW: v Adam's, the metric w = 1 / (sqrt(v_hat) + eps), u = d / (sqrt(v_hat) + eps)."""

    def __init__(self, values, adaptive, lr, lam, beta_max, weight_decay, beta2=0.999, eps=1e-8):
        self.params = [v.clone() for v in values]
        self.adaptive, self.lr, self.lam, self.beta_max, self.wd = adaptive, lr, lam, beta_max, weight_decay
        self.beta2, self.eps = beta2, eps
        self.d = [None for _ in values]
        self.v = [torch.zeros_like(v) for v in values]
        self.t = [0 for _ in values]

    def step(self, grads):
        for i, g in enumerate(grads):
            if g is None:
                continue
            self.t[i] += 1
            w = torch.ones_like(g)
            if self.adaptive:
                self.v[i] = self.beta2 * self.v[i] + (1 - self.beta2) * g * g
                root = torch.sqrt(self.v[i] / (1 - self.beta2 ** self.t[i]))
                w = 1 / (root + self.eps)
            if self.d[i] is None:
                self.d[i] = g.clone()
            else:
                beta = numeric_beta(g.flatten(), self.d[i].flatten(), self.lam, self.beta_max, w=w.flatten())
                self.d[i] = ((beta + self.lam) * self.d[i] + (1 - beta) * g) / (1 + self.lam)
            u = self.d[i] * w if self.adaptive else self.d[i]
            self.params[i] = self.params[i] * (1 - self.lr * self.wd) - self.lr * u


@pytest.mark.parametrize(
    ("cls", "kwargs"),
    [
        (AdaptiveMemorySGD, {"lr": 0.05}),
        (AdaptiveMemorySGD, {"lr": 0.05, "lam": 0.0, "beta_max": 0.99, "weight_decay": 0.1}),
        (AdaptiveMemorySGD, {"lr": 0.05, "lam": 1.5, "beta_max": 0.5}),
        (AdaptiveMemoryAdamW, {"lr": 1e-2}),
        (AdaptiveMemoryAdamW, {"lr": 1e-2, "lam": 0.5, "beta2": 0.9, "weight_decay": 0.0}),
    ],
    ids=lambda v: v.__name__ if isinstance(v, type) else "-".join(f"{k}{x}" for k, x in v.items()),
)
def test_matches_the_model_solved_numerically_over_shapes_and_steps(cls, kwargs):
    generator = torch.Generator().manual_seed(7)
    values = [torch.randn(shape, generator=generator, dtype=F64) for shape in SHAPES]
    params = [torch.nn.Parameter(v.clone()) for v in values]
    optimizer = cls(params, **kwargs)
    defaults = {k: v for k, v in optimizer.defaults.items() if k in ("lr", "lam", "beta_max", "weight_decay")}
    extra = {k: optimizer.defaults[k] for k in ("beta2", "eps") if k in optimizer.defaults}
    reference = AdaptiveMemoryFromTheModel(values, cls is AdaptiveMemoryAdamW, **defaults, **extra)
    for step in range(10):
        grads = [torch.randn(shape, generator=generator, dtype=F64) for shape in SHAPES]
        if step % 4 == 2:
            grads[3] = None  # the second (5, 3) tensor of the stack falls behind by a step
        for p, g in zip(params, grads):
            p.grad = None if g is None else g.clone()
        optimizer.step()
        reference.step(grads)
        for p, expected in zip(params, reference.params):
            torch.testing.assert_close(p.detach(), expected, rtol=1e-7, atol=1e-8)


def test_compiled_matches_eager():
    generator = torch.Generator().manual_seed(2)
    for cls in (AdaptiveMemorySGD, AdaptiveMemoryAdamW):
        values = [torch.randn(shape, generator=generator) for shape in [(5, 3), (5, 3), (7,)]]
        eager = [torch.nn.Parameter(v.clone()) for v in values]
        compiled = [torch.nn.Parameter(v.clone()) for v in values]
        a, b = cls(eager, cautious=True), cls(compiled, cautious=True, compile=True)
        for _ in range(5):
            for p, q in zip(eager, compiled):
                p.grad = torch.randn(p.shape, generator=generator)
                q.grad = p.grad.clone()
            a.step()
            b.step()
        for p, q in zip(eager, compiled):
            torch.testing.assert_close(p, q, rtol=1e-5, atol=1e-6)


def test_the_memory_starts_as_the_first_gradient():
    p = torch.nn.Parameter(torch.zeros(4, dtype=F64))
    optimizer = AdaptiveMemorySGD([p], lr=1.0)
    p.grad = torch.tensor([1.0, -2.0, 0.5, 0.0], dtype=F64)
    optimizer.step()
    torch.testing.assert_close(optimizer.state[p]["exp_avg"], p.grad)
    torch.testing.assert_close(p.detach(), -p.grad)


@pytest.mark.parametrize("cls", [AdaptiveMemorySGD, AdaptiveMemoryAdamW])
def test_state_memory_is_documented(cls):
    spec = get_spec(cls.__name__)
    p = torch.nn.Parameter(torch.randn(8, 16))
    optimizer = cls([p])
    p.grad = torch.randn_like(p)
    optimizer.step()
    state_bytes = sum(v.numel() * v.element_size() for k, v in optimizer.state[p].items() if k != "step")
    assert state_bytes == spec.state_buffers * 4 * p.numel()
    assert f"State: {spec.state_buffers} tensor" in " ".join(cls.__doc__.split())


@pytest.mark.parametrize(
    ("kwargs", "name"),
    [({"lam": -0.1}, "lam"), ({"beta_max": 1.0}, "beta_max"), ({"beta_max": "0.9"}, "beta_max")],
)
def test_invalid_arguments(kwargs, name):
    for cls in (AdaptiveMemorySGD, AdaptiveMemoryAdamW):
        with pytest.raises(ValueError, match=f"Invalid {name}"):
            cls([torch.nn.Parameter(torch.zeros(2))], **kwargs)


def test_names_do_not_collide_with_torch_optim():
    assert not hasattr(torch.optim, "AdaptiveMemorySGD") and not hasattr(torch.optim, "AdaptiveMemoryAdamW")
