"""``lightning-opt``: one-line errors for bad arguments, help without Sphinx markup, one naming rule for optimizers.

The fits are real runs of the digits config, cut short and logged under ``tmp_path``; the errors stop them before
the first step.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from torch import nn

import lightning_opt.lightning_cli  # noqa: F401  (Lightning's log handler binds to the real stderr, not a test's)
from lightning_opt import REGISTRY, AdaLo, build_optimizer
from lightning_opt.cli import main, qualify_optimizer_names, unknown_optimizer_message
from lightning_opt.factories import optimizer_class_for_name

try:
    from tests.cli_args import fit_args
except ImportError:  # pytest's default "prepend" import mode puts tests/ itself on sys.path
    from cli_args import fit_args


pytestmark = pytest.mark.usefixtures("one_thread")


def error_lines(err: str) -> list[str]:
    """stderr without Lightning's informational "Seed set to N" line (logged before the scheduler and callbacks
    are built; the package's and torch's optimizers are checked before it)."""
    return [line for line in err.splitlines() if line.strip() and "Seed set to " not in line]


# ------------------------------------------------------------------------------------------------ bad values
@pytest.mark.parametrize(
    ("options", "expected"),
    [
        # rejected by the optimizer's own __init__ (its message names beta1: the line names the CLI key)
        (["--optimizer.betas", "[1.5,0.9]"], ["--optimizer.betas", "[1.5, 0.9]", "beta1", "< 1.0"]),
        (["--optimizer.kappa", "-1"], ["--optimizer.kappa", "-1.0", "> 0.0"]),
        # rejected by the parser's type check (a Literal): jsonargparse's Union report before
        (["--optimizer.mode", "aggressive"], ["--optimizer.mode", "'aggressive'", "'adversarial', 'compliant'"]),
        (["--optimizer.kappa", "big"], ["--optimizer.kappa", "'big'", "float"]),
        (["--optimizer.nosuch", "3"], ["--optimizer", "lightning_opt.AdaLo", "'nosuch' is not accepted"]),
        # torch.optim's own messages ("Invalid learning rate") map to the key too
        (["--optimizer", "AdamW", "--optimizer.lr", "-1"], ["--optimizer.lr", "-1.0", "AdamW"]),
        (["--optimizer", "NSGDA", "--optimizer.momentum", "1"], ["--optimizer.momentum", "1.0", "< 1.0"]),
        (["--lr_scheduler", "StepLR", "--lr_scheduler.step_size", "x"], ["--lr_scheduler.step_size", "'x'", "int"]),
        (["--lr_scheduler", "StepLR"], ["--lr_scheduler", "StepLR", "required: step_size"]),
        (
            ["--lr_scheduler", "OneCycleLR", "--lr_scheduler.max_lr", "1", "--lr_scheduler.total_steps", "-5"],
            ["--lr_scheduler", "OneCycleLR", "-5"],
        ),
        # a callback of the package: its __init__ error reaches us as the cause of jsonargparse's Union error
        (
            ["--trainer.callbacks+=lightning_opt.SoftClip", "--trainer.callbacks.eps", "-1"],
            ["--trainer.callbacks.eps", "-1.0", "SoftClip", "> 0.0"],
        ),
    ],
)
def test_bad_value_is_one_line_naming_key_value_and_bound(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], options: list[str], expected: list[str]
) -> None:
    with pytest.raises(SystemExit) as exit_info:
        main(fit_args(tmp_path, *options))

    assert exit_info.value.code == 2
    lines = error_lines(capsys.readouterr().err)
    assert len(lines) == 1, lines
    assert lines[0].startswith("lightning-opt") and ": error: Invalid --" in lines[0]
    assert all(text in lines[0] for text in expected), lines[0]


def test_bad_value_from_the_console_script_is_one_line(tmp_path: Path) -> None:
    """The installed command, in a subprocess: status 2, one line, no traceback."""
    command = [sys.executable, "-m", "lightning_opt.cli", *fit_args(tmp_path, "--optimizer.betas", "[1.5,0.9]")]
    result = subprocess.run(command, capture_output=True, text=True, timeout=300, check=False, cwd=tmp_path)

    assert result.returncode == 2, result.stderr
    assert "Traceback" not in result.stderr
    (line,) = result.stderr.strip().splitlines()  # the optimizer is checked before seeding: not even that line
    assert "--optimizer.betas" in line and "[1.5, 0.9]" in line and "< 1.0" in line


def test_other_errors_keep_their_traceback(tmp_path: Path) -> None:
    """Only errors of the classes the command line builds are shortened; a bug elsewhere is not hidden."""
    from lightning_opt.lightning_cli import explain_init_error

    try:
        AdaLo([torch.zeros(2, requires_grad=True)], kappa=-1.0)
    except ValueError as error:
        expected = "Invalid --optimizer.kappa (AdaLo: Invalid kappa: -1.0 (expected > 0.0))"
        assert explain_init_error(error, {}) == expected
    try:
        int("x")
    except ValueError as error:
        assert explain_init_error(error, {}) is None


# ------------------------------------------------------------------------------------------------ help text
MARKUP = (":mod:`", ":class:`", ":meth:`", ":func:`", "see above", "``")


@pytest.mark.parametrize(
    "args",
    [["--help"], ["fit", "--help"], ["fit", "--trainer.callbacks.help", "lightning_opt.SoftClip"]]
    + [["fit", "--optimizer.help", name] for name in REGISTRY],
)
def test_help_shows_no_sphinx_markup(capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch, args):
    monkeypatch.setenv("COLUMNS", "200")
    with pytest.raises(SystemExit) as exit_info:
        main(args)

    assert exit_info.value.code == 0
    out = capsys.readouterr().out
    assert len(out.splitlines()) > 5
    found = [markup for markup in MARKUP if markup in out]
    assert not found, [line for line in out.splitlines() if any(markup in line for markup in found)]


def test_adalo_help_reads_well(capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("COLUMNS", "200")
    with pytest.raises(SystemExit):
        main(["fit", "--optimizer.help", "AdaLo"])
    out = capsys.readouterr().out
    assert "see lightning_opt.transforms.gradient" in out  # the :mod: role's target stays, as plain text
    assert '"adversarial" (default) or "compliant".' in out


# ------------------------------------------------------------------------------------------------ one naming rule
@pytest.mark.parametrize(
    ("spelling", "cls"),
    [
        ("adalo", AdaLo),
        ("ADALO", AdaLo),
        ("adamw", torch.optim.AdamW),
        ("AdamW", torch.optim.AdamW),
        ("sgd", torch.optim.SGD),
    ],
)
def test_factory_and_cli_accept_the_same_names(spelling: str, cls: type) -> None:
    assert optimizer_class_for_name(spelling) is cls
    assert type(build_optimizer(nn.Linear(2, 2), spelling, lr=0.1)) is cls
    assert unknown_optimizer_message(spelling) is None
    (qualified,) = qualify_optimizer_names(["--optimizer", spelling])[1:]
    assert qualified.endswith(f".{cls.__name__}")


@pytest.mark.parametrize(("spelling", "cls"), [("adalo", AdaLo), ("adamw", torch.optim.AdamW)])
def test_cli_trains_with_any_case(tmp_path: Path, spelling: str, cls: type) -> None:
    from lightning_opt.cli import LightningOptCLI

    cli = LightningOptCLI(fit_args(tmp_path, "--optimizer", spelling))
    assert type(cli.trainer.optimizers[0]) is cls
    assert cli.trainer.global_step == 2


def test_suggestions_do_not_depend_on_what_other_packages_define() -> None:
    """Importing another package's optimizers (pytorch_optimizer defines AdaLOMO, AdaGO...) must not change the
    answer to a typo: the suggestions come from the naming rule's names (the registry's, then torch.optim's)."""
    before = unknown_optimizer_message("adaloo")

    class AdaLoq(torch.optim.SGD):  # a close name, defined only here
        pass

    pytest.importorskip("pytorch_optimizer")
    assert unknown_optimizer_message("adaloo") == before
    assert before.splitlines()[0].endswith("Did you mean 'AdaLo' or 'AdaNorm' or 'Adam'?")
    assert unknown_optimizer_message("AdaLoq") is None  # an exact name of a defined subclass still resolves


