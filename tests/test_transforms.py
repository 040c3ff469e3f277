"""Each function of :mod:`lightning_opt.transforms` against its formula written directly in float64.

Every transform takes its hyper-parameters as Python floats (the eager path) or as 0-d tensors (the
compiled path); both must give the same numbers, on every shape including 0-d and empty tensors.
"""

from __future__ import annotations

import math
import zlib
from collections.abc import Callable
from dataclasses import dataclass

import pytest
import torch

import lightning_opt.transforms as transforms

F32, F64, BF16 = torch.float32, torch.float64, torch.bfloat16
SHAPES = [(), (7,), (4, 5), (2, 3, 4), (0,), (3, 0)]


@dataclass(frozen=True)
class Case:
    """``function(*tensors, *scalars)`` should equal ``formula(*tensors_in_float64, *scalars_as_floats)``.

    ``inplace``: index of the tensor argument the function updates in place and returns (None: it returns
    a new tensor and leaves every input untouched). ``inputs``: how to draw the tensor arguments.
    """

    function: Callable
    formula: Callable
    scalars: tuple[float, ...]
    inplace: int | None
    inputs: Callable[[torch.Generator, tuple[int, ...]], list[torch.Tensor]]


def _normal(count: int):
    def draw(generator, shape):
        return [torch.randn(shape, generator=generator, dtype=F64) for _ in range(count)]

    return draw


def _numerator_and_second_moment(generator, shape):
    numerator = torch.randn(shape, generator=generator, dtype=F64)
    second_moment = torch.rand(shape, generator=generator, dtype=F64) ** 2
    if second_moment.numel() > 1:
        second_moment.view(-1)[0] = 0.0  # atan2 needs no eps: a zero second moment is fine
    return [numerator, second_moment]


def _normalize_formula(grad, eps):
    return grad / (torch.sqrt(torch.sum(grad * grad)) + eps)


def _trust_ratio_formula(update, param, max_weight_norm):
    """LAMB's u * min(||p||, max) / ||u||, or u where either norm is 0."""
    weight_norm = min(float(torch.sqrt(torch.sum(param * param))), max_weight_norm)
    update_norm = float(torch.sqrt(torch.sum(update * update)))
    return update * (weight_norm / update_norm) if weight_norm > 0 and update_norm > 0 else update.clone()


def _cautious_mask_formula(update, grad):
    mask = (update * grad > 0).to(F64)
    return update * mask * (update.numel() / (mask.sum() + 1.0))


def _norm_loss_formula(param, lr_times_factor):
    """Norm Loss's decoupled step: each row (the whole of a 0-d or 1-D tensor) scaled by
    1 - 2 lr f (1 - 1 / (||row|| + 1e-8))."""
    if param.dim() >= 2:
        norms = param.reshape(param.shape[0], -1).pow(2).sum(dim=1).sqrt().view(-1, *[1] * (param.dim() - 1))
    else:
        norms = param.pow(2).sum().sqrt()
    return param * (1 - 2 * lr_times_factor * (1 - 1 / (norms + 1e-8)))


