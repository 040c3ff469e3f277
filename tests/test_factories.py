"""``lightning_opt.factories``: decay / no-decay groups, optimizers by name, the scheduler dict for Lightning."""

from __future__ import annotations

import inspect
import re

import pytest
import torch
from lightning.pytorch.core.optimizer import _configure_optimizers
from torch import nn

from lightning_opt import REGISTRY
from lightning_opt.factories import build_optimizer, param_groups_for_weight_decay, resolve_optimizer_class


class Net(nn.Module):
    """Every kind of parameter the split must handle."""

    def __init__(self) -> None:
        super().__init__()
        self.embed = nn.Embedding(10, 4)
        self.fc1 = nn.Linear(4, 8)
        self.norm = nn.LayerNorm(8)
        self.bn = nn.BatchNorm1d(8)
        self.conv = nn.Conv1d(8, 8, 3, bias=False)
        self.frozen = nn.Linear(8, 8)
        self.frozen.requires_grad_(False)
        self.shared = nn.Linear(8, 8)
        self.blocks = nn.Sequential(self.shared, nn.ReLU(), self.shared)  # one module used twice
        self.head = nn.Linear(4, 10)
        self.head.weight = self.embed.weight  # tied with the embedding (defined after it)
        self.scale = nn.Parameter(torch.ones(()))  # a 0-d parameter directly on the root


def _names(model: nn.Module, params) -> set[str]:
    by_id = {id(p): name for name, p in model.named_parameters()}
    return {by_id[id(p)] for p in params}


DEFAULT_EXEMPT = {
    "embed.weight",  # embedding (and, tied to it, head.weight)
    "fc1.bias",
    "norm.weight",
    "norm.bias",
    "bn.weight",
    "bn.bias",
    "shared.bias",
    "head.bias",
    "scale",
}
"""The parameters of ``Net`` that the default rule exempts from weight decay."""


def test_default_split():
    model = Net()
    groups = param_groups_for_weight_decay(model, 0.1)
    assert [g["weight_decay"] for g in groups] == [0.1, 0.0]
    assert _names(model, groups[0]["params"]) == {"fc1.weight", "conv.weight", "shared.weight"}
    assert _names(model, groups[1]["params"]) == DEFAULT_EXEMPT
    all_params = [p for g in groups for p in g["params"]]
    assert len(all_params) == len({id(p) for p in all_params})  # shared and tied parameters counted once
    trainable = {id(p) for p in model.parameters() if p.requires_grad}
    assert {id(p) for p in all_params} == trainable  # frozen ones left out, every trainable one present


def test_tied_embedding_is_exempt_whatever_the_definition_order():
    class TiedFirst(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.head = nn.Linear(4, 10, bias=False)  # defined before the embedding it is tied to
            self.embed = nn.Embedding(10, 4)
            self.head.weight = self.embed.weight

    model = TiedFirst()
    groups = param_groups_for_weight_decay(model, 0.1)
    assert [g["weight_decay"] for g in groups] == [0.0]


def test_empty_groups_are_dropped():
    groups = param_groups_for_weight_decay(nn.LayerNorm(4), 0.1)
    assert len(groups) == 1 and groups[0]["weight_decay"] == 0.0 and len(groups[0]["params"]) == 2
    groups = param_groups_for_weight_decay(nn.Linear(3, 3, bias=False), 0.1)
    assert len(groups) == 1 and groups[0]["weight_decay"] == 0.1
    frozen = nn.Linear(3, 3).requires_grad_(False)
    assert param_groups_for_weight_decay(frozen, 0.1) == []


def test_pattern_override_adds_to_the_default_rule():
    """``no_decay`` adds exemptions: naming one more parameter must not make biases and norm weights decay."""
    model = Net()
    groups = param_groups_for_weight_decay(model, 0.2, no_decay=["conv.*"])
    assert _names(model, groups[1]["params"]) == DEFAULT_EXEMPT | {"conv.weight"}
    assert _names(model, groups[0]["params"]) == {"fc1.weight", "shared.weight"}
    assert groups[0]["weight_decay"] == 0.2 and groups[1]["weight_decay"] == 0.0
    # fnmatch is case-sensitive and matches the whole qualified name: these add nothing
    groups = param_groups_for_weight_decay(model, 0.2, no_decay=["CONV.*", "fc1"])
    assert _names(model, groups[1]["params"]) == DEFAULT_EXEMPT


def test_replace_default_uses_only_the_given_rule():
    model = Net()
    groups = param_groups_for_weight_decay(model, 0.2, no_decay=["*.bias", "embed.*"], replace_default=True)
    exempt = _names(model, groups[1]["params"])
    assert exempt == {"fc1.bias", "norm.bias", "bn.bias", "shared.bias", "head.bias", "embed.weight"}
    assert {"norm.weight", "bn.weight", "scale", "fc1.weight"} <= _names(model, groups[0]["params"])
    everything = param_groups_for_weight_decay(model, 0.2, no_decay=[], replace_default=True)
    assert len(everything) == 1 and everything[0]["weight_decay"] == 0.2
    optimizer = build_optimizer(model, "AdamW", weight_decay=0.2, no_decay=[], replace_default=True)
    assert [g["weight_decay"] for g in optimizer.param_groups] == [0.2]


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"replace_default": True}, r"^Invalid no_decay: None with replace_default=True"),
        ({"no_decay": [], "replace_default": 1}, r"^Invalid replace_default: 1 \(expected True or False\)"),
    ],
)
def test_invalid_replace_default(kwargs, message):
    with pytest.raises(ValueError, match=message):
        param_groups_for_weight_decay(Net(), 0.1, **kwargs)


