"""Warm-up-free step bounds (arXiv:2505.21910): the factors against a float64 re-derivation, and the callback
on real Trainers against a plain PyTorch loop that applies the reference factors itself."""

from __future__ import annotations

import copy
import math
import pickle
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import lightning.pytorch as pl
import numpy as np
import pytest
import torch
from lightning.pytorch.callbacks import ModelCheckpoint
from lightning.pytorch.plugins.precision import MixedPrecision
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from lightning_opt import AdamAtan2
from lightning_opt.callbacks.warmup_free import (
    WarmupFreeScaling,
    largest_singular_value,
    power_iteration,
    scale_steps_,
    warmup_free_factors,
)

F64 = torch.float64
TAU = 0.01


# ---------------------------------------------------------------------------------------------- references
def sigma1_reference(tensor: torch.Tensor) -> float:
    """sigma_1 of the tensor viewed as (shape[0], -1) (one row for 1-D and 0-d), by numpy's float64 SVD."""
    array = tensor.detach().to(F64).cpu().numpy()
    if array.size == 0:
        return 0.0
    matrix = array.reshape(array.shape[0], -1) if array.ndim >= 2 else array.reshape(1, -1)
    return float(np.linalg.svd(matrix, compute_uv=False)[0])


def factors_reference(weights: Sequence[torch.Tensor], steps: Sequence[torch.Tensor], tau: float, mode: str) -> list:
    """f_i = min(1, tau * sigma_1(W_i) / sigma_1(S_i)); 1 where sigma_1(W_i) = 0 or the step is 0 or not
    finite; the global mode gives every tensor the minimum."""
    factors = []
    for weight, step in zip(weights, steps):
        sigma_w = sigma1_reference(weight)
        sigma_s = sigma1_reference(step) if torch.isfinite(step).all() else math.nan
        if sigma_w > 0 and sigma_s > 0 and math.isfinite(sigma_s):
            factors.append(min(1.0, tau * sigma_w / sigma_s))
        else:
            factors.append(1.0)
    if mode == "global" and factors:
        factors = [min(factors)] * len(factors)
    return factors


SHAPES = [(5, 3), (3, 7), (4, 2, 3, 3), (6, 1), (1, 6), (7,), ()]


def random_pairs(seed: int, step_scale: float) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
    generator = torch.Generator().manual_seed(seed)
    weights = [torch.randn(shape, generator=generator, dtype=F64) for shape in SHAPES]
    # Steps of very different sizes, so that some tensors are bounded and some are not.
    steps = [
        torch.randn(shape, generator=generator, dtype=F64) * step_scale * 10.0 ** -(i % 4)
        for i, shape in enumerate(SHAPES)
    ]
    return weights, steps


# ---------------------------------------------------------------------------------------------- the functions
@pytest.mark.parametrize("mode", ["per_layer", "global"])
@pytest.mark.parametrize("seed", [0, 1, 2])
def test_factors_match_the_float64_reference(mode, seed):
    weights, steps = random_pairs(seed, step_scale=0.05)
    expected = factors_reference(weights, steps, TAU, mode)
    got = warmup_free_factors(weights, steps, tau=TAU, mode=mode)
    assert got.dtype == F64
    np.testing.assert_allclose(got.numpy(), expected, rtol=1e-12, atol=0)
    assert min(expected) < 0.5 and (mode == "global" or max(expected) == 1.0), "some tensors bounded, some not"


def test_factors_are_not_a_frobenius_or_max_norm_ratio():
    """sigma_1 differs from the Frobenius norm on a full-rank matrix: a reference using the wrong norm fails."""
    weight, step = torch.eye(4, dtype=F64), torch.ones(4, 4, dtype=F64)
    got = float(warmup_free_factors([weight], [step], tau=1.0)[0])
    assert got == pytest.approx(1.0 / 4.0, rel=1e-14)  # sigma_1(I) = 1, sigma_1(ones(4, 4)) = 4
    assert got != pytest.approx(float(weight.norm() / step.norm()))


def test_factors_leave_zero_weights_zero_steps_and_nonfinite_steps_alone():
    weights = [torch.zeros(3, 3), torch.ones(3, 3), torch.ones(3, 3), torch.ones(3, 3), torch.ones(0, 3)]
    steps = [torch.ones(3, 3), torch.zeros(3, 3), torch.full((3, 3), math.nan), torch.full((3, 3), math.inf),
             torch.ones(0, 3)]
    assert warmup_free_factors(weights, steps, tau=TAU).tolist() == [1.0] * 5
    # ...and they do not pull the global minimum down
    weights.append(torch.eye(3))
    steps.append(torch.eye(3))
    assert warmup_free_factors(weights, steps, tau=TAU, mode="global").tolist() == pytest.approx([TAU] * 6)


