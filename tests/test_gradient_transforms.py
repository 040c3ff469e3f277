"""Soft clip, centralisation, AGC and normalisation as plain functions: float64 references, oracles, edge cases.

The references (``tests/references.py``) are written from the formulas as row-by-row matrix operations;
``pytorch_optimizer`` (a test-only dependency) is an independent public implementation of GC and AGC.
"""

from __future__ import annotations

import pytest
import torch
from pytorch_optimizer.optimizer.agc import agc as public_agc
from pytorch_optimizer.optimizer.gradient_centralization import centralize_gradient as public_centralize

from lightning_opt.transforms.gradient import (
    GRADIENT_TRANSFORMS,
    adaptive_clip,
    adaptive_clip_,
    apply_gradient_transforms,
    centralize,
    centralize_,
    check_grad_transforms,
    normalize_gradient,
    normalize_gradient_,
    soft_clip,
    soft_clip_,
    unit_rms,
)
from tests.references import (
    adaptive_clip_reference,
    centralize_reference,
    normalize_reference,
    soft_clip_reference,
)

F64 = torch.float64
SHAPES = [(), (7,), (5, 3), (4, 3, 5), (6, 3, 3, 3), (0,), (0, 4), (3, 0)]
SHAPE_IDS = ["0d", "1d", "2d", "3d", "4d-conv", "empty", "empty-rows", "empty-units"]
RTOL = {torch.float64: 1e-12, torch.float32: 2e-6, torch.bfloat16: 2e-2}
TOL = {F64: dict(rtol=1e-12, atol=1e-14)}


def assert_close_to_reference(result: torch.Tensor, expected: torch.Tensor, dtype: torch.dtype) -> None:
    """Relative to the gradient's scale: centralisation cancels, so element-wise relative error is unfair."""
    scale = float(expected.abs().max()) if expected.numel() else 1.0
    rtol = RTOL[dtype]
    torch.testing.assert_close(result.to(F64), expected, rtol=rtol, atol=rtol * max(scale, 1e-30))


def pair(shape: tuple[int, ...], seed: int, grad_scale: float = 1.0) -> tuple[torch.Tensor, torch.Tensor]:
    """A gradient and a parameter whose rows have very different scales, so that some units clip and
    others do not."""
    generator = torch.Generator().manual_seed(seed)
    param = torch.randn(shape, generator=generator, dtype=F64)
    grad = torch.randn(shape, generator=generator, dtype=F64) * grad_scale
    if len(shape) > 1 and shape[0] > 1:
        row_scale = torch.logspace(-2, 1, shape[0], dtype=F64).reshape(-1, *([1] * (len(shape) - 1)))
        grad = grad * row_scale
    return grad, param


def functions(clipping: float = 0.05):
    return {
        "centralize": (lambda g, p: centralize(g), lambda g, p: centralize_(g), lambda g, p: centralize_reference(g)),
        "soft_clip": (soft_clip, soft_clip_, soft_clip_reference),
        "adaptive_clip": (
            lambda g, p: adaptive_clip(g, p, clipping),
            lambda g, p: adaptive_clip_(g, p, clipping),
            lambda g, p: adaptive_clip_reference(g, p, clipping),
        ),
        "normalize": (
            lambda g, p: normalize_gradient(g),
            lambda g, p: normalize_gradient_(g),
            lambda g, p: normalize_reference(g),
        ),
    }


UNIT_WISE = [name for name in GRADIENT_TRANSFORMS if name != "normalize"]
"""The transforms that act on each output unit alone (normalisation divides by the whole tensor's norm)."""


@pytest.mark.parametrize("name", list(GRADIENT_TRANSFORMS))
@pytest.mark.parametrize("shape", SHAPES, ids=SHAPE_IDS)
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32, torch.bfloat16], ids=["f64", "f32", "bf16"])
def test_matches_float64_reference_in_both_forms(name, shape, dtype):
    pure, in_place, reference = functions()[name]
    for seed in range(3):
        grad64, param64 = pair(shape, seed, grad_scale=[0.3, 1.0, 5.0][seed])
        grad, param = grad64.to(dtype), param64.to(dtype)
        expected = reference(grad.to(F64), param.to(F64))
        before = grad.clone()
        result = pure(grad, param)
        assert torch.equal(grad, before), "the pure form must not change its input"
        assert result.dtype == dtype and result.shape == grad.shape
        assert_close_to_reference(result, expected, dtype)
        returned = in_place(grad, param)
        assert returned is grad
        torch.testing.assert_close(grad, result, rtol=0, atol=0)


def test_references_and_package_are_not_trivially_equal():
    """Every transform changes the test gradients (else the comparisons above could not fail)."""
    grad, param = pair((6, 3, 3, 3), 0, grad_scale=5.0)
    for name, (pure, _, _) in functions().items():
        assert (pure(grad, param) - grad).abs().max() > 0.1, name


