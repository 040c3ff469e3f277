"""Norm Loss and CPR switched on from ``build_optimizer(..., regularizer=...)`` and ``lightning-opt fit --regularizer``.

Both put the regulariser's group keys on the decayed group only (weights; biases, norm gains and embeddings get
neither regulariser nor weight decay) and, unless a weight decay is asked for, no weight decay there. The group
route (``tests/test_regularizers.py`` checks the rules themselves) is the oracle: a factory-built optimizer must
step bit for bit like one given the same groups by hand, and the CLI must give the optimizer the factory's groups.
The fits are real two- or three-step runs of the digits config, logging under ``tmp_path``.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import torch
from sklearn.datasets import load_digits
from torch import nn

from lightning_opt import AdaLo, AdamAtan2, Lookahead, Muon, build_optimizer, muon_param_groups
from lightning_opt.cli import LightningOptCLI
from lightning_opt.factories import regularizer_group_keys
from lightning_opt.lightning_cli import describe_optimizer

try:
    from tests.cli_args import fit_args
except ImportError:  # pytest's default "prepend" import mode puts tests/ itself on sys.path
    from cli_args import fit_args

REGULARIZERS = {
    "norm_loss": {"norm_loss_factor": 1e-2},
    "cpr": {"cpr_mu": 50.0, "cpr_warm_start": 2},
}
"""Each regulariser with numbers that act within a few steps (CPR fixes its bound after the second update; AdaLo's
weights move so little in six steps that a multiplier step of 0.5 leaves them bit for bit unchanged)."""
OPTIMIZERS = {"AdaLo": (AdaLo, {"lr": 0.5}), "AdamAtan2": (AdamAtan2, {"lr": 3e-2}), "Muon": (Muon, {"lr": 3e-2})}
STEPS = 6


def _digits_batches(count: int = STEPS, size: int = 64) -> list[tuple[torch.Tensor, torch.Tensor]]:
    images, labels = load_digits(return_X_y=True)
    inputs = torch.as_tensor(images, dtype=torch.float32) / 16.0
    targets = torch.as_tensor(labels)
    return [(inputs[i * size : (i + 1) * size], targets[i * size : (i + 1) * size]) for i in range(count)]


class _Classifier(nn.Module):
    """Two decayed weights (a hidden layer and the output layer), and exempt biases, a LayerNorm and an embedding
    of the digit's label used as a learned per-class offset (so that it gets a gradient)."""

    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.hidden = nn.Linear(64, 32)
        self.norm = nn.LayerNorm(32)
        self.out = nn.Linear(32, 10)
        self.offset = nn.Embedding(10, 10)

    def forward(self, inputs: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        logits = self.out(torch.relu(self.norm(self.hidden(inputs))))
        return logits + 0.1 * self.offset(labels).mean(dim=0)


def _train(model: _Classifier, optimizer: torch.optim.Optimizer) -> None:
    for inputs, labels in _digits_batches():
        optimizer.zero_grad()
        loss = nn.functional.cross_entropy(model(inputs, labels), labels)
        loss.backward()
        optimizer.step(lambda: loss.detach())


def _decayed(model: _Classifier) -> list[nn.Parameter]:
    return [model.hidden.weight, model.out.weight]


def _exempt(model: _Classifier) -> list[nn.Parameter]:
    decayed = {id(p) for p in _decayed(model)}
    return [p for p in model.parameters() if id(p) not in decayed]


def _by_hand(name: str, model: _Classifier, keys: dict[str, Any], weight_decay: float = 0.0) -> torch.optim.Optimizer:
    """The group route: the decayed weights with the regulariser's keys, the rest with neither."""
    cls, kwargs = OPTIMIZERS[name]
    groups: list[dict[str, Any]] = [
        {"params": _decayed(model), "weight_decay": weight_decay, **keys},
        {"params": _exempt(model), "weight_decay": 0.0},
    ]
    if cls is Muon:
        groups = muon_param_groups(model, groups)
    return cls(groups, **kwargs)


# ------------------------------------------------------------------------------------------------ factory
@pytest.mark.parametrize("regularizer", list(REGULARIZERS))
@pytest.mark.parametrize("name", list(OPTIMIZERS))
def test_factory_regularizes_the_decayed_group_only_and_steps_like_the_group_route(name: str, regularizer: str) -> None:
    numbers = REGULARIZERS[regularizer]
    built_model, hand_model, plain_model = _Classifier(), _Classifier(), _Classifier()
    kwargs = OPTIMIZERS[name][1]
    built = build_optimizer(built_model, name, regularizer=regularizer, regularizer_kwargs=numbers, **kwargs)
    hand = _by_hand(name, hand_model, {"regularizer": regularizer, **numbers})
    plain = build_optimizer(plain_model, name, weight_decay=0.0, **OPTIMIZERS[name][1])

    decayed_ids = {id(p) for p in _decayed(built_model)}
    for group in built.param_groups:
        ids = {id(p) for p in group["params"]}
        assert group["weight_decay"] == 0.0  # the regulariser replaces the weight decay; exempt tensors get none
        if ids <= decayed_ids:
            assert {key: group[key] for key in ("regularizer", *numbers)} == {"regularizer": regularizer, **numbers}
        else:
            assert not ids & decayed_ids and "regularizer" not in group
    assert sum(len(g["params"]) for g in built.param_groups if "regularizer" in g) == 2

    for model, optimizer in ((built_model, built), (hand_model, hand), (plain_model, plain)):
        _train(model, optimizer)
    for mine, theirs in zip(built_model.parameters(), hand_model.parameters()):
        assert torch.equal(mine, theirs)  # bit for bit
    moved = [not torch.equal(a, b) for a, b in zip(built_model.parameters(), plain_model.parameters())]
    assert any(moved), "the regulariser changed nothing"
    for param in _exempt(built_model):
        assert "cpr_lagrange" not in built.state[param]
    if regularizer == "cpr":
        for mine, theirs in zip(_decayed(built_model), _decayed(hand_model)):
            for key in ("cpr_lagrange", "cpr_kappa"):
                assert torch.equal(built.state[mine][key], hand.state[theirs][key])
            assert built.state[mine]["cpr_kappa"].item() > 0  # the bound was fixed at the warm start


def test_explicit_weight_decay_is_kept_beside_the_regularizer() -> None:
    model, hand_model = _Classifier(), _Classifier()
    built = build_optimizer(model, "AdamAtan2", weight_decay=0.05, regularizer="norm_loss", lr=3e-2)
    assert [(g["weight_decay"], g.get("regularizer")) for g in built.param_groups] == [(0.05, "norm_loss"), (0.0, None)]
    hand = _by_hand("AdamAtan2", hand_model, {"regularizer": "norm_loss"}, weight_decay=0.05)
    _train(model, built)
    _train(hand_model, hand)
    assert all(torch.equal(a, b) for a, b in zip(model.parameters(), hand_model.parameters()))


def test_without_a_regularizer_nothing_changes() -> None:
    groups = build_optimizer(_Classifier(), "AdaLo").param_groups
    assert [g["weight_decay"] for g in groups] == [0.01, 0.0]  # AdaLo's default decay on the decayed group
    assert all(g.get("regularizer") is None for g in groups)


def test_a_plain_iterable_of_parameters_is_one_regularized_group() -> None:
    model = _Classifier()
    optimizer = build_optimizer(model.parameters(), "AdaLo", regularizer="cpr")
    (group,) = optimizer.param_groups
    keys = (group["regularizer"], group["cpr_mu"], group["cpr_warm_start"], group["weight_decay"])
    assert keys == ("cpr", 1.0, 1000, 0.0)


@pytest.mark.parametrize("name", ["AdamW", "sgd"])
def test_torch_optimizers_are_refused(name: str) -> None:
    with pytest.raises(ValueError, match=rf"Invalid regularizer: 'cpr' with '{name}' \(torch\.optim\..* is not one of"):
        build_optimizer(_Classifier(), name, regularizer="cpr")


@pytest.mark.parametrize(
    ("regularizer", "kwargs", "message"),
    [
        ("crp", None, r"Invalid regularizer: 'crp' \(expected one of None, 'norm_loss', 'cpr'\)"),
        ("cpr", {"cpr_mu": 0.0}, r"Invalid cpr_mu: 0\.0 \(expected > 0\.0\)"),
        ("cpr", {"cpr_warm_start": 0}, r"Invalid cpr_warm_start: 0"),
        ("cpr", {"cpr_warm_start": 2.5}, r"Invalid cpr_warm_start: 2\.5"),
        ("norm_loss", {"norm_loss_factor": -1.0}, r"Invalid norm_loss_factor: -1\.0"),
        ("norm_loss", {"cpr_mu": 1.0}, r"Invalid regularizer_kwargs: \{'cpr_mu': 1\.0\} \('norm_loss' takes norm_loss"),
        ("cpr", {"mu": 1.0}, r"Invalid regularizer_kwargs: \{'mu': 1\.0\} \('cpr' takes cpr_mu, cpr_warm_start\)"),
        (None, {"cpr_mu": 1.0}, r"Invalid regularizer_kwargs: \{'cpr_mu': 1\.0\} given without a regularizer"),
        ("cpr", [("cpr_mu", 1.0)], r"Invalid regularizer_kwargs: \[\('cpr_mu', 1\.0\)\] \(expected a dict or None\)"),
    ],
)
def test_bad_regularizer_arguments_are_refused_naming_them(regularizer: Any, kwargs: Any, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        build_optimizer(_Classifier(), "AdaLo", regularizer=regularizer, regularizer_kwargs=kwargs)
    with pytest.raises(ValueError, match=message):
        regularizer_group_keys(regularizer, kwargs)


def test_norm_loss_with_adafactors_relative_step_is_refused_by_the_optimizer() -> None:
    with pytest.raises(ValueError, match=r"Invalid regularizer: 'norm_loss' .* lr is None"):
        build_optimizer(_Classifier(), "Adafactor", regularizer="norm_loss")


# ------------------------------------------------------------------------------------------------ CLI

def _groups(optimizer: torch.optim.Optimizer) -> list[tuple[list[int], dict[str, Any]]]:
    """Each group's parameters (by identity) and its keys besides ``params``, for comparing two optimizers."""
    return [
        ([id(p) for p in g["params"]], {k: v for k, v in g.items() if k != "params"}) for g in optimizer.param_groups
    ]


def _cli_optimizer(cli: Any) -> torch.optim.Optimizer:
    built = cli.model.configure_optimizers()
    return built["optimizer"] if isinstance(built, dict) else built


@pytest.mark.usefixtures("one_thread")
@pytest.mark.parametrize(
    ("options", "name", "factory_kwargs"),
    [
        (["--regularizer.name", "cpr", "--regularizer.cpr_warm_start", "500"], "AdaLo",
         {"regularizer": "cpr", "regularizer_kwargs": {"cpr_warm_start": 500}}),
        (["--optimizer", "Muon", "--regularizer.name", "norm_loss", "--regularizer.norm_loss_factor", "1e-3"], "Muon",
         {"regularizer": "norm_loss", "regularizer_kwargs": {"norm_loss_factor": 1e-3}}),
        (["--optimizer", "AdamAtan2", "--optimizer.weight_decay", "0.05", "--regularizer.name", "norm_loss",
          "--regularizer.keep_weight_decay", "true"], "AdamAtan2",
         {"regularizer": "norm_loss", "weight_decay": 0.05}),
    ],
)
def test_cli_gives_the_optimizer_the_factorys_groups(
    tmp_path: Path, options: list[str], name: str, factory_kwargs: dict[str, Any]
) -> None:
    cli = LightningOptCLI(fit_args(tmp_path, *options)[1:], run=False)  # run=False: no subcommand
    from_cli = _cli_optimizer(cli)
    extra = {"weight_decay": 0.05} if name == "AdamAtan2" else {}
    from_factory = build_optimizer(cli.model, name, **{**extra, **factory_kwargs})
    assert type(from_cli) is type(from_factory)
    assert _groups(from_cli) == _groups(from_factory)
    assert sum(1 for g in from_cli.param_groups if g.get("regularizer")) >= 1
    assert any(g.get("regularizer") is None for g in from_cli.param_groups)  # biases are left alone


@pytest.mark.usefixtures("one_thread")
def test_cli_regularizer_from_a_config_file_and_around_lookahead(tmp_path: Path) -> None:
    config = tmp_path / "regularizer.yaml"
    config.write_text("regularizer:\n  name: cpr\n  cpr_mu: 0.5\n")
    cli = LightningOptCLI(
        fit_args(tmp_path, "--config", str(config), "--optimizer", "lightning_opt.Lookahead",
                 "--optimizer.optimizer", "AdaLo")[1:],
        run=False,
    )
    optimizer = _cli_optimizer(cli)
    assert isinstance(optimizer, Lookahead) and isinstance(optimizer.optimizer, AdaLo)
    assert _groups(optimizer.optimizer) == _groups(
        build_optimizer(cli.model, "AdaLo", regularizer="cpr", regularizer_kwargs={"cpr_mu": 0.5})
    )


@pytest.mark.usefixtures("one_thread")
def test_cli_fit_applies_cpr_and_saves_its_state(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    args = fit_args(
        tmp_path, "--regularizer.name", "cpr", "--regularizer.cpr_warm_start", "1",
        "--trainer.enable_checkpointing=true", train_batches=3,
    )
    cli = LightningOptCLI(args)
    assert cli.trainer.global_step == 3
    (optimizer,) = cli.trainer.optimizers
    weights = [p for p in cli.model.parameters() if p.dim() >= 2]
    biases = [p for p in cli.model.parameters() if p.dim() < 2]
    assert weights and biases
    for param in weights:  # the bound was fixed after the first update and the multiplier kept since
        assert optimizer.state[param]["cpr_kappa"].item() > 0
    for param in biases:
        assert "cpr_lagrange" not in optimizer.state[param]
    assert "+ cpr(cpr_mu=1.0, cpr_warm_start=1) on 3 of 6 tensors" in capsys.readouterr().out

    (checkpoint,) = (tmp_path / "digits").glob("version_*/checkpoints/*.ckpt")
    saved = torch.load(checkpoint, weights_only=True)["optimizer_states"][0]
    regularized = [g for g in saved["param_groups"] if g.get("regularizer") == "cpr"]
    assert len(regularized) == 1 and regularized[0]["cpr_warm_start"] == 1 and regularized[0]["weight_decay"] == 0.0
    with_cpr = sorted(i for i, state in saved["state"].items() if "cpr_lagrange" in state)
    assert with_cpr == sorted(regularized[0]["params"]) and len(with_cpr) == 3


@pytest.mark.usefixtures("one_thread")
def test_cli_without_regularizer_has_no_cpr_state(tmp_path: Path) -> None:
    cli = LightningOptCLI(fit_args(tmp_path))
    (optimizer,) = cli.trainer.optimizers
    assert len(optimizer.param_groups) == 1  # LightningCLI's own model.parameters()
    assert not any("cpr_lagrange" in state for state in optimizer.state.values())
    assert " + " not in describe_optimizer(optimizer)


@pytest.mark.parametrize(
    ("options", "line"),
    [
        (["--regularizer.name", "crp"], "Invalid --regularizer.name: 'crp' (expected one of None, 'norm_loss', 'cpr')"),
        (["--regularizer.name", "cpr", "--regularizer.cpr_mu", "0"],
         "Invalid --regularizer.cpr_mu: 0.0 (expected > 0.0)"),
        (["--regularizer.name", "cpr", "--regularizer.cpr_mu", "abc"],
         "Invalid --regularizer.cpr_mu: 'abc' (expected float or null)"),
        (["--regularizer.name", "cpr", "--regularizer.cpr_warm_start", "0"],
         "Invalid --regularizer.cpr_warm_start: 0 (expected an integer > 0)"),
        (["--regularizer.name", "norm_loss", "--regularizer.norm_loss_factor", "-1"],
         "Invalid --regularizer.norm_loss_factor: -1.0 (expected >= 0.0)"),
        (["--regularizer.name", "norm_loss", "--regularizer.cpr_mu", "2"],
         "Invalid --regularizer.cpr_mu: 2.0 (not a key of --regularizer.name norm_loss, which takes norm_loss_factor)"),
        (["--regularizer.cpr_warm_start", "5"],
         "Invalid --regularizer.cpr_warm_start: 5 (given without --regularizer.name)"),
        (["--regularizer.name", "cpr", "--optimizer", "AdamW"],
         "Invalid --regularizer.name: 'cpr' with --optimizer AdamW (not one of the package's optimizers"),
        (["--regularizer.name", "cpr", "--optimizer", "lightning_opt.Lookahead", "--optimizer.optimizer", "SGD"],
         "Invalid --regularizer.name: 'cpr' with --optimizer.optimizer SGD (not one of the package's optimizers"),
        (["--regularizer.name", "cpr", "--optimizer", "null"],
         "Invalid --regularizer.name: 'cpr' (needs --optimizer, one of the package's optimizers)"),
        (["--regularizer.name", "norm_loss", "--optimizer", "Adafactor"],
         "Invalid --regularizer.name: 'norm_loss' (Adafactor: Invalid regularizer: 'norm_loss' (its step is the "
         "group's lr times norm_loss_factor, but lr is None"),
    ],
)
def test_cli_bad_regularizer_is_one_line_with_exit_status_2(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], options: list[str], line: str
) -> None:
    with pytest.raises(SystemExit) as exit_info:
        LightningOptCLI(fit_args(tmp_path, *options))
    assert exit_info.value.code == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1, err
    assert err.startswith(f"lightning-opt fit: error: {line}"), err
    assert not list(tmp_path.iterdir())  # refused before anything ran