@pytest.mark.parametrize("shape", SHAPES + [(0, 4), (2, 0, 3)])
def test_largest_singular_value_matches_numpy(shape):
    tensor = torch.randn(shape, generator=torch.Generator().manual_seed(3), dtype=F64)
    assert float(largest_singular_value(tensor)) == pytest.approx(sigma1_reference(tensor), rel=1e-12, abs=0)


def test_largest_singular_value_of_non_contiguous_and_low_precision_tensors():
    base = torch.randn(6, 4, generator=torch.Generator().manual_seed(4))
    transposed = base.T
    assert not transposed.is_contiguous()
    assert float(largest_singular_value(transposed)) == pytest.approx(sigma1_reference(transposed), rel=1e-5)
    half = base.to(torch.bfloat16)
    value = largest_singular_value(half)
    assert value.dtype == torch.float32
    assert float(value) == pytest.approx(sigma1_reference(half.float()), rel=1e-5)


@pytest.mark.parametrize("shape", [(5, 3), (3, 8), (4, 2, 3, 3)])
def test_power_iteration_converges_from_below_and_warm_starts(shape):
    tensor = torch.randn(shape, generator=torch.Generator().manual_seed(5), dtype=F64)
    exact = sigma1_reference(tensor)
    one, vector = power_iteration(tensor, None, 1)
    assert float(one) <= exact * (1 + 1e-12)
    converged, vector = power_iteration(tensor, None, 500)
    assert float(converged) == pytest.approx(exact, rel=1e-9)
    warm, _ = power_iteration(tensor, vector, 1)  # from the converged vector, one iteration is exact
    assert float(warm) == pytest.approx(exact, rel=1e-9)
    # a fixed start: the training's random stream is not consumed
    state = torch.random.get_rng_state()
    again, _ = power_iteration(tensor, None, 1)
    assert torch.equal(torch.random.get_rng_state(), state) and float(again) == float(one)


def test_power_iteration_of_a_zero_matrix_and_of_vectors():
    sigma, vector = power_iteration(torch.zeros(3, 4), None, 3)
    assert float(sigma) == 0.0 and torch.isfinite(vector).all()
    sigma, vector = power_iteration(torch.tensor([3.0, 4.0]), None, 1)
    assert float(sigma) == 5.0 and vector is None


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32, torch.bfloat16])
def test_scale_steps_moves_each_tensor_by_its_factor(dtype):
    generator = torch.Generator().manual_seed(6)
    previous = [torch.randn(shape, generator=generator).to(dtype) for shape in [(3, 4), (5,), ()]]
    params = [p + torch.randn(p.shape, generator=generator).to(dtype) for p in previous]
    untouched = params[1].clone()
    factors = [0.3, 1.0, 0.5]
    expected = [old.to(F64) + f * (new.to(F64) - old.to(F64)) for old, new, f in zip(previous, params, factors)]
    scale_steps_(params, previous, factors)
    assert torch.equal(params[1], untouched), "a factor of 1 leaves the tensor bit for bit"
    tolerance = {torch.float64: 1e-14, torch.float32: 1e-6, torch.bfloat16: 1e-2}[dtype]
    for param, reference in zip(params, expected):
        assert param.dtype == dtype
        torch.testing.assert_close(param.to(F64), reference.to(dtype).to(F64), rtol=tolerance, atol=tolerance)


# ---------------------------------------------------------------------------------------------- validation
@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"tau": 0.0}, "Invalid tau: 0.0"),
        ({"tau": -0.1}, "Invalid tau: -0.1"),
        ({"tau": math.inf}, "Invalid tau: inf"),
        ({"tau": math.nan}, "Invalid tau: nan"),
        ({"tau": "0.01"}, "Invalid tau: '0.01'"),
        ({"tau": True}, "Invalid tau: True"),
        ({"mode": "layer"}, "Invalid mode: 'layer'"),
        ({"mode": None}, "Invalid mode: None"),
        ({"ratio": "grad"}, "Invalid ratio: 'grad'"),
        ({"power_iterations": 0}, "Invalid power_iterations: 0"),
        ({"power_iterations": 2.0}, "Invalid power_iterations: 2.0"),
        ({"power_iterations": True}, "Invalid power_iterations: True"),
        ({"matrices_only": "yes"}, "Invalid matrices_only: 'yes'"),
        ({"log_per_layer": 1}, "Invalid log_per_layer: 1"),
        ({"include": []}, "Invalid include: []"),
        ({"name": ""}, "Invalid name: ''"),
    ],
)
def test_invalid_arguments_are_named_with_their_value(kwargs, message):
    with pytest.raises(ValueError, match=message.replace("[", r"\[").replace("]", r"\]")):
        WarmupFreeScaling(**kwargs)


