"""``LossFeeder`` in real Lightning runs on CPU: the exact loss each optimizer step receives.

Every test trains a tiny linear classifier with a real ``Trainer``, records the un-normalised loss of
every micro-batch in the LightningModule and what the optimizer received, and compares the two with
an independent float64 computation (window means, mean over ranks, AdaLo's loss average, and for DDP
a float64 replay of AdaLo's update).
"""

from __future__ import annotations

import csv
import warnings
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path
from typing import Any

import lightning.pytorch as pl
import pytest
import torch
import torch.nn.functional as F
from lightning.pytorch.callbacks import LearningRateMonitor
from lightning.pytorch.loggers import CSVLogger
from lightning.pytorch.plugins.precision import MixedPrecision
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from lightning_opt import AdaLo, LossFeeder

pytestmark = [
    pytest.mark.filterwarnings("ignore:.*does not have many workers:UserWarning"),
    pytest.mark.filterwarnings("ignore:.*smaller than the logging interval:UserWarning"),
]

ROWS, FEATURES, CLASSES, BATCH = 40, 8, 3, 4
BATCHES_PER_EPOCH = ROWS // BATCH  # 10: not a multiple of 4, so accumulation leaves a partial window
BETAS, KAPPA, WEIGHT_DECAY, EPS = (0.9, 0.5), 1.0, 1e-2, 1e-8  # a fast loss average: the loss matters
INIT_SCALE = 2.0**12
DIVERGE_WARNING = "data-parallel replicas take different steps"

OptimizerFactory = Callable[[Iterable[nn.Parameter]], torch.optim.Optimizer]


def make_dataset() -> TensorDataset:
    """A fixed random 3-class problem; odd rows are 4x larger, so DDP ranks (even/odd rows) see different losses."""
    generator = torch.Generator().manual_seed(0)
    x = torch.randn(ROWS, FEATURES, generator=generator)
    x[1::2] *= 4.0
    y = torch.randint(0, CLASSES, (ROWS,), generator=generator)
    return TensorDataset(x, y)


class RecordingAdaLo(AdaLo):
    """AdaLo that records each loss handed to ``set_loss`` and the loss average after each step it takes."""

    def __init__(self, params: Iterable[nn.Parameter]) -> None:
        super().__init__(params, betas=BETAS, kappa=KAPPA, weight_decay=WEIGHT_DECAY, eps=EPS)
        self.fed: list[float] = []
        self.averages: list[float] = []

    def set_loss(self, loss: torch.Tensor | float) -> None:
        self.fed.append(float(loss.detach()) if isinstance(loss, torch.Tensor) else float(loss))
        super().set_loss(loss)

    def begin_step(self, closure_loss: torch.Tensor | None) -> None:
        super().begin_step(closure_loss)
        self.averages.append(self.param_groups[0]["loss_average"])


class Classifier(pl.LightningModule):
    """A linear classifier that records the un-normalised loss of every micro-batch and the weights after it.

    Args:
        make_optimizer: builds the optimizer from the parameters.
        inf_grad_batches: batch indices whose weight gradient gets an ``inf`` after backward.
    """

    def __init__(self, make_optimizer: OptimizerFactory = RecordingAdaLo, inf_grad_batches: Sequence[int] = ()) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.layer = nn.Linear(FEATURES, CLASSES)
        self.make_optimizer = make_optimizer
        self.inf_grad_batches = set(inf_grad_batches)
        self.losses: list[float] = []
        self.weights_after_batch: list[torch.Tensor] = []
        self._batch_idx = -1

    def loss(self, batch: list[torch.Tensor]) -> torch.Tensor:
        """The mean cross-entropy of ``batch``, recorded as a float."""
        x, y = batch
        loss = F.cross_entropy(self.layer(x), y)
        self.losses.append(float(loss.detach()))
        return loss

    def training_step(self, batch: list[torch.Tensor], batch_idx: int) -> torch.Tensor:
        self._batch_idx = batch_idx
        return self.loss(batch)

    def on_after_backward(self) -> None:
        if self._batch_idx in self.inf_grad_batches:
            self.layer.weight.grad[0, 0] = float("inf")

    def on_train_batch_end(self, *args: Any) -> None:
        self.weights_after_batch.append(self.layer.weight.detach().clone())

    def configure_optimizers(self) -> torch.optim.Optimizer:
        return self.make_optimizer(self.parameters())

    def train_dataloader(self) -> DataLoader:
        return DataLoader(make_dataset(), batch_size=BATCH)


