"""``ExactAccumulation`` in real Lightning runs on CPU: accumulated micro-batches step like one big batch.

Every comparison trains the same tiny model twice from the same weights on the same rows in the same order,
with plain SGD (one step's parameters are the gradient, scaled): once in micro-batches of ``B`` with
``accumulate_grad_batches=N``, once in big batches of ``B * N`` (the window's rows) without accumulation.
The datasets are sized so that the last micro-batch of an epoch is short and the last window of an epoch
has fewer than ``N`` micro-batches. Each comparison is also made without the callback, where plain
Lightning must differ (so the comparison can fail), and the first step's gradient is checked against a
float64 gradient of the big batch's mean loss computed here directly.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import lightning.pytorch as pl
import pytest
import torch
from lightning.fabric.utilities.exceptions import MisconfigurationException
from lightning.pytorch.callbacks import ModelCheckpoint
from lightning.pytorch.plugins.precision import MixedPrecision
from lightning.pytorch.utilities.data import extract_batch_size
from torch import nn
from torch.utils.data import DataLoader, Dataset, DistributedSampler, TensorDataset

import lightning_opt
import lightning_opt.lightning_cli  # noqa: F401  (Lightning's log handler binds to the real stderr, not a test's)
from lightning_opt.callbacks import ExactAccumulation, LossFeeder
from lightning_opt.lightning_cli import LightningOptCLI

try:
    from tests.cli_args import fit_args
except ImportError:  # pytest's default "prepend" import mode puts tests/ itself on sys.path
    from cli_args import fit_args

pytestmark = [
    pytest.mark.filterwarnings("ignore:.*does not have many workers:UserWarning"),
    pytest.mark.filterwarnings("ignore:.*smaller than the logging interval:UserWarning"),
    pytest.mark.filterwarnings("ignore:.*isinstance.treespec, LeafSpec.*"),
]

FEATURES, TOKENS, LR = 3, 5, 0.5
EXACT = 1e-5  # float32 rounding of two summation orders (observed differences are below 1e-6)
DIFFERS = 1e-2  # plain Lightning misses the big batch's step by more than this in every case below


# ------------------------------------------------------------------------------------------------ data, model
def sample_data(rows: int) -> TensorDataset:
    """Regression rows ``(x, y)``; a fixed draw, with a spread of targets so that every row's loss differs."""
    generator = torch.Generator().manual_seed(1)
    x = torch.randn(rows, FEATURES, generator=generator)
    y = 3.0 * torch.randn(rows, 1, generator=generator) + x[:, :1]
    return TensorDataset(x, y)


class TokenData(Dataset):
    """Sequences of ``TOKENS`` tokens with a mask of 0 to ``TOKENS`` valid ones, as dicts.

    Odd rows keep at most one token (so DDP rank 1, which gets the odd rows, counts far fewer tokens), even
    rows keep 2 to 5; row 5 keeps none.
    """

    def __init__(self, rows: int, empty: bool = False) -> None:
        generator = torch.Generator().manual_seed(2)
        self.x = torch.randn(rows, TOKENS, FEATURES, generator=generator)
        self.y = 2.0 * torch.randn(rows, TOKENS, generator=generator)
        lengths = [int(torch.randint(2, TOKENS + 1, (), generator=generator)) if i % 2 == 0 else 1 for i in range(rows)]
        lengths[5] = 0
        self.mask = torch.tensor([[t < n and not empty for t in range(TOKENS)] for n in lengths])

    def __len__(self) -> int:
        return len(self.x)

    def __getitem__(self, index: int) -> dict[str, torch.Tensor]:
        return {"x": self.x[index], "y": self.y[index], "mask": self.mask[index]}


def count_tokens(batch: dict[str, torch.Tensor]) -> torch.Tensor:
    """The micro-batch's number of unmasked tokens."""
    return batch["mask"].sum()


class RecordingSGD(torch.optim.SGD):
    """Plain SGD that also takes a loss (so ``LossFeeder`` feeds it) and records every loss it is given."""

    def __init__(self, params: Any, lr: float = LR) -> None:
        super().__init__(params, lr=lr)
        self.fed: list[float] = []

    def set_loss(self, loss: torch.Tensor | float) -> None:
        self.fed.append(float(loss))