def test_invalid_function_arguments():
    w, s = [torch.ones(2, 2)], [torch.ones(2, 2)]
    with pytest.raises(ValueError, match="Invalid tau: 0"):
        warmup_free_factors(w, s, tau=0)
    with pytest.raises(ValueError, match="Invalid mode: 'both'"):
        warmup_free_factors(w, s, mode="both")
    with pytest.raises(ValueError, match="Invalid steps: 2 tensors for 1 weights"):
        warmup_free_factors(w, s * 2)
    with pytest.raises(ValueError, match=r"Invalid steps: tensor 0 has shape \(2, 3\), its weight \(2, 2\)"):
        warmup_free_factors(w, [torch.ones(2, 3)])


def test_options_survive_pickle_copy_and_load_state_dict():
    callback = WarmupFreeScaling(tau=0.05, mode="global", ratio="gradient", power_iterations=3, exclude="*.bias")
    for clone in (pickle.loads(pickle.dumps(callback)), copy.deepcopy(callback)):
        assert (clone.tau, clone.mode, clone.ratio, clone.power_iterations) == (0.05, "global", "gradient", 3)
        assert clone.state_key == callback.state_key
    other = WarmupFreeScaling()
    other.load_state_dict(callback.state_dict())
    assert (other.tau, other.mode) == (0.01, "per_layer"), "the state holds measurements, not options"


# ---------------------------------------------------------------------------------------------- on Trainers
def regression_data() -> TensorDataset:
    generator = torch.Generator().manual_seed(0)
    x = torch.randn(64, 6, generator=generator)
    y = torch.sin(x @ torch.randn(6, 2, generator=generator))
    return TensorDataset(x, y)


class Regression(pl.LightningModule):
    """A small MLP, a conv-shaped weight and an unused layer (no gradient ever), trained with torch's AdamW."""

    def __init__(self, lr: float = 0.05, schedule: bool = True, optimizer: str = "AdamW", batch_size: int = 16) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.net = nn.Sequential(nn.Linear(6, 16), nn.Tanh(), nn.Linear(16, 2))
        self.kernel = nn.Parameter(torch.randn(3, 2, 2, 2) * 0.3)  # a 4-D weight, seen as (3, 8)
        self.unused = nn.Linear(4, 4)  # never in the forward: grad stays None
        self.frozen = nn.Parameter(torch.randn(3, 3), requires_grad=False)
        self.lr, self.schedule, self.optimizer_name, self.batch_size = lr, schedule, optimizer, batch_size

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x) + 0.1 * (self.kernel.sum() * x[:, :2])

    def training_step(self, batch: Any, batch_idx: int) -> torch.Tensor:
        x, y = batch
        return nn.functional.mse_loss(self(x), y)

    def configure_optimizers(self) -> Any:
        return make_optimizer(self, self.lr, self.schedule, self.optimizer_name)

    def train_dataloader(self) -> DataLoader:
        data: Any = regression_data()
        if self._trainer is not None and self.trainer.world_size > 1:  # rank r takes rows r, r + world, ...
            data = torch.utils.data.Subset(data, range(self.trainer.global_rank, len(data), self.trainer.world_size))
        return DataLoader(data, batch_size=self.batch_size, shuffle=False)


def make_optimizer(module: nn.Module, lr: float, schedule: bool, name: str) -> Any:
    params = [p for p in module.parameters() if p.requires_grad]
    if name == "AdamW":
        optimizer = torch.optim.AdamW(params, lr=lr, weight_decay=0.1)
    elif name == "AdamAtan2":  # one of this package's optimizers (the engine's)
        optimizer = AdamAtan2(params, lr=lr, weight_decay=0.1)
    else:
        optimizer = torch.optim.SGD(params, lr=lr)
    if not schedule:
        return optimizer
    # an lr that changes at every step (a decay, no warm-up)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: 1.0 / (1.0 + 0.3 * step))
    return {"optimizer": optimizer, "lr_scheduler": {"scheduler": scheduler, "interval": "step"}}