def test_callable_override_gets_name_parameter_and_owning_module():
    model = Net()
    seen = []

    def rule(name, param, module):
        seen.append((name, type(module).__name__, tuple(param.shape)))
        return isinstance(module, nn.Conv1d) or name == "scale"

    groups = param_groups_for_weight_decay(model, 0.1, no_decay=rule)
    assert _names(model, groups[1]["params"]) == DEFAULT_EXEMPT | {"conv.weight"}  # added to the default
    groups = param_groups_for_weight_decay(model, 0.1, no_decay=rule, replace_default=True)
    assert _names(model, groups[1]["params"]) == {"conv.weight", "scale"}
    assert ("conv.weight", "Conv1d", (8, 8, 3)) in seen and ("scale", "Net", ()) in seen
    assert ("fc1.bias", "Linear", (8,)) in seen
    assert not any(name.startswith("frozen") for name, _, _ in seen)  # frozen: never asked


@pytest.mark.parametrize("bad", ["*.bias", ["*.bias", 3]])
def test_invalid_no_decay(bad):
    with pytest.raises(ValueError, match=r"^Invalid no_decay: "):
        param_groups_for_weight_decay(Net(), 0.1, no_decay=bad)


# ------------------------------------------------------------------------------------------------ by name
@pytest.mark.parametrize("name", list(REGISTRY))
def test_registered_names_resolve_case_insensitively(name):
    for spelling in (name, name.lower(), name.upper()):
        assert resolve_optimizer_class(spelling) is REGISTRY[name].cls


def test_torch_optim_names_resolve():
    assert resolve_optimizer_class("AdamW") is torch.optim.AdamW
    assert resolve_optimizer_class("SGD") is torch.optim.SGD


@pytest.mark.parametrize("name", ["NoSuchOptimizer", "lr_scheduler", "", "Adam W"])
def test_unknown_name_raises_value_error_naming_it(name):
    with pytest.raises(ValueError, match=rf"^Invalid name: {name!r}") as info:
        resolve_optimizer_class(name)
    assert all(registered in str(info.value) for registered in REGISTRY)  # the message lists the choices
    with pytest.raises(ValueError, match=rf"^Invalid name: {name!r}"):
        build_optimizer(nn.Linear(2, 2), name)


def test_build_registered_optimizer_with_split_and_kwargs():
    model = Net()
    name = next(iter(REGISTRY))
    optimizer = build_optimizer(model, name.lower(), weight_decay=0.05, lr=0.02)
    assert type(optimizer) is REGISTRY[name].cls
    assert [g["weight_decay"] for g in optimizer.param_groups] == [0.05, 0.0]
    assert all(g["lr"] == 0.02 for g in optimizer.param_groups)
    assert _names(model, optimizer.param_groups[0]["params"]) == {"fc1.weight", "conv.weight", "shared.weight"}


