"""``lightning-opt`` (``lightning_opt.cli``): short optimizer names, the ``optimizers`` listing, help, errors.

Every fit here is a real two-step run of the digits config, in-process, logging under ``tmp_path``.
"""

from __future__ import annotations

import shutil
import subprocess
import sys
import warnings
from pathlib import Path
from typing import Any

import pytest
import torch
from lightning.pytorch.cli import LightningCLI
from lightning.pytorch.demos.boring_classes import BoringDataModule, BoringModel

import lightning_opt  # before LightningCLI(...): makes the short names resolvable in a user's own CLI
from lightning_opt import NSGDA, REGISTRY, AdaLo, AdamAtan2
from lightning_opt.cli import LightningOptCLI, main
from lightning_opt.recipes.digits import DigitsClassifier, DigitsDataModule

try:
    from tests.cli_args import fit_args
except ImportError:  # pytest's default "prepend" import mode puts tests/ itself on sys.path
    from cli_args import fit_args


pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.mark.parametrize(
    ("name", "cls", "options", "expected"),
    [
        (
            "AdaLo",
            AdaLo,
            ["--optimizer.mode", "compliant", "--optimizer.kappa", "2.5"],
            {"mode": "compliant", "kappa": 2.5},
        ),
        ("NSGDA", NSGDA, ["--optimizer.lr", "0.02", "--optimizer.momentum", "0.8"], {"lr": 0.02, "momentum": 0.8}),
        (
            "AdamAtan2",
            AdamAtan2,
            ["--optimizer.lr", "3e-3", "--optimizer.cautious", "true", "--optimizer.betas", "[0.8, 0.95]"],
            {"lr": 3e-3, "cautious": True, "betas": (0.8, 0.95)},
        ),
        (
            "AdaLo",
            AdaLo,
            ["--optimizer.grad_transforms", "[centralize, adaptive_clip]", "--optimizer.agc_clipping", "0.1"],
            {"grad_transforms": ("centralize", "adaptive_clip"), "agc_clipping": 0.1},
        ),
    ],
)
def test_short_name_resolves_with_cli_hyperparameters(
    tmp_path: Path, name: str, cls: type[torch.optim.Optimizer], options: list[str], expected: dict[str, Any]
) -> None:
    cli = LightningOptCLI(fit_args(tmp_path, "--optimizer", name, *options))

    (optimizer,) = cli.trainer.optimizers
    assert type(optimizer) is cls
    group = optimizer.param_groups[0]
    assert {key: group[key] for key in expected} == expected
    assert cli.trainer.global_step == 2
    if cls is AdaLo:  # the config's LossFeeder fed it the loss of both steps
        assert group["loss_count"] == 2


def test_registered_names_win_over_same_named_classes_of_other_packages(tmp_path: Path) -> None:
    """Once ``adam_atan2_pytorch`` is imported, plain LightningCLI finds two ``AdamAtan2`` classes; ours wins here."""
    public = pytest.importorskip("adam_atan2_pytorch")
    assert public.AdamAtan2.__name__ == "AdamAtan2"  # the clash is real in this process
    for args in (["--optimizer", "AdamAtan2"], ["--optimizer=AdamAtan2"]):
        cli = LightningOptCLI(fit_args(tmp_path, *args))
        assert type(cli.trainer.optimizers[0]) is AdamAtan2