class Model(pl.LightningModule):
    """A linear model whose loss is the mean over the batch's samples, or over its unmasked tokens.

    Records the gradients each optimizer step applies (its hook runs after every callback's) and the
    training step's loss with the batch's count.
    """

    def __init__(self, rows: int, batch_size: int, tokens: bool = False, skip_batches: Sequence[int] = ()) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.layer = nn.Linear(FEATURES, 1)
        self.rows, self.batch_size, self.tokens = rows, batch_size, tokens
        self.skip_batches = set(skip_batches)
        self.grads: list[dict[str, torch.Tensor]] = []
        self.losses: list[tuple[float, float]] = []

    def training_step(self, batch: Any, batch_idx: int) -> torch.Tensor | None:
        if batch_idx in self.skip_batches:
            return None
        loss, count = batch_loss(self.layer, batch, self.tokens)
        self.losses.append((float(loss.detach()), float(count)))
        return loss

    def on_before_optimizer_step(self, optimizer: torch.optim.Optimizer) -> None:
        self.grads.append({name: p.grad.detach().double().clone() for name, p in self.named_parameters()})

    def configure_optimizers(self) -> torch.optim.Optimizer:
        return RecordingSGD(self.parameters())

    def train_dataloader(self) -> DataLoader:
        data = TokenData(self.rows) if self.tokens else sample_data(self.rows)
        if self.trainer.world_size == 1:
            return DataLoader(data, batch_size=self.batch_size, shuffle=False)
        # Lightning's own DistributedSampler always shuffles training data: rank r gets rows r, r + 2, ... here.
        ranks = DistributedSampler(data, self.trainer.world_size, self.trainer.global_rank, shuffle=False)
        return DataLoader(data, batch_size=self.batch_size, sampler=ranks)


def batch_loss(layer: nn.Module, batch: Any, tokens: bool) -> tuple[torch.Tensor, torch.Tensor]:
    """The batch's mean squared error over its samples, or over its unmasked tokens, and that count."""
    if not tokens:
        x, y = batch
        return ((layer(x) - y) ** 2).mean(), torch.tensor(len(x))
    mask = batch["mask"].to(batch["y"].dtype)
    per_token = (layer(batch["x"]).squeeze(-1) - batch["y"]) ** 2
    return (per_token * mask).sum() / mask.sum().clamp(min=1), mask.sum()


def fit(module: Model, callbacks: Sequence[pl.Callback] = (), **trainer_kwargs: Any) -> pl.Trainer:
    """Train ``module`` on CPU with a quiet Trainer."""
    options: dict[str, Any] = dict(
        accelerator="cpu",
        devices=1,
        max_epochs=2,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        num_sanity_val_steps=0,
    )
    options.update(trainer_kwargs)
    trainer = pl.Trainer(callbacks=list(callbacks), **options)
    trainer.fit(module)
    return trainer


def max_difference(a: Sequence[dict[str, torch.Tensor]], b: Sequence[dict[str, torch.Tensor]]) -> float:
    """The largest absolute difference between two equally long lists of gradient (or parameter) dicts."""
    assert len(a) == len(b)
    return max(float((x[name] - y[name]).abs().max()) for x, y in zip(a, b) for name in x)


def parameters(module: nn.Module) -> dict[str, torch.Tensor]:
    """A float64 copy of the module's parameters, by name."""
    return {name: p.detach().double().clone() for name, p in module.named_parameters()}


def big_batch_gradient(rows: Sequence[int], tokens: bool, data: Any) -> dict[str, torch.Tensor]:
    """The float64 gradient of the mean loss over ``rows`` of ``data`` at the model's initial weights."""
    layer = Model(1, 1).layer.double()
    if tokens:
        batch = {key: getattr(data, key)[list(rows)] for key in ("x", "y", "mask")}
        batch["x"], batch["y"] = batch["x"].double(), batch["y"].double()
    else:
        x, y = data.tensors
        batch = [x[list(rows)].double(), y[list(rows)].double()]
    loss, _ = batch_loss(layer, batch, tokens)
    loss.backward()
    return {f"layer.{name}": p.grad for name, p in layer.named_parameters()}


