"""Stable weight decay (SWD, arXiv:2011.11152): the plain functions, pytorch_optimizer's AdamS as oracle, the cap,
and the whole-model statistic under DDP and ZeRO with two real CPU ranks.

The float64 re-derivation of SWD inside every Adam-family preset is the common suite's (``tests/references.py``:
the reference runs each step once on a copy of its state to collect this step's ``v_hat``).
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import lightning.pytorch as pl
import pytest
import torch
from pytorch_optimizer import AdamS
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from lightning_opt import AdaMomentum, DiffGrad, Lamb
from lightning_opt.transforms import stable_weight_decay_, stable_weight_decay_scale, whole_model_mean

F64 = torch.float64
SHAPES = [(5, 3), (7,), (2, 3, 2, 2), (), (0,), (40, 30)]


# ------------------------------------------------------------------------------------------ plain functions
def test_scale_is_one_over_the_root_of_the_mean_over_every_element():
    generator = torch.Generator().manual_seed(0)
    moments = [torch.rand(shape, generator=generator, dtype=F64) * 3 for shape in SHAPES]
    elements = torch.cat([m.reshape(-1) for m in moments])
    expected = 1.0 / (math.sqrt(float(elements.sum()) / elements.numel()) + 1e-3)
    torch.testing.assert_close(stable_weight_decay_scale(moments, eps=1e-3), torch.tensor(expected, dtype=F64))
    # not the mean of the per-tensor means: the large tensor weighs by its size
    per_tensor = sum(float(m.mean()) for m in moments if m.numel()) / 5
    assert abs(1.0 / (math.sqrt(per_tensor) + 1e-3) - expected) > 1e-3
    low = [m.to(torch.bfloat16) for m in moments]  # bfloat16 second moments: summed in float32
    assert stable_weight_decay_scale(low).dtype == torch.float32
    torch.testing.assert_close(
        stable_weight_decay_scale(low).double(), torch.tensor(expected, dtype=F64), rtol=1e-2, atol=0
    )


def test_a_non_finite_tensor_is_left_out_of_the_mean():
    good = [torch.full((4,), 4.0), torch.full((2, 2), 16.0)]
    bad = torch.tensor([float("nan"), 1.0])
    without = stable_weight_decay_scale(good, eps=0.0)
    torch.testing.assert_close(stable_weight_decay_scale([*good, bad], eps=0.0), without)
    assert stable_weight_decay_scale([torch.tensor([float("inf")])]).isnan()  # nothing left: NaN, no decay read
    with pytest.raises(ValueError, match=r"^Invalid sums: \[\]"):
        whole_model_mean([], [])


def test_decay_is_capped_at_the_whole_parameter():
    """A tiny mean second moment gives lr * wd * scale > 1: the parameter is decayed to 0, not flipped."""
    param = torch.tensor([1.0, -2.0])
    stable_weight_decay_(param, 1e-3, torch.tensor(1e4))
    assert torch.equal(param, torch.zeros(2))
    param = torch.tensor([1.0, -2.0])
    stable_weight_decay_(param, 1e-3, 100.0)
    torch.testing.assert_close(param, torch.tensor([0.9, -1.8]))


def test_the_optimizer_caps_the_decay_too():
    param = nn.Parameter(torch.tensor([1.0, -2.0, 3.0], dtype=F64))
    param.grad = torch.full((3,), 1e-9, dtype=F64)  # v_hat = 1e-18: lr * wd / (1e-9 + eps) >> 1
    Lamb([param], lr=0.1, weight_decay=0.5, trust_ratio=False, stable_weight_decay=True, eps=1e-12).step()
    adam_step = 0.1 * 1e-9 / (1e-9 + 1e-12)  # m_hat / (sqrt(v_hat) + eps), after the parameter decayed to 0
    torch.testing.assert_close(param.detach(), torch.full((3,), -adam_step, dtype=F64), rtol=1e-12, atol=0)


# ------------------------------------------------------------------------------------------ the oracle
def make_groups(dtype=F64, seed=0):
    generator = torch.Generator().manual_seed(seed)
    params = [nn.Parameter(torch.randn(shape, generator=generator, dtype=F64).to(dtype)) for shape in SHAPES]
    return params, [{"params": params[:3]}, {"params": params[3:], "lr": 0.02, "weight_decay": 0.3}]


@pytest.mark.parametrize("compile", [False, True], ids=["eager", "compiled"])
def test_adamw_with_swd_matches_pytorch_optimizers_adams(compile):
    """Lamb(trust_ratio=False) is AdamW; with stable_weight_decay it is the authors' AdamS (pytorch_optimizer's,
    which also adds eps to sqrt(mean v_hat)), over two groups whose tensors share one statistic."""
    ours, groups = make_groups()
    theirs, their_groups = make_groups()
    optimizer = Lamb(
        groups, lr=0.05, weight_decay=0.1, eps=1e-8, trust_ratio=False, stable_weight_decay=True, compile=compile
    )
    oracle = AdamS(their_groups, lr=0.05, weight_decay=0.1, eps=1e-8, foreach=False)
    generator = torch.Generator().manual_seed(1)
    plain, plain_groups = make_groups()
    adamw = Lamb(plain_groups, lr=0.05, weight_decay=0.1, eps=1e-8, trust_ratio=False)
    for step in range(10):
        for a, b, c in zip(ours, theirs, plain):
            scale = 10.0 ** (step % 3 - 1)  # gradients of changing size: the statistic follows them
            grad = torch.randn(a.shape, generator=generator, dtype=F64) * scale
            a.grad, b.grad, c.grad = grad.clone(), grad.clone(), grad.clone()
        optimizer.step()
        oracle.step()
        adamw.step()
        for a, b in zip(ours, theirs):
            torch.testing.assert_close(a.detach(), b.detach(), rtol=1e-10, atol=1e-12)
    assert max(float((a - c).detach().abs().max()) for a, c in zip(ours, plain) if a.numel()) > 1e-2  # SWD acted


@pytest.mark.parametrize("cls", [DiffGrad, AdaMomentum], ids=["second-moment-of-g", "of-the-momentum"])
def test_statistic_covers_groups_without_swd_and_is_computed_once(cls):
    """The mean spans every tensor with a gradient, also those of a group that does not use SWD itself."""
    _, groups = make_groups()
    groups[0]["stable_weight_decay"] = False
    optimizer = cls(groups, lr=0.05, weight_decay=0.1, stable_weight_decay=True)
    for param in (p for g in groups for p in g["params"]):
        param.grad = torch.randn_like(param)
    statistics = optimizer.step_statistics()
    states = [optimizer.state.get(p, {}) for g in groups for p in g["params"]]
    assert all(not state for state in states), "the statistic is computed before any update, out of place"
    if cls is DiffGrad:
        v_hat = [(1 - 0.999) * p.grad.square() / (1 - 0.999) for g in groups for p in g["params"]]
        torch.testing.assert_close(statistics["swd_scale"], stable_weight_decay_scale(v_hat), rtol=1e-12, atol=0)
    optimizer.step()
    assert optimizer.step_statistics().keys() == {"swd_scale"}


# ------------------------------------------------------------------------------------------ two DDP ranks
INPUTS = torch.randn(16, 6, generator=torch.Generator().manual_seed(5))
TARGETS = torch.randn(16, 3, generator=torch.Generator().manual_seed(6)) * torch.linspace(0.1, 3.0, 16)[:, None]
OPTIONS = {"lr": 0.05, "weight_decay": 0.5, "trust_ratio": False, "stable_weight_decay": True}


def small_model() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(6, 8), nn.Tanh(), nn.Linear(8, 3))


class Regression(pl.LightningModule):
    def __init__(self, out: Path, zero: bool) -> None:
        super().__init__()
        self.model = small_model()
        self.out, self.zero = out, zero

    def training_step(self, batch: Any, batch_idx: int) -> torch.Tensor:
        inputs, targets = batch
        return nn.functional.mse_loss(self.model(inputs), targets)

    def configure_optimizers(self) -> torch.optim.Optimizer:
        if self.zero:  # each rank's Lamb holds only its shard of the parameters
            from torch.distributed.optim import ZeroRedundancyOptimizer

            return ZeroRedundancyOptimizer(self.model.parameters(), optimizer_class=Lamb, **OPTIONS)
        return Lamb(self.model.parameters(), **OPTIONS)

    def train_dataloader(self) -> DataLoader:
        rows = list(range(self.global_rank, 16, 2))  # different data on the two ranks: rows r, r + 2, ...
        return DataLoader(TensorDataset(INPUTS[rows], TARGETS[rows]), batch_size=4)

    def on_train_end(self) -> None:
        optimizer = self.trainer.optimizers[0]
        inner = getattr(optimizer, "optim", optimizer)
        local = [id(p) for g in inner.param_groups for p in g["params"]]
        names = [n for n, p in self.model.named_parameters() if id(p) in local]
        final = {n: p.detach().clone() for n, p in self.model.named_parameters()}
        torch.save({"final": final, "local": names}, self.out / f"rank{self.global_rank}.pt")


def replay(shards: list[list[str]] | None = None) -> dict[str, torch.Tensor]:
    """The same 4 steps in one process on the whole batch of both ranks; ``shards``: one optimizer per shard
    (each with its own statistic), as ZeRO would give without the all-reduce."""
    model = small_model()
    named = dict(model.named_parameters())
    optimizers = [Lamb([named[n] for n in shard], **OPTIONS) for shard in (shards or [list(named)])]
    rows = [list(range(0, 16, 2)), list(range(1, 16, 2))]
    for _ in range(2):  # epochs
        for k in range(2):
            losses = [
                nn.functional.mse_loss(model(INPUTS[r[4 * k : 4 * k + 4]]), TARGETS[r[4 * k : 4 * k + 4]])
                for r in rows
            ]
            model.zero_grad()
            ((losses[0] + losses[1]) / 2).backward()
            for optimizer in optimizers:
                optimizer.step()
    return {n: p.detach() for n, p in model.named_parameters()}


@pytest.mark.own_process  # a fresh interpreter: ddp_fork cannot fork once CUDA is initialised
@pytest.mark.parametrize("zero", [False, True], ids=["ddp", "ddp-zero"])
def test_the_statistic_is_the_whole_models_on_two_ranks(tmp_path: Path, zero: bool) -> None:
    pl.Trainer(
        max_epochs=2, accelerator="cpu", devices=2, strategy="ddp_fork", logger=False, enable_checkpointing=False,
        enable_progress_bar=False, enable_model_summary=False, use_distributed_sampler=False,
    ).fit(Regression(tmp_path, zero))
    rank0, rank1 = (torch.load(tmp_path / f"rank{r}.pt") for r in (0, 1))
    whole = replay()
    for name in whole:
        assert torch.equal(rank0["final"][name], rank1["final"][name]), name
        torch.testing.assert_close(rank0["final"][name], whole[name], rtol=1e-5, atol=1e-6)
    assert max(float((whole[n] - p).abs().max()) for n, p in small_model().named_parameters()) > 1e-2
    if zero:  # each rank stepped only its shard, yet the decay used the whole model's mean
        assert rank0["local"] and rank1["local"] and not set(rank0["local"]) & set(rank1["local"])
        per_shard = replay([rank0["local"], rank1["local"]])
        assert max(float((per_shard[n] - whole[n]).abs().max()) for n in whole) > 1e-4
