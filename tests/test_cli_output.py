"""What ``lightning-opt fit`` writes: no progress bar without a terminal, no needless warning, an honest summary."""

from __future__ import annotations

import subprocess
import sys
import warnings
from pathlib import Path

import pytest
import torch
from lightning.pytorch import Trainer
from lightning.pytorch.callbacks import TQDMProgressBar

import lightning_opt.lightning_cli  # noqa: F401  (Lightning's log handler binds to the real stderr, not a test's)
from lightning_opt import AdaLo, NSGDA
from lightning_opt.callbacks import LossFeeder, SoftClip
from lightning_opt.lightning_cli import EpochLines, LightningOptCLI, describe_callbacks, describe_optimizer

try:
    from tests.cli_args import fit_args
except ImportError:  # pytest's default "prepend" import mode puts tests/ itself on sys.path
    from cli_args import fit_args

OVERRIDDEN = "configure_optimizers` will be overridden"


def short_fit_args(tmp_path: Path, *extra: str) -> list[str]:
    """Two epochs of 20 steps of the digits config, logged to tmp_path; the progress bar is left to the CLI."""
    return fit_args(tmp_path, *extra, max_epochs=2, train_batches=20, val_batches=5, quiet=False)


pytestmark = pytest.mark.usefixtures("one_thread")


def run_piped(tmp_path: Path, *extra: str) -> subprocess.CompletedProcess[str]:
    """The command in a subprocess whose stdout is a pipe (not a terminal), as in ``train.sh > out``."""
    command = [sys.executable, "-m", "lightning_opt.cli", *short_fit_args(tmp_path, *extra)]
    return subprocess.run(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, timeout=600, cwd=tmp_path)


def test_without_a_terminal_there_is_no_progress_bar_but_one_line_per_epoch(tmp_path: Path) -> None:
    result = run_piped(tmp_path)

    assert result.returncode == 0, result.stderr[-2000:]
    out = result.stdout
    assert "\r" not in out and "it/s" not in out  # no bar redraws
    epoch_lines = [line for line in out.splitlines() if line.startswith("epoch ")]
    assert [line.split(":")[0] for line in epoch_lines] == ["epoch 1/2", "epoch 2/2"]
    assert "val_acc" in epoch_lines[-1] and "train_loss_epoch" in epoch_lines[-1]
    assert "fit finished: 2 epochs, 40 steps" in out
    assert len(out.encode()) < 3000, len(out.encode())


def test_an_explicit_progress_bar_setting_is_kept(tmp_path: Path) -> None:
    """The user's choice wins: with enable_progress_bar=true the bar draws even into a pipe (the old behaviour)."""
    result = run_piped(tmp_path, "--trainer.enable_progress_bar=true")

    assert result.returncode == 0, result.stderr[-2000:]
    assert "it/s" in result.stdout and "epoch 1/2:" not in result.stdout
    assert len(result.stdout.encode()) > 3000  # what the bound above excludes


def test_progress_bar_callback_in_the_config_is_kept(tmp_path: Path) -> None:
    cli = LightningOptCLI(
        short_fit_args(tmp_path, "--trainer.max_epochs=1", "--trainer.callbacks+=TQDMProgressBar")[1:], run=False
    )
    assert any(isinstance(callback, TQDMProgressBar) for callback in cli.trainer.callbacks)
    assert not any(isinstance(callback, EpochLines) for callback in cli.trainer.callbacks)


# ------------------------------------------------------------------------------------------------ the override warning
def _warnings_of(args: list[str]) -> list[str]:
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        LightningOptCLI(args, run=False)
    return [str(item.message) for item in caught]


def test_no_override_warning_for_the_recipes(tmp_path: Path) -> None:
    """The digits model's configure_optimizers is replaced by --optimizer by design: nothing to warn about."""
    args = short_fit_args(tmp_path, "--optimizer", "NSGDA")[1:]  # run=False: no subcommand
    assert not [message for message in _warnings_of(args) if OVERRIDDEN in message]


def test_override_warning_kept_for_other_models(tmp_path: Path) -> None:
    """A user's model whose configure_optimizers does something is still told that --optimizer replaces it."""
    boring = "lightning.pytorch.demos.boring_classes"
    args = [
        f"--model={boring}.BoringModel",
        f"--data={boring}.BoringDataModule",
        "--optimizer=NSGDA",
        "--trainer.logger=false",
        f"--trainer.default_root_dir={tmp_path}",
        "--trainer.accelerator=cpu",
    ]
    assert [message for message in _warnings_of(args) if OVERRIDDEN in message]


# ------------------------------------------------------------------------------------------------ the summary
def test_summary_lists_the_callbacks_that_acted(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    args = short_fit_args(
        tmp_path,
        "--trainer.max_epochs=1",
        "--trainer.limit_train_batches=2",
        "--trainer.enable_progress_bar=false",
        "--trainer.callbacks+=lightning_opt.SoftClip",
    )
    LightningOptCLI(args)
    out = capsys.readouterr().out
    (line,) = [line for line in out.splitlines() if line.strip().startswith("callbacks:")]
    assert "LossFeeder" in line and "SoftClip" in line
    assert "SaveConfigCallback" not in line and "ProgressBar" not in line


def test_describe_callbacks_leaves_out_display_only_ones() -> None:
    callbacks = Trainer(callbacks=[LossFeeder(), SoftClip()], logger=False, accelerator="cpu").callbacks
    assert describe_callbacks(callbacks).split(", ")[:2] == ["LossFeeder", "SoftClip"]
    assert "ProgressBar" not in describe_callbacks(callbacks) and "ModelSummary" not in describe_callbacks(callbacks)
    assert describe_callbacks([]) == "none"


def test_agc_clipping_is_shown_only_when_adaptive_clip_acts() -> None:
    params = [torch.zeros(2, requires_grad=True)]
    assert "agc_clipping" not in describe_optimizer(AdaLo(params))
    assert "agc_clipping" not in describe_optimizer(NSGDA(params, grad_transforms=["centralize"]))
    clipping = NSGDA(params, grad_transforms=["adaptive_clip"], agc_clipping=0.05)
    assert "agc_clipping=0.05" in describe_optimizer(clipping)


def test_summary_shows_the_constructor_arguments_not_the_bookkeeping() -> None:
    shown = describe_optimizer(AdaLo([torch.zeros(2, requires_grad=True)], lr=0.5))
    assert shown.startswith("AdaLo(lr=0.5, betas=(0.9, 0.999), weight_decay=0.01, kappa=3.0")
    assert "lr_scales_step" not in shown  # kept in AdaLo's defaults to tell old checkpoints apart
