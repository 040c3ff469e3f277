"""The digits recipe: its data split, batches, argument checks, seeded determinism, TensorBoard logs and,
marked ``slow``, convergence of each optimizer with its default hyper-parameters under ``configs/digits.yaml``."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import lightning.pytorch as pl
import pytest
import torch
import yaml
from lightning.pytorch.loggers import TensorBoardLogger
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from lightning_opt import AdaLo, LossFeeder
from lightning_opt.cli import LightningOptCLI
from lightning_opt.factories import NORM_TYPES
from lightning_opt.recipes.digits import DigitsClassifier, DigitsDataModule
from lightning_opt.recipes.digits.data import load_digits_tensors

CONFIG = Path(__file__).resolve().parents[1] / "configs" / "digits.yaml"
NUM_IMAGES = 1797

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def data() -> DigitsDataModule:
    datamodule = DigitsDataModule(batch_size=32)
    datamodule.setup("fit")
    return datamodule


def fit(seed: int, root: Path, **trainer_kwargs: Any) -> tuple[DigitsClassifier, pl.Trainer]:
    """Seed, then fit the default model (AdaLo, fed by the LossFeeder) on the default datamodule."""
    pl.seed_everything(seed, verbose=False)
    model = DigitsClassifier()
    trainer_kwargs.setdefault("logger", False)
    trainer = pl.Trainer(
        callbacks=[LossFeeder()],
        accelerator="cpu",
        deterministic=True,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        default_root_dir=root,
        **trainer_kwargs,
    )
    trainer.fit(model, DigitsDataModule(batch_size=32))
    return model, trainer


# ----------------------------------------------------------------- data
def test_split_is_fixed_disjoint_complete_and_stratified(data: DigitsDataModule) -> None:
    again = DigitsDataModule(batch_size=7)
    again.setup("fit")
    assert torch.equal(again.train_indices, data.train_indices)
    assert torch.equal(again.val_indices, data.val_indices)

    train, val = set(data.train_indices.tolist()), set(data.val_indices.tolist())
    assert not train & val
    assert train | val == set(range(NUM_IMAGES))
    assert (len(train), len(val)) == (1437, 360)

    labels = load_digits_tensors()[1]
    per_class = torch.bincount(labels, minlength=10).double()
    val_per_class = torch.bincount(labels[data.val_indices], minlength=10).double()
    assert ((val_per_class - 0.2 * per_class).abs() <= 1).all()

    other_seed = DigitsDataModule(split_seed=1)
    other_seed.setup("fit")
    assert not torch.equal(other_seed.val_indices, data.val_indices)


def test_batches_have_the_documented_shapes_dtypes_and_range(data: DigitsDataModule) -> None:
    inputs, labels = next(iter(data.train_dataloader()))
    assert inputs.shape == (32, 64) and inputs.dtype == torch.float32
    assert labels.shape == (32,) and labels.dtype == torch.int64

    all_inputs, all_labels = data.train_dataset.tensors
    assert all_inputs.min() == 0.0 and all_inputs.max() == 1.0
    assert set(all_labels.tolist()) == set(range(10))

    first, second = next(iter(data.val_dataloader())), next(iter(data.val_dataloader()))
    assert torch.equal(first[0], second[0])  # validation is not shuffled
    assert data.train_dataloader().num_workers == 0


def test_dataloaders_before_setup_fail_clearly() -> None:
    with pytest.raises(RuntimeError, match="call setup"):
        DigitsDataModule().train_dataloader()


@pytest.mark.parametrize(
    ("cls", "kwargs", "argument"),
    [
        (DigitsDataModule, {"batch_size": 0}, "batch_size"),
        (DigitsDataModule, {"batch_size": 2.0}, "batch_size"),
        (DigitsDataModule, {"val_fraction": 1.0}, "val_fraction"),
        (DigitsDataModule, {"split_seed": 0.5}, "split_seed"),
        (DigitsClassifier, {"hidden_dims": ()}, "hidden_dims"),
        (DigitsClassifier, {"hidden_dims": (32, 0)}, "hidden_dims"),
        (DigitsClassifier, {"hidden_dims": 64}, "hidden_dims"),
        (DigitsClassifier, {"dropout": 1.0}, "dropout"),
    ],
)
def test_invalid_arguments_raise_naming_the_argument(cls: type, kwargs: dict[str, Any], argument: str) -> None:
    with pytest.raises(ValueError, match=f"Invalid {argument}: "):
        cls(**kwargs)


# ----------------------------------------------------------------- model
def test_model_is_an_mlp_without_normalisation_that_trains_with_adalo_by_default() -> None:
    model = DigitsClassifier(hidden_dims=(32, 16), dropout=0.1)
    assert model(torch.rand(5, 64)).shape == (5, 10)
    assert not any(isinstance(module, NORM_TYPES) for module in model.modules())
    assert [module.out_features for module in model.net if isinstance(module, torch.nn.Linear)] == [32, 16, 10]
    assert type(model.configure_optimizers()) is AdaLo


# ----------------------------------------------------------------- runs
def test_same_seed_same_weights(tmp_path: Path) -> None:
    short = {"max_epochs": 1, "limit_train_batches": 15, "limit_val_batches": 0}
    first, _ = fit(3, tmp_path, **short)
    second, _ = fit(3, tmp_path, **short)
    other, _ = fit(4, tmp_path, **short)

    for (name, a), b in zip(first.state_dict().items(), second.state_dict().values()):
        assert torch.equal(a, b), name
    assert not torch.equal(first.net[0].weight, other.net[0].weight)
    pl.seed_everything(3, verbose=False)
    assert not torch.equal(first.net[0].weight, DigitsClassifier().net[0].weight)  # it did train


def test_fit_writes_train_and_validation_scalars_to_tensorboard(tmp_path: Path) -> None:
    logger = TensorBoardLogger(tmp_path, name="digits")
    _, trainer = fit(0, tmp_path, logger=logger, max_epochs=2, limit_train_batches=10, log_every_n_steps=2)

    events = EventAccumulator(logger.log_dir, size_guidance={"scalars": 0})
    events.Reload()
    tags = set(events.Tags()["scalars"])
    # on_step and on_epoch: Lightning logs train_loss as train_loss_step and train_loss_epoch
    assert {"train_loss_step", "train_loss_epoch", "val_loss", "val_acc"} <= tags
    assert len(events.Scalars("train_loss_step")) == 10  # 20 steps, every second one
    assert len(events.Scalars("train_loss_epoch")) == 2
    val_acc = [event.value for event in events.Scalars("val_acc")]
    assert len(val_acc) == 2 and all(0.0 <= value <= 1.0 for value in val_acc)
    assert val_acc[-1] == pytest.approx(float(trainer.callback_metrics["val_acc"]))


# ----------------------------------------------------------------- convergence (about 10 s per optimizer)
@pytest.mark.slow
@pytest.mark.parametrize(
    "optimizer",
    [None, "AdamAtan2", "NSGDA", "SMMF", "Adafactor", "SM3", "Amos"],
    ids=["AdaLo-from-config", "AdamAtan2", "NSGDA", "SMMF", "Adafactor", "SM3", "Amos"],
)
def test_config_reaches_95_percent_with_default_hyperparameters(tmp_path: Path, optimizer: str | None) -> None:
    args = [
        "fit",
        "--config",
        str(CONFIG),
        f"--trainer.logger.save_dir={tmp_path}",
        "--trainer.accelerator=cpu",  # the config leaves it to Lightning ("auto"): a GPU if there is one
        "--trainer.enable_progress_bar=false",
        "--trainer.enable_model_summary=false",
        "--trainer.enable_checkpointing=false",
    ]
    if optimizer is not None:
        args += ["--optimizer", optimizer]
    cli = LightningOptCLI(args)

    epochs = yaml.safe_load(CONFIG.read_text())["trainer"]["max_epochs"]
    assert cli.trainer.current_epoch == epochs
    assert type(cli.trainer.optimizers[0]).__name__ == (optimizer or "AdaLo")
    assert float(cli.trainer.callback_metrics["val_acc"]) >= 0.95


ADAM_FAMILY = ["DiffGrad", "SAdam", "AdaMomentum", "AdaNorm", "PNM", "AdaPNM", "Lamb", "FractionalAdam"]
ADAPTIVE_MEMORY = ["AdaptiveMemorySGD", "AdaptiveMemoryAdamW"]


@pytest.mark.slow
@pytest.mark.parametrize("optimizer", ADAM_FAMILY)
def test_adam_family_reaches_95_percent_with_default_hyperparameters(tmp_path: Path, optimizer: str) -> None:
    """The presets of lightning_opt.optim.adam_family under the same config (PNM: its default lr 0.1)."""
    test_config_reaches_95_percent_with_default_hyperparameters(tmp_path, optimizer)


@pytest.mark.slow
@pytest.mark.parametrize("optimizer", ADAPTIVE_MEMORY)
def test_adaptive_memory_reaches_95_percent_with_default_hyperparameters(tmp_path: Path, optimizer: str) -> None:
    """AM-SGD (its default lr 0.1) and AM-AdamW (lr 1e-3, weight decay 1e-2) under the same config."""
    test_config_reaches_95_percent_with_default_hyperparameters(tmp_path, optimizer)
