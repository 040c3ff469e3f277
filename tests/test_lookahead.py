"""Lookahead (arXiv:1907.08610) around torch's and the package's optimizers, alone and under Lightning.

Oracle: pytorch_optimizer's ``Lookahead`` (the same bits where both synchronise the same parameters), and a
float64 loop written from the paper's rule where pytorch_optimizer differs (a parameter without a gradient
at the synchronising step).
"""

from __future__ import annotations

import copy
import functools
import io
import pickle
from collections.abc import Callable
from pathlib import Path
from typing import Any

import lightning.pytorch as pl
import pytest
import torch
from pytorch_optimizer import Lookahead as OracleLookahead
from torch.overrides import TorchFunctionMode

import lightning_opt
from lightning_opt import AdaLo, AdamAtan2, Lookahead, LossFeeder
from lightning_opt.callbacks.loss_feeder import LossDriven
from lightning_opt.cli import main
from lightning_opt.lightning_cli import LightningOptCLI, describe_optimizer

try:
    from tests.cli_args import fit_args
except ImportError:  # pytest's default "prepend" import mode puts tests/ itself on sys.path
    from cli_args import fit_args

SHAPES = [(3, 4), (5,), (), (0, 3)]


def _params(seed: int = 0, dtype: torch.dtype = torch.float32) -> list[torch.nn.Parameter]:
    """Parameters of several shapes: 2-D, 1-D, 0-d, empty, and a non-contiguous (transposed) one."""
    generator = torch.Generator().manual_seed(seed)
    params = [torch.nn.Parameter(torch.randn(shape, generator=generator, dtype=dtype)) for shape in SHAPES]
    transposed = torch.nn.Parameter(torch.randn(4, 6, generator=generator, dtype=dtype).t())
    assert not transposed.is_contiguous()
    return [*params, transposed]


def _set_grads(
    params: list[torch.nn.Parameter], step: int, skip: Callable[[int, int], bool] = lambda i, t: False
) -> None:
    generator = torch.Generator().manual_seed(1000 + step)
    for index, param in enumerate(params):
        grad = torch.randn(param.shape, generator=generator, dtype=param.dtype)
        param.grad = None if skip(index, step) else grad


INNER: dict[str, Callable[[Any], torch.optim.Optimizer]] = {
    "SGD-momentum": lambda params: torch.optim.SGD(params, lr=0.1, momentum=0.9),
    "Adam": lambda params: torch.optim.Adam(params, lr=0.05),
    "AdamW-foreach": lambda params: torch.optim.AdamW(params, lr=0.05, foreach=True),
    "AdamAtan2": lambda params: AdamAtan2(params, lr=0.05),
    "AdaLo": lambda params: AdaLo(params, lr=0.05),
}


@pytest.mark.parametrize("k, alpha", [(1, 0.5), (3, 0.5), (3, 0.8), (2, 0.99), (4, 0.3)])
@pytest.mark.parametrize("inner", list(INNER))
def test_equals_pytorch_optimizer_lookahead_bit_for_bit(inner: str, k: int, alpha: float) -> None:
    mine_params, oracle_params = _params(), _params()
    mine = Lookahead(INNER[inner](mine_params), k=k, alpha=alpha)
    oracle = OracleLookahead(INNER[inner](oracle_params), k=k, alpha=alpha)
    for step in range(11):
        _set_grads(mine_params, step)
        _set_grads(oracle_params, step)
        if inner == "AdaLo":  # the oracle's step takes no loss: both inner AdaLos get it with set_loss
            mine.set_loss(1.0 / (step + 1))
            oracle.optimizer.set_loss(1.0 / (step + 1))
        mine.step()
        oracle.step()
        for ours, theirs in zip(mine_params, oracle_params):
            assert torch.equal(ours, theirs), (step, ours, theirs)
    synced = 11 // k * k
    slow = mine.state_dict()["lookahead"]["slow"]
    for index, param in enumerate(oracle_params):
        assert torch.equal(slow[index], oracle.state[param]["slow_params"]), index
    assert mine.state_dict()["lookahead"]["steps"] == [11 - synced]