class ManualClassifier(Classifier):
    """The same classifier under manual optimization; it hands AdaLo the loss itself, through Lightning's
    optimizer wrapper, alternating ``set_loss(loss)`` + ``step()`` and ``step(loss=...)``."""

    def __init__(self) -> None:
        super().__init__()
        self.automatic_optimization = False

    def training_step(self, batch: list[torch.Tensor], batch_idx: int) -> None:
        optimizer = self.optimizers()
        optimizer.zero_grad()
        loss = self.loss(batch)
        self.manual_backward(loss)
        if batch_idx % 2 == 0:
            optimizer.set_loss(loss)
            optimizer.step()
        else:
            optimizer.step(loss=loss)


class RankDump(pl.Callback):
    """Writes, per rank, what a DDP test checks in the parent process (forked ranks share no objects).

    Saves ``rank{N}.pt`` with the micro-batch losses, the optimizer's records, the initial and final
    parameters, the (already all-reduced) gradients of each step and the warnings raised during training.
    """

    def __init__(self, directory: Path) -> None:
        self.directory = directory
        self.grads: list[dict[str, torch.Tensor]] = []
        self.initial: dict[str, torch.Tensor] = {}
        self._catcher: warnings.catch_warnings | None = None
        self._caught: list[warnings.WarningMessage] = []

    def on_train_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self.initial = _parameters(pl_module)
        self._catcher = warnings.catch_warnings(record=True)
        self._caught = self._catcher.__enter__()
        warnings.simplefilter("always")

    def on_before_optimizer_step(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, optimizer: torch.optim.Optimizer
    ) -> None:
        self.grads.append({name: p.grad.detach().double().clone() for name, p in pl_module.named_parameters()})

    def on_train_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        assert self._catcher is not None
        self._catcher.__exit__(None, None, None)
        optimizer = trainer.optimizers[0]
        record = {
            "losses": pl_module.losses,
            "fed": optimizer.fed,
            "averages": optimizer.averages,
            "initial": self.initial,
            "final": _parameters(pl_module),
            "grads": self.grads,
            "warnings": [str(w.message) for w in self._caught],
        }
        torch.save(record, self.directory / f"rank{trainer.global_rank}.pt")


def _parameters(module: nn.Module) -> dict[str, torch.Tensor]:
    """A float64 copy of the module's parameters, by name."""
    return {name: p.detach().double().clone() for name, p in module.named_parameters()}


def fit(
    module: pl.LightningModule, callbacks: Sequence[pl.Callback] | None = None, **trainer_kwargs: Any
) -> pl.Trainer:
    """Train ``module`` on CPU with a quiet Trainer; ``callbacks`` defaults to a single ``LossFeeder``."""
    options: dict[str, Any] = dict(
        accelerator="cpu",
        devices=1,
        max_epochs=1,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        num_sanity_val_steps=0,
    )
    options.update(trainer_kwargs)
    trainer = pl.Trainer(callbacks=[LossFeeder()] if callbacks is None else list(callbacks), **options)
    trainer.fit(module)
    return trainer


def window_means(losses: Sequence[float], window: int) -> list[float]:
    """Float64 mean of each accumulation window; a window also closes at the end of each epoch."""
    means: list[float] = []
    for start in range(0, len(losses), BATCHES_PER_EPOCH):
        epoch = losses[start : start + BATCHES_PER_EPOCH]
        means.extend(sum(epoch[i : i + window]) / len(epoch[i : i + window]) for i in range(0, len(epoch), window))
    return means


def loss_averages(losses: Sequence[float], beta2: float = BETAS[1]) -> list[float]:
    """AdaLo's loss average after each step, re-derived: ``ell += (1 - beta2) * (1 / (2 + L) - ell)``."""
    averages, ell = [], 0.0
    for loss in losses:
        ell += (1.0 - beta2) * (1.0 / (2.0 + loss) - ell)
        averages.append(ell)
    return averages