def fit(module: pl.LightningModule, callbacks: Sequence[pl.Callback], max_steps: int, **trainer: Any) -> pl.Trainer:
    options = {"logger": False, "enable_checkpointing": False, "enable_progress_bar": False,
               "enable_model_summary": False, "accelerator": "cpu", "devices": 1, **trainer}
    trainer_ = pl.Trainer(max_steps=max_steps, callbacks=list(callbacks), **options)
    trainer_.fit(module)
    return trainer_


def plain_loop(
    steps: int,
    mode: str,
    tau: float,
    measured: Callable[[str, torch.Tensor], bool],
    selected: Callable[[str], bool] = lambda name: True,
    **model: Any,
):
    """The same training in a plain loop: after each step, the reference factors rescale the steps of the
    measured tensors (per layer) or, in the global mode, the one factor rescales every selected step."""
    module = Regression(**model)
    config = module.configure_optimizers()
    optimizer = config["optimizer"] if isinstance(config, dict) else config
    scheduler = config["lr_scheduler"]["scheduler"] if isinstance(config, dict) else None
    batches = list(module.train_dataloader())
    trainable = [(n, p) for n, p in module.named_parameters() if p.requires_grad and selected(n)]
    chosen = [(n, p) for n, p in trainable if measured(n, p)]
    all_factors = []
    for step in range(steps):
        optimizer.zero_grad()
        module.training_step(batches[step % len(batches)], step).backward()
        before = {n: p.detach().clone() for n, p in trainable}
        optimizer.step()
        with torch.no_grad():
            factors = factors_reference(
                [before[n] for n, _ in chosen], [p.detach() - before[n] for n, p in chosen], tau, mode
            )
            scaled = dict(zip([n for n, _ in chosen], factors))
            for name, p in trainable:
                f = factors[0] if mode == "global" else scaled.get(name, 1.0)
                if f != 1.0:
                    b = before[name]
                    p.copy_((b.to(F64) + f * (p.to(F64) - b.to(F64))).float())
        all_factors.append(factors)
        if scheduler is not None:
            scheduler.step()
    return module, all_factors


def assert_same_parameters(a: nn.Module, b: nn.Module, rtol: float = 1e-5, atol: float = 1e-6) -> None:
    for (name, p), (_, q) in zip(a.named_parameters(), b.named_parameters()):
        torch.testing.assert_close(p, q, rtol=rtol, atol=atol, msg=lambda m, name=name: f"{name}: {m}")


def matrices(name: str, param: torch.Tensor) -> bool:
    return param.dim() >= 2


@pytest.mark.parametrize("optimizer", ["AdamW", "AdamAtan2"])
@pytest.mark.parametrize("mode", ["per_layer", "global"])
def test_callback_takes_the_reference_steps_with_a_scheduler(mode, optimizer):
    steps = 8
    callback = WarmupFreeScaling(tau=TAU, mode=mode)
    module = Regression(optimizer=optimizer)
    trainer = fit(module, [callback], max_steps=steps)
    expected, factors = plain_loop(steps, mode, TAU, matrices, optimizer=optimizer)
    assert_same_parameters(module, expected)
    # the run was bounded (or this test proves nothing), and the unbounded run ends elsewhere
    assert min(min(f) for f in factors) < 0.5 and callback.scaled_steps > 0
    assert callback.steps == steps == trainer.global_step
    unbounded = Regression(optimizer=optimizer)
    fit(unbounded, [], max_steps=steps)
    assert not torch.allclose(unbounded.net[0].weight, module.net[0].weight, rtol=1e-3, atol=1e-4)
    # the callback's last factors are the reference's, by parameter name
    names = [n for n, p in module.named_parameters() if p.requires_grad and p.dim() >= 2]
    assert list(callback.last_factors) == names
    np.testing.assert_allclose(list(callback.last_factors.values()), factors[-1], rtol=1e-4)
    # the scheduler's lr is untouched: lr_0 / (1 + 0.3 * steps)
    assert trainer.optimizers[0].param_groups[0]["lr"] == pytest.approx(0.05 / (1 + 0.3 * steps), rel=1e-12)
    if mode == "global":
        assert len(set(callback.last_factors.values())) == 1