@pytest.mark.parametrize("inner", ["Adam", "AdaLo"])
def test_alpha_one_is_the_inner_optimizer_alone(inner: str) -> None:
    """pytorch_optimizer refuses alpha = 1; here it is allowed, and changes nothing."""
    wrapped_params, alone_params = _params(), _params()
    wrapped, alone = Lookahead(INNER[inner](wrapped_params), k=2, alpha=1.0), INNER[inner](alone_params)
    for step in range(5):
        _set_grads(wrapped_params, step)
        _set_grads(alone_params, step)
        wrapped.step(**({"loss": 0.5} if inner == "AdaLo" else {}))
        alone.step(**({"loss": 0.5} if inner == "AdaLo" else {}))
    assert all(torch.equal(a, b) for a, b in zip(wrapped_params, alone_params))


def test_the_rule_of_the_paper_in_float64_with_gradients_missing_at_some_steps() -> None:
    """Every parameter is synchronised, with a gradient at that step or not (pytorch_optimizer skips those
    without one, leaving a parameter that moved earlier in the period on its fast weights)."""
    lr, k, alpha, steps = 0.1, 3, 0.6, 10
    params = _params(dtype=torch.float64)

    def skip(index: int, step: int) -> bool:
        return (index == 0 and step % 3 == 2) or index == 1  # 0: no gradient at each synchronising step; 1: never

    optimizer = Lookahead(torch.optim.SGD(params, lr=lr), k=k, alpha=alpha)
    fast = [p.detach().clone() for p in params]
    slow = [p.detach().clone() for p in params]
    for step in range(steps):
        _set_grads(params, step, skip)
        optimizer.step()
        for index, param in enumerate(params):
            if param.grad is not None:
                fast[index] = fast[index] - lr * param.grad
            if (step + 1) % k == 0:
                slow[index] = slow[index] + alpha * (fast[index] - slow[index])
                fast[index] = slow[index].clone()
            torch.testing.assert_close(param.detach(), fast[index], rtol=1e-14, atol=1e-14)
    assert not torch.equal(params[0], _params(dtype=torch.float64)[0])  # it did move between synchronisations
    assert torch.equal(params[1], _params(dtype=torch.float64)[1])  # never a gradient: never moved


def test_one_foreach_call_per_group_for_the_slow_update() -> None:
    class Calls(TorchFunctionMode):
        def __init__(self) -> None:
            super().__init__()
            self.names: list[str] = []

        def __torch_function__(self, func: Any, types: Any, args: Any = (), kwargs: Any = None) -> Any:
            self.names.append(getattr(func, "__name__", ""))
            return func(*args, **(kwargs or {}))

    params = _params()
    inner = torch.optim.SGD([{"params": params[:2]}, {"params": params[2:]}], lr=0.1, foreach=False)
    optimizer = Lookahead(inner, k=2)
    for step in range(2):
        _set_grads(params, step)
        with Calls() as calls:
            optimizer.step()
        synchronised = step == 1
        assert calls.names.count("_foreach_lerp_") == (2 if synchronised else 0)
        assert calls.names.count("_foreach_copy_") == (2 if synchronised else 0)
        assert "lerp_" not in calls.names and "copy_" not in calls.names


