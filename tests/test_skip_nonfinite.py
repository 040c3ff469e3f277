"""``skip_nonfinite=True``: a tensor whose gradient has inf/NaN is left untouched; the others step as usual."""

from __future__ import annotations

import pytest
import torch

from lightning_opt.registry import REGISTRY, OptimizerSpec

SPECS = list(REGISTRY.values())


def _make(spec: OptimizerSpec, params: list[torch.Tensor], **kwargs: object) -> torch.optim.Optimizer:
    return spec.cls(params, **spec.test_kwargs[0], **kwargs)


def _step(spec: OptimizerSpec, optimizer: torch.optim.Optimizer) -> None:
    if spec.loss_driven:
        optimizer.set_loss(0.7)  # type: ignore[attr-defined]
    optimizer.step()


@pytest.mark.parametrize("bad_value", [float("inf"), float("nan")], ids=["inf", "nan"])
@pytest.mark.parametrize("spec", SPECS, ids=[spec.name for spec in SPECS])
def test_tensor_with_nonfinite_grad_is_untouched_and_the_rest_steps(spec: OptimizerSpec, bad_value: float) -> None:
    generator = torch.Generator().manual_seed(0)
    shapes = [(4, 3), (5,), ()]
    values = [torch.randn(shape, generator=generator) for shape in shapes]
    grads = [[torch.randn(shape, generator=generator) for shape in shapes] for _ in range(3)]
    grads[1][0] = grads[1][0].clone()
    grads[1][0].view(-1)[2] = bad_value  # step 2: the first tensor's gradient is poisoned

    guarded = [v.clone().requires_grad_() for v in values]
    optimizer = _make(spec, guarded, skip_nonfinite=True)
    for step, step_grads in enumerate(grads):
        for param, grad in zip(guarded, step_grads):
            param.grad = grad.clone()
        before = guarded[0].detach().clone()
        state_before = {k: v.clone() for k, v in optimizer.state[guarded[0]].items()}
        if step == 1:
            with pytest.warns(UserWarning, match="inf or NaN"):
                _step(spec, optimizer)
            assert torch.equal(guarded[0], before)
            for key, value in optimizer.state[guarded[0]].items():
                assert torch.equal(value, state_before[key]), key
        else:
            _step(spec, optimizer)
    assert optimizer.nonfinite_skips == 1
    assert int(optimizer.state[guarded[0]]["step"]) == 2
    assert all(torch.isfinite(p).all() for p in guarded)

    # The other tensors took exactly the steps they take when the poisoned step is a no-op for tensor 0 only.
    reference = [v.clone().requires_grad_() for v in values[1:]]
    reference_optimizer = _make(spec, reference)
    for step_grads in grads:
        for param, grad in zip(reference, step_grads[1:]):
            param.grad = grad.clone()
        _step(spec, reference_optimizer)
    for mine, expected in zip(guarded[1:], reference):
        assert torch.equal(mine, expected)


@pytest.mark.parametrize("spec", SPECS, ids=[spec.name for spec in SPECS])
def test_without_the_flag_a_nan_gradient_reaches_the_parameter(spec: OptimizerSpec) -> None:
    """The default follows torch.optim: nothing is checked, and a NaN gradient shows up in the parameter."""
    param = torch.zeros(3, requires_grad=True)
    optimizer = _make(spec, [param])
    param.grad = torch.tensor([1.0, float("nan"), 1.0])
    _step(spec, optimizer)
    assert torch.isnan(param).any()
    assert optimizer.nonfinite_skips == 0


def test_skip_nonfinite_must_be_a_bool() -> None:
    with pytest.raises(ValueError, match="Invalid skip_nonfinite: 'yes'"):
        REGISTRY["AdamAtan2"].cls([torch.zeros(1, requires_grad=True)], skip_nonfinite="yes")