def test_unknown_name_is_still_refused_with_a_suggestion(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exit_info:
        main(fit_args(tmp_path, "--optimizer", "adaloo"))
    assert exit_info.value.code == 2
    expected = "Invalid --optimizer: 'adaloo' is not the name of an optimizer. Did you mean 'AdaLo'"
    assert expected in capsys.readouterr().err
    with pytest.raises(ValueError, match=r"^Invalid name: 'adaloo'"):
        build_optimizer(nn.Linear(2, 2), "adaloo")


# ------------------------------------------------------------------------------------------------ start-up
def test_optimizers_command_does_not_import_lightning() -> None:
    """Nor the other heavy imports: torch._dynamo alone costs about 2 s, and only compiled steps need it."""
    code = (
        "import sys, lightning_opt.cli as cli\n"
        "status = cli.main(['optimizers'])\n"
        "heavy = sorted(m for m in ('lightning', 'jsonargparse', 'matplotlib', 'tensorboard', 'torch._dynamo')\n"
        "               if m in sys.modules)\n"
        "print('HEAVY', heavy, status)\n"
        "import lightning_opt\n"
        "assert lightning_opt.LossFeeder.__module__ == 'lightning_opt.callbacks.loss_feeder'  # imported on use\n"
    )
    env = {**os.environ, "PYTHONWARNINGS": "ignore"}
    result = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=300, check=False, env=env
    )
    assert result.returncode == 0, result.stderr
    assert "HEAVY [] 0" in result.stdout