# ------------------------------------------------------------------------------------------- construction
@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"k": 0}, "Invalid k: 0 (expected an integer > 0)"),
        ({"k": -2}, "Invalid k: -2 (expected an integer > 0)"),
        ({"k": 2.0}, "Invalid k: 2.0 (expected an integer > 0)"),
        ({"k": True}, "Invalid k: True (expected an integer > 0)"),
        ({"alpha": 0.0}, "Invalid alpha: 0.0 (expected > 0.0)"),
        ({"alpha": 1.5}, "Invalid alpha: 1.5 (expected <= 1.0)"),
        ({"alpha": float("nan")}, "Invalid alpha: nan (expected a finite number)"),
        ({"alpha": "0.5"}, "Invalid alpha: '0.5' (expected a real number)"),
    ],
)
def test_bad_k_or_alpha_is_a_value_error_at_construction(kwargs: dict[str, Any], message: str) -> None:
    inner = torch.optim.SGD(_params(), lr=0.1)
    with pytest.raises(ValueError) as error:
        Lookahead(inner, **kwargs)
    assert str(error.value) == message


def test_the_inner_optimizer_given_wrongly_is_a_type_error() -> None:
    params = _params()
    with pytest.raises(TypeError, match=r"Invalid optimizer: None \(Lookahead needs the optimizer to wrap"):
        Lookahead(params)
    with pytest.raises(TypeError, match="got an optimizer to wrap as params already"):
        Lookahead(torch.optim.SGD(params, lr=0.1), optimizer=torch.optim.SGD)
    with pytest.raises(TypeError, match=r"Invalid optimizer: 5 \(expected a callable that builds the optimizer"):
        Lookahead(params, optimizer=5)  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="expected a callable"):
        Lookahead(params, optimizer=torch.optim.SGD(params, lr=0.1))  # type: ignore[arg-type]
    with pytest.raises(TypeError, match=r"Invalid optimizer: .* \(it built \[\], not a torch.optim.Optimizer\)"):
        Lookahead(params, optimizer=lambda params: [])  # type: ignore[arg-type,return-value]


def test_built_from_parameters_and_a_factory() -> None:
    params = _params()
    optimizer = Lookahead(params, optimizer=functools.partial(torch.optim.AdamW, lr=0.01), k=4)
    assert type(optimizer.optimizer) is torch.optim.AdamW and optimizer.param_groups[0]["lr"] == 0.01
    assert [p for group in optimizer.param_groups for p in group["params"]] == params


# ------------------------------------------------------------------------------------------- sharing
def test_it_is_an_optimizer_sharing_the_inner_groups_state_and_defaults() -> None:
    params = _params()
    inner = torch.optim.Adam(params, lr=0.05)
    optimizer = Lookahead(inner, k=2)
    assert isinstance(optimizer, torch.optim.Optimizer)
    assert optimizer.param_groups is inner.param_groups
    assert optimizer.state is inner.state and optimizer.defaults is inner.defaults
    _set_grads(params, 0)
    optimizer.step()
    inner.load_state_dict(inner.state_dict())  # replaces the inner's list and state: still shared
    assert optimizer.param_groups is inner.param_groups and optimizer.state is inner.state
    assert "lookahead" not in repr(inner.state_dict()) and "slow" not in repr(dict(inner.state))


def test_a_scheduler_built_on_the_lookahead_sets_the_inner_lr() -> None:
    params = _params()
    inner = torch.optim.SGD(params, lr=0.1)
    optimizer = Lookahead(inner, k=2)
    scheduler = torch.optim.lr_scheduler.StepLR(optimizer, step_size=1, gamma=0.5)
    for step in range(3):
        _set_grads(params, step)
        optimizer.step()
        scheduler.step()
    assert inner.param_groups[0]["lr"] == 0.1 * 0.5**3
    assert scheduler.get_last_lr() == [0.1 * 0.5**3]


