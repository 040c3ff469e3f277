"""Options set at construction (``compile``, ``skip_nonfinite``) survive a resume, a deep copy and pickling.

``torch.optim.Optimizer.load_state_dict``, which every Lightning ``ckpt_path`` resume calls, hands
``__setstate__`` only ``state`` and ``param_groups``: the optimizer it loads into must keep its own options.
"""

from __future__ import annotations

import contextlib
import copy
import pickle
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any

import lightning.pytorch as pl
import pytest
import torch

from lightning_opt.registry import REGISTRY, OptimizerSpec

SPECS = list(REGISTRY.values())
IDS = [spec.name for spec in SPECS]


def _make(spec: OptimizerSpec, params: list[torch.nn.Parameter], **kwargs: Any) -> torch.optim.Optimizer:
    return spec.cls(params, **{**spec.test_kwargs[0], **kwargs})


def _step(spec: OptimizerSpec, optimizer: torch.optim.Optimizer) -> None:
    optimizer.step(**({"loss": 0.7} if spec.loss_driven else {}))


def _nan_step(spec: OptimizerSpec, optimizer: torch.optim.Optimizer, params: list[torch.nn.Parameter]) -> None:
    for p in params:
        p.grad = torch.full_like(p, float("nan"))
    with pytest.warns(UserWarning, match="inf or NaN"):
        _step(spec, optimizer)


def _params() -> list[torch.nn.Parameter]:
    generator = torch.Generator().manual_seed(0)
    return [torch.nn.Parameter(torch.randn(3, 2, generator=generator)), torch.nn.Parameter(torch.randn(2))]


def _options(optimizer: torch.optim.Optimizer) -> tuple[Any, Any, Any]:
    return optimizer._compile, optimizer._skip_nonfinite, optimizer.nonfinite_skips  # type: ignore[attr-defined]


# ------------------------------------------------------------------------------------------- unit level
@pytest.mark.parametrize("spec", SPECS, ids=IDS)
def test_load_state_dict_keeps_the_options_of_the_optimizer_it_loads_into(spec: OptimizerSpec) -> None:
    params = _params()
    optimizer = _make(spec, params, skip_nonfinite=True)
    for p in params:
        p.grad = torch.ones_like(p)
    _step(spec, optimizer)
    _nan_step(spec, optimizer, params)
    assert optimizer.nonfinite_skips == 2

    optimizer.load_state_dict(optimizer.state_dict())  # what a resume does, on the optimizer it resumes
    assert _options(optimizer) == (False, True, 2)
    before = [p.detach().clone() for p in params]
    _nan_step(spec, optimizer, params)
    assert all(torch.equal(p, b) for p, b in zip(params, before))
    assert optimizer.nonfinite_skips == 4

    # A state dict saved by an optimizer built without the options does not switch them off either.
    plain = _make(spec, _params())
    compiled_params = _params()
    compiled = _make(spec, compiled_params, compile=True, skip_nonfinite=True)
    compiled.load_state_dict(plain.state_dict())
    assert _options(compiled) == (True, True, 0)


@pytest.mark.parametrize("how", ["deepcopy", "pickle"])
@pytest.mark.parametrize("spec", SPECS, ids=IDS)
def test_deepcopy_and_pickle_keep_the_options_and_the_counter(spec: OptimizerSpec, how: str) -> None:
    params = _params()
    optimizer = _make(spec, params, compile=True, skip_nonfinite=True)
    optimizer.nonfinite_skips = 3  # as if three tensors had been skipped: the counter travels with the copy
    clone = copy.deepcopy(optimizer) if how == "deepcopy" else pickle.loads(pickle.dumps(optimizer))
    assert _options(clone) == (True, True, 3)
    assert clone._plans == {}  # type: ignore[attr-defined]

    eager = _make(spec, _params(), skip_nonfinite=True)
    eager_clone = copy.deepcopy(eager) if how == "deepcopy" else pickle.loads(pickle.dumps(eager))
    clone_params = [p for group in eager_clone.param_groups for p in group["params"]]
    before = [p.detach().clone() for p in clone_params]
    _nan_step(spec, eager_clone, clone_params)
    assert all(torch.equal(p, b) for p, b in zip(clone_params, before))
    assert eager_clone.nonfinite_skips == 2


def test_a_pickle_made_before_the_options_existed_loads_with_the_defaults() -> None:
    spec = REGISTRY["NSGDA"]
    optimizer = _make(spec, _params(), compile=True, skip_nonfinite=True)
    state = torch.optim.Optimizer.__getstate__(optimizer)  # only defaults, state and param_groups
    old = spec.cls.__new__(spec.cls)
    old.__setstate__(dict(state))
    assert _options(old) == (False, False, 0)


