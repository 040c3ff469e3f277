"""Adafactor: what the common suite does not cover. Its state's shapes and memory, the one-row view of 0-d and 1-D
tensors, the public implementations as oracles (torch.optim.Adafactor, pytorch_optimizer's AdaFactor, the
``_approx_sq_grad`` form), the relative step past 10,000 steps, dead rows and columns, the first-moment switch,
and which class the short name ``Adafactor`` means in lightning-opt, the factory and a user's own LightningCLI."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import pytest
import torch

import lightning_opt  # before LightningCLI(...): the short name "Adafactor" then has two candidates
from lightning_opt import Adafactor, build_optimizer
from lightning_opt.cli import qualify_optimizer_names
from lightning_opt.factories import optimizer_class_for_name
from lightning_opt.optim.adafactor import inverse_second_moment, matrix_view

SHAPES = [(), (7,), (5, 3), (2, 3, 2, 2), (16, 8), (4, 1), (1, 6)]


def _params(shapes: list[tuple[int, ...]], seed: int = 0) -> list[torch.nn.Parameter]:
    generator = torch.Generator().manual_seed(seed)
    return [torch.nn.Parameter(torch.randn(shape, generator=generator)) for shape in shapes]


def _twins(params: list[torch.nn.Parameter]) -> list[torch.nn.Parameter]:
    return [torch.nn.Parameter(p.detach().clone()) for p in params]


def _set_grads(step: int, *param_lists: list[torch.nn.Parameter], scale: float = 1.0) -> None:
    generator = torch.Generator().manual_seed(1000 + step)
    grads = [scale * torch.randn(p.shape, generator=generator) for p in param_lists[0]]
    for params in param_lists:
        for p, g in zip(params, grads):
            p.grad = g.clone()


def _assert_same(params: list[torch.Tensor], others: list[torch.Tensor], **tol: float) -> None:
    for p, q in zip(params, others):
        torch.testing.assert_close(p, q, **tol, msg=lambda m, p=p: f"{tuple(p.shape)}: {m}")


# ------------------------------------------------------------------------------------------ view and state
def test_view_and_state_shapes_factor_the_last_two_dims() -> None:
    assert matrix_view(torch.Size([64, 32, 3, 3])) == (2048, 3, 3)
    assert matrix_view(torch.Size([7])) == (1, 1, 7) and matrix_view(torch.Size([])) == (1, 1, 1)
    assert matrix_view(torch.Size([3, 0])) == (1, 3, 0)  # no division by zero for empty tensors
    params = _params([(1024, 512), (2, 3, 4, 5), (7,), ()])
    optimizer = Adafactor(params)
    _set_grads(0, params)
    optimizer.step()
    shapes = [{k: tuple(v.shape) for k, v in optimizer.state[p].items() if k != "step"} for p in params]
    assert shapes == [
        {"exp_avg_sq_row": (1, 1024, 1), "exp_avg_sq_col": (1, 1, 512)},
        {"exp_avg_sq_row": (6, 4, 1), "exp_avg_sq_col": (6, 1, 5)},
        {"exp_avg_sq_row": (1, 1, 1), "exp_avg_sq_col": (1, 1, 7)},
        {"exp_avg_sq_row": (1, 1, 1), "exp_avg_sq_col": (1, 1, 1)},
    ]
    # 1,536 numbers for half a million parameters: 0.012 bytes per parameter, with the step counter
    state_bytes = sum(v.numel() * v.element_size() for v in optimizer.state[params[0]].values())
    assert state_bytes == (1024 + 512) * 4 + 4


def test_first_moment_keeps_one_buffer_of_the_parameters_shape() -> None:
    params = _params([(5, 3), (4,)])
    optimizer = Adafactor(params, beta1=0.9)
    _set_grads(0, params)
    optimizer.step()
    assert [sorted(optimizer.state[p]) for p in params] == [["exp_avg", "exp_avg_sq_col", "exp_avg_sq_row", "step"]] * 2
    assert optimizer.state[params[0]]["exp_avg"].shape == (5, 3)


def test_one_row_view_is_the_unfactored_second_moment() -> None:
    """For a 1-D tensor the row factor is one number r and mean(r) / r = 1 exactly, so 1 / v = 1 / c: the
    column factor is the unfactored EMA of g^2 + eps1, and the step is torch's unfactored ("variance") one."""
    ours = _params([(9,), ()])
    theirs = _twins(ours)
    optimizer, oracle = Adafactor(ours), torch.optim.Adafactor(theirs, lr=1e-2)
    expected = [torch.zeros(p.shape, dtype=torch.float64) for p in ours]
    for step in range(1, 6):
        _set_grads(step, ours, theirs)
        optimizer.step()
        oracle.step()
        for e, p in zip(expected, ours):
            e.mul_(1 - step**-0.8).add_(step**-0.8 * (p.grad.double() ** 2 + 1e-30))
    for p, q, e in zip(ours, theirs, expected):
        state = optimizer.state[p]
        assert torch.equal(inverse_second_moment(state["exp_avg_sq_row"], state["exp_avg_sq_col"]),
                           1.0 / state["exp_avg_sq_col"])
        torch.testing.assert_close(state["exp_avg_sq_col"].double().reshape(p.shape), e, rtol=1e-6, atol=0)
        torch.testing.assert_close(state["exp_avg_sq_col"].reshape(p.shape), oracle.state[q]["variance"])
        torch.testing.assert_close(p, q, rtol=1e-6, atol=1e-7)