def test_step_forwards_the_loss_and_set_loss_reaches_a_wrapped_adalo() -> None:
    fed, stepped = _params(), _params()
    by_kwarg = Lookahead(AdaLo(fed, lr=0.05), k=2)
    by_set_loss = Lookahead(AdaLo(stepped, lr=0.05), k=2)
    assert isinstance(by_kwarg, LossDriven)  # what LossFeeder checks before calling set_loss
    assert not isinstance(Lookahead(torch.optim.SGD(_params(), lr=0.1)), LossDriven)
    for step in range(5):
        _set_grads(fed, step)
        _set_grads(stepped, step)
        by_kwarg.step(loss=0.5 + step)
        by_set_loss.set_loss(0.5 + step)
        by_set_loss.step()
    assert all(torch.equal(a, b) for a, b in zip(fed, stepped))
    assert by_kwarg.last_step_sizes == by_kwarg.optimizer.last_step_sizes
    closure_params = _params()
    with_closure = Lookahead(AdaLo(closure_params, lr=0.05), k=2)
    _set_grads(closure_params, 0)
    assert with_closure.step(lambda: torch.tensor(0.7)) == torch.tensor(0.7)  # the closure's loss comes back
    with pytest.raises(AttributeError, match="_private"):
        with_closure._private  # noqa: B018  (torch's machinery is never borrowed from the inner optimizer)


def test_step_hooks_run_once_per_step() -> None:
    params = _params()
    optimizer = Lookahead(torch.optim.SGD(params, lr=0.1), k=2)
    calls: list[str] = []
    optimizer.register_step_pre_hook(lambda *_: calls.append("pre"))
    optimizer.register_step_post_hook(lambda *_: calls.append("post"))
    _set_grads(params, 0)
    optimizer.step()
    assert calls == ["pre", "post"]


# ------------------------------------------------------------------------------------------- parameters
def test_a_group_added_later_starts_its_slow_weights_and_period_there() -> None:
    first, second = _params(0), _params(1)
    first_oracle, second_oracle = _params(0), _params(1)
    mine = Lookahead(torch.optim.Adam(first, lr=0.05), k=3, alpha=0.5)
    oracle = OracleLookahead(torch.optim.Adam(first_oracle, lr=0.05), k=3, alpha=0.5)
    for step in range(8):
        if step == 2:
            mine.add_param_group({"params": second, "lr": 0.02})
            oracle.add_param_group({"params": second_oracle, "lr": 0.02})
        _set_grads(first + second, step)
        _set_grads(first_oracle + second_oracle, step)
        mine.step()
        oracle.step()
    assert all(torch.equal(a, b) for a, b in zip(first + second, first_oracle + second_oracle))
    assert mine.state_dict()["lookahead"]["steps"] == [8 % 3, 6 % 3]


def test_a_group_added_to_the_inner_optimizer_directly_is_tracked_from_the_next_step() -> None:
    first, second = _params(0), _params(1)
    inner = torch.optim.SGD(first, lr=0.1)
    optimizer = Lookahead(inner, k=2, alpha=0.5)
    inner.add_param_group({"params": second})
    start = [p.detach().clone() for p in second]
    grads = []
    for step in range(2):
        _set_grads(first + second, step)
        grads.append([p.grad for p in second])
        optimizer.step()
    # two SGD steps, then halfway back to where the group started (its slow weights)
    for param, begin, g0, g1 in zip(second, start, *grads):
        torch.testing.assert_close(param.detach(), begin - 0.5 * 0.1 * (g0 + g1))


def test_slow_weights_follow_a_model_moved_to_another_dtype() -> None:
    model = torch.nn.Linear(3, 2)
    optimizer = Lookahead(torch.optim.SGD(model.parameters(), lr=0.1), k=1)
    model.double()  # replaces each parameter's data: the slow weights, float32, follow at the next sync
    model(torch.randn(4, 3, dtype=torch.float64)).sum().backward()
    optimizer.step()
    assert all(slow.dtype == torch.float64 for slow in optimizer.state_dict()["lookahead"]["slow"].values())