CASES = {
    "norm_loss_": Case(transforms.norm_loss_, _norm_loss_formula, (0.05,), 0, _normal(1)),
    "ema_": Case(transforms.ema_, lambda m, g, beta: beta * m + (1 - beta) * g, (0.9,), 0, _normal(2)),
    "ema_sq_": Case(transforms.ema_sq_, lambda v, g, beta: beta * v + (1 - beta) * g * g, (0.999,), 0, _normal(2)),
    "add_scaled_": Case(transforms.add_scaled_, lambda x, y, s: x + s * y, (-0.37,), 0, _normal(2)),
    "add_scaled": Case(transforms.add_scaled, lambda x, y, s: x + s * y, (2.5,), None, _normal(2)),
    "atan2_direction": Case(
        transforms.atan2_direction,
        lambda m, v, s: torch.atan2(m, s * torch.sqrt(v)),
        (0.37,),
        None,
        _numerator_and_second_moment,
    ),
    "atan2_direction_unit_scale": Case(
        transforms.atan2_direction,
        lambda m, v, s: torch.atan2(m, s * torch.sqrt(v)),
        (1.0,),
        None,
        _numerator_and_second_moment,
    ),
    "cautious_mask_": Case(transforms.cautious_mask_, _cautious_mask_formula, (), 0, _normal(2)),
    "cautious_weight_decay_": Case(
        transforms.cautious_weight_decay_,
        lambda p, u, lr_wd: p - lr_wd * (u * p > 0).to(F64) * p,
        (0.03,),
        0,
        _normal(2),
    ),
    "decoupled_weight_decay_": Case(
        transforms.decoupled_weight_decay_, lambda p, factor: p * factor, (1 - 1e-3 * 0.1,), 0, _normal(1)
    ),
    "l2_regularised": Case(transforms.l2_regularised, lambda g, p, wd: g + wd * p, (0.01,), None, _normal(2)),
    "eps_direction": Case(
        transforms.eps_direction,
        lambda m, v, s, eps: m / (s * torch.sqrt(v) + eps),
        (1.3, 1e-3),
        None,
        _numerator_and_second_moment,
    ),
    "softplus_direction": Case(
        transforms.softplus_direction,
        lambda m, v, s, eps, beta: m / (torch.log1p(torch.exp(beta * (s * torch.sqrt(v) + eps))) / beta),
        (1.3, 1e-3, 5.0),
        None,
        _numerator_and_second_moment,
    ),
    "nesterov_numerator": Case(
        transforms.nesterov_numerator, lambda m, g, ms, gs: ms * m + gs * g, (0.95, 0.12), None, _normal(2)
    ),
    "momentum_second_moment_": Case(
        transforms.momentum_second_moment_,
        lambda v, m, beta2, eps: beta2 * v + (1 - beta2) * m * m + eps,
        (0.99, 1e-3),
        0,
        _normal(2),
    ),
    "normalize_gradient": Case(transforms.normalize_gradient, _normalize_formula, (1e-3,), None, _normal(1)),
    "normalize_gradient_": Case(transforms.normalize_gradient_, _normalize_formula, (1e-3,), 0, _normal(1)),
    "trust_ratio": Case(transforms.trust_ratio, _trust_ratio_formula, (2.0,), None, _normal(2)),
    "stable_weight_decay_": Case(
        transforms.stable_weight_decay_, lambda p, lr_wd, scale: p * (1 - min(lr_wd * scale, 1.0)), (0.01, 7.0), 0,
        _normal(1),
    ),
    "stable_weight_decay_capped": Case(
        transforms.stable_weight_decay_, lambda p, lr_wd, scale: p * (1 - min(lr_wd * scale, 1.0)), (0.5, 3.0), 0,
        _normal(1),
    ),
}
CASES["grunwald_letnikov"] = Case(
    transforms.grunwald_letnikov,
    lambda g, past, alpha: g + sum(
        (-1) ** j * math.gamma(alpha + 1) / (math.gamma(j + 1) * math.gamma(alpha - j + 1)) * past[j - 1]
        for j in range(1, past.shape[0] + 1)
    ),
    (0.37,),
    None,
    lambda generator, shape: [
        torch.randn(shape, generator=generator, dtype=F64),
        torch.randn((3, *shape), generator=generator, dtype=F64),
    ],
)
CASES["adaptive_memory_momentum_"] = Case(
    transforms.adaptive_memory_momentum_,
    lambda d, g, beta, lam: ((beta + lam) * d + (1 - beta) * g) / (1 + lam),
    (0.3, 0.5),
    0,
    _normal(2),
)
DEDICATED = {"adaptive_direction", "cpr_", "friction_", "gradient_norm_correction_", "positive_negative_momentum_"}
DEDICATED |= {"adaptive_memory_coefficient", "grunwald_letnikov_ring_"}  # below, and test_adaptive_memory.py /
# test_fractional_adam.py against the numerically solved model and the newest-first sum
DEDICATED |= {"stable_weight_decay_scale", "whole_model_mean"}  # tests/test_stable_weight_decay.py
"""Public transforms with tests of their own below (several outputs, or arguments that are not numbers)."""
# The gradient transforms (soft clip, GC, AGC) have their own module of tests: test_gradient_transforms.py.
PUBLIC_FUNCTIONS = sorted(
    name
    for name in transforms.__all__
    if callable(getattr(transforms, name))
    and name != "Scalar"
    and getattr(transforms, name).__module__ != "lightning_opt.transforms.gradient"
)