# ------------------------------------------------------------------------------------------------ one device
CASES = [
    # rows, micro-batch B, N: windows of each epoch (micro-batch sizes)
    pytest.param(22, 4, 3, False, id="samples-4+4+4|4+4+2"),
    pytest.param(20, 4, 3, False, id="samples-partial-window-4+4+4|4+4"),
    pytest.param(22, 4, 4, False, id="samples-partial-uneven-4+4+4+4|4+2"),
    pytest.param(22, 4, 4, True, id="token-masks-4+4+4+4|4+2"),
]


@pytest.mark.parametrize(("rows", "micro", "accumulate", "tokens"), CASES)
def test_accumulated_steps_equal_the_big_batchs(rows: int, micro: int, accumulate: int, tokens: bool) -> None:
    count_fn = count_tokens if tokens else None
    big = Model(rows, micro * accumulate, tokens)
    fit(big)
    exact = Model(rows, micro, tokens)
    callback = ExactAccumulation(count_fn=count_fn)
    fit(exact, [callback], accumulate_grad_batches=accumulate)
    plain = Model(rows, micro, tokens)
    fit(plain, accumulate_grad_batches=accumulate)

    steps_per_epoch = math.ceil(rows / (micro * accumulate))
    assert len(big.grads) == len(exact.grads) == len(plain.grads) == 2 * steps_per_epoch
    assert max_difference(exact.grads, big.grads) < EXACT
    assert max_difference([parameters(exact)], [parameters(big)]) < EXACT
    assert max_difference(plain.grads, big.grads) > DIFFERS  # without the callback Lightning does differ

    # The first step against a float64 gradient of the first window's mean loss, computed here.
    data = TokenData(rows) if tokens else sample_data(rows)
    expected = big_batch_gradient(range(micro * accumulate), tokens, data)
    assert max_difference(exact.grads[:1], [expected]) < EXACT
    # The last window's count: its rows' samples (or their unmasked tokens).
    last_rows = range((steps_per_epoch - 1) * micro * accumulate, rows)
    expected_count = int(data.mask[list(last_rows)].sum()) if tokens else len(last_rows)
    assert callback.last_window_count == expected_count


def test_token_window_means_are_fed_to_loss_feeder() -> None:
    """LossFeeder with ExactAccumulation feeds each window's mean over its unmasked tokens, which is the big
    batch's training loss at the same weights; without ExactAccumulation it feeds the mean of micro-batch means."""
    rows, micro, accumulate = 22, 4, 4
    big = Model(rows, micro * accumulate, tokens=True)
    fit(big)
    exact = Model(rows, micro, tokens=True)
    trainer = fit(exact, [LossFeeder(), ExactAccumulation(count_fn=count_tokens)], accumulate_grad_batches=accumulate)
    plain = Model(rows, micro, tokens=True)
    plain_trainer = fit(plain, [LossFeeder()], accumulate_grad_batches=accumulate)

    big_losses = [loss for loss, _ in big.losses]
    fed, plain_fed = trainer.optimizers[0].fed, plain_trainer.optimizers[0].fed
    assert fed == pytest.approx(big_losses, rel=1e-5, abs=0.0)
    # The same, re-derived from the micro-batches' own losses and counts: sum(n_i L_i) / sum(n_i) per window
    # (6 micro-batches per epoch: windows of 4 and 2).
    bounds = [(0, 4), (4, 6), (6, 10), (10, 12)]
    windows = [exact.losses[start:end] for start, end in bounds]
    assert fed == pytest.approx([sum(x * n for x, n in w) / sum(n for _, n in w) for w in windows], rel=1e-12)
    # Without ExactAccumulation: the unweighted mean of the micro-batch losses, far from the big batch's.
    windows = [plain.losses[start:end] for start, end in bounds]
    assert plain_fed == pytest.approx([sum(x for x, _ in w) / len(w) for w in windows], rel=1e-12)
    assert max(abs(a - b) for a, b in zip(plain_fed, big_losses)) > DIFFERS