def replay_adalo(
    initial: dict[str, torch.Tensor], grads: Sequence[dict[str, torch.Tensor]], losses: Sequence[float]
) -> dict[str, torch.Tensor]:
    """AdaLo (adversarial mode) replayed in float64 from the initial parameters, gradients and fed losses."""
    params = {name: p.clone() for name, p in initial.items()}
    momenta = {name: torch.zeros_like(p) for name, p in initial.items()}
    for step_grads, ell in zip(grads, loss_averages(losses), strict=True):
        lr = max(ell / KAPPA, EPS)
        for name, p in params.items():
            momenta[name] = BETAS[0] * momenta[name] + (1.0 - BETAS[0]) * step_grads[name]
            params[name] = p * (1.0 - lr * WEIGHT_DECAY) - lr * momenta[name]
    return params


def max_difference(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> float:
    """The largest absolute difference between two parameter dicts."""
    return max(float((a[name] - b[name]).abs().max()) for name in a)


def fit_ddp(tmp_path: Path, callbacks: Sequence[pl.Callback]) -> tuple[dict[str, Any], dict[str, Any]]:
    """Train on 2 forked CPU ranks (a DistributedSampler gives them different rows); return both ranks' records."""
    fit(Classifier(), callbacks=[*callbacks, RankDump(tmp_path)], strategy="ddp_fork", devices=2)
    return torch.load(tmp_path / "rank0.pt"), torch.load(tmp_path / "rank1.pt")


# ----------------------------------------------------------------------------- single process


@pytest.mark.parametrize(
    ("precision", "accumulate", "max_epochs"),
    [
        pytest.param("32-true", 1, 1, id="32-true"),
        pytest.param("bf16-mixed", 2, 1, id="bf16-mixed-accumulate-2"),
        pytest.param("32-true", 4, 2, id="accumulate-4-partial-window"),
    ],
)
def test_fed_loss_is_the_mean_loss_of_the_window(precision: str, accumulate: int, max_epochs: int) -> None:
    module = Classifier()
    feeder = LossFeeder()
    trainer = fit(
        module, callbacks=[feeder], precision=precision, accumulate_grad_batches=accumulate, max_epochs=max_epochs
    )
    optimizer = trainer.optimizers[0]

    assert len(module.losses) == BATCHES_PER_EPOCH * max_epochs
    expected = window_means(module.losses, accumulate)
    # Lightning steps on the last batch of an epoch even when the window is not full (10 = 4 + 4 + 2).
    assert len(expected) == max_epochs * -(-BATCHES_PER_EPOCH // accumulate)
    assert optimizer.fed == pytest.approx(expected, rel=1e-12, abs=0.0)
    assert feeder.last_fed_loss == pytest.approx(expected[-1], rel=1e-12, abs=0.0)
    assert optimizer.averages == pytest.approx(loss_averages(expected), rel=1e-12, abs=0.0)
    if accumulate > 1:  # what the closure alone would have given: the last micro-batch's loss / N
        closure_values = [module.losses[i] / accumulate for i in (3, 7, 9)]
        assert all(abs(a - b) > 1e-3 for a, b in zip(optimizer.fed, closure_values))


def test_grad_scaler_feeds_the_unscaled_loss_and_a_skipped_step_changes_nothing() -> None:
    scaler = torch.amp.GradScaler("cpu", init_scale=INIT_SCALE, growth_interval=1000)
    module = Classifier(inf_grad_batches=(3,))  # the second window (batches 2 and 3) overflows
    trainer = fit(
        module,
        plugins=[MixedPrecision("16-mixed", "cpu", scaler=scaler)],
        accumulate_grad_batches=2,
        max_steps=3,
    )
    optimizer = trainer.optimizers[0]

    assert len(module.losses) == 6
    expected = window_means(module.losses, 2)
    # Fed before every step, the skipped one included; without the unscale they would be 4096x larger.
    assert optimizer.fed == pytest.approx(expected, rel=1e-6, abs=0.0)
    assert scaler.get_scale() == INIT_SCALE / 2  # the scaler did see the inf and skip a step
    # Only two steps were taken, and the loss average ignored the skipped window.
    assert optimizer.averages == pytest.approx(loss_averages([expected[0], expected[2]]), rel=1e-6, abs=0.0)
    weights = module.weights_after_batch
    assert not torch.equal(weights[1], weights[0])  # first step taken (after batch 1)
    assert torch.equal(weights[3], weights[1])  # skipped step: weights unchanged
    assert not torch.equal(weights[5], weights[3])  # third step taken


def test_adalo_under_grad_scaler_without_feeder_fails_clearly() -> None:
    module = Classifier()
    initial = module.layer.weight.detach().clone()
    scaler = torch.amp.GradScaler("cpu", init_scale=INIT_SCALE)
    with pytest.raises(RuntimeError, match=r"no training loss has ever reached the optimizer") as error:
        fit(module, callbacks=[], plugins=[MixedPrecision("16-mixed", "cpu", scaler=scaler)], max_steps=3)
    assert "LossFeeder" in str(error.value)
    assert len(module.losses) == 1  # it failed at the first step...
    assert torch.equal(module.layer.weight.detach(), initial)  # ...without changing the weights


def test_optimizer_without_set_loss_is_left_alone() -> None:
    def sgd(params: Iterable[nn.Parameter]) -> torch.optim.Optimizer:
        return torch.optim.SGD(params, lr=0.1)

    fed, plain = Classifier(sgd), Classifier(sgd)
    feeder = LossFeeder()
    trainer = fit(fed, callbacks=[feeder], max_steps=3)
    fit(plain, callbacks=[], max_steps=3)

    assert not hasattr(trainer.optimizers[0], "_fed_loss")
    assert feeder.last_fed_loss == pytest.approx(fed.losses[-1], rel=1e-12)
    assert fed.losses == plain.losses
    assert torch.equal(fed.layer.weight, plain.layer.weight)
    assert not torch.equal(fed.layer.weight, fed.weights_after_batch[0])  # it did train


def test_manual_optimization_warns_once_and_feeds_nothing() -> None:
    module = ManualClassifier()
    feeder = LossFeeder()
    with pytest.warns(UserWarning, match="LossFeeder does nothing under manual optimization") as record:
        trainer = fit(module, callbacks=[feeder], max_steps=3)
    assert sum("LossFeeder" in str(w.message) for w in record) == 1
    assert feeder.last_fed_loss is None
    # AdaLo got exactly the module's own losses, once each, by both routes: nothing from the callback.
    assert trainer.optimizers[0].fed == pytest.approx(module.losses, rel=1e-12, abs=0.0)
    assert len(module.losses) == 3
    # ... and they reached the wrapped optimizer (Lightning's wrapper keeps its own attribute dict).
    assert trainer.optimizers[0].param_groups[0]["loss_count"] == 3
    assert trainer.optimizers[0].param_groups[0]["loss_average"] == pytest.approx(loss_averages(module.losses)[-1])


# ----------------------------------------------------------------------------- two DDP ranks
# Each DDP test runs in its own process (tests/conftest.py): on a machine with a GPU, anything in the pytest
# process that initialised CUDA would make Lightning refuse to fork, even for CPU ranks.


@pytest.mark.own_process  # a fresh interpreter: ddp_fork cannot fork once CUDA is initialised
def test_ddp_ranks_get_the_mean_loss_and_stay_identical(tmp_path: Path) -> None:
    rank0, rank1 = fit_ddp(tmp_path, [LossFeeder()])

    assert len(rank0["losses"]) == len(rank1["losses"]) == BATCHES_PER_EPOCH // 2
    # The ranks saw different data (even rows on rank 0, the 4x larger odd rows on rank 1).
    assert abs(rank0["losses"][0] - rank1["losses"][0]) > 0.5
    assert all(a != b for a, b in zip(rank0["losses"], rank1["losses"]))
    mean_over_ranks = [(a + b) / 2 for a, b in zip(rank0["losses"], rank1["losses"])]
    for rank in (rank0, rank1):
        assert rank["fed"] == pytest.approx(mean_over_ranks, rel=1e-12, abs=0.0)
        assert rank["averages"] == pytest.approx(loss_averages(mean_over_ranks), rel=1e-12, abs=0.0)
        assert not any(DIVERGE_WARNING in message for message in rank["warnings"])
    for name in rank0["final"]:
        assert torch.equal(rank0["final"][name], rank1["final"][name])

    expected = replay_adalo(rank0["initial"], rank0["grads"], mean_over_ranks)
    assert max_difference(rank0["final"], expected) < 1e-6
    # The check can tell: replaying with rank 0's own losses lands far away.
    assert max_difference(rank0["final"], replay_adalo(rank0["initial"], rank0["grads"], rank0["losses"])) > 1e-3


@pytest.mark.own_process  # a fresh interpreter: ddp_fork cannot fork once CUDA is initialised
def test_ddp_without_feeder_replicas_diverge_with_a_warning(tmp_path: Path) -> None:
    rank0, rank1 = fit_ddp(tmp_path, [])

    for rank in (rank0, rank1):
        assert rank["fed"] == []
        assert sum(DIVERGE_WARNING in message for message in rank["warnings"]) == 1
        assert rank["averages"] == pytest.approx(loss_averages(rank["losses"]), rel=1e-12, abs=0.0)
    assert max_difference(rank0["final"], rank1["final"]) > 1e-3


# ----------------------------------------------------------------------------- schedules and the logged step size
class Scheduled(Classifier):
    """The classifier with AdaLo under a ``LambdaLR`` that decays ``lr`` every optimizer step, or no scheduler."""

    def __init__(self, schedule: Callable[[int], float] | None) -> None:
        super().__init__()
        self.schedule = schedule

    def configure_optimizers(self) -> Any:
        optimizer = RecordingAdaLo(self.parameters())
        if self.schedule is None:
            return optimizer
        scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, self.schedule)
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": scheduler, "interval": "step"}}


def logged_column(log_dir: str, key: str) -> list[float]:
    """The values of ``key`` in a CSVLogger's metrics.csv, in row order."""
    with open(Path(log_dir) / "metrics.csv", newline="") as handle:
        return [float(row[key]) for row in csv.DictReader(handle) if row.get(key)]


def test_a_scheduler_scales_adalos_steps_and_the_step_size_taken_is_logged(tmp_path: Path) -> None:
    """lr multiplies AdaLo's loss-driven step: a LambdaLR changes the weights; the step size each step took,
    lr_k * max(ell_k / kappa, eps), is what LossFeeder logs as AdaLo/step_size (read back from the CSV file)."""

    def schedule(step: int) -> float:
        return 1.0 / (1.0 + step)

    runs = {}
    for name, lr_lambda in (("constant", None), ("decaying", schedule)):
        module = Scheduled(lr_lambda)
        logger = CSVLogger(tmp_path, name=name)
        trainer = fit(module, logger=logger, log_every_n_steps=1, callbacks=[LossFeeder(), LearningRateMonitor()])
        logged = logged_column(logger.log_dir, "RecordingAdaLo/step_size")  # named after the class
        averages = trainer.optimizers[0].averages
        assert len(averages) == len(logged) == BATCHES_PER_EPOCH
        factors = [1.0 if lr_lambda is None else lr_lambda(k) for k in range(BATCHES_PER_EPOCH)]
        expected = [f * max(ell / KAPPA, EPS) for f, ell in zip(factors, averages)]
        assert logged == pytest.approx(expected, rel=1e-6)
        if lr_lambda is not None:  # the monitor shows the multiplier the scheduler set, 1/(1+k)
            assert logged_column(logger.log_dir, "lr-RecordingAdaLo") == pytest.approx(factors, rel=1e-6)
        runs[name] = module.layer.weight.detach().clone()
    assert not torch.allclose(runs["constant"], runs["decaying"], rtol=1e-3, atol=0.0)


def test_the_step_size_is_logged_per_group_and_can_be_switched_off(tmp_path: Path) -> None:
    class TwoGroups(Classifier):
        def configure_optimizers(self) -> torch.optim.Optimizer:
            return AdaLo([{"params": [self.layer.weight]}, {"params": [self.layer.bias], "lr": 0.5}])

    for log in (True, False):
        logger = CSVLogger(tmp_path, name=str(log))
        trainer = fit(TwoGroups(), callbacks=[LossFeeder(log_step_size=log)], logger=logger, log_every_n_steps=1)
        if not log:
            assert not any(key.startswith("AdaLo/") for key in trainer.callback_metrics)
            continue
        first, second = (logged_column(logger.log_dir, f"AdaLo/step_size/pg{i}") for i in (1, 2))
        assert len(first) == BATCHES_PER_EPOCH and second == pytest.approx([0.5 * s for s in first], rel=1e-6)
    with pytest.raises(ValueError, match=r"^Invalid log_step_size: 'yes'"):
        LossFeeder(log_step_size="yes")