def test_preconditioner_equals_the_rsqrt_product_form_in_float64() -> None:
    """(mean(r) / r) / c, square-rooted once, is the same number as transformers' and pytorch_optimizer's
    rsqrt(r / mean(r)) * rsqrt(c) (``_approx_sq_grad``); the difference is rounding only (README table)."""
    generator = torch.Generator().manual_seed(0)
    row = torch.rand(3, 6, 1, generator=generator, dtype=torch.float64) * 10.0 ** torch.randint(-6, 6, (3, 6, 1))
    col = torch.rand(3, 1, 5, generator=generator, dtype=torch.float64) * 10.0 ** torch.randint(-6, 6, (3, 1, 5))
    ours = inverse_second_moment(row, col).sqrt()
    approx_sq_grad = (row / row.mean(dim=-2, keepdim=True)).rsqrt() * col.rsqrt()
    torch.testing.assert_close(ours, approx_sq_grad, rtol=1e-13, atol=0)


# ------------------------------------------------------------------------------------------ oracles
@pytest.mark.parametrize(
    ("ours_kwargs", "torch_kwargs"),
    [
        ({}, {"lr": 1e-2}),  # the relative step min(1e-2, 1/sqrt(t)) is torch's rho with lr = 1e-2
        ({"weight_decay": 0.5}, {"lr": 1e-2, "weight_decay": 0.5}),  # both decay by rho * weight_decay
        ({"lr": 3e-3, "clip_threshold": 1.5}, {"lr": 3e-3, "d": 1.5}),  # torch's min(lr, 1/sqrt(t)) = lr here
        ({"decay_rate": -0.5}, {"lr": 1e-2, "beta2_decay": -0.5}),
    ],
)
def test_matches_torch_adafactor(ours_kwargs: dict[str, Any], torch_kwargs: dict[str, Any]) -> None:
    """torch.optim.Adafactor (torch 2.13) on 0-d to 4-D tensors over 20 steps. torch adds no eps1 to g^2
    but clamps by finfo.eps instead: with gradients of order 1 neither acts."""
    ours = _params(SHAPES)
    theirs = _twins(ours)
    optimizer, oracle = Adafactor(ours, **ours_kwargs), torch.optim.Adafactor(theirs, **torch_kwargs)
    for step in range(20):
        _set_grads(step, ours, theirs)
        optimizer.step()
        oracle.step()
        _assert_same(ours, theirs, rtol=1e-5, atol=1e-6)
    for p, q in zip(ours, theirs):
        if p.dim() >= 2:
            torch.testing.assert_close(optimizer.state[p]["exp_avg_sq_row"].reshape(p.shape[:-1] + (1,)),
                                       oracle.state[q]["row_var"], rtol=1e-5, atol=0)
            torch.testing.assert_close(optimizer.state[p]["exp_avg_sq_col"].reshape(p.shape[:-2] + (1, p.shape[-1])),
                                       oracle.state[q]["col_var"], rtol=1e-5, atol=0)