def test_mixed_dtypes_in_one_group() -> None:
    single, double = torch.nn.Parameter(torch.randn(3)), torch.nn.Parameter(torch.randn(2, dtype=torch.float64))
    optimizer = Lookahead(torch.optim.SGD([single, double], lr=0.1), k=1, alpha=0.5)
    before = [single.detach().clone(), double.detach().clone()]
    single.grad, double.grad = torch.ones_like(single), torch.ones_like(double)
    optimizer.step()
    torch.testing.assert_close(single.detach(), before[0] - 0.05)
    torch.testing.assert_close(double.detach(), before[1] - 0.05, rtol=1e-15, atol=1e-15)


# ------------------------------------------------------------------------------------------- checkpoints
def _run(optimizer: Lookahead, params: list[torch.nn.Parameter], steps: range, loss: bool = False) -> Lookahead:
    """``optimizer.step()`` at each of ``steps`` with that step's gradients (and a loss for AdaLo)."""
    for step in steps:
        _set_grads(params, step)
        optimizer.step(**({"loss": 1.0 / (step + 1)} if loss else {}))
    return optimizer


@pytest.mark.parametrize("inner", ["Adam", "AdaLo"])
def test_a_resumed_run_is_bit_identical_to_an_uninterrupted_one(inner: str) -> None:
    def make(params: list[torch.nn.Parameter]) -> Lookahead:
        return Lookahead(INNER[inner](params), k=3, alpha=0.6)

    loss = inner == "AdaLo"
    uninterrupted = _params()
    _run(make(uninterrupted), uninterrupted, range(10), loss)

    first = _params()
    saved = _run(make(first), first, range(4), loss)  # 4 steps: one synchronisation, one step of the next period
    buffer = io.BytesIO()
    torch.save({"params": [p.detach() for p in first], "optimizer": saved.state_dict()}, buffer)
    buffer.seek(0)
    checkpoint = torch.load(buffer, weights_only=True)
    assert checkpoint["optimizer"]["lookahead"]["steps"] == [1]

    resumed = [torch.nn.Parameter(p.clone()) for p in checkpoint["params"]]
    fresh = make(resumed)
    fresh.load_state_dict(checkpoint["optimizer"])
    _run(fresh, resumed, range(4, 10), loss)
    assert all(torch.equal(a, b) for a, b in zip(resumed, uninterrupted))


def test_load_state_dict_keeps_k_and_alpha_and_copies_the_slow_weights() -> None:
    params = _params()
    source = _run(Lookahead(torch.optim.SGD(params, lr=0.1), k=5, alpha=0.9), params, range(2))
    state = source.state_dict()
    target = Lookahead(torch.optim.SGD(_params(), lr=0.1), k=3, alpha=0.25)
    target.load_state_dict(state)
    assert (target.k, target.alpha) == (3, 0.25)
    assert state["lookahead"]["k"] == 5 and state["lookahead"]["alpha"] == 0.9  # kept for information only
    loaded = target.state_dict()["lookahead"]
    assert loaded["steps"] == [2]
    for index, slow in state["lookahead"]["slow"].items():
        assert torch.equal(loaded["slow"][index], slow) and loaded["slow"][index] is not slow


@pytest.mark.parametrize("how", ["deepcopy", "pickle"])
def test_copies_keep_k_alpha_slow_weights_and_steps(how: str) -> None:
    params = _params()
    optimizer = _run(Lookahead(torch.optim.Adam(params, lr=0.05), k=3, alpha=0.7), params, range(4))
    clone = copy.deepcopy(optimizer) if how == "deepcopy" else pickle.loads(pickle.dumps(optimizer))
    assert (clone.k, clone.alpha) == (3, 0.7)
    clone_params = [p for group in clone.param_groups for p in group["params"]]
    assert clone.param_groups is clone.optimizer.param_groups and clone_params[0] is not params[0]
    _run(optimizer, params, range(4, 9))
    _run(clone, clone_params, range(4, 9))  # the copy continues exactly as the original
    assert all(torch.equal(a, b) for a, b in zip(params, clone_params))