# ------------------------------------------------------------------------------------------- Lightning
class TinyRegression(pl.LightningModule):
    """``Linear(4, 1)`` on 8 fixed samples, two batches per epoch; ``nan_at`` poisons one step's inputs."""

    def __init__(self, make_optimizer: Callable[[Any], torch.optim.Optimizer], nan_at: int | None = None) -> None:
        super().__init__()
        self.make_optimizer = make_optimizer
        self.nan_at = nan_at
        self.layer = torch.nn.Linear(4, 1)
        with torch.no_grad():
            generator = torch.Generator().manual_seed(0)
            for p in self.layer.parameters():
                p.copy_(torch.randn(p.shape, generator=generator))

    def training_step(self, batch: tuple[torch.Tensor, torch.Tensor], batch_idx: int) -> torch.Tensor:
        x, y = batch
        if self.global_step == self.nan_at:
            x = x * float("nan")
        return (self.layer(x) - y).square().mean()

    def configure_optimizers(self) -> torch.optim.Optimizer:
        return self.make_optimizer(self.parameters())

    def train_dataloader(self) -> torch.utils.data.DataLoader:
        generator = torch.Generator().manual_seed(1)
        inputs, targets = torch.randn(8, 4, generator=generator), torch.randn(8, 1, generator=generator)
        data = torch.utils.data.TensorDataset(inputs, targets)
        return torch.utils.data.DataLoader(data, batch_size=4, shuffle=False)


def _fit(module: TinyRegression, tmp_path: Path, max_epochs: int, ckpt_path: Path | None = None) -> pl.Trainer:
    trainer = pl.Trainer(
        accelerator="cpu", devices=1, max_epochs=max_epochs, logger=False, enable_checkpointing=False,
        enable_progress_bar=False, enable_model_summary=False, default_root_dir=tmp_path,
    )
    trainer.fit(module, ckpt_path=ckpt_path)
    return trainer


@pytest.mark.parametrize("spec", SPECS, ids=IDS)
def test_a_resumed_fit_still_skips_a_nan_batch(spec: OptimizerSpec, tmp_path: Path) -> None:
    """Lightning passes AdaLo a closure (32-bit precision), which gives it the loss."""

    def make_optimizer(params: Any) -> torch.optim.Optimizer:
        return spec.cls(params, **spec.test_kwargs[0], skip_nonfinite=True)

    first = _fit(TinyRegression(make_optimizer), tmp_path, max_epochs=1)
    checkpoint = tmp_path / "epoch1.ckpt"
    first.save_checkpoint(checkpoint)

    resumed = TinyRegression(make_optimizer, nan_at=3)  # step 3: the second batch after the resume
    with contextlib.ExitStack() as expected_warnings:
        expected_warnings.enter_context(pytest.warns(UserWarning, match="inf or NaN"))
        if spec.loss_driven:
            expected_warnings.enter_context(pytest.warns(UserWarning, match="non-finite loss"))
        trainer = _fit(resumed, tmp_path, max_epochs=3, ckpt_path=checkpoint)
    assert trainer.global_step == 6
    assert all(p.isfinite().all() for p in resumed.parameters())
    assert trainer.optimizers[0].nonfinite_skips == 2  # weight and bias of the NaN step, counted since the resume
    assert not torch.equal(resumed.layer.weight, first.lightning_module.layer.weight)  # it trained after the resume


def test_a_compiled_resume_is_bit_identical_to_the_uninterrupted_compiled_run(tmp_path: Path) -> None:
    spec = REGISTRY["AdamAtan2"]

    def make(compile_: bool) -> Callable[[Any], torch.optim.Optimizer]:
        return lambda params: spec.cls(params, lr=0.05, compile=compile_)

    with warnings.catch_warnings():
        warnings.filterwarnings("error", message=".*torch.compile failed")
        uninterrupted = TinyRegression(make(True))
        _fit(uninterrupted, tmp_path / "a", max_epochs=4)
        half = _fit(TinyRegression(make(True)), tmp_path / "b", max_epochs=2)
        checkpoint = tmp_path / "half.ckpt"
        half.save_checkpoint(checkpoint)
        resumed = TinyRegression(make(True))
        _fit(resumed, tmp_path / "c", max_epochs=4, ckpt_path=checkpoint)
        eager_resumed = TinyRegression(make(False))
        _fit(eager_resumed, tmp_path / "d", max_epochs=4, ckpt_path=checkpoint)
    for mine, expected in zip(resumed.parameters(), uninterrupted.parameters()):
        assert torch.equal(mine, expected)
    # The eager path gives other bits here, so the equality above shows the resumed run stayed compiled.
    assert not all(torch.equal(e, c) for e, c in zip(eager_resumed.parameters(), uninterrupted.parameters()))