def test_filters_and_vectors_are_bounded_as_selected():
    steps = 5
    callback = WarmupFreeScaling(tau=TAU, matrices_only=False, exclude="net.2.*")
    module = Regression()
    fit(module, [callback], max_steps=steps)
    expected, _ = plain_loop(steps, "per_layer", TAU, lambda n, p: True, lambda n: not n.startswith("net.2."))
    assert_same_parameters(module, expected)
    assert "net.0.bias" in callback.last_factors and "net.2.weight" not in callback.last_factors


def test_parameters_without_gradients_are_left_alone():
    module = Regression()
    unused = {n: p.detach().clone() for n, p in module.named_parameters() if n.startswith(("unused", "frozen"))}
    for mode in ("per_layer", "global"):
        callback = WarmupFreeScaling(tau=TAU, mode=mode, matrices_only=False)
        fit(module, [callback], max_steps=3)
        for name, value in unused.items():
            assert torch.equal(dict(module.named_parameters())[name], value), name
        assert "frozen" not in callback.last_factors  # not in the optimizer
        assert min(callback.last_factors.values()) < 1.0
        if mode == "per_layer":
            assert callback.last_factors["unused.weight"] == 1.0  # a zero step: not bounded
    gradient = WarmupFreeScaling(tau=TAU, ratio="gradient")
    fit(Regression(), [gradient], max_steps=2)
    assert "unused.weight" not in gradient.last_factors  # no gradient to measure


def test_gradient_ratio_equals_update_ratio_for_plain_sgd():
    """For SGD without momentum the step is exactly -lr * grad, so both ratios give the same run."""
    runs = []
    for ratio in ("update", "gradient"):
        module = Regression(lr=0.5, optimizer="SGD")
        callback = WarmupFreeScaling(tau=TAU, ratio=ratio)
        fit(module, [callback], max_steps=4)
        runs.append((module, callback))
    assert_same_parameters(runs[0][0], runs[1][0], rtol=1e-5, atol=1e-6)
    assert runs[0][1].scaled_steps > 0
    update, gradient = runs[0][1].last_factors, runs[1][1].last_factors
    assert update.pop("unused.weight") == 1.0 and "unused.weight" not in gradient  # a zero step, no gradient
    np.testing.assert_allclose(list(update.values()), [gradient[name] for name in update], rtol=1e-4)


def test_gradient_accumulation_and_logging():
    callback = WarmupFreeScaling(tau=TAU, log_per_layer=True)
    trainer = fit(Regression(schedule=False), [callback], max_steps=3, accumulate_grad_batches=2,
                  log_every_n_steps=1)
    assert callback.steps == trainer.global_step == 3
    metrics = trainer.callback_metrics
    factors = list(callback.last_factors.values())
    assert float(metrics["WarmupFreeScaling/factor_min"]) == pytest.approx(min(factors))
    assert float(metrics["WarmupFreeScaling/factor_mean"]) == pytest.approx(sum(factors) / len(factors))
    assert float(metrics["WarmupFreeScaling/ratio_max"]) == pytest.approx(max(callback.last_ratios.values()))
    assert float(metrics["WarmupFreeScaling/factor/net.0.weight"]) == pytest.approx(
        callback.last_factors["net.0.weight"])
    assert 0.0 < float(metrics["WarmupFreeScaling/bounded"]) <= 1.0


class FirstStepOverflows(Regression):
    """The first batch's loss is inf: a GradScaler skips that step (the optimizer's step is never called)."""

    def training_step(self, batch: Any, batch_idx: int) -> torch.Tensor:
        loss = super().training_step(batch, batch_idx)
        return loss * math.inf if batch_idx == 0 else loss


def test_a_step_skipped_by_the_grad_scaler_is_not_measured():
    module = FirstStepOverflows(schedule=False)
    initial = {n: p.detach().clone() for n, p in module.named_parameters()}
    callback = WarmupFreeScaling(tau=TAU)
    scaler = torch.amp.GradScaler("cpu", init_scale=2.0**8)
    fit(module, [callback], max_steps=3, plugins=[MixedPrecision("16-mixed", "cpu", scaler=scaler)])
    assert callback.steps == 2 and callback.scaled_steps > 0  # three optimizer steps, the first one skipped
    assert all(torch.isfinite(p).all() for p in module.parameters())
    assert not torch.equal(module.net[0].weight, initial["net.0.weight"])