@pytest.mark.parametrize("name", list(REGISTRY))
def test_default_weight_decay_is_the_optimizers_own(name):
    optimizer = build_optimizer(Net(), name)
    default = inspect.signature(REGISTRY[name].cls).parameters["weight_decay"].default
    assert [g["weight_decay"] for g in optimizer.param_groups] == [default, 0.0]


def test_build_torch_optimizer_and_plain_parameter_iterable():
    model = Net()
    optimizer = build_optimizer(model, "AdamW", lr=1e-3)
    assert type(optimizer) is torch.optim.AdamW
    assert [g["weight_decay"] for g in optimizer.param_groups] == [0.01, 0.0]  # AdamW's default, then 0
    sgd = build_optimizer(model, "SGD", lr=0.1)
    assert [g["weight_decay"] for g in sgd.param_groups] == [0.0, 0.0]
    params = [p for p in model.parameters() if p.requires_grad]
    single = build_optimizer(iter(params), "AdamW", lr=1e-3, weight_decay=0.3)
    assert len(single.param_groups) == 1 and single.param_groups[0]["weight_decay"] == 0.3
    assert len(single.param_groups[0]["params"]) == len({id(p) for p in params})


def test_optimizer_without_weight_decay_is_refused():
    with pytest.raises(ValueError, match=r"^Invalid name: 'LBFGS'.*weight_decay"):
        build_optimizer(nn.Linear(2, 2), "LBFGS")


# ------------------------------------------------------------------------------------------------ schedulers
@pytest.mark.parametrize("interval", ["step", "epoch"])
@pytest.mark.parametrize("scheduler", ["StepLR", torch.optim.lr_scheduler.StepLR])
def test_scheduler_dict_for_lightning(scheduler, interval):
    config = build_optimizer(
        Net(), "AdamW", lr=0.1, scheduler=scheduler, scheduler_kwargs={"step_size": 2, "gamma": 0.5}, interval=interval
    )
    assert set(config) == {"optimizer", "lr_scheduler"}
    optimizer, lr_scheduler = config["optimizer"], config["lr_scheduler"]
    assert isinstance(optimizer, torch.optim.AdamW)
    assert lr_scheduler["interval"] == interval and lr_scheduler["frequency"] == 1
    sched = lr_scheduler["scheduler"]
    assert isinstance(sched, torch.optim.lr_scheduler.StepLR) and sched.optimizer is optimizer
    for _ in range(2):
        optimizer.step()
        sched.step()
    assert optimizer.param_groups[0]["lr"] == pytest.approx(0.05)
    # Lightning accepts the dict as configure_optimizers' return value
    optimizers, schedulers, monitor = _configure_optimizers(config)
    assert optimizers == [optimizer] and monitor is None
    assert schedulers[0]["scheduler"] is sched and schedulers[0]["interval"] == interval


def test_scheduler_on_a_registered_optimizer():
    name = next(iter(REGISTRY))
    config = build_optimizer(Net(), name, lr=0.1, scheduler="LambdaLR", scheduler_kwargs={"lr_lambda": lambda s: 0.5})
    assert type(config["optimizer"]) is REGISTRY[name].cls
    assert config["optimizer"].param_groups[0]["lr"] == pytest.approx(0.05)


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        (
            {"scheduler": "StepLR", "scheduler_kwargs": {"step_size": 1}, "interval": "batch"},
            r"^Invalid interval: 'batch'",
        ),
        ({"scheduler": "NoSuchScheduler"}, r"^Invalid scheduler: 'NoSuchScheduler'"),
        ({"scheduler_kwargs": {"step_size": 1}}, r"^Invalid scheduler_kwargs: "),
    ],
)
def test_bad_scheduler_arguments(kwargs, message):
    with pytest.raises(ValueError, match=message):
        build_optimizer(Net(), "AdamW", lr=0.1, **kwargs)


def test_get_spec_is_case_insensitive_and_names_a_bad_name():
    from lightning_opt import get_spec

    assert get_spec("adamatan2") is REGISTRY["AdamAtan2"]
    expected = re.escape(f"Invalid optimizer: 'Adamm' (expected one of {', '.join(REGISTRY)})")
    with pytest.raises(ValueError, match=f"^{expected}$"):
        get_spec("Adamm")
