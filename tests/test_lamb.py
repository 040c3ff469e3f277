"""Lamb and the trust ratio: pytorch_optimizer's ``Lamb`` as oracle, and the ratio's rules by hand.

pytorch_optimizer's ``Lamb`` takes the paper's steps with ``adam_debias=True`` (no division of the step by
``1 - beta1**t`` after the ratio) and ``weight_decouple=False`` (the decay inside the update); it leaves ``v``
uncorrected and adds ``eps`` to ``||u||``, which a negligible ``eps`` hides, and the bias corrections cancel in
the ratio when there is no decay, or are 1 with ``betas = (0, 0)``. The float64 re-derivation of every option
is the common suite's (``tests/references.py``, ``LambReference``).
"""

from __future__ import annotations

import pytest
import torch
from pytorch_optimizer import Lamb as PublicLamb

from lightning_opt import Lamb
from lightning_opt.transforms import trust_ratio
from lightning_opt.transforms.trust_ratio import trust_ratio_scale

F64 = torch.float64
SHAPES = [(5, 3), (7,), (2, 3, 2, 2), (), (16, 8)]


def run_both(betas, weight_decay, scale, steps=12, foreach=False, **options):
    generator = torch.Generator().manual_seed(0)
    values = [torch.randn(shape, generator=generator, dtype=F64) * scale for shape in SHAPES]
    ours = [torch.nn.Parameter(v.clone()) for v in values]
    theirs = [torch.nn.Parameter(v.clone()) for v in values]
    optimizer = Lamb(ours, lr=0.05, betas=betas, eps=1e-30, weight_decay=weight_decay, **options)
    oracle = PublicLamb(
        theirs, lr=0.05, betas=betas, eps=1e-30, weight_decay=weight_decay, weight_decouple=False,
        adam_debias=True, foreach=foreach,
    )
    moved = 0.0
    for _ in range(steps):
        for a, b in zip(ours, theirs):
            grad = torch.randn(a.shape, generator=generator, dtype=F64)
            a.grad, b.grad = grad.clone(), grad.clone()
        optimizer.step()
        oracle.step()
        for a, b in zip(ours, theirs):
            torch.testing.assert_close(a.detach(), b.detach(), rtol=1e-10, atol=1e-12)
    for a, v in zip(ours, values):
        moved = max(moved, float((a.detach() - v).abs().max()))
    assert moved > 1e-2, "the parameters must move, or the comparison proves nothing"
    return ours


@pytest.mark.parametrize("foreach", [False, True], ids=["per-tensor", "foreach"])
@pytest.mark.parametrize("scale", [1.0, 30.0], ids=["norms-below-10", "norms-clamped-at-10"])
def test_matches_pytorch_optimizer_without_decay(scale, foreach):
    run_both((0.9, 0.999), 0.0, scale, foreach=foreach)


@pytest.mark.parametrize("scale", [1.0, 30.0], ids=["norms-below-10", "norms-clamped-at-10"])
def test_matches_pytorch_optimizer_with_the_decay_inside_the_update(scale):
    run_both((0.0, 0.0), 0.1, scale)


def test_compiled_matches_pytorch_optimizer():
    run_both((0.9, 0.99), 0.0, 1.0, steps=4, compile=True)


def test_the_oracle_can_tell_a_missing_ratio():
    """Lamb without its ratio (AdamW) is far from pytorch_optimizer's Lamb: the comparison above can fail."""
    with pytest.raises(AssertionError):
        run_both((0.9, 0.999), 0.0, 1.0, steps=3, trust_ratio=False)