@pytest.mark.parametrize("shape", [(), (7,), (5, 3), (6, 3, 3, 3)], ids=["0d", "1d", "2d", "4d-conv"])
def test_agc_matches_pytorch_optimizer(shape):
    for seed in range(3):
        grad, param = pair(shape, seed, grad_scale=0.05)
        for clipping in (0.01, 0.05, 0.5):
            expected = public_agc(param, grad, agc_eps=1e-3, agc_clip_val=clipping, eps=1e-6)
            torch.testing.assert_close(adaptive_clip(grad, param, clipping), expected, **TOL[F64])


@pytest.mark.parametrize("shape", [(), (7,), (5, 3), (6, 3, 3, 3), (4, 3, 5)], ids=["0d", "1d", "2d", "4d", "3d"])
def test_centralize_matches_pytorch_optimizer(shape):
    grad, _ = pair(shape, 1)
    expected = grad.clone()
    public_centralize(expected)
    torch.testing.assert_close(centralize(grad), expected, **TOL[F64])


def test_agc_unit_is_every_dimension_but_the_first_also_for_3d():
    """NFNets' unit norm reduces every axis but the output one; pytorch_optimizer reduces only dim 1 of a
    3-D (conv1d) weight. We follow the paper: the 3-D result equals that of the flattened 2-D tensor."""
    grad, param = pair((4, 3, 5), 2, grad_scale=0.2)
    flat = adaptive_clip(grad.reshape(4, 15), param.reshape(4, 15), 0.05).reshape(4, 3, 5)
    torch.testing.assert_close(adaptive_clip(grad, param, 0.05), flat, rtol=0, atol=0)


def test_soft_clip_examples_by_hand():
    param = torch.tensor([[1.0, -1.0, 1.0, -1.0], [2.0, 2.0, 2.0, 2.0]], dtype=F64)  # rms 1 and 2
    grad = torch.tensor([[4.0, 0.0, 0.0, 0.0], [0.5, 0.5, -0.5, 0.5]], dtype=F64)  # rms 2 and 0.5
    expected = torch.tensor([[2.0, 0.0, 0.0, 0.0], [0.5, 0.5, -0.5, 0.5]], dtype=F64)
    torch.testing.assert_close(soft_clip(grad, param), expected, rtol=0, atol=1e-15)
    assert torch.all(unit_rms(soft_clip(grad, param)) <= unit_rms(param) + 1e-15)


def test_soft_clip_of_a_zero_parameter_unit_shrinks_to_eps():
    """The documented caveat: a zero-initialised unit's gradient is scaled to RMS eps."""
    grad = torch.full((3,), 2.0, dtype=F64)
    clipped = soft_clip(grad, torch.zeros(3, dtype=F64))
    torch.testing.assert_close(unit_rms(clipped), torch.tensor([1e-12], dtype=F64), rtol=1e-12, atol=0)
    torch.testing.assert_close(soft_clip(grad, torch.zeros(3, dtype=F64), eps=1e-3), torch.full((3,), 1e-3, dtype=F64))


def test_agc_lets_a_zero_parameter_unit_move_up_to_eps():
    grad = torch.tensor([3.0, 4.0], dtype=F64)  # norm 5
    clipped = adaptive_clip(grad, torch.zeros(2, dtype=F64), clipping=0.1)
    torch.testing.assert_close(clipped.norm(), torch.tensor(0.1 * 1e-3, dtype=F64))


def test_zero_gradients_stay_zero():
    param = torch.randn(4, 3, dtype=F64)
    for name, (pure, _, _) in functions().items():
        assert torch.equal(pure(torch.zeros(4, 3, dtype=F64), param), torch.zeros(4, 3, dtype=F64)), name


@pytest.mark.parametrize("name", UNIT_WISE)
@pytest.mark.parametrize("bad", [float("nan"), float("inf"), -float("inf")])
def test_non_finite_entries_stay_non_finite_and_other_units_are_untouched(name, bad):
    pure = functions()[name][0]
    grad, param = pair((5, 4), 3)
    grad[2, 1] = bad
    result = pure(grad, param)
    assert not result[2].isfinite().all(), "an overflow must stay visible to a GradScaler"
    others = [0, 1, 3, 4]
    expected = pure(grad[others], param[others])
    torch.testing.assert_close(result[others], expected, rtol=0, atol=0)


def test_composition_applies_in_the_order_named():
    grad, param = pair((5, 4), 4, grad_scale=3.0)
    hp = {"agc_clipping": 0.05}
    first_gc = apply_gradient_transforms(grad, param, ("centralize", "adaptive_clip"), hp)
    first_agc = apply_gradient_transforms(grad, param, ("adaptive_clip", "centralize"), hp)
    torch.testing.assert_close(first_gc, adaptive_clip(centralize(grad), param, 0.05), rtol=0, atol=0)
    torch.testing.assert_close(first_agc, centralize(adaptive_clip(grad, param, 0.05)), rtol=0, atol=0)
    assert (first_gc - first_agc).abs().max() > 1e-3
    assert apply_gradient_transforms(grad, param, (), hp) is grad