def test_every_public_transform_is_tested():
    tested = {case.function.__name__ for case in CASES.values()} | DEDICATED
    assert set(PUBLIC_FUNCTIONS) <= tested, f"add a Case for {sorted(set(PUBLIC_FUNCTIONS) - tested)}"


def _run(case: Case, tensors: list[torch.Tensor], scalars: list) -> tuple[torch.Tensor, list[torch.Tensor]]:
    inputs = [t.clone() for t in tensors]
    before = [t.clone() for t in inputs]
    out = case.function(*inputs, *scalars)
    for i, (now, was) in enumerate(zip(inputs, before)):
        if i == case.inplace:
            assert out is now, "an in-place transform returns the tensor it updated"
        else:
            assert torch.equal(now, was), f"input {i} was modified"
    if case.inplace is None:
        assert all(out is not t for t in inputs)
    return out, inputs


@pytest.mark.parametrize("shape", SHAPES, ids=str)
@pytest.mark.parametrize("key", list(CASES))
def test_matches_the_float64_formula_with_float_and_tensor_hyperparameters(key, shape):
    case = CASES[key]
    generator = torch.Generator().manual_seed(zlib.crc32(repr((key, shape)).encode()))
    exact = case.inputs(generator, shape)
    expected = case.formula(*exact, *case.scalars)

    # float64 inputs: float and 0-d float64 tensor hyper-parameters, both to float64 precision
    for scalars in (list(case.scalars), [torch.tensor(s, dtype=F64) for s in case.scalars]):
        out, _ = _run(case, exact, scalars)
        assert out.dtype == F64 and out.shape == expected.shape
        torch.testing.assert_close(out, expected, rtol=1e-12, atol=1e-14)

    # float32 inputs: float and 0-d float32 tensor hyper-parameters (what the compiled path passes)
    single = [t.float() for t in exact]
    expected32 = case.formula(*[t.double() for t in single], *case.scalars)
    with_float, _ = _run(case, single, list(case.scalars))
    with_tensor, _ = _run(case, single, [torch.tensor(s, dtype=F32) for s in case.scalars])
    for out in (with_float, with_tensor):
        assert out.dtype == F32
        torch.testing.assert_close(out.double(), expected32, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(with_tensor, with_float, rtol=1e-6, atol=1e-7)

    # bfloat16 inputs with float32 0-d hyper-parameters: stays bf16, agrees with the float path
    half = [t.to(BF16) for t in exact]
    with_float, _ = _run(case, half, list(case.scalars))
    with_tensor, _ = _run(case, half, [torch.tensor(s, dtype=F32) for s in case.scalars])
    assert with_float.dtype == BF16
    assert with_tensor.dtype == BF16  # also for all-0-d operands, where torch alone would promote to float32
    expected16 = case.formula(*[t.double() for t in half], *case.scalars)
    torch.testing.assert_close(with_tensor.double(), expected16, rtol=2e-2, atol=2e-2)
    torch.testing.assert_close(with_float.double(), expected16, rtol=2e-2, atol=2e-2)


def test_hyperparameter_tensors_sliced_from_one_vector_work():
    """The compiled path indexes one 1-D tensor of hyper-parameters: 0-d views, not fresh tensors."""
    scalars = torch.tensor([0.9, 0.999, 0.5], dtype=F32)
    m, v, g = torch.zeros(4), torch.ones(4), torch.tensor([1.0, -2.0, 0.5, 0.0])
    transforms.ema_(m, g, scalars[0])
    transforms.ema_sq_(v, g, scalars[1])
    torch.testing.assert_close(m, 0.1 * g)
    torch.testing.assert_close(v, 0.999 + 0.001 * g * g)
    torch.testing.assert_close(transforms.atan2_direction(m, v, scalars[2]), torch.atan2(m, 0.5 * v.sqrt()))


# ------------------------------------------------------------------------------------------------ edge cases
def test_cautious_mask_examples():
    # the docstring's example: the second coordinate disagrees with the gradient; scale 2 / (1 + 1)
    out = transforms.cautious_mask_(torch.tensor([1.0, -1.0]), torch.tensor([2.0, 2.0]))
    assert torch.equal(out, torch.tensor([1.0, 0.0]))
    # every coordinate disagrees: all zero, finite (the +1 in the denominator)
    out = transforms.cautious_mask_(torch.tensor([1.0, -2.0, 3.0]), torch.tensor([-1.0, 1.0, -1.0]))
    assert torch.equal(out, torch.zeros(3))
    # all agree: scaled by numel / (numel + 1)
    out = transforms.cautious_mask_(torch.tensor([1.0, -2.0, 3.0]), torch.tensor([1.0, -1.0, 1.0]))
    torch.testing.assert_close(out, torch.tensor([0.75, -1.5, 2.25]))
    # a zero gradient or a zero update is "not agreeing"
    out = transforms.cautious_mask_(torch.tensor([1.0, 0.0, 2.0]), torch.tensor([0.0, 1.0, 1.0]))
    torch.testing.assert_close(out, torch.tensor([0.0, 0.0, 3.0]))
    assert transforms.cautious_mask_(torch.zeros(0), torch.zeros(0)).shape == (0,)
    # 0-d: numel 1, one agreeing coordinate: halved
    assert float(transforms.cautious_mask_(torch.tensor(4.0), torch.tensor(1.0))) == 2.0


def test_atan2_direction_is_bounded_and_nan_free():
    m = torch.tensor([1.0, -1.0, 0.0, 1e30, -1e-30])
    v = torch.tensor([1.0, 0.0, 0.0, 0.0, 0.0])
    out = transforms.atan2_direction(m, v, 1.0)
    torch.testing.assert_close(out, torch.tensor([math.pi / 4, -math.pi / 2, 0.0, math.pi / 2, -math.pi / 2]))
    assert out.isfinite().all() and (out.abs() <= math.pi / 2).all()
    assert torch.equal(v, torch.tensor([1.0, 0.0, 0.0, 0.0, 0.0]))  # the second moment is not modified


def test_cautious_weight_decay_only_where_update_and_parameter_agree():
    p = torch.tensor([1.0, 1.0, -2.0, -2.0, 3.0])
    u = torch.tensor([0.5, -0.5, -1.0, 1.0, 0.0])
    transforms.cautious_weight_decay_(p, u, 0.1)
    torch.testing.assert_close(p, torch.tensor([0.9, 1.0, -1.8, -2.0, 3.0]))


def test_l2_regularised_does_not_touch_the_users_gradient():
    grad, param = torch.tensor([1.0, 2.0]), torch.tensor([10.0, -10.0])
    out = transforms.l2_regularised(grad, param, 0.1)
    assert torch.equal(out, torch.tensor([2.0, 1.0])) and torch.equal(grad, torch.tensor([1.0, 2.0]))


def test_ema_examples():
    assert torch.allclose(transforms.ema_(torch.zeros(3), torch.ones(3), 0.9), torch.full((3,), 0.1))
    assert torch.allclose(transforms.ema_sq_(torch.ones(2), torch.tensor([3.0, -3.0]), 0.5), torch.tensor([5.0, 5.0]))
    # beta = 0 keeps only the new value; beta -> 1 keeps the old one
    assert torch.equal(transforms.ema_(torch.full((2,), 7.0), torch.tensor([1.0, 2.0]), 0.0), torch.tensor([1.0, 2.0]))


# ------------------------------------------------------------------------- the Adam family's multi-output pieces
@pytest.mark.parametrize("shape", SHAPES, ids=str)
def test_friction_returns_sigmoid_of_the_gradient_change_and_keeps_the_new_gradient(shape):
    generator = torch.Generator().manual_seed(zlib.crc32(repr(shape).encode()))
    previous, grad = (torch.randn(shape, generator=generator, dtype=F64) for _ in range(2))
    expected = torch.sigmoid((previous - grad).abs())
    kept = previous.clone()
    out = transforms.friction_(kept, grad)
    torch.testing.assert_close(out, expected, rtol=1e-12, atol=1e-14)
    assert torch.equal(kept, grad) and out is not kept


def test_gradient_norm_correction_per_tensor_of_a_stack():
    """Three tensors of a stack: one whose running norm exceeds its gradient's (scaled up), one below (1), one
    with a zero gradient (1); the running norms advance as beta e + (1 - beta) ||g||."""
    grad = torch.stack([torch.full((2, 3), 0.5), torch.full((2, 3), 4.0), torch.zeros(2, 3)]).double()
    running = torch.tensor([10.0, 1.0, 3.0], dtype=F64).view(3, 1, 1)
    norms = grad.flatten(1).norm(dim=1).view(3, 1, 1)
    expected_running = 0.9 * running + 0.1 * norms
    expected = torch.where((norms > 0) & (expected_running > norms), expected_running / norms.clamp_min(1e-300), 1.0)
    out = transforms.gradient_norm_correction_(running, grad, 0.9, 1)
    torch.testing.assert_close(running, expected_running, rtol=1e-12, atol=0)
    torch.testing.assert_close(out, expected, rtol=1e-12, atol=0)
    assert out[0].item() > 1.0 and out[1].item() == 1.0 and out[2].item() == 1.0


@pytest.mark.parametrize("odd", [1.0, 0.0], ids=["odd-step", "even-step"])
def test_positive_negative_momentum_updates_the_momentum_of_the_steps_parity(odd):
    generator = torch.Generator().manual_seed(7)
    exp_avg, neg_exp_avg, grad = (torch.randn(4, 5, generator=generator, dtype=F64) for _ in range(3))
    weight, pos, neg = 0.19, 1.6, 0.7
    plus, minus = (exp_avg, neg_exp_avg) if odd else (neg_exp_avg, exp_avg)
    new_plus = plus + weight * (grad - plus)
    expected = pos * new_plus - neg * minus
    out = transforms.positive_negative_momentum_(
        exp_avg, neg_exp_avg, grad, weight, torch.tensor(odd, dtype=F64), pos, neg
    )
    torch.testing.assert_close(out, expected, rtol=1e-12, atol=1e-14)
    torch.testing.assert_close(exp_avg if odd else neg_exp_avg, new_plus, rtol=1e-12, atol=1e-14)


@pytest.mark.parametrize("denominator", ["eps", "atan2", "softplus"])
def test_adaptive_direction_is_the_named_denominator(denominator):
    generator = torch.Generator().manual_seed(11)
    numerator, second_moment = _numerator_and_second_moment(generator, (6, 4))
    out = transforms.adaptive_direction(denominator, numerator, second_moment, 1.3, 1e-3, 5.0)
    expected = {
        "eps": transforms.eps_direction(numerator, second_moment, 1.3, 1e-3),
        "atan2": 1.27 * torch.atan2(numerator, 1.3 * second_moment.sqrt()),
        "softplus": transforms.softplus_direction(numerator, second_moment, 1.3, 1e-3, 5.0),
    }[denominator]
    torch.testing.assert_close(out, expected, rtol=1e-12, atol=1e-14)


@pytest.mark.parametrize("shape", [(), (7,), (4, 5), (2, 3, 4), (0,)], ids=str)
@pytest.mark.parametrize("dtype", [F64, F32, BF16], ids=str)
def test_cpr_warm_start_then_lagrange_steps_against_float64(shape, dtype):
    """cpr_ over several steps: nothing before the warm start, kappa = ||p||^2 at it, then the multiplier's
    projected ascent and p <- p (1 - 2 lambda), against the same rule written in float64."""
    generator = torch.Generator().manual_seed(zlib.crc32(repr(shape).encode()))
    param = torch.randn(shape, generator=generator, dtype=F64)
    state_dtype = F64 if dtype == F64 else F32
    lagrange, kappa = torch.zeros((), dtype=state_dtype), torch.zeros((), dtype=state_dtype)
    ours = param.to(dtype)
    ref, ref_lagrange, ref_kappa = ours.double(), 0.0, 0.0
    mu, warm_start = 0.3, 2
    n = max(param.numel(), 1)
    largest = 0.0
    for step in range(1, 7):
        growth = 1.0 + 0.1 * step  # the optimizer's update: the tensor grows, then the constraint acts
        ours.mul_(growth)
        ref = ours.double().clone()  # .double() of a float64 tensor is the tensor itself
        transforms.cpr_(ours, lagrange, kappa, mu, warm_start, step)
        squared = float((ref * ref).sum())
        if step == warm_start:
            ref_kappa = squared
        if step > warm_start:
            ref_lagrange = max(0.0, ref_lagrange + mu / n * (squared - ref_kappa))
        ref = ref * (1 - 2 * ref_lagrange)
        tolerance = {F64: 1e-12, F32: 1e-5, BF16: 1e-2}[dtype]
        torch.testing.assert_close(ours.double(), ref, rtol=tolerance, atol=tolerance)
        assert math.isclose(float(kappa), ref_kappa, rel_tol=tolerance if dtype != BF16 else 1e-5, abs_tol=1e-12)
        assert math.isclose(float(lagrange), ref_lagrange, rel_tol=1e-5, abs_tol=1e-12)
        if step <= warm_start:
            assert float(lagrange) == 0.0
        assert ours.dtype == dtype
        largest = max(largest, float(lagrange))
    if param.numel():
        assert largest > 0  # the tensor grew past its bound after the warm start: the multiplier acted


# ------------------------------------------------------------------------- adaptive memory and fractional pieces
def test_adaptive_memory_coefficient_per_tensor_of_a_stack_in_float64():
    """((1 + lam) <g, d> - <d - g, g + lam d>) / ||d - g||^2 per tensor, clipped to [0, beta_max]; 0 where d = g;
    bfloat16 inputs give a float32 coefficient, close to the float64 one."""
    generator = torch.Generator().manual_seed(13)
    g = torch.randn(4, 3, 5, generator=generator, dtype=F64)
    d = torch.randn(4, 3, 5, generator=generator, dtype=F64)
    d[1] = 2.0 * g[1]  # aligned and larger: clipped at beta_max
    d[2] = g[2]  # equal: 0
    lam, beta_max = 0.3, 0.8
    out = transforms.adaptive_memory_coefficient(g, d, lam, beta_max, 1)
    assert out.shape == (4, 1, 1) and out.dtype == F64
    for i in range(4):
        gi, di = g[i].flatten(), d[i].flatten()
        square = float(((di - gi) ** 2).sum())
        ratio = ((1 + lam) * float(gi @ di) - float((di - gi) @ (gi + lam * di))) / square if square else 0.0
        expected = min(max(ratio, 0.0), beta_max) if square else 0.0
        assert math.isclose(float(out[i]), expected, rel_tol=1e-12, abs_tol=1e-15)
    assert float(out[1]) == beta_max and float(out[2]) == 0.0
    half = transforms.adaptive_memory_coefficient(g.to(BF16), d.to(BF16), torch.tensor(lam), beta_max, 1)
    assert half.dtype == F32
    torch.testing.assert_close(half.double(), out, rtol=0.05, atol=0.05)


def test_grunwald_letnikov_ring_writes_one_slot_per_tensor():
    history = torch.arange(2 * 3 * 4, dtype=F64).view(2, 3, 4)  # k = 2 tensors, K = 3 slots of 4 elements
    grad = torch.full((2, 4), -1.0, dtype=F64)
    weights = [torch.tensor([[0.5], [0.0]], dtype=F64), 0.25, torch.tensor([[0.0], [1.0]], dtype=F64)]
    expected = grad + torch.stack([0.5 * history[0, 0] + 0.25 * history[0, 1], 0.25 * history[1, 1] + history[1, 2]])
    before = history.clone()
    out = transforms.grunwald_letnikov_ring_(history, grad, weights, torch.tensor([[2.0], [0.0]], dtype=F64))
    torch.testing.assert_close(out, expected, rtol=1e-12, atol=0)
    after = before.clone()
    after[0, 2], after[1, 0] = grad[0], grad[1]
    assert torch.equal(history, after)