def test_bad_checkpoints_are_value_errors_and_an_inner_only_one_loads_with_a_warning() -> None:
    params = _params()
    optimizer = _run(Lookahead(torch.optim.SGD(params, lr=0.1), k=3), params, range(2))
    state = optimizer.state_dict()
    fewer = Lookahead(torch.optim.SGD(_params()[:-1], lr=0.1), k=3)
    with pytest.raises(ValueError, match="slow weights for 5 parameters, this optimizer has 4"):
        fewer.load_state_dict(state)
    reshaped = _params()
    reshaped[0] = torch.nn.Parameter(torch.zeros(4, 3))
    with pytest.raises(ValueError, match=r"parameter 0 have shape \(3, 4\), the parameter \(4, 3\)"):
        Lookahead(torch.optim.SGD(reshaped, lr=0.1)).load_state_dict(state)

    plain = Lookahead(torch.optim.SGD(params, lr=0.1), k=3)
    with pytest.warns(UserWarning, match="slow weights restart from the current parameters"):
        plain.load_state_dict(optimizer.optimizer.state_dict())
    assert all(torch.equal(slow, p) for slow, p in zip(plain.state_dict()["lookahead"]["slow"].values(), params))
    torch.optim.SGD(_params(), lr=0.1).load_state_dict(state)  # dropping Lookahead: torch ignores the extra entry


def test_a_lookahead_inside_a_lookahead_round_trips() -> None:
    params = _params()

    def make(p: list[torch.nn.Parameter]) -> Lookahead:
        return Lookahead(Lookahead(torch.optim.SGD(p, lr=0.1), k=2, alpha=0.5), k=3, alpha=0.5)

    optimizer = _run(make(params), params, range(5))
    state = optimizer.state_dict()
    assert state["lookahead"]["inner"]["steps"] == [1] and state["lookahead"]["steps"] == [2]
    fresh_params = [torch.nn.Parameter(p.detach().clone()) for p in params]
    fresh = make(fresh_params)
    fresh.load_state_dict(state)
    _run(optimizer, params, range(5, 12))
    _run(fresh, fresh_params, range(5, 12))
    assert all(torch.equal(a, b) for a, b in zip(params, fresh_params))


# ------------------------------------------------------------------------------------------- Lightning
class TinyRegression(pl.LightningModule):
    """``Linear(4, 3) -> tanh -> Linear(3, 1)`` on 12 fixed samples, three batches per epoch."""

    def __init__(self, make_optimizer: Callable[[Any], torch.optim.Optimizer], scheduler: bool = False) -> None:
        super().__init__()
        self.make_optimizer = make_optimizer
        self.scheduler = scheduler
        torch.manual_seed(0)
        self.net = torch.nn.Sequential(torch.nn.Linear(4, 3), torch.nn.Tanh(), torch.nn.Linear(3, 1))

    def training_step(self, batch: tuple[torch.Tensor, torch.Tensor], batch_idx: int) -> torch.Tensor:
        x, y = batch
        return (self.net(x) - y).square().mean()

    def configure_optimizers(self) -> Any:
        optimizer = self.make_optimizer(self.parameters())
        if not self.scheduler:
            return optimizer
        scheduler = torch.optim.lr_scheduler.StepLR(optimizer, step_size=2, gamma=0.5)
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": scheduler, "interval": "step"}}

    def train_dataloader(self) -> torch.utils.data.DataLoader:
        generator = torch.Generator().manual_seed(1)
        inputs, targets = torch.randn(12, 4, generator=generator), torch.randn(12, 1, generator=generator)
        return torch.utils.data.DataLoader(torch.utils.data.TensorDataset(inputs, targets), batch_size=4)