def test_relative_step_after_ten_thousand_steps_matches_torch() -> None:
    """Past t = 10**4 the relative step is 1 / sqrt(t) (torch's min(lr, 1/sqrt(t)) with lr = 1e-2): both are
    moved to step 40,000 through their step counters, then step on together."""
    ours = _params([(6, 4), (5,)])
    theirs = _twins(ours)
    optimizer, oracle = Adafactor(ours), torch.optim.Adafactor(theirs, lr=1e-2)
    for step in range(3):
        _set_grads(step, ours, theirs)
        optimizer.step()
        oracle.step()
    for p, q in zip(ours, theirs):
        optimizer.state[p]["step"].fill_(40_000)
        oracle.state[q]["step"].fill_(40_000)
    before = [p.detach().clone() for p in ours]
    for step in range(3, 6):
        _set_grads(step, ours, theirs)
        optimizer.step()
        oracle.step()
        _assert_same(ours, theirs, rtol=1e-5, atol=1e-7)
    assert int(optimizer.state[ours[0]]["step"]) == 40_003
    # and the step really is smaller than 1e-2 * RMS(p) (clipped updates have RMS <= 1)
    moved = (ours[0].detach() - before[0]).pow(2).mean().sqrt() / 3
    assert float(moved) <= 1.0 / math.sqrt(40_001) * float(before[0].pow(2).mean().sqrt()) * 1.01


def _pytorch_optimizer_adafactor(params: list[torch.Tensor], **kwargs: Any) -> torch.optim.Optimizer:
    from pytorch_optimizer import AdaFactor

    return AdaFactor(params, momentum_dtype=torch.float32, **kwargs)


@pytest.mark.parametrize("foreach", [False, True])
@pytest.mark.parametrize(
    ("ours_kwargs", "theirs_kwargs"),
    [
        # betas[1] caps beta2_t (at 0.999 by default): a cap that 20 steps never reach
        ({}, {"lr": None, "betas": (None, 0.9999)}),
        ({"beta1": 0.9}, {"lr": None, "betas": (0.9, 0.9999)}),  # exp_avg of the scaled, clipped update
        (
            {"lr": 2e-2, "scale_parameter": False, "clip_threshold": 0.7, "eps1": 1e-3},
            {"lr": 2e-2, "betas": (None, 0.9999), "relative_step": False, "scale_parameter": False, "eps1": 1e-3,
             "clip_threshold": 0.7},
        ),
    ],
)
def test_matches_pytorch_optimizer_adafactor(
    ours_kwargs: dict[str, Any], theirs_kwargs: dict[str, Any], foreach: bool
) -> None:
    """pytorch_optimizer 4.1's AdaFactor (transformers' algorithm: eps1 inside the moments, the rsqrt-product
    form) without weight decay, on 0-d to 4-D tensors over 20 steps, state included."""
    ours = _params(SHAPES)
    theirs = _twins(ours)
    optimizer = Adafactor(ours, **ours_kwargs)
    oracle = _pytorch_optimizer_adafactor(theirs, foreach=foreach, **theirs_kwargs)
    for step in range(20):
        _set_grads(step, ours, theirs)
        optimizer.step()
        oracle.step()
        _assert_same(ours, theirs, rtol=1e-5, atol=1e-6)
    for p, q in zip(ours, theirs):
        if p.dim() >= 2:
            torch.testing.assert_close(optimizer.state[p]["exp_avg_sq_row"].reshape(p.shape[:-1]),
                                       oracle.state[q]["exp_avg_sq_row"], rtol=1e-5, atol=0)
        if "exp_avg" in oracle.state[q] and ours_kwargs.get("beta1") is not None:
            torch.testing.assert_close(optimizer.state[p]["exp_avg"], oracle.state[q]["exp_avg"], rtol=1e-5, atol=1e-7)