class Manual(Regression):
    """The same training under manual optimization: the hooks are on the optimizer, so it is bounded too."""

    def __init__(self) -> None:
        super().__init__(schedule=False)
        self.automatic_optimization = False

    def training_step(self, batch: Any, batch_idx: int) -> None:
        optimizer = self.optimizers()
        optimizer.zero_grad()
        self.manual_backward(super().training_step(batch, batch_idx))
        optimizer.step()


def test_manual_optimization_is_bounded_too():
    module, callback = Manual(), WarmupFreeScaling(tau=TAU)
    fit(module, [callback], max_steps=4)
    expected, _ = plain_loop(4, "per_layer", TAU, matrices, schedule=False)
    assert_same_parameters(module, expected)
    assert callback.steps == 4 and callback.scaled_steps > 0


def test_a_second_fit_does_not_register_the_hooks_twice():
    callback = WarmupFreeScaling(tau=TAU)
    module = Regression(schedule=False)
    fit(module, [callback], max_steps=2)
    fit(module, [callback], max_steps=2)
    assert callback.steps == 4


@pytest.mark.parametrize("power_iterations", [None, 1])
def test_resume_from_a_checkpoint_is_bit_identical(tmp_path, power_iterations):
    steps, cut = 8, 4

    def callbacks(directory=None):
        cbs: list[pl.Callback] = [WarmupFreeScaling(tau=TAU, power_iterations=power_iterations)]
        if directory is not None:
            cbs.append(ModelCheckpoint(dirpath=directory, every_n_train_steps=cut, save_top_k=-1))
        return cbs

    whole = Regression()
    whole_callbacks = callbacks()
    fit(whole, whole_callbacks, max_steps=steps, enable_checkpointing=True, default_root_dir=tmp_path / "whole")

    first = Regression()
    fit(first, callbacks(tmp_path / "ckpt"), max_steps=cut, enable_checkpointing=True,
        default_root_dir=tmp_path / "first")
    checkpoint = next((tmp_path / "ckpt").glob("*.ckpt"))
    loaded = torch.load(checkpoint, weights_only=True)
    state = next(v for k, v in loaded["callbacks"].items() if k.startswith("WarmupFreeScaling"))
    assert state["steps"] == cut and (power_iterations is None) == (not state["vectors"])

    resumed = Regression()
    resumed_callbacks = callbacks()
    trainer = pl.Trainer(max_steps=steps, callbacks=resumed_callbacks, logger=False, enable_progress_bar=False,
                         enable_model_summary=False, accelerator="cpu", devices=1,
                         default_root_dir=tmp_path / "resumed")
    trainer.fit(resumed, ckpt_path=checkpoint)
    for (name, p), (_, q) in zip(whole.named_parameters(), resumed.named_parameters()):
        assert torch.equal(p, q), name
    assert resumed_callbacks[0].state_dict().keys() == whole_callbacks[0].state_dict().keys()
    assert resumed_callbacks[0].steps == whole_callbacks[0].steps == steps
    assert resumed_callbacks[0].last_factors == whole_callbacks[0].last_factors

    if power_iterations is not None:
        # the vectors matter: a resume that forgets them takes other steps
        forgetful = Regression()
        stripped = dict(loaded)
        stripped["callbacks"] = {k: {**v, "vectors": {}} if k.startswith("WarmupFreeScaling") else v
                                 for k, v in loaded["callbacks"].items()}
        torch.save(stripped, tmp_path / "stripped.ckpt")
        trainer = pl.Trainer(max_steps=steps, callbacks=callbacks(), logger=False, enable_progress_bar=False,
                             enable_model_summary=False, accelerator="cpu", devices=1,
                             default_root_dir=tmp_path / "forgetful")
        trainer.fit(forgetful, ckpt_path=tmp_path / "stripped.ckpt")
        assert not torch.equal(forgetful.net[0].weight, whole.net[0].weight)


class RankDump(pl.Callback):
    """Each DDP rank writes its final weights and the warm-up-free callback's factors to ``rank<N>.pt``."""

    def __init__(self, directory: Any) -> None:
        self.directory = directory

    def on_train_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        bound = next(c for c in trainer.callbacks if isinstance(c, WarmupFreeScaling))
        record = {
            "weights": {n: p.detach().clone() for n, p in pl_module.named_parameters()},
            "factors": dict(bound.last_factors),
            "scaled_steps": bound.scaled_steps,
            "steps": bound.steps,
        }
        torch.save(record, self.directory / f"rank{trainer.global_rank}.pt")