def test_callback_order_and_the_trainers_clipping_see_the_exact_gradient() -> None:
    """ExactAccumulation after another callback in the list, and the Trainer's norm clipping: the gradient
    every on_before_optimizer_step sees and the one clipped are already the big batch's."""

    class GradNorms(pl.Callback):
        def __init__(self) -> None:
            self.norms: list[float] = []

        def on_before_optimizer_step(self, trainer: pl.Trainer, pl_module: pl.LightningModule, optimizer: Any) -> None:
            self.norms.append(float(torch.cat([p.grad.flatten() for p in pl_module.parameters()]).norm()))

    rows, micro, accumulate, clip = 22, 4, 4, 1.0
    big, big_norms = Model(rows, micro * accumulate), GradNorms()
    fit(big, [big_norms], gradient_clip_val=clip)
    exact, exact_norms = Model(rows, micro), GradNorms()
    fit(exact, [exact_norms, ExactAccumulation()], accumulate_grad_batches=accumulate, gradient_clip_val=clip)

    assert exact_norms.norms == pytest.approx(big_norms.norms, rel=EXACT)
    assert max(big_norms.norms) > clip  # the clipping acted on some steps...
    assert max_difference([parameters(exact)], [parameters(big)]) < EXACT  # ...on the same gradients


def test_grad_scaler_run_matches_the_big_batch() -> None:
    """Under a GradScaler (float16 autocast on CPU) the callback rescales the still-scaled gradients."""
    rows, micro, accumulate = 22, 4, 4

    def scaler_plugin() -> MixedPrecision:
        return MixedPrecision("16-mixed", "cpu", scaler=torch.amp.GradScaler("cpu", init_scale=2.0**10))

    big = Model(rows, micro * accumulate)
    fit(big, plugins=[scaler_plugin()])
    exact = Model(rows, micro)
    fit(exact, [ExactAccumulation()], accumulate_grad_batches=accumulate, plugins=[scaler_plugin()])
    plain = Model(rows, micro)
    fit(plain, accumulate_grad_batches=accumulate, plugins=[scaler_plugin()])

    assert max_difference(exact.grads, big.grads) < 1e-2  # float16 activations on both sides
    assert max_difference(plain.grads, big.grads) > 10 * max_difference(exact.grads, big.grads)


def test_a_window_whose_last_training_step_returns_none_weights_the_rest() -> None:
    """Lightning still steps when the window's last training_step returns None (no backward): the step then
    equals the big batch of the micro-batches that did run."""
    rows, micro, accumulate = 12, 4, 3
    exact = Model(rows, micro, skip_batches=[2])
    with pytest.warns(UserWarning, match="returned `None`"):
        fit(exact, [ExactAccumulation()], accumulate_grad_batches=accumulate, max_epochs=1)
    expected = big_batch_gradient(range(8), False, sample_data(rows))
    assert max_difference(exact.grads, [expected]) < EXACT


def test_zero_count_window_zeroes_the_gradients_and_feeds_no_loss() -> None:
    """A window without a single unmasked token has no mean loss: no gradient, and nothing fed."""

    class NoTokens(Model):
        def train_dataloader(self) -> DataLoader:
            return DataLoader(TokenData(self.rows, empty=True), batch_size=self.batch_size)

    module = NoTokens(8, 4, tokens=True)
    with pytest.warns(UserWarning, match="counted no item"):
        trainer = fit(
            module, [ExactAccumulation(count_fn=count_tokens), LossFeeder()], accumulate_grad_batches=2, max_epochs=1
        )
    assert len(module.grads) == 1
    assert all(not g.any() for g in module.grads[0].values())
    assert trainer.optimizers[0].fed == []