def test_weight_decay_differs_from_pytorch_optimizer_as_documented() -> None:
    """pytorch_optimizer (and transformers) decay by alpha * weight_decay, alpha including RMS(p); this class
    (and torch) by rho * weight_decay. With RMS(p) = 3 the two differ, and ours matches torch."""
    ours = [torch.nn.Parameter(3.0 * torch.randn(6, 5, generator=torch.Generator().manual_seed(3)))]
    theirs, torchs = _twins(ours), _twins(ours)
    optimizer = Adafactor(ours, weight_decay=0.5)
    oracle = _pytorch_optimizer_adafactor(theirs, lr=None, betas=(None, 0.9999), weight_decay=0.5)
    torch_oracle = torch.optim.Adafactor(torchs, lr=1e-2, weight_decay=0.5)
    for step in range(5):
        _set_grads(step, ours, theirs, torchs)
        optimizer.step()
        oracle.step()
        torch_oracle.step()
    _assert_same(ours, torchs, rtol=1e-5, atol=1e-6)
    assert not torch.allclose(ours[0], theirs[0], rtol=1e-4, atol=1e-5)


# ------------------------------------------------------------------------------------------ numerics
def test_a_dead_row_meeting_a_dead_column_gives_a_zero_update_not_nan() -> None:
    """A unit that gets no gradient (a dead ReLU) and an input that is always zero (a border pixel) leave a row
    and a column at eps1 = 1e-30: mean(r) / (r c) = mean(r) * 1e60 overflows float32. Clamped, the update
    there is zero (the gradient is); without the clamp it is inf * 0 = NaN and spreads through RMS(u)."""
    ours = _params([(6, 5)])
    theirs = _twins(ours)
    optimizer, oracle = Adafactor(ours), torch.optim.Adafactor(theirs, lr=1e-2)
    start = ours[0].detach().clone()
    for step in range(4):
        _set_grads(step, ours, theirs, scale=100.0)
        for p in (ours[0], theirs[0]):
            p.grad[2, :] = 0.0
            p.grad[:, 4] = 0.0
        optimizer.step()
        oracle.step()
    assert bool(ours[0].isfinite().all())
    _assert_same(ours, theirs, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(ours[0][2, 4], start[2, 4])  # no gradient, no weight decay: not moved


def test_bfloat16_parameters_step_like_float32_up_to_rounding() -> None:
    """bf16 parameters keep bf16 state, but the moments' means, the preconditioner and the update are computed
    in float32 and rounded once: one step lands within one bf16 ulp of the float32 step, plus 1% of the step
    (the row and column factors are read back rounded to bf16)."""
    params32 = _params([(64, 48), (48,)])
    params16 = [torch.nn.Parameter(p.detach().bfloat16()) for p in params32]
    params32 = [torch.nn.Parameter(p.detach().float()) for p in params16]
    optimizer32, optimizer16 = Adafactor(params32, lr=0.05), Adafactor(params16, lr=0.05)
    _set_grads(0, params32)
    for p, q in zip(params16, params32):
        p.grad = q.grad.bfloat16()
        q.grad = p.grad.float()
    start = [q.detach().clone() for q in params32]
    optimizer32.step()
    optimizer16.step()
    for p, q, q0 in zip(params16, params32, start):
        assert all(v.dtype == torch.bfloat16 for k, v in optimizer16.state[p].items() if k != "step")
        tolerance = torch.finfo(torch.bfloat16).eps * q.detach().abs() + 0.01 * (q.detach() - q0).abs()
        assert bool(((p.float() - q).abs() <= tolerance).all())


# ------------------------------------------------------------------------------------------ arguments
def test_first_moment_is_kept_for_the_whole_optimizer_or_not_at_all() -> None:
    first, second = torch.nn.Parameter(torch.ones(2)), torch.nn.Parameter(torch.ones(2))
    with pytest.raises(ValueError, match=r"^Invalid beta1: 0\.9 \(this Adafactor was built with beta1=None and keeps "
                                         r"no first moment \(exp_avg\).*\[parameter group 1\]$"):
        Adafactor([{"params": [first]}, {"params": [second], "beta1": 0.9}])
    optimizer = Adafactor([first])
    with pytest.raises(ValueError, match=r"^Invalid beta1: 0\.5 .*\[parameter group 1\]$"):
        optimizer.add_param_group({"params": [second], "beta1": 0.5})
    assert len(optimizer.param_groups) == 1
    optimizer.param_groups[0]["beta1"] = 0.9  # as a scheduler might
    first.grad = torch.ones(2)
    with pytest.raises(ValueError, match=r"^Invalid beta1: 0\.9 .*\[parameter group 0\]$"):
        optimizer.step()
    assert len(optimizer.state[first]) == 0 or int(optimizer.state[first]["step"]) == 0


def test_a_group_may_switch_the_first_moment_off() -> None:
    """Built with a beta1, a group with beta1=None steps like an Adafactor without a first moment; its exp_avg is
    kept but unused, and another value is fine."""
    generator = torch.Generator().manual_seed(0)
    start = torch.randn(4, 3, generator=generator)
    ours, other, plain = (torch.nn.Parameter(start.clone()) for _ in range(3))
    optimizer = Adafactor([{"params": [ours], "beta1": None}, {"params": [other], "beta1": 0.5}], beta1=0.9, lr=1e-2)
    reference = Adafactor([plain], lr=1e-2)
    for _ in range(3):
        grad = torch.randn(4, 3, generator=generator)
        ours.grad, other.grad, plain.grad = grad.clone(), grad.clone(), grad.clone()
        optimizer.step()
        reference.step()
    assert torch.equal(ours, plain)
    assert torch.equal(optimizer.state[ours]["exp_avg"], torch.zeros(4, 3))
    assert not torch.equal(optimizer.state[other]["exp_avg"], torch.zeros(4, 3))


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"decay_rate": 0.8}, r"^Invalid decay_rate: 0\.8 \(expected <= 0\.0\)$"),
        ({"eps1": 1e-40}, r"^Invalid eps1: 1e-40 \(expected >= 1\.17549435\d*e-38\)$"),
        ({"eps2": 0.0}, r"^Invalid eps2: 0\.0 \(expected > 0\.0\)$"),
        ({"clip_threshold": -1.0}, r"^Invalid clip_threshold: -1\.0 \(expected > 0\.0\)$"),
        ({"beta1": 1.0}, r"^Invalid beta1: 1\.0 \(expected < 1\.0\)$"),
        ({"lr": None, "weight_decay": 101.0}, r"^Invalid weight_decay: 101\.0 \(the decay factor 1 - 0\.01 \* weight"),
        ({"scale_parameter": "no"}, r"^Invalid scale_parameter: 'no' \(expected True or False\)$"),
    ],
)
def test_invalid_arguments_name_the_argument_and_the_bound(kwargs: dict[str, Any], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        Adafactor([torch.nn.Parameter(torch.ones(2))], **kwargs)


# ------------------------------------------------------------------------------------------ the name
def test_short_name_means_this_class_in_lightning_opt_and_the_factory() -> None:
    assert lightning_opt.Adafactor is Adafactor
    assert optimizer_class_for_name("Adafactor") is Adafactor  # the registry before torch.optim
    assert optimizer_class_for_name("adafactor") is Adafactor
    assert type(build_optimizer(torch.nn.Linear(3, 2), "Adafactor")) is Adafactor
    assert qualify_optimizer_names(["fit", "--optimizer", "Adafactor", "--optimizer.help=adafactor"]) == [
        "fit", "--optimizer", "lightning_opt.Adafactor", "--optimizer.help=lightning_opt.Adafactor"
    ]


def _users_cli(optimizer: str, tmp_path: Path) -> Any:
    from lightning.pytorch.cli import LightningCLI
    from lightning.pytorch.demos.boring_classes import BoringModel

    args = [
        "fit", "--optimizer", optimizer,
        "--trainer.accelerator=cpu", "--trainer.max_steps=2", "--trainer.limit_val_batches=0",
        "--trainer.logger=false", "--trainer.enable_checkpointing=false", "--trainer.enable_progress_bar=false",
        "--trainer.enable_model_summary=false", f"--trainer.default_root_dir={tmp_path}",
    ]
    return LightningCLI(BoringModel, args=args, save_config_kwargs={"overwrite": True})


def test_users_own_lightning_cli_finds_the_short_name_ambiguous_and_takes_the_full_path(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """jsonargparse resolves a short name among torch.optim.Optimizer's subclasses: once lightning_opt is imported
    there are two called Adafactor, and LightningCLI stops (exit code 2) asking for the full class path."""
    with pytest.raises(SystemExit) as info:
        _users_cli("Adafactor", tmp_path)
    assert info.value.code == 2
    err = capsys.readouterr().err
    assert "Multiple subclasses with name Adafactor" in err and "lightning_opt.Adafactor" in err
    (optimizer,) = _users_cli("lightning_opt.Adafactor", tmp_path).trainer.optimizers
    assert type(optimizer) is Adafactor and int(optimizer.state[next(iter(optimizer.state))]["step"]) == 2
    (optimizer,) = _users_cli("torch.optim.Adafactor", tmp_path).trainer.optimizers
    assert type(optimizer) is torch.optim.Adafactor


@pytest.mark.own_process  # a process group of its own, not left behind in the pytest process
def test_sharded_dtensors_are_refused_with_a_clear_message(tmp_path: Path) -> None:
    """Rows and columns of a shard are not those of the tensor (FSDP2): refused at construction, by name."""
    import torch.distributed as dist
    from torch.distributed.device_mesh import init_device_mesh
    from torch.distributed.tensor import Replicate, Shard, distribute_tensor

    dist.init_process_group("gloo", init_method=f"file://{tmp_path / 'store'}", rank=0, world_size=1)
    try:
        mesh = init_device_mesh("cpu", (1,))
        sharded = torch.nn.Parameter(distribute_tensor(torch.randn(4, 3), mesh, [Shard(1)]))
        with pytest.raises(ValueError, match=r"^Invalid params: Adafactor computes statistics over whole tensors"):
            Adafactor([sharded])
        Adafactor([torch.nn.Parameter(distribute_tensor(torch.randn(4, 3), mesh, [Replicate()]))])
    finally:
        dist.destroy_process_group()


def test_precision_benchmark_writes_its_table(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """benchmarks/adafactor_precision.py on small matrices: every statistic, dtype and form in the table and the
    JSON, and the errors of every form within a few unit roundoffs where none overflows or is clamped."""
    import json
    import sys

    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
    from adafactor_precision import main

    main(["--size", "64", "--seeds", "1", "--no-digits", "--out", str(tmp_path / "precision.json")])
    table = [line for line in capsys.readouterr().out.splitlines() if line.startswith("| ")]
    assert len(table) == 1 + 4 * 2 * 3
    records = json.loads((tmp_path / "precision.json").read_text())["results"]
    assert {r["form"] for r in records} == {
        "sqrt last (lightning-opt)", "_approx_sq_grad (transformers, pytorch_optimizer)", "torch.optim.Adafactor"
    }
    for record in records:
        if not record["overflow"] and not record["clamped"]:
            assert record["max"] <= 8 * record["unit_roundoff"], record