@pytest.mark.parametrize(
    ("value", "message"),
    [
        (["clip"], "unknown 'clip'"),
        (("soft_clip", "soft_clip"), "named twice"),
        (42, "expected a list"),
        ([["soft_clip"]], r"expected transform names as strings, got \['soft_clip'\]"),  # was a bare TypeError
    ],
)
def test_invalid_grad_transforms_are_named(value, message):
    with pytest.raises(ValueError, match=rf"Invalid grad_transforms: .*{message}"):
        check_grad_transforms(value)


@pytest.mark.parametrize("function", [soft_clip, soft_clip_, adaptive_clip, adaptive_clip_])
@pytest.mark.parametrize("eps", [3.5e38, 0.0, float("nan")])
def test_an_eps_that_float32_norms_cannot_hold_is_refused(function, eps):
    """eps=3.5e38 used to fail inside the kernel ("value cannot be converted to type float without overflow");
    now a ValueError naming eps and the float32 bound, before the gradient is touched."""
    grad, param = torch.randn(3, 4), torch.randn(3, 4)
    before = grad.clone()
    with pytest.raises(ValueError, match=r"^Invalid eps: "):
        function(grad, param, eps=eps)
    assert torch.equal(grad, before)
    assert function(grad.clone(), param, eps=1e38).isfinite().all()  # the largest floors still work


# ------------------------------------------------------------------------------------ gradient normalisation
@pytest.mark.parametrize("shape", [(), (7,), (5, 3), (6, 3, 3, 3)], ids=["0d", "1d", "2d", "4d-conv"])
def test_normalized_gradient_has_unit_norm_and_keeps_the_direction(shape):
    for seed, scale in enumerate((1e-6, 1.0, 1e4)):
        grad, _ = pair(shape, seed, grad_scale=scale)
        out = normalize_gradient(grad)
        assert abs(float(out.norm()) - 1.0) < 1e-6 if scale >= 1.0 else float(out.norm()) < 1.0
        torch.testing.assert_close(out * (grad.norm() + 1e-8), grad, rtol=1e-12, atol=1e-20)


def test_normalize_divides_by_the_whole_tensor_not_by_units():
    grad = torch.tensor([[3.0, 4.0], [0.0, 0.0]], dtype=F64)  # norm 5; one unit is zero
    torch.testing.assert_close(normalize_gradient(grad), grad / (5.0 + 1e-8), rtol=1e-15, atol=0)
    assert (normalize_gradient(grad) - normalize_reference(grad, mutation="normalize_rows")).abs().max() == 0.0
    grad = torch.tensor([[3.0, 4.0], [1.0, 0.0]], dtype=F64)  # rows of different norms tell the two apart
    assert (normalize_gradient(grad) - normalize_reference(grad, mutation="normalize_rows")).abs().max() > 0.1


def test_normalize_float16_tiny_gradient_does_not_overflow():
    """1 / (||g|| + eps) is 1e6 here, beyond float16's range: the division happens in float32."""
    grad = torch.tensor([1e-6, 0.0], dtype=torch.float16)
    out = normalize_gradient(grad)
    assert out.dtype == torch.float16 and out.isfinite().all()
    torch.testing.assert_close(out.float(), grad.float() / (grad.float().norm() + 1e-8), rtol=1e-3, atol=0)


@pytest.mark.parametrize("bad", [float("nan"), float("inf"), -float("inf")])
def test_normalize_of_a_non_finite_gradient_stays_non_finite(bad):
    grad, _ = pair((5, 4), 3)
    grad[2, 1] = bad
    for out in (normalize_gradient(grad), apply_gradient_transforms(grad, grad, ("normalize",), {})):
        assert not out[2, 1].isfinite(), "an overflow must stay visible to a GradScaler"


def test_normalize_on_a_stack_is_per_tensor():
    """The engine's (k, units, width) stacks: one norm per tensor k, whatever the unit start says."""
    stack = torch.randn(3, 4, 5, dtype=F64)
    expected = torch.stack([normalize_reference(tensor) for tensor in stack])
    out = GRADIENT_TRANSFORMS["normalize"](stack, stack, {}, 2)  # the units view's start: still per tensor
    torch.testing.assert_close(out, expected, rtol=1e-12, atol=1e-15)


@pytest.mark.parametrize("function", [normalize_gradient, normalize_gradient_])
@pytest.mark.parametrize("eps", [3.5e38, 0.0, float("nan")])
def test_normalize_refuses_an_eps_float32_cannot_hold(function, eps):
    grad = torch.randn(3, 4)
    before = grad.clone()
    with pytest.raises(ValueError, match=r"^Invalid eps: "):
        function(grad, eps=eps)
    assert torch.equal(grad, before)