def test_resume_is_bit_identical(tmp_path: Path) -> None:
    """The reference count is checkpointed: 2 epochs in one go equal 1 epoch, a checkpoint and a resume."""
    rows, micro, accumulate = 22, 4, 4
    straight = Model(rows, micro, tokens=True)
    fit(straight, [ExactAccumulation(count_fn=count_tokens)], accumulate_grad_batches=accumulate)

    first = Model(rows, micro, tokens=True)
    checkpoint = ModelCheckpoint(dirpath=tmp_path, save_last=True)
    fit(first, [ExactAccumulation(count_fn=count_tokens), checkpoint], accumulate_grad_batches=accumulate,
        max_epochs=1, enable_checkpointing=True)  # fmt: skip
    saved = torch.load(tmp_path / "last.ckpt", weights_only=True)
    (state,) = [value for key, value in saved["callbacks"].items() if "ExactAccumulation" in key]
    assert state == {"reference_count": float(TokenData(rows).mask[:micro].sum())}  # the first micro-batch's

    resumed = Model(rows, micro, tokens=True)
    callback = ExactAccumulation(count_fn=count_tokens)
    trainer = pl.Trainer(
        accelerator="cpu", devices=1, max_epochs=2, logger=False, enable_checkpointing=False,
        enable_progress_bar=False, enable_model_summary=False, accumulate_grad_batches=accumulate,
        callbacks=[callback],
    )  # fmt: skip
    trainer.fit(resumed, ckpt_path=tmp_path / "last.ckpt")
    assert callback.reference_count == state["reference_count"]
    assert len(resumed.grads) == len(straight.grads) // 2
    for name, value in parameters(resumed).items():
        assert torch.equal(value, parameters(straight)[name])


# ------------------------------------------------------------------------------------------------ refusals
@pytest.mark.parametrize("count_fn", [3, "mask", [len]])
def test_a_count_fn_that_is_not_callable_is_refused(count_fn: Any) -> None:
    with pytest.raises(ValueError, match=r"Invalid count_fn: .*expected a function"):
        ExactAccumulation(count_fn=count_fn)


@pytest.mark.parametrize(
    ("count_fn", "match"),
    [
        pytest.param(lambda batch: -1, r"count from count_fn for batch 0: -1", id="negative"),
        pytest.param(lambda batch: float("nan"), r"count from count_fn for batch 0: nan", id="nan"),
        pytest.param(lambda batch: "4", r"count from count_fn for batch 0: '4'", id="string"),
        pytest.param(lambda batch: torch.ones(2), r"shape \(2,\)", id="vector"),
        pytest.param(lambda batch: torch.tensor(-2.0), r"count from count_fn: -2\.0", id="negative-tensor"),
        pytest.param(lambda batch: torch.tensor(math.inf), r"count from count_fn: inf", id="inf-tensor"),
    ],
)
def test_a_bad_count_is_refused_naming_it(count_fn: Callable[[Any], Any], match: str) -> None:
    with pytest.raises(ValueError, match=match):
        fit(Model(8, 4), [ExactAccumulation(count_fn=count_fn)], accumulate_grad_batches=2, max_epochs=1)


def test_manual_optimization_warns_and_changes_nothing() -> None:
    class Manual(Model):
        def __init__(self) -> None:
            super().__init__(8, 4)
            self.automatic_optimization = False

        def training_step(self, batch: Any, batch_idx: int) -> None:
            optimizer = self.optimizers()
            optimizer.zero_grad()
            loss, _ = batch_loss(self.layer, batch, False)
            self.manual_backward(loss)
            self.grads.append({name: p.grad.detach().double().clone() for name, p in self.named_parameters()})
            optimizer.step()

    callback, with_callback, without = ExactAccumulation(), Manual(), Manual()
    with pytest.warns(UserWarning, match="ExactAccumulation does nothing under manual optimization"):
        fit(with_callback, [callback], max_epochs=1)
    fit(without, max_epochs=1)
    assert max_difference(with_callback.grads, without.grads) == 0.0
    assert callback.last_window_count is None


def test_a_strategy_that_accumulates_itself_is_refused() -> None:
    from lightning.pytorch.strategies import SingleDeviceStrategy

    class SelfAccumulating(SingleDeviceStrategy):
        @property
        def handles_gradient_accumulation(self) -> bool:
            return True

    with pytest.raises(MisconfigurationException, match="ExactAccumulation cannot act under SelfAccumulating"):
        fit(Model(8, 4), [ExactAccumulation()], strategy=SelfAccumulating(device=torch.device("cpu")))