def test_console_entry_reads_sys_argv_and_qualifies_names(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """``main()`` without arguments (the console script) rewrites sys.argv, so LightningCLI sees no args/argv mix."""
    pytest.importorskip("adam_atan2_pytorch")  # a same-named class is importable: the short name must still work
    argv = ["lightning-opt", *fit_args(tmp_path, "--optimizer", "AdamAtan2")]
    monkeypatch.setattr(sys, "argv", argv)
    with warnings.catch_warnings():
        warnings.simplefilter("error", UserWarning)
        warnings.filterwarnings("ignore", ".*does not have many workers", UserWarning)
        warnings.filterwarnings("ignore", ".*configure_optimizers` will be overridden", UserWarning)
        assert main() == 0
    assert "optimizer:  AdamAtan2(" in capsys.readouterr().out
    assert "lightning_opt.AdamAtan2" in sys.argv


def test_config_alone_trains_adalo_and_main_reports(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(fit_args(tmp_path)) == 0

    out = capsys.readouterr().out
    log_dir = tmp_path / "digits" / "version_0"
    assert "val_acc" in out and "val_loss" in out
    assert "optimizer:  AdaLo(" in out
    assert str(log_dir) in out
    assert f"tensorboard --logdir {tmp_path / 'digits'}" in out
    assert (log_dir / "config.yaml").is_file()
    assert list(log_dir.glob("events.out.tfevents.*"))


def test_defaults_are_the_digits_recipe_and_any_module_may_replace_them(tmp_path: Path) -> None:
    no_logs = ["--trainer.logger=false", "--trainer.accelerator=cpu", f"--trainer.default_root_dir={tmp_path}"]
    cli = LightningOptCLI(no_logs, run=False)
    assert type(cli.model) is DigitsClassifier and type(cli.datamodule) is DigitsDataModule

    boring = "lightning.pytorch.demos.boring_classes"
    cli = LightningOptCLI([*no_logs, f"--model={boring}.BoringModel", f"--data={boring}.BoringDataModule"], run=False)
    assert type(cli.model) is BoringModel and type(cli.datamodule) is BoringDataModule


def test_users_own_lightning_cli_resolves_short_names(tmp_path: Path) -> None:
    assert lightning_opt.AdaLo is AdaLo  # the import above is what makes "AdaLo" resolvable
    args = [
        "fit",
        "--optimizer",
        "AdaLo",
        "--optimizer.kappa",
        "4",
        "--trainer.accelerator=cpu",
        "--trainer.max_steps=2",
        "--trainer.limit_val_batches=0",
        "--trainer.logger=false",
        "--trainer.enable_checkpointing=false",
        "--trainer.enable_progress_bar=false",
        "--trainer.enable_model_summary=false",
        f"--trainer.default_root_dir={tmp_path}",
    ]
    cli = LightningCLI(BoringModel, args=args, save_config_kwargs={"overwrite": True})

    (optimizer,) = cli.trainer.optimizers
    assert type(optimizer) is AdaLo
    assert optimizer.param_groups[0]["kappa"] == 4.0
    assert optimizer.param_groups[0]["loss_count"] == 2  # the closure's loss, without a LossFeeder


def test_optimizers_command_lists_the_registry(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["optimizers"]) == 0

    out = capsys.readouterr().out
    header, *rows = out.split("\n\n")[0].splitlines()
    assert header.split() == ["name", "state/param", "loss-driven", "paper", "summary"]
    assert [row.split()[0] for row in rows] == list(REGISTRY)
    for row, spec in zip(rows, REGISTRY.values()):
        assert row.split()[1:3] == [str(spec.state_buffers), "yes" if spec.loss_driven else "no"]
        assert spec.paper in row and row.endswith(spec.summary)


def test_optimizers_command_rejects_extra_arguments(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["optimizers", "--bogus"]) == 2
    assert "unexpected arguments: --bogus" in capsys.readouterr().err


def test_console_script_runs_the_optimizers_command() -> None:
    script = Path(sys.executable).with_name("lightning-opt")
    command = str(script) if script.exists() else shutil.which("lightning-opt")
    if command is None:
        pytest.skip("the lightning-opt console script is not installed")
    result = subprocess.run([command, "optimizers"], capture_output=True, text=True, timeout=120, check=False)
    assert result.returncode == 0, result.stderr
    assert all(name in result.stdout for name in REGISTRY)


def test_optimizer_help_shows_the_documented_arguments(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("COLUMNS", "200")  # no line wrapping inside the sentences checked below
    with pytest.raises(SystemExit) as exit_info:
        main(["fit", "--optimizer.help", "AdaLo"])

    assert exit_info.value.code == 0
    out = capsys.readouterr().out
    for argument in ("lr", "betas", "weight_decay", "kappa", "eps", "mode", "compile"):
        assert f"--optimizer.{argument}" in out
    assert "divides the loss average; larger means smaller steps" in out
    assert "default: adversarial" in out


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ("AdaLoo", ["Invalid --optimizer: 'AdaLoo'", "Did you mean 'AdaLo'", ", ".join(REGISTRY)]),
        ("adamatan", ["Invalid --optimizer: 'adamatan'", "Did you mean 'AdamAtan2'"]),  # any case, still close
        ("lightning_opt.Nope", ["lightning_opt.Nope"]),
    ],
)
def test_unknown_optimizer_fails_naming_it(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], value: str, expected: list[str]
) -> None:
    with pytest.raises(SystemExit) as exit_info:
        main(fit_args(tmp_path, "--optimizer", value))

    assert exit_info.value.code == 2
    err = capsys.readouterr().err
    assert all(text in err for text in expected), err
    assert not list(tmp_path.iterdir())  # nothing ran


def test_num_threads_must_be_positive(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exit_info:
        main(fit_args(tmp_path, "--num_threads=0"))

    assert exit_info.value.code == 2
    assert "num_threads" in capsys.readouterr().err