def _fit(
    module: TinyRegression, root: Path, max_epochs: int, ckpt_path: Path | None = None, **kwargs: Any
) -> pl.Trainer:
    trainer = pl.Trainer(
        accelerator="cpu", devices=1, max_epochs=max_epochs, logger=False, enable_checkpointing=False,
        enable_progress_bar=False, enable_model_summary=False, default_root_dir=root, **kwargs,
    )
    trainer.fit(module, ckpt_path=ckpt_path)
    return trainer


def _adam_lookahead(params: Any) -> Lookahead:
    return Lookahead(torch.optim.Adam(params, lr=0.05), k=4, alpha=0.5)


def test_configure_optimizers_returns_it_with_a_scheduler_and_trains_as_a_plain_loop(tmp_path: Path) -> None:
    module = TinyRegression(_adam_lookahead, scheduler=True)
    trainer = _fit(module, tmp_path, max_epochs=3)  # 9 steps
    (optimizer,) = trainer.optimizers
    assert isinstance(optimizer, Lookahead)
    assert optimizer.optimizer.param_groups[0]["lr"] == 0.05 * 0.5**4  # the scheduler stepped 9 times
    assert optimizer.state_dict()["lookahead"]["steps"] == [9 % 4]

    manual = TinyRegression(_adam_lookahead)  # the same steps by hand
    loop_optimizer = _adam_lookahead(manual.parameters())
    scheduler = torch.optim.lr_scheduler.StepLR(loop_optimizer, step_size=2, gamma=0.5)
    for _ in range(3):
        for batch in manual.train_dataloader():
            loop_optimizer.zero_grad()
            manual.training_step(batch, 0).backward()
            loop_optimizer.step()
            scheduler.step()
    for a, b in zip(module.parameters(), manual.parameters()):
        assert torch.equal(a, b)


@pytest.mark.parametrize(
    "make",
    [_adam_lookahead, lambda params: Lookahead(params, optimizer=functools.partial(AdaLo, lr=0.05), k=4)],
    ids=["Adam", "AdaLo"],
)
def test_a_ckpt_path_resume_is_bit_identical_to_the_uninterrupted_fit(
    make: Callable[[Any], Lookahead], tmp_path: Path
) -> None:
    uninterrupted = TinyRegression(make, scheduler=True)
    _fit(uninterrupted, tmp_path / "a", max_epochs=4)  # 12 steps
    half = _fit(TinyRegression(make, scheduler=True), tmp_path / "b", max_epochs=2)  # 6 steps: not a multiple of 4
    checkpoint = tmp_path / "half.ckpt"
    half.save_checkpoint(checkpoint)
    saved = torch.load(checkpoint, weights_only=True)["optimizer_states"][0]["lookahead"]
    assert saved["steps"] == [2] and len(saved["slow"]) == 4

    resumed = TinyRegression(make, scheduler=True)
    trainer = _fit(resumed, tmp_path / "c", max_epochs=4, ckpt_path=checkpoint)
    assert trainer.global_step == 12
    for mine, expected in zip(resumed.parameters(), uninterrupted.parameters()):
        assert torch.equal(mine, expected)


class ManualRegression(TinyRegression):
    """The same model under manual optimization: ``self.optimizers()`` is Lightning's wrapper of the Lookahead."""

    def __init__(self, make_optimizer: Callable[[Any], torch.optim.Optimizer]) -> None:
        super().__init__(make_optimizer)
        self.automatic_optimization = False

    def training_step(self, batch: tuple[torch.Tensor, torch.Tensor], batch_idx: int) -> torch.Tensor:
        optimizer = self.optimizers()
        assert optimizer.k == 4 and optimizer.param_groups is optimizer.optimizer.optimizer.param_groups
        loss = super().training_step(batch, batch_idx)
        optimizer.zero_grad()
        self.manual_backward(loss)
        optimizer.step()
        return loss