def test_trust_ratio_rules_by_hand():
    update, param = torch.tensor([3.0, 4.0], dtype=F64), torch.tensor([0.0, 2.0], dtype=F64)
    torch.testing.assert_close(trust_ratio(update, param), update * 2.0 / 5.0)
    big = torch.tensor([30.0, 40.0], dtype=F64)  # ||p|| = 50, clamped at 10
    torch.testing.assert_close(trust_ratio(update, big), update * 10.0 / 5.0)
    torch.testing.assert_close(trust_ratio(update, big, max_weight_norm=None), update * 50.0 / 5.0)
    assert torch.equal(trust_ratio(update, torch.zeros(2, dtype=F64)), update)  # ||p|| = 0: ratio 1
    assert torch.equal(trust_ratio(torch.zeros(2, dtype=F64), param), torch.zeros(2, dtype=F64))  # ||u|| = 0
    assert trust_ratio(torch.zeros(0), torch.zeros(0)).shape == (0,)
    assert trust_ratio(update.to(torch.bfloat16), param.to(torch.bfloat16)).dtype == torch.bfloat16


def test_trust_ratio_on_a_stack_is_per_tensor():
    generator = torch.Generator().manual_seed(3)
    update, param = (torch.randn(4, 3, 5, generator=generator, dtype=F64) for _ in range(2))
    param[1] = 0.0
    param[2] *= 20.0
    scale = trust_ratio_scale(update, param, start=1)
    assert scale.shape == (4, 1, 1)
    for k in range(4):
        torch.testing.assert_close(trust_ratio(update, param, start=1)[k], trust_ratio(update[k], param[k]))
    assert float(scale[1]) == 1.0


def test_zero_initialised_bias_moves_by_adams_step():
    """The ratio is 1 where ||p|| = 0: a zero bias takes the plain Adam step lr * m_hat / (sqrt(v_hat) + eps)."""
    bias = torch.nn.Parameter(torch.zeros(3, dtype=F64))
    bias.grad = torch.tensor([1.0, -2.0, 0.5], dtype=F64)
    Lamb([bias], lr=0.1, weight_decay=0.0, eps=1e-30).step()
    torch.testing.assert_close(bias.detach(), -0.1 * torch.sign(torch.tensor([1.0, -2.0, 0.5], dtype=F64)))


def test_trust_ratio_option_refuses_sharded_parameters_and_survives_a_checkpoint():
    model = torch.nn.Linear(3, 2)
    optimizer = Lamb(model.parameters())
    assert optimizer.whole_tensor_statistics
    state = optimizer.state_dict()
    assert state["param_groups"][0]["trust_ratio"] is True
    assert state["param_groups"][0]["stable_weight_decay"] is False
    with pytest.raises(ValueError, match=r"^Invalid trust_ratio: 1 "):
        Lamb(model.parameters(), trust_ratio=1)


def test_float64_reference_with_weight_norms_above_the_ceiling():
    """The common suite's tensors have norms below 10, where the ceiling does not act: here the 4-D and (16, 8)
    tensors' norms are far above it. The package follows LambReference; the unclamped mutant does not."""
    from tests.references import LambReference

    generator = torch.Generator().manual_seed(4)
    values = [torch.randn(shape, generator=generator, dtype=F64) * 30.0 for shape in SHAPES]
    params = [torch.nn.Parameter(v.clone()) for v in values]
    options = {"lr": 0.05, "weight_decay": 0.1, "stable_weight_decay": True}
    optimizer = Lamb(params, **options)
    reference = LambReference([v.clone() for v in values], **options)
    mutant = LambReference([v.clone() for v in values], mutation="trust_ratio_unclamped", **options)
    for _ in range(6):
        grads = [torch.randn(p.shape, generator=generator, dtype=F64) for p in params]
        for p, g in zip(params, grads):
            p.grad = g.clone()
        optimizer.step()
        reference.step([grads])
        mutant.step([grads])
        for p, expected in zip(params, reference.params[0]):
            torch.testing.assert_close(p.detach(), expected, rtol=1e-10, atol=1e-12)
    assert max(float((p.detach() - m).abs().max()) for p, m in zip(params, mutant.params[0])) > 1.0