# ------------------------------------------------------------------------------------------------ LightningCLI
def test_lightning_cli_takes_the_callback_and_a_count_fn_by_import_path(tmp_path: Path) -> None:
    """``--trainer.callbacks+=lightning_opt.ExactAccumulation`` on the digits recipe, with a count_fn given by
    its import path; 2 batches of 32 with accumulate_grad_batches=3: one partial window of 64 samples."""
    args = fit_args(
        tmp_path,
        "--trainer.callbacks+=lightning_opt.ExactAccumulation",
        "--trainer.callbacks.count_fn=lightning.pytorch.utilities.data.extract_batch_size",
        "--trainer.accumulate_grad_batches=3",
        train_batches=2,
    )
    cli = LightningOptCLI(args)
    (callback,) = [c for c in cli.trainer.callbacks if isinstance(c, ExactAccumulation)]
    assert callback.count_fn is extract_batch_size
    assert callback.last_window_count == 64.0
    assert callback.last_gradient_scale == pytest.approx(3 * 32 / 64)


def test_lazy_export() -> None:
    assert lightning_opt.ExactAccumulation is ExactAccumulation
    assert "ExactAccumulation" in lightning_opt.__all__


# ------------------------------------------------------------------------------------------------ two DDP ranks
class RankDump(pl.Callback):
    """Writes, per rank, the gradients each step applied, the final parameters and the fed losses."""

    def __init__(self, directory: Path, name: str) -> None:
        self.directory, self.name = directory, name

    def on_train_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        record = {"grads": pl_module.grads, "final": parameters(pl_module), "fed": trainer.optimizers[0].fed}
        torch.save(record, self.directory / f"{self.name}-rank{trainer.global_rank}.pt")


@pytest.mark.own_process  # a fresh interpreter: ddp_fork cannot fork once CUDA is initialised
def test_ddp_ranks_with_different_token_counts_step_like_the_big_batch(tmp_path: Path) -> None:
    """2 forked ranks (even rows on rank 0, the nearly empty odd rows on rank 1), 22 rows each in
    micro-batches of 4 with N=4: windows of 4+4+4+4 | 4+2 per rank. The big batch is one device on the
    same 44 rows in batches of 32: rows 0-31, then 32-43, the union of both ranks' windows."""
    rows, micro, accumulate = 44, 4, 4
    big = Model(rows, 2 * micro * accumulate, tokens=True)
    fit(big, [LossFeeder()])
    runs = {"exact": [ExactAccumulation(count_fn=count_tokens), LossFeeder()], "plain": [LossFeeder()]}
    for name, callbacks in runs.items():
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            fit(Model(rows, micro, tokens=True), [*callbacks, RankDump(tmp_path, name)], strategy="ddp_fork",
                devices=2, accumulate_grad_batches=accumulate, use_distributed_sampler=False)  # fmt: skip
    record = {(name, rank): torch.load(tmp_path / f"{name}-rank{rank}.pt") for name in runs for rank in (0, 1)}

    big_losses = [loss for loss, _ in big.losses]
    for rank in (0, 1):
        exact = record["exact", rank]
        assert len(exact["grads"]) == len(big.grads) == 4
        assert max_difference(exact["grads"], big.grads) < EXACT
        assert max_difference([exact["final"]], [parameters(big)]) < EXACT
        assert exact["fed"] == pytest.approx(big_losses, rel=1e-5, abs=0.0)  # the window's mean over all tokens
        plain = record["plain", rank]
        assert max_difference(plain["grads"], big.grads) > DIFFERS
        assert max(abs(a - b) for a, b in zip(plain["fed"], big_losses)) > DIFFERS
    # The first step against the float64 gradient of the mean over the first window's tokens on both ranks.
    expected = big_batch_gradient(range(2 * micro * accumulate), True, TokenData(rows))
    assert max_difference(record["exact", 0]["grads"][:1], [expected]) < EXACT
