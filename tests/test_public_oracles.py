"""AdamAtan2 against an independent public implementation: lucidrains' ``adam-atan2-pytorch``.

That package implements the same update (``a * atan2(m_hat, b * sqrt(v_hat))``, decoupled weight decay
``p *= 1 - lr * wd``, cautious weight decay masked by ``update * p > 0``) in its own code, so agreement
on several shapes over many steps checks our bias corrections, the folding of constants into the
``atan2`` arguments, and the order of decay and update.
"""

from __future__ import annotations

import pytest
import torch

from lightning_opt import AdamAtan2

adam_atan2_pytorch = pytest.importorskip("adam_atan2_pytorch")

SHAPES = [(), (7,), (5, 3), (4, 3, 2, 2), (0,)]
CASES = [
    {"lr": 1e-2, "betas": (0.9, 0.99), "weight_decay": 0.0},
    {"lr": 3e-2, "betas": (0.8, 0.999), "weight_decay": 0.1},
    {"lr": 1e-2, "betas": (0.9, 0.95), "weight_decay": 0.5, "cautious_weight_decay": True},
    {"lr": 5e-3, "betas": (0.9, 0.999), "weight_decay": 0.0, "a": 2.0, "b": 0.5},
]


def _public_kwargs(case: dict) -> dict:
    public = {key: case[key] for key in ("lr", "betas", "weight_decay")}
    public["a"], public["b"] = case.get("a", 1.27), case.get("b", 1.0)
    public["cautious_wd"] = case.get("cautious_weight_decay", False)
    return public


# Every case eagerly; the compiled path (checked against eager by the common suite) once, on the richest case.
RUNS = [(case, False) for case in CASES] + [(CASES[2], True)]


@pytest.mark.parametrize(("case", "compile"), RUNS, ids=[f"case{i}" for i in range(len(CASES))] + ["case2-compiled"])
def test_adam_atan2_matches_lucidrains(case: dict, compile: bool) -> None:
    generator = torch.Generator().manual_seed(0)
    ours = [torch.randn(shape, generator=generator, dtype=torch.float64).requires_grad_() for shape in SHAPES]
    theirs = [p.detach().clone().requires_grad_() for p in ours]
    initial = [p.detach().clone() for p in ours]
    optimizer = AdamAtan2(ours, compile=compile, **case)
    public = adam_atan2_pytorch.AdamAtan2(theirs, **_public_kwargs(case))
    for _ in range(25):
        for mine, other in zip(ours, theirs):
            grad = torch.randn(mine.shape, generator=generator, dtype=torch.float64)
            mine.grad, other.grad = grad.clone(), grad.clone()
        optimizer.step()
        public.step()
    # The public cautious decay builds its mask with .float(), so its decay factor carries float32 rounding.
    rtol = 1e-6 if case.get("cautious_weight_decay") else 1e-10
    for mine, other, start in zip(ours, theirs, initial):
        torch.testing.assert_close(mine, other, rtol=rtol, atol=rtol * 1e-2)
        assert mine.numel() == 0 or not torch.equal(mine, start), "the parameters did not move"