@pytest.mark.own_process  # a fresh interpreter: ddp_fork cannot fork once CUDA is initialised
@pytest.mark.parametrize("mode", ["per_layer", "global"])
def test_ddp_ranks_take_the_same_bounded_steps_as_the_big_batch(tmp_path, mode):
    """Two ranks of 16 rows each: the all-reduced gradient is the 32-row batch's, so every rank's steps, and
    factors, are the single-process reference's, without any communication by the callback."""
    steps = 4
    fit(Regression(batch_size=16), [WarmupFreeScaling(tau=TAU, mode=mode), RankDump(tmp_path)], max_steps=steps,
        strategy="ddp_fork_find_unused_parameters_true", devices=2,  # the unused layer
        use_distributed_sampler=False)  # Lightning's would shuffle: the ranks split each 32-row batch instead
    rank0, rank1 = (torch.load(tmp_path / f"rank{r}.pt") for r in (0, 1))
    assert rank0["factors"] == rank1["factors"] and rank0["steps"] == rank1["steps"] == steps
    for name in rank0["weights"]:
        assert torch.equal(rank0["weights"][name], rank1["weights"][name]), name
    expected, factors = plain_loop(steps, mode, TAU, matrices, batch_size=32)
    for name, param in expected.named_parameters():
        torch.testing.assert_close(rank0["weights"][name], param.detach(), rtol=1e-5, atol=1e-6)
    assert rank0["scaled_steps"] > 0 and min(factors[-1]) < 1.0
    unbounded, _ = plain_loop(steps, mode, 1e9, matrices, batch_size=32)  # the tolerance tells the two apart
    assert (rank0["weights"]["net.0.weight"] - unbounded.net[0].weight.detach()).abs().max() > 1e-2


def test_bfloat16_parameters():
    module = Regression(schedule=False).to(torch.bfloat16)

    class Bf16(pl.LightningModule):
        def __init__(self) -> None:
            super().__init__()
            self.inner = module

        def training_step(self, batch: Any, batch_idx: int) -> torch.Tensor:
            x, y = batch
            return self.inner.training_step((x.to(torch.bfloat16), y.to(torch.bfloat16)), batch_idx).float()

        def configure_optimizers(self) -> Any:
            return torch.optim.AdamW([p for p in self.parameters() if p.requires_grad], lr=0.05)

        def train_dataloader(self) -> DataLoader:
            return module.train_dataloader()

    callback = WarmupFreeScaling(tau=TAU)
    fit(Bf16(), [callback], max_steps=3)
    assert all(p.dtype == torch.bfloat16 and torch.isfinite(p).all() for p in module.parameters())
    assert min(callback.last_factors.values()) < 1.0


def test_the_config_overlay_trains_the_digits_recipe_and_logs_to_tensorboard(tmp_path, one_thread):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    from lightning_opt.cli import main

    try:
        from tests.cli_args import fit_args
    except ImportError:  # pytest's default "prepend" import mode puts tests/ itself on sys.path
        from cli_args import fit_args
    overlay = Path(__file__).resolve().parents[1] / "configs" / "callbacks" / "warmup_free.yaml"
    extra = ["--config", str(overlay), "--optimizer", "AdamW", "--optimizer.lr", "0.01",
             "--trainer.callbacks.mode", "global"]
    assert main(fit_args(tmp_path, *extra, train_batches=3)) == 0
    (events,) = list(tmp_path.rglob("events.out.tfevents.*"))
    accumulator = EventAccumulator(str(events.parent), size_guidance={"scalars": 0}).Reload()
    factors = [e.value for e in accumulator.Scalars("WarmupFreeScaling/factor_min")]
    assert len(factors) == 3 and 0 < min(factors) < 1  # AdamW's first steps at lr 1e-2 are bounded
    assert "WarmupFreeScaling/ratio_max" in accumulator.Tags()["scalars"]


def test_exported_lazily_from_the_package():
    import lightning_opt
    import lightning_opt.callbacks

    assert lightning_opt.WarmupFreeScaling is lightning_opt.callbacks.WarmupFreeScaling is WarmupFreeScaling
    assert lightning_opt.warmup_free_factors is warmup_free_factors
    assert {"WarmupFreeScaling", "warmup_free_factors"} <= set(lightning_opt.__all__) & set(lightning_opt.__dir__())