def test_manual_optimization_steps_it_through_lightnings_wrapper(tmp_path: Path) -> None:
    automatic, manual = TinyRegression(_adam_lookahead), ManualRegression(_adam_lookahead)
    _fit(automatic, tmp_path / "a", max_epochs=2)
    trainer = _fit(manual, tmp_path / "m", max_epochs=2)
    assert trainer.optimizers[0].state_dict()["lookahead"]["steps"] == [6 % 4]
    assert all(torch.equal(a, b) for a, b in zip(automatic.parameters(), manual.parameters()))


def test_loss_feeder_feeds_a_wrapped_adalo_under_gradient_accumulation(tmp_path: Path) -> None:
    def make(params: Any) -> Lookahead:
        return Lookahead(AdaLo(params, lr=0.05), k=2)

    module = TinyRegression(make)
    trainer = _fit(module, tmp_path, max_epochs=2, accumulate_grad_batches=3, callbacks=[LossFeeder()])
    (optimizer,) = trainer.optimizers
    assert trainer.global_step == 2
    assert optimizer.param_groups[0]["loss_count"] == 2  # the feeder's window means, not the closure's last loss
    assert "Lookahead/step_size" in trainer.callback_metrics


def test_lightning_opt_cli_builds_it_from_the_command_line_and_from_yaml(tmp_path: Path) -> None:
    args = ["--optimizer", "lightning_opt.Lookahead", "--optimizer.optimizer", "AdaLo", "--optimizer.k", "3"]
    cli = LightningOptCLI(fit_args(tmp_path / "flags", *args))
    (optimizer,) = cli.trainer.optimizers
    assert type(optimizer) is Lookahead and type(optimizer.optimizer) is AdaLo and optimizer.k == 3
    assert optimizer.param_groups[0]["loss_count"] == 2  # the digits config's LossFeeder reached the inner AdaLo
    assert describe_optimizer(optimizer).startswith("Lookahead(k=3, alpha=0.5, AdaLo(lr=")

    config = tmp_path / "lookahead.yaml"
    config.write_text(
        "optimizer:\n"
        "  class_path: lightning_opt.Lookahead\n"
        "  init_args:\n"
        "    optimizer:\n"
        "      class_path: torch.optim.AdamW\n"
        "      init_args:\n"
        "        lr: 0.01\n"
        "    k: 6\n"
        "    alpha: 0.6\n"
        "lr_scheduler:\n"
        "  class_path: torch.optim.lr_scheduler.StepLR\n"
        "  init_args:\n"
        "    step_size: 1\n"
        "    gamma: 0.5\n"
    )
    cli = LightningOptCLI(fit_args(tmp_path / "yaml", "--config", str(config), max_epochs=2))
    (optimizer,) = cli.trainer.optimizers
    assert type(optimizer.optimizer) is torch.optim.AdamW and (optimizer.k, optimizer.alpha) == (6, 0.6)
    assert optimizer.optimizer.param_groups[0]["lr"] == 0.01 * 0.5**2  # the epoch-wise StepLR reached AdamW
    assert lightning_opt.Lookahead is Lookahead


@pytest.mark.parametrize(
    "options, expected",
    [
        (["--optimizer.optimizer", "AdamW", "--optimizer.k", "0"], ["--optimizer.k: 0", "Lookahead", "> 0"]),
        (["--optimizer.optimizer", "AdaLo", "--optimizer.optimizer.lr", "-1"], ["Lookahead", "Invalid lr: -1.0"]),
        ([], ["--optimizer.optimizer: None", "needs the optimizer to wrap"]),
    ],
)
def test_bad_lookahead_arguments_are_one_line(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], options: list[str], expected: list[str]
) -> None:
    with pytest.raises(SystemExit) as exit_info:
        main(fit_args(tmp_path, "--optimizer", "lightning_opt.Lookahead", *options))
    assert exit_info.value.code == 2
    lines = [line for line in capsys.readouterr().err.splitlines() if line.strip()]
    assert len(lines) == 1 and ": error: Invalid --optimizer" in lines[0], lines
    assert all(text in lines[0] for text in expected), lines[0]
