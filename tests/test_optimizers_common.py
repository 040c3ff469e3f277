"""The registry-driven common suite: every optimizer in ``REGISTRY``, with every entry of its ``test_kwargs``.

An optimizer added to the registry is picked up here automatically; it only needs a float64 reference
in ``tests/references.py`` (checked by :func:`test_every_registered_optimizer_has_a_reference`).

Every run uses the same model: parameters of shape (), (7,), (5, 3), (2, 3, 2, 2), (0,), (3, 0) and (6,)
in two parameter groups with different hyper-parameters, plus a parameter that never gets a gradient and
one that gets its first gradient at the third step. Each step draws a fresh random gradient and, for
loss-driven optimizers, feeds a different loss.
"""

from __future__ import annotations

import copy
import inspect
import io
import pickle
import re
import warnings
from typing import Any

import pytest
import torch
from torch._dynamo.utils import counters

from lightning_opt.registry import REGISTRY

try:
    from tests.references import REFERENCES, Reference
except ImportError:  # pytest's default "prepend" import mode puts tests/ itself on sys.path
    from references import REFERENCES, Reference

F32, F64, BF16 = torch.float32, torch.float64, torch.bfloat16
STEPS = 12
TOL = {F32: {"rtol": 1e-5, "atol": 1e-6}, F64: {"rtol": 1e-10, "atol": 1e-12}}

# Two parameter groups; (group, index) of the parameter that never gets a gradient and of the one that
# gets gradients only from the third step on (step index LATE_FROM, 0-based).
LAYOUT: list[list[tuple[int, ...]]] = [[(), (7,), (5, 3), (0,), (4,), (3,)], [(2, 3, 2, 2), (3, 0), (6,)]]
NEVER = (0, 4)
LATE = (0, 5)
LATE_FROM = 2

# Extra keyword sets beyond the registry's, for paths its test_kwargs leave unexercised:
# NSGDA's bias correction only shows with a large eps; AdamAtan2 with every flag on and beta1 > 0.
CASES = [
    pytest.param(name, kwargs, id=f"{name}-{i}")
    for name, spec in REGISTRY.items()
    for i, kwargs in enumerate(spec.test_kwargs)
]
NAMES = list(REGISTRY)
LOSS_DRIVEN = [name for name, spec in REGISTRY.items() if spec.loss_driven]


# ============================================================================================ helpers
def loss_at(step: int) -> float:
    """A loss that varies from step to step (positive, as a training loss is)."""
    return 0.25 + 2.0 / (1.0 + step) + 0.3 * (step % 3)


def merged_hyperparameters(name: str, kwargs: dict[str, Any]) -> dict[str, Any]:
    return {**REFERENCES[name].all_defaults(), **kwargs}


def second_group_overrides(name: str, kwargs: dict[str, Any]) -> dict[str, Any]:
    """The second group's own hyper-parameters: another lr, weight decay and (where present) betas."""
    merged = merged_hyperparameters(name, kwargs)
    overrides: dict[str, Any] = {}
    if merged.get("lr") is not None:  # Adafactor's lr=None: its relative step
        overrides["lr"] = merged["lr"] * 0.5
    if "weight_decay" in merged:
        overrides["weight_decay"] = merged["weight_decay"] * 3.0 if merged["weight_decay"] else 0.05
    if "betas" in merged:
        beta1, beta2 = merged["betas"]
        overrides["betas"] = (beta1 * 0.9, 1.0 - 2.0 * (1.0 - beta2))
    return overrides


def initial_values(seed: int = 0, scale: float = 1.0) -> list[list[torch.Tensor]]:
    generator = torch.Generator().manual_seed(seed)
    return [[scale * torch.randn(shape, generator=generator, dtype=F64) for shape in row] for row in LAYOUT]


def grads_at(step: int, dtype: torch.dtype, seed: int = 0) -> list[list[torch.Tensor | None]]:
    """The gradients of one step: a fresh draw per step, None for NEVER always and for LATE before LATE_FROM."""
    generator = torch.Generator().manual_seed(10_000 * (seed + 1) + step)
    grads: list[list[torch.Tensor | None]] = []
    for gi, row in enumerate(LAYOUT):
        out: list[torch.Tensor | None] = []
        for pi, shape in enumerate(row):
            grad = torch.randn(shape, generator=generator, dtype=F64).to(dtype)
            if (gi, pi) == NEVER or ((gi, pi) == LATE and step < LATE_FROM):
                grad = None
            out.append(grad)
        grads.append(out)
    return grads


def set_grads(params: list[list[torch.Tensor]], grads: list[list[torch.Tensor | None]]) -> None:
    for row_p, row_g in zip(params, grads):
        for p, g in zip(row_p, row_g):
            p.grad = None if g is None else g.clone()


def make_pair(
    name: str,
    kwargs: dict[str, Any],
    dtype: torch.dtype,
    *,
    seed: int = 0,
    scale: float = 1.0,
    mutation: str | None = None,
    **optimizer_options: Any,
) -> tuple[torch.optim.Optimizer, list[list[torch.Tensor]], Reference]:
    """The package optimizer over fresh parameters in LAYOUT, and its reference over the same values."""
    spec = REGISTRY[name]
    values = initial_values(seed, scale)
    params = [[torch.nn.Parameter(v.to(dtype)) for v in row] for row in values]
    overrides = second_group_overrides(name, kwargs)
    optimizer = spec.cls([{"params": params[0]}, {"params": params[1], **overrides}], **kwargs, **optimizer_options)
    reference = REFERENCES[name](
        [{"params": [p.detach() for p in params[0]]}, {"params": [p.detach() for p in params[1]], **overrides}],
        mutation=mutation,
        **kwargs,
    )
    return optimizer, params, reference


def package_step(optimizer: torch.optim.Optimizer, name: str, step: int) -> Any:
    """One step; a loss-driven optimizer gets loss_at(step) through set_loss (as a float or a 0-d tensor)
    or through step(loss=...), alternating, so that every way of feeding the loss is exercised."""
    if not REGISTRY[name].loss_driven:
        return optimizer.step()
    loss = loss_at(step)
    if step % 2 == 0:
        optimizer.set_loss(torch.tensor(loss, dtype=F64) if step % 4 == 0 else loss)
        return optimizer.step()
    return optimizer.step(loss=loss)


def reference_step(reference: Reference, grads, step: int) -> None:
    reference.step(grads, loss=loss_at(step) if reference.loss_driven else None)


def assert_params_match(params, reference: Reference, tol: dict[str, float], where: str = "") -> None:
    for gi, row in enumerate(params):
        for pi, p in enumerate(row):
            torch.testing.assert_close(
                p.detach().to(F64),
                reference.params[gi][pi],
                **tol,
                msg=lambda m, gi=gi, pi=pi, p=p: f"{where} group {gi} param {pi} {tuple(p.shape)}: {m}",
            )


def assert_state_matches(optimizer, params, reference: Reference, name: str, tol: dict[str, float], where="") -> None:
    """Same step counts, state keys (torch's names) and buffer values as the reference; lazy state."""
    for gi, row in enumerate(params):
        for pi, p in enumerate(row):
            state = optimizer.state.get(p, {})
            expected = reference.state.get((gi, pi))
            if expected is None:
                assert len(state) == 0, f"{where} group {gi} param {pi}: state created without a gradient"
                continue
            assert set(state) == set(expected), f"{where} state keys {sorted(state)} != {sorted(expected)}"
            assert int(state["step"]) == expected["step"], f"{where} group {gi} param {pi}: step count"
            buffers = [key for key in state if key != "step"]
            # parameter-sized buffers as declared; factored or per-tensor state shaped as in the reference
            if all(expected[key].shape == p.shape for key in buffers):
                assert len(buffers) == REGISTRY[name].state_buffers
            for key in buffers:
                assert state[key].shape == expected[key].shape
                # floating state in the parameter's dtype; other state (SMMF's packed sign bits) as the reference's
                assert state[key].dtype == (p.dtype if expected[key].is_floating_point() else expected[key].dtype)
                torch.testing.assert_close(
                    state[key].to(F64),
                    expected[key].to(F64),
                    **tol,
                    msg=lambda m, key=key, gi=gi, pi=pi: f"{where} {key} (group {gi} param {pi}): {m}",
                )


def run_against_reference(
    name: str, kwargs: dict[str, Any], dtype: torch.dtype, *, mutation: str | None = None, check: bool = True
) -> float:
    """Run STEPS steps of the package and the reference side by side; with ``check`` assert agreement at
    every step. Return the worst ``|x - ref| / (atol + rtol |ref|)`` over all steps and parameters."""
    optimizer, params, reference = make_pair(name, kwargs, dtype, mutation=mutation)
    tol = TOL[dtype]
    worst = 0.0
    for step in range(STEPS):
        grads = grads_at(step, dtype)
        set_grads(params, grads)
        package_step(optimizer, name, step)
        reference_step(reference, grads, step)
        for row, ref_row in zip(params, reference.params):
            for p, expected in zip(row, ref_row):
                if p.numel():
                    error = (p.detach().to(F64) - expected).abs() / (tol["atol"] + tol["rtol"] * expected.abs())
                    worst = max(worst, float(error.max()))
        if check:
            assert_params_match(params, reference, tol, f"step {step}:")
            assert_state_matches(optimizer, params, reference, name, tol, f"step {step}:")
    return worst


def assert_no_callables(obj: Any, path: str = "state_dict") -> None:
    if isinstance(obj, dict):
        for key, value in obj.items():
            assert_no_callables(key, f"{path} key")
            assert_no_callables(value, f"{path}[{key!r}]")
    elif isinstance(obj, (list, tuple)):
        for i, value in enumerate(obj):
            assert_no_callables(value, f"{path}[{i}]")
    else:
        assert isinstance(obj, (torch.Tensor, int, float, bool, str, type(None))), f"{path}: {type(obj)} in state_dict"


def assert_same_state(a: torch.optim.Optimizer, pa, b: torch.optim.Optimizer, pb) -> None:
    """Bit-identical parameters and state."""
    for row_a, row_b in zip(pa, pb):
        for x, y in zip(row_a, row_b):
            assert torch.equal(x, y)
            sx, sy = a.state.get(x, {}), b.state.get(y, {})
            assert set(sx) == set(sy)
            for key in sx:
                assert torch.equal(torch.as_tensor(sx[key]), torch.as_tensor(sy[key])), key


# ============================================================================================ the registry
def test_every_registered_optimizer_has_a_reference():
    missing = set(REGISTRY) - set(REFERENCES)
    assert not missing, f"add a float64 reference to tests/references.py for {sorted(missing)}"


@pytest.mark.parametrize("name", NAMES)
def test_registry_entry_is_consistent(name):
    spec = REGISTRY[name]
    assert spec.name == spec.cls.__name__ == name
    assert spec.test_kwargs and spec.invalid_kwargs
    assert spec.loss_driven == hasattr(spec.cls, "set_loss")
    # The reference's defaults were written from the documentation: the class must have the same ones.
    # (Engine options such as ``compile`` are not hyper-parameters: they are not in ``defaults``.)
    hyperparameters = spec.cls([torch.nn.Parameter(torch.zeros(1))]).defaults
    assert set(hyperparameters) == set(REFERENCES[name].all_defaults())
    signature = inspect.signature(spec.cls).parameters
    markers = {"lr_scales_step"}  # AdaLo's group marker: set by the optimizer, not an argument
    arguments = {key: signature[key].default for key in hyperparameters if key not in markers}
    assert arguments == {k: v for k, v in REFERENCES[name].all_defaults().items() if k not in markers}
    for kwargs in spec.test_kwargs:  # every test keyword is known to the reference (raises TypeError if not)
        REFERENCES[name]([torch.zeros(1)], **kwargs)


# ============================================================================================ numbers
@pytest.mark.parametrize("dtype", [F32, F64], ids=["f32", "f64"])
@pytest.mark.parametrize(("name", "kwargs"), CASES)
def test_matches_float64_reference(name, kwargs, dtype):
    optimizer, params, reference = make_pair(name, kwargs, dtype)
    start = [[p.detach().clone() for p in row] for row in params]
    tol = TOL[dtype]
    for step in range(STEPS):
        grads = grads_at(step, dtype)
        set_grads(params, grads)
        assert package_step(optimizer, name, step) is None
        reference_step(reference, grads, step)
        assert_params_match(params, reference, tol, f"step {step}:")
        assert_state_matches(optimizer, params, reference, name, tol, f"step {step}:")
    for gi, row in enumerate(params):
        for pi, p in enumerate(row):
            if (gi, pi) == NEVER:
                assert torch.equal(p, start[gi][pi]) and len(optimizer.state.get(p, {})) == 0
            elif p.numel():  # every other tensor moved (a no-op optimizer cannot pass against a no-op reference)
                assert not torch.equal(p, start[gi][pi]), (gi, pi)
    assert int(optimizer.state[params[LATE[0]][LATE[1]]]["step"]) == STEPS - LATE_FROM
    assert int(optimizer.state[params[0][0]]["step"]) == STEPS


# Deliberately wrong references: each must be told apart from the package by the tolerance the suite
# uses, which shows that the checks above are tight enough to catch that kind of mistake.
MUTANTS = [
    ("SMMF", {}, "no_sign", F32),
    ("SMMF", {}, "update_from_compressed", F32),
    ("SMMF", {"growth_rate": 0.9}, "no_growth", F32),
    ("SMMF", {}, "decay_rate_shifted", F32),
    ("SMMF", {"weight_decay": 0.1, "lr": 1e-2}, "l2_decay", F32),
    ("Adafactor", {"clip_threshold": 0.5}, "no_update_clipping", F32),
    ("Adafactor", {"weight_decay": 0.1}, "decay_by_alpha", F32),
    ("Adafactor", {"lr": 1e-2}, "factor_first_two_dims", F32),
    ("Adafactor", {"lr": 1e-2}, "no_parameter_scaling", F32),
    ("Adafactor", {}, "relative_step_uncapped", F32),
    ("Adafactor", {}, "beta2_shifted", F32),
    ("SM3", {}, "max_over_covers", F32),
    ("SM3", {"beta": 0.9, "momentum": 0.9, "lr": 0.05}, "accumulators_not_kept", F32),
    ("Amos", {"lr": 0.05}, "no_bias_correction", F32),
    ("Amos", {"lr": 0.3, "beta": 0.9}, "decay_not_accumulated", F32),
    ("Amos", {"extra_l2": 0.05}, "extra_l2_halved_negative", F32),
    ("AdamAtan2", {}, "no_bias_correction1", F32),
    ("AdamAtan2", {}, "no_bias_correction2", F32),
    ("AdamAtan2", {}, "no_decay", F32),
    ("AdamAtan2", {"lr": 1e-2, "weight_decay": 0.1}, "decay_after_update", F64),
    ("AdamAtan2", {"cautious": True}, "mask_against_momentum", F32),
    ("AdamAtan2", {"cautious": True}, "mask_without_rescale", F32),
    ("AdamAtan2", {"cautious": True, "cautious_weight_decay": True, "weight_decay": 0.1}, "cwd_unmasked_update", F32),
    ("AdamAtan2", {"cautious": True, "cautious_weight_decay": True, "weight_decay": 0.1}, "cwd_greater_equal", F32),
    ("AdamAtan2", {"nesterov": True}, "no_nesterov", F32),
    ("NSGDA", {"lr": 1e-2, "eps": 0.5}, "no_bias_correction", F32),
    ("NSGDA", {"lr": 1e-2}, "decoupled_decay", F32),
    ("NSGDA", {"lr": 1e-2}, "global_norm_per_element", F32),
    ("AdaLo", {}, "no_decay", F32),
    ("AdaLo", {}, "loss_average_after_step", F32),
    ("AdaLo", {}, "loss_transform_1_over_1_plus_l", F32),
    ("AdaLo", {"lr": 0.5}, "lr_ignored", F32),
    ("AdaLo", {"lr": 0.5, "eps": 1e-3, "weight_decay": 0.0}, "lr_inside_max", F32),
    (
        "AdamAtan2",
        {"grad_transforms": ("centralize", "adaptive_clip"), "agc_clipping": 0.05},
        "transforms_reversed",
        F32,
    ),
    ("AdamAtan2", {"grad_transforms": ("centralize",)}, "gc_on_vectors", F32),
    ("NSGDA", {"lr": 1e-2, "grad_transforms": ("centralize",)}, "gc_global_mean", F32),
    ("AdaLo", {"grad_transforms": ("soft_clip",), "mode": "compliant"}, "soft_clip_tensor_rms", F32),
    ("NSGDA", {"lr": 1e-2, "grad_transforms": ("adaptive_clip",), "agc_clipping": 0.05}, "agc_tensor_norm", F32),
    ("PNM", {"lr": 1e-2, "grad_transforms": ("normalize",)}, "normalize_rows", F32),
    ("Lamb", {"lr": 0.1, "weight_decay": 0.1}, "trust_ratio_decay_outside", F32),
    ("DiffGrad", {"stable_weight_decay": True, "weight_decay": 1.0, "lr": 1e-2}, "swd_previous_second_moment", F32),
    ("AdaPNM", {"stable_weight_decay": True, "weight_decay": 1.0, "lr": 1e-2}, "swd_per_group_mean", F32),
    ("FractionalAdam", {"lr": 1e-2}, "no_history", F32),
    ("FractionalAdam", {"lr": 1e-2, "alpha": 0.5, "history": 3}, "history_reversed", F32),
    ("FractionalAdam", {"lr": 1e-2, "alpha": 0.5}, "alpha_sign", F32),
    ("AdaptiveMemorySGD", {"lr": 1e-2}, "fixed_beta", F32),
    ("AdaptiveMemorySGD", {"lr": 1e-2}, "no_first_gradient", F32),
    ("AdaptiveMemorySGD", {"lr": 1e-2}, "no_loss_gap", F32),
    ("AdaptiveMemorySGD", {"lr": 1e-2, "beta_max": 0.5}, "no_beta_max", F32),
    ("AdaptiveMemoryAdamW", {"lr": 1e-2}, "euclidean_metric", F32),
    ("AdaptiveMemoryAdamW", {"lr": 1e-2}, "no_loss_gap", F32),
]


@pytest.mark.parametrize(
    ("name", "kwargs", "mutation", "dtype"),
    [pytest.param(*m, id=f"{m[0]}-{m[2]}") for m in MUTANTS if m[0] in REGISTRY],
)
def test_tolerances_detect_a_wrong_update(name, kwargs, mutation, dtype):
    worst = run_against_reference(name, kwargs, dtype, mutation=mutation, check=False)
    assert worst > 1.0, f"the {mutation!r} mutant passes the {dtype} tolerance (worst {worst:.3g})"
    assert run_against_reference(name, kwargs, dtype, check=False) <= 1.0


# ============================================================================================ closures and loss
@pytest.mark.parametrize("name", NAMES)
def test_step_accepts_no_closure_and_returns_the_closures_value(name):
    optimizer, params, _ = make_pair(name, REGISTRY[name].test_kwargs[0], F32)
    set_grads(params, grads_at(0, F32))
    if REGISTRY[name].loss_driven:
        optimizer.set_loss(1.0)
    assert optimizer.step(None) is None
    assert optimizer.step() is None
    sentinel = torch.tensor(0.75)
    calls: list[bool] = []

    def closure():
        calls.append(torch.is_grad_enabled())
        return sentinel

    with torch.no_grad():
        assert optimizer.step(closure) is sentinel
    assert calls == [True]  # called exactly once, with gradients enabled


@pytest.mark.parametrize("name", LOSS_DRIVEN)
def test_loss_comes_from_the_closure(name):
    optimizer, params, reference = make_pair(name, REGISTRY[name].test_kwargs[0], F64)
    for step in range(STEPS):
        grads = grads_at(step, F64)

        def closure(grads=grads, step=step):
            set_grads(params, grads)
            return torch.tensor(loss_at(step), dtype=F64, requires_grad=True) * 1.0

        returned = optimizer.step(closure)
        assert float(returned.detach()) == loss_at(step)
        reference_step(reference, grads, step)
        assert_params_match(params, reference, TOL[F64], f"step {step}:")


@pytest.mark.parametrize("name", LOSS_DRIVEN)
def test_fed_loss_wins_over_the_closures_and_is_used_once(name):
    optimizer, params, reference = make_pair(name, REGISTRY[name].test_kwargs[0], F64)
    for step in range(STEPS):
        grads = grads_at(step, F64)
        closure_loss = 10.0 + step

        def closure(grads=grads, closure_loss=closure_loss):
            set_grads(params, grads)
            return torch.tensor(closure_loss, dtype=F64)

        if step % 3 == 0:
            optimizer.set_loss(loss_at(step))
            optimizer.step(closure)
            used = loss_at(step)
        elif step % 3 == 1:
            optimizer.step(closure, loss=loss_at(step))
            used = loss_at(step)
        else:  # the loss fed at the previous step was consumed: the closure's is used
            optimizer.step(closure)
            used = closure_loss
        reference.step(grads, loss=used)
        assert_params_match(params, reference, TOL[F64], f"step {step}:")


@pytest.mark.parametrize("name", LOSS_DRIVEN)
def test_step_without_any_loss_raises_an_actionable_error(name):
    optimizer, params, _ = make_pair(name, REGISTRY[name].test_kwargs[0], F32)
    start = [[p.detach().clone() for p in row] for row in params]
    set_grads(params, grads_at(0, F32))
    for call in (lambda: optimizer.step(), lambda: optimizer.step(lambda: None)):
        with pytest.raises(RuntimeError, match="loss") as info:
            call()
        message = str(info.value)
        assert "set_loss" in message and "closure" in message and "LossFeeder" in message
    assert all(torch.equal(p, old) for row, old_row in zip(params, start) for p, old in zip(row, old_row))
    assert all(len(optimizer.state.get(p, {})) == 0 for row in params for p in row)


# ============================================================================================ compiled path
def compiled_kwargs(name: str) -> dict[str, Any]:
    """The first test keyword set with every boolean switch that any test keyword set turns on."""
    spec = REGISTRY[name]
    switches = {key: True for kwargs in spec.test_kwargs for key, value in kwargs.items() if value is True}
    transforms = max((kwargs.get("grad_transforms", ()) for kwargs in spec.test_kwargs), key=len)
    return {**spec.test_kwargs[0], **switches, "grad_transforms": transforms}


def vary_hyperparameters(group: dict[str, Any], base: dict[str, Any], step: int) -> None:
    """What a scheduler of betas / momentum / weight decay would do; keeps every flag's truth value."""
    if "betas" in base:
        beta1, beta2 = base["betas"]
        group["betas"] = (beta1 * (1.0 - 0.05 * (step % 2)), beta2 - 0.5 * (1.0 - beta2) * (step % 3))
    if "momentum" in base:
        group["momentum"] = base["momentum"] * (1.0 - 0.1 * (step % 2))
    if base.get("weight_decay"):
        group["weight_decay"] = base["weight_decay"] * (1.0 + 0.5 * (step % 3))
    if base.get("grad_transforms"):
        group["agc_clipping"] = base["agc_clipping"] * (1.0 + 0.5 * (step % 2))


@pytest.mark.parametrize("name", NAMES)
def test_compiled_matches_eager_and_reference_and_never_recompiles(name):
    """One compile per optimizer class and kind of stack (not per tensor or shape); a LambdaLR
    changes lr and the test changes betas / momentum / weight decay at every step."""
    kwargs = compiled_kwargs(name)
    spec = REGISTRY[name]
    base = merged_hyperparameters(name, kwargs)
    values = [v for row in initial_values(3) for v in row]
    eager_params = [torch.nn.Parameter(v.float()) for v in values]
    compiled_params = [torch.nn.Parameter(v.float()) for v in values]
    eager = spec.cls(eager_params, **kwargs)
    compiled = spec.cls(compiled_params, compile=True, **kwargs)
    reference = REFERENCES[name](values, **kwargs)

    def lr_lambda(step):
        return (1.5 if step % 2 else 1.0) / (1.0 + 0.25 * step)

    schedulers = [torch.optim.lr_scheduler.LambdaLR(opt, lr_lambda) for opt in (eager, compiled)]
    graphs_before = counters["stats"]["unique_graphs"]
    graphs_after_first = None
    lrs = []
    for step in range(STEPS):
        for group in (eager.param_groups[0], compiled.param_groups[0], reference.groups[0]):
            vary_hyperparameters(group, base, step)
        reference.groups[0]["lr"] = compiled.param_groups[0]["lr"]
        lrs.append(compiled.param_groups[0]["lr"])
        generator = torch.Generator().manual_seed(100 + step)
        grads = [torch.randn(v.shape, generator=generator) for v in values]
        for params in (eager_params, compiled_params):
            for p, g in zip(params, grads):
                p.grad = g.clone()
        loss = {"loss": loss_at(step)} if spec.loss_driven else {}
        eager.step(**loss)
        if step == 0:
            compiled.step(**loss)
            graphs_after_first = counters["stats"]["unique_graphs"]
        else:
            with torch._dynamo.config.patch(error_on_recompile=True):
                compiled.step(**loss)
        reference.step([grads], loss=loss.get("loss"))
        for i, (e, c, r) in enumerate(zip(eager_params, compiled_params, reference.params[0])):
            where = f"step {step} param {i} {tuple(c.shape)}"
            torch.testing.assert_close(c, e, **TOL[F32], msg=lambda m, where=where: f"{where} compiled vs eager: {m}")
            torch.testing.assert_close(c.double(), r, **TOL[F32], msg=lambda m, where=where: f"{where} vs ref: {m}")
            assert set(compiled.state[c]) == set(eager.state[e])
            for key, value in eager.state[e].items():
                torch.testing.assert_close(compiled.state[c][key], value, **TOL[F32])
        for scheduler in schedulers:
            scheduler.step()
    assert len(set(lrs)) > STEPS // 2  # the learning rate really changed from step to step
    # One graph per phase and kind of chunk of stacks (which of their sizes are 1, copied or in place), whatever
    # the count and shapes of the tensors; later steps (a lr that changes, a late gradient) compile nothing again.
    kinds = {
        tuple(stack.kind for stack in chunk)
        for plan in compiled._plans.values()
        for chunks in plan.chunks.values()
        for chunk in chunks
    }
    assert 0 < graphs_after_first - graphs_before <= len(spec.cls.phases) * len(kinds)
    assert counters["stats"]["unique_graphs"] == graphs_after_first  # and no recompile afterwards


# ============================================================================================ checkpoints
@pytest.mark.parametrize(("name", "kwargs"), CASES)
def test_state_dict_round_trip_continues_bit_identically(name, kwargs):
    optimizer, params, _ = make_pair(name, kwargs, F32)
    for step in range(5):
        set_grads(params, grads_at(step, F32))
        package_step(optimizer, name, step)
    state_dict = optimizer.state_dict()
    assert_no_callables(state_dict)
    buffer = io.BytesIO()
    torch.save(state_dict, buffer)
    buffer.seek(0)
    loaded = torch.load(buffer, weights_only=True)

    fresh_params = [[torch.nn.Parameter(p.detach().clone()) for p in row] for row in params]
    fresh = REGISTRY[name].cls(
        [{"params": fresh_params[0]}, {"params": fresh_params[1], **second_group_overrides(name, kwargs)}], **kwargs
    )
    fresh.load_state_dict(loaded)
    for mine, theirs in zip(optimizer.param_groups, fresh.param_groups):
        # (torch.optim's __setstate__ adds "differentiable": False to loaded groups)
        assert {k: v for k, v in mine.items() if k != "params"} == {k: theirs[k] for k in mine if k != "params"}
    assert_same_state(optimizer, params, fresh, fresh_params)
    for step in range(5, STEPS):
        grads = grads_at(step, F32)
        set_grads(params, grads)
        set_grads(fresh_params, grads)
        package_step(optimizer, name, step)
        package_step(fresh, name, step)
        assert_same_state(optimizer, params, fresh, fresh_params)


@pytest.mark.parametrize("how", ["deepcopy", "pickle"])
@pytest.mark.parametrize("name", NAMES)
def test_deepcopy_and_pickle(name, how):
    optimizer, params, _ = make_pair(name, REGISTRY[name].test_kwargs[0], F32)
    for step in range(3):
        set_grads(params, grads_at(step, F32))
        package_step(optimizer, name, step)
    clone = copy.deepcopy(optimizer) if how == "deepcopy" else pickle.loads(pickle.dumps(optimizer))
    assert type(clone) is type(optimizer)
    clone_params = [list(group["params"]) for group in clone.param_groups]
    assert clone_params[0][0] is not params[0][0]
    assert_same_state(optimizer, params, clone, clone_params)
    for step in range(3, 8):
        grads = grads_at(step, F32)
        set_grads(params, grads)
        set_grads(clone_params, grads)
        if step < 6:
            package_step(optimizer, name, step)
            package_step(clone, name, step)
        else:  # the closure path, which reads the loss from the closure for loss-driven optimizers
            loss = torch.tensor(loss_at(step))
            assert optimizer.step(lambda: loss) is loss
            assert clone.step(lambda: loss) is loss
        assert_same_state(optimizer, params, clone, clone_params)


@pytest.mark.parametrize("name", NAMES)
def test_compile_flag_survives_pickling(name):
    params = [torch.nn.Parameter(torch.randn(3))]
    optimizer = REGISTRY[name].cls(params, compile=True, **REGISTRY[name].test_kwargs[0])
    clone = pickle.loads(pickle.dumps(optimizer))
    assert clone._compile is True and clone._plans == {}


# ============================================================================================ bfloat16
def bf16_ulp(x: torch.Tensor) -> torch.Tensor:
    """The spacing of bfloat16 numbers at ``x`` (8 significant bits)."""
    _, exponent = torch.frexp(x.abs().clamp_min(1e-30))
    return torch.pow(2.0, (exponent - 8).to(F64))


@pytest.mark.parametrize(("name", "kwargs"), CASES)
def test_bfloat16_parameters(name, kwargs):
    """bf16 parameters and gradients: state in bf16, and close to the float64 reference run from the same
    bf16 values. Each step may round once, so the tolerance is one bf16 ulp per step plus 5% of the
    tensor's motion; tensors that move by many ulps must also follow the reference's motion to 15%."""
    optimizer, params, reference = make_pair(name, kwargs, BF16, scale=0.02)
    start = [[p.detach().double() for p in row] for row in params]
    for step in range(STEPS):
        grads = grads_at(step, BF16)
        set_grads(params, grads)
        package_step(optimizer, name, step)
        reference_step(reference, grads, step)
    followed = 0
    for gi, row in enumerate(params):
        for pi, p in enumerate(row):
            assert p.dtype == BF16
            state = optimizer.state.get(p, {})
            floating = [value for key, value in state.items() if key != "step" and value.is_floating_point()]
            assert all(value.dtype == BF16 for value in floating)  # (SMMF's sign bits are uint8)
            if not p.numel() or (gi, pi) == NEVER:
                continue
            value, expected = p.detach().double(), reference.params[gi][pi]
            motion = (expected - start[gi][pi]).abs().max()
            ulp = bf16_ulp(torch.maximum(expected.abs(), start[gi][pi].abs()))
            tolerance = (STEPS + 1) * ulp + 0.05 * motion
            assert bool(((value - expected).abs() <= tolerance).all()), (gi, pi, value, expected)
            if motion >= 50 * float(ulp.max()):
                moved, expected_move = value - start[gi][pi], expected - start[gi][pi]
                assert float((moved - expected_move).norm()) <= 0.15 * float(expected_move.norm()), (gi, pi)
                followed += 1
    if REGISTRY[name].loss_driven and merged_hyperparameters(name, kwargs).get("mode") == "adversarial":
        return  # AdaLo's loss average warms up over ~1/(1-beta2) steps: too few steps to move in bf16
    assert followed >= 1


# ============================================================================================ skipping, errors
@pytest.mark.parametrize("name", NAMES)
def test_parameters_without_gradients_are_skipped(name):
    spec = REGISTRY[name]
    kwargs = spec.test_kwargs[0]
    idle = [torch.nn.Parameter(torch.randn(3)), torch.nn.Parameter(torch.randn(2, 2))]
    with_grad, without_grad = torch.nn.Parameter(torch.randn(4)), torch.nn.Parameter(torch.randn(4))
    optimizer = spec.cls([{"params": idle}, {"params": [with_grad, without_grad]}], **kwargs)
    before = [p.detach().clone() for p in (*idle, with_grad, without_grad)]
    for step in range(3):
        with_grad.grad = torch.randn(4)
        package_step(optimizer, name, step)
    for p, old in zip((*idle, without_grad), (*before[:2], before[3])):
        assert torch.equal(p, old)
        assert len(optimizer.state.get(p, {})) == 0
    assert not torch.equal(with_grad, before[2])
    assert int(optimizer.state[with_grad]["step"]) == 3


@pytest.mark.parametrize("name", NAMES)
def test_sparse_gradients_are_rejected(name):
    spec = REGISTRY[name]
    p = torch.nn.Parameter(torch.randn(4, 3))
    optimizer = spec.cls([p], **spec.test_kwargs[0])
    p.grad = torch.randn(4, 3).to_sparse()
    with pytest.raises(RuntimeError, match="sparse"):
        package_step(optimizer, name, 0)
    embedding = torch.nn.Embedding(5, 2, sparse=True)
    optimizer = spec.cls(embedding.parameters(), **spec.test_kwargs[0])
    embedding(torch.tensor([1, 3])).sum().backward()
    with pytest.raises(RuntimeError, match="sparse"):
        package_step(optimizer, name, 0)


@pytest.mark.parametrize("name", NAMES)
def test_a_rejected_step_changes_no_state(name):
    """The sparse gradient is found before anything changes: step counters (bias corrections), buffers,
    parameters and the groups' own entries are as before the failed step."""
    spec = REGISTRY[name]
    dense, sparse = torch.nn.Parameter(torch.randn(3)), torch.nn.Parameter(torch.randn(4, 3))
    optimizer = spec.cls([dense, sparse], **spec.test_kwargs[0])
    dense.grad = torch.randn(3)
    package_step(optimizer, name, 0)  # one good step first
    state_before = {key: torch.as_tensor(value).clone() for key, value in optimizer.state[dense].items()}
    groups_before = copy.deepcopy([{k: v for k, v in g.items() if k != "params"} for g in optimizer.param_groups])
    before = dense.detach().clone()
    dense.grad, sparse.grad = torch.randn(3), torch.randn(4, 3).to_sparse()
    with pytest.raises(RuntimeError, match="sparse"):
        package_step(optimizer, name, 1)
    assert torch.equal(dense, before)
    assert set(optimizer.state[dense]) == set(state_before)
    assert all(torch.equal(torch.as_tensor(optimizer.state[dense][k]), v) for k, v in state_before.items())
    assert [{k: v for k, v in g.items() if k != "params"} for g in optimizer.param_groups] == groups_before


INVALID = [
    pytest.param(name, kwargs, argument, id=f"{name}-{argument}-{i}")
    for name, spec in REGISTRY.items()
    for i, (kwargs, argument) in enumerate(spec.invalid_kwargs)
]


@pytest.mark.parametrize(("name", "kwargs", "argument"), INVALID)
def test_invalid_arguments_raise_value_error_naming_them(name, kwargs, argument):
    with pytest.raises(ValueError, match=rf"^Invalid {re.escape(argument)}: ") as info:
        REGISTRY[name].cls([torch.nn.Parameter(torch.randn(2))], **kwargs)
    if argument in kwargs:
        value = kwargs[argument]
    elif re.fullmatch(r"beta[12]", argument) and "betas" in kwargs:
        value = kwargs["betas"][int(argument[-1]) - 1]
    else:
        return
    assert f"Invalid {argument}: {value!r}" in str(info.value)


@pytest.mark.parametrize("name", NAMES)
def test_complex_parameters_are_rejected(name):
    with pytest.raises(ValueError, match="complex"):
        REGISTRY[name].cls([torch.nn.Parameter(torch.randn(3, dtype=torch.complex64))])


# ============================================================================================ non-finite grads
# What a NaN / inf gradient coordinate does, documented per optimizer. No optimizer sanitises gradients:
# "coordinate": only the coordinates that got the non-finite gradient become non-finite (element-wise
# updates); "tensor": the whole tensor does (its update is normalised by a norm over the tensor).
# In every case the other tensors of the same step, group and bucket are unaffected.
NONFINITE_SCOPE = {"AdaLo": "coordinate", "AdamAtan2": "coordinate", "NSGDA": "tensor"}
# "reference": where the float64 reference has them (SM3: a NaN spreads through the accumulators to its rows and
# columns, then the tensor; an inf freezes them at a step of 0); Amos: its second moment is the tensor's mean.
NONFINITE_SCOPE.update(SM3="reference", Amos="tensor")
# The Adam family: elementwise but for AdaNorm, whose running norm turns an inf into a tensor-wide step (a NaN
# only disables its correction), as its reference does.
NONFINITE_SCOPE.update(
    DiffGrad="coordinate", SAdam="coordinate", AdaMomentum="coordinate", PNM="coordinate", AdaPNM="coordinate",
    AdaNorm="reference",
)
NONFINITE_SCOPE["SMMF"] = "reference"  # the factors' sums carry it to its row and column, then further
NONFINITE_SCOPE["Adafactor"] = "tensor"  # factored rows and columns, and the update's RMS over the tensor
NONFINITE_SCOPE["Lamb"] = "reference"  # per coordinate, but an inf update gives a trust ratio of 0 to the tensor
NONFINITE_SCOPE["Muon"] = "tensor"  # a matrix is divided by its norm before Newton-Schulz (bad tensors are matrices)
NONFINITE_SCOPE["FractionalAdam"] = "coordinate"  # the past gradients carry it for K steps, in its coordinate only
# AM's coefficient sums over the tensor: an inf makes it NaN (the tensor follows); a NaN makes the squared difference
# NaN, which reads as "d = g" (coefficient 0), so only its coordinate: as the reference does.
NONFINITE_SCOPE.update(AdaptiveMemorySGD="reference", AdaptiveMemoryAdamW="reference")
# An inf gradient under the atan2 denominator: its coordinate's step is 1.27 atan2(inf, inf) lr at every later step and
# its weight in AM-AdamW's sums is 1 / inf = 0, so nothing becomes non-finite, in the package as in the reference.
NONFINITE_STAYS_FINITE = {("AdaptiveMemoryAdamW", "atan2")}


@pytest.mark.parametrize(("name", "kwargs"), CASES)
def test_non_finite_gradients(name, kwargs):
    assert name in NONFINITE_SCOPE, f"document what a non-finite gradient does to {name} in NONFINITE_SCOPE"
    scope = NONFINITE_SCOPE[name]
    optimizer, params, reference = make_pair(name, kwargs, F32)
    nan_at, inf_at = ((0, 2), (1, 2)), ((1, 0), (0, 1, 0, 1))  # (group, index), coordinate: see inject_non_finite
    bad = {nan_at[0], inf_at[0]}
    for step in range(4):
        grads = grads_at(step, F32)
        if step == 1:
            assert inject_non_finite(grads) == bad
        set_grads(params, grads)
        package_step(optimizer, name, step)
        reference_step(reference, grads, step)
        for gi, row in enumerate(params):
            for pi, p in enumerate(row):
                if (gi, pi) not in bad:
                    torch.testing.assert_close(p.detach().double(), reference.params[gi][pi], **TOL[F32])
        if step >= 2:  # from the step after the bad one on (Adam-atan2 maps (inf, inf) to a finite pi/4 first)
            for (gi, pi), coordinate in (nan_at, inf_at):
                p = params[gi][pi]
                expected = torch.ones_like(p, dtype=torch.bool)
                if kwargs.get("grad_transforms") or scope == "reference":  # unit-wise transforms spread a NaN
                    expected = ~reference.params[gi][pi].isfinite()
                    assert expected[coordinate] or (name, kwargs.get("denominator")) in NONFINITE_STAYS_FINITE
                elif scope == "coordinate":
                    expected = torch.zeros_like(expected)
                    expected[coordinate] = True
                assert torch.equal(~p.isfinite(), expected), (step, gi, pi, p)


def inject_non_finite(grads):
    """NaN into one coordinate of the (5, 3) tensor of group 0, +inf into one of the 4-D tensor of group 1."""
    grads[0][2][1, 2] = float("nan")
    grads[1][0][0, 1, 0, 1] = float("inf")
    return {(0, 2), (1, 0)}


@pytest.mark.parametrize(("name", "kwargs"), CASES)
def test_skip_nonfinite_leaves_such_tensors_untouched(name, kwargs):
    """skip_nonfinite=True: a tensor whose gradient has inf/NaN keeps its value, state and step count
    (exactly as if it had no gradient that step, which is what the reference is given), with a warning."""
    optimizer, params, reference = make_pair(name, kwargs, F32, skip_nonfinite=True)
    for step in range(6):
        grads = grads_at(step, F32)
        reference_grads = grads
        if step in (1, 3):
            bad = inject_non_finite(grads)
            reference_grads = [
                [None if (gi, pi) in bad else g for pi, g in enumerate(row)] for gi, row in enumerate(grads)
            ]
            set_grads(params, grads)
            with pytest.warns(UserWarning, match="inf or NaN"):
                package_step(optimizer, name, step)
        else:
            set_grads(params, grads)
            with warnings.catch_warnings():
                warnings.simplefilter("error")
                package_step(optimizer, name, step)
        reference_step(reference, reference_grads, step)
        assert_params_match(params, reference, TOL[F32], f"step {step}:")
        assert_state_matches(optimizer, params, reference, name, TOL[F32], f"step {step}:")
    assert optimizer.nonfinite_skips == 4
    assert int(optimizer.state[params[0][2]]["step"]) == 4 and int(optimizer.state[params[0][1]]["step"]) == 6


@pytest.mark.parametrize("name", NAMES)
def test_skip_nonfinite_is_validated_and_survives_pickling(name):
    spec = REGISTRY[name]
    with pytest.raises(ValueError, match=r"^Invalid skip_nonfinite: 'yes'"):
        spec.cls([torch.nn.Parameter(torch.randn(2))], skip_nonfinite="yes")
    optimizer = spec.cls([torch.nn.Parameter(torch.randn(2))], skip_nonfinite=True)
    assert pickle.loads(pickle.dumps(optimizer))._skip_nonfinite is True


# ============================================================================================ AdaLo
needs_adalo = pytest.mark.skipif("AdaLo" not in REGISTRY, reason="AdaLo is not registered")


def _adalo(**kwargs):
    params = [torch.nn.Parameter(torch.randn(5)), torch.nn.Parameter(torch.randn(2, 3))]
    return REGISTRY["AdaLo"].cls(params, **kwargs), params


@needs_adalo
@pytest.mark.parametrize("bad_loss", [float("nan"), float("inf"), float("-inf")])
def test_adalo_non_finite_loss_keeps_the_loss_average_and_warns(bad_loss):
    optimizer, params = _adalo()
    reference = REFERENCES["AdaLo"]([p.detach() for p in params])
    for step in range(6):
        grads = [torch.randn(p.shape, dtype=F64) for p in params]
        for p, g in zip(params, grads):
            p.grad = g.float()
        loss = bad_loss if step == 3 else loss_at(step)
        average_before = optimizer.param_groups[0].get("loss_average")
        if step == 3:
            with pytest.warns(UserWarning, match="non-finite loss"):
                optimizer.step(loss=loss)
            assert optimizer.param_groups[0]["loss_average"] == average_before
            assert optimizer.param_groups[0]["loss_count"] == 3
        else:
            optimizer.step(loss=loss)
        reference.step([[g.float() for g in grads]], loss=loss)  # the reference skips non-finite losses too
        expected_average = reference.group_state[0]["loss_average"]
        assert optimizer.param_groups[0]["loss_average"] == pytest.approx(expected_average, rel=1e-12)
        assert_params_match([params], reference, TOL[F32], f"step {step}:")


@needs_adalo
@pytest.mark.parametrize("skip_nonfinite", [False, True])
@pytest.mark.parametrize("bad_loss", [float("nan"), float("inf")])
def test_adalo_first_loss_non_finite_leaves_the_parameters_alone_and_training_goes_on(bad_loss, skip_nonfinite):
    """No step size exists before the first finite loss: that step leaves parameters, momentum and step counts
    as they are (as for a parameter without a gradient), with a warning naming the loss; training goes on
    exactly as if the bad step had not happened."""
    optimizer, params = _adalo(skip_nonfinite=skip_nonfinite)
    reference = REFERENCES["AdaLo"]([p.detach() for p in params])
    before = [p.detach().clone() for p in params]
    grads = [torch.randn(p.shape) for p in params]
    for p, g in zip(params, grads):
        p.grad = g.clone()
    with pytest.warns(UserWarning, match=rf"non-finite loss \({bad_loss}\).*left untouched"):
        optimizer.step(loss=bad_loss)
    assert all(torch.equal(p, b) for p, b in zip(params, before))
    assert all(len(optimizer.state.get(p, {})) == 0 for p in params)  # no momentum, no step count
    assert all(torch.equal(p.grad, g) for p, g in zip(params, grads))  # p.grad itself is not touched
    assert optimizer.param_groups[0]["loss_count"] == 0 and optimizer.last_step_sizes == [None]
    for step in range(1, 4):
        grads = [torch.randn(p.shape, dtype=F64) for p in params]
        for p, g in zip(params, grads):
            p.grad = g.float()
        with warnings.catch_warnings():
            warnings.simplefilter("error")
            optimizer.step(loss=loss_at(step))
        reference.step([[g.float() for g in grads]], loss=loss_at(step))
        assert_params_match([params], reference, TOL[F32], f"step {step}:")
        assert optimizer.last_step_sizes == [pytest.approx(reference.group_state[0]["step_size"], rel=1e-12)]


@needs_adalo
def test_adalo_non_finite_loss_skips_only_the_groups_without_a_step_size():
    """A group added after training began has no step size yet; a non-finite loss leaves it alone while the
    other group steps with the step size it already has."""
    optimizer, params = _adalo()
    for p in params:
        p.grad = torch.ones_like(p)
    optimizer.step(loss=0.5)
    late = torch.nn.Parameter(torch.randn(3))
    optimizer.add_param_group({"params": [late]})
    late.grad = torch.ones_like(late)
    late_before, old_before = late.detach().clone(), params[0].detach().clone()
    with pytest.warns(UserWarning, match=r"parameter group\(s\) \[1\] are left untouched"):
        optimizer.step(loss=float("nan"))
    assert torch.equal(late, late_before) and not torch.equal(params[0], old_before)
    assert optimizer.last_step_sizes == [optimizer.step_size(optimizer.param_groups[0]), None]


@needs_adalo
def test_adalo_non_finite_first_loss_in_a_real_trainer():
    """The first training loss is NaN (skip_nonfinite=True, LossFeeder): a warning, and training goes on."""
    import lightning.pytorch as pl

    from lightning_opt import LossFeeder

    class FirstLossNaN(pl.LightningModule):
        def __init__(self):
            super().__init__()
            torch.manual_seed(0)
            self.layer = torch.nn.Linear(4, 1)

        def training_step(self, batch, batch_idx):
            loss = (self.layer(batch[0]) - batch[1]).square().mean()
            return loss * float("nan") if self.global_step == 0 else loss

        def configure_optimizers(self):
            return REGISTRY["AdaLo"].cls(self.parameters(), skip_nonfinite=True)

    data = torch.utils.data.TensorDataset(torch.randn(32, 4), torch.randn(32, 1))
    module = FirstLossNaN()
    initial = [p.detach().clone() for p in module.parameters()]
    trainer = pl.Trainer(
        max_steps=4, accelerator="cpu", devices=1, logger=False, enable_checkpointing=False,
        enable_progress_bar=False, enable_model_summary=False, callbacks=[LossFeeder()],
    )
    with pytest.warns(UserWarning, match=r"non-finite loss \(nan\)"):
        trainer.fit(module, torch.utils.data.DataLoader(data, batch_size=8))
    assert trainer.global_step == 4
    assert all(p.isfinite().all() for p in module.parameters())
    assert not any(torch.equal(p, q) for p, q in zip(module.parameters(), initial))


@needs_adalo
@pytest.mark.parametrize("bad_loss", [-1.0, -1.5, -100])
def test_adalo_loss_at_or_below_minus_one_is_rejected(bad_loss):
    optimizer, params = _adalo()
    for p in params:
        p.grad = torch.ones_like(p)
    optimizer.step(loss=0.5)
    average = optimizer.param_groups[0]["loss_average"]
    with pytest.raises(ValueError, match=r"^Invalid loss: "):
        optimizer.step(loss=bad_loss)
    assert optimizer.param_groups[0]["loss_average"] == average


@needs_adalo
def test_adalo_loss_just_above_minus_one_is_accepted():
    optimizer, params = _adalo(betas=(0.9, 0.5))
    for p in params:
        p.grad = torch.ones_like(p)
    optimizer.step(loss=-0.5)
    assert optimizer.param_groups[0]["loss_average"] == pytest.approx(0.5 * 1.0 / 1.5, rel=1e-12)


@needs_adalo
@pytest.mark.parametrize("bad", [torch.ones(2), "1.0", True, None, [1.0]])
def test_adalo_set_loss_rejects_non_numbers(bad):
    optimizer, _ = _adalo()
    with pytest.raises(ValueError, match=r"^Invalid loss"):
        optimizer.set_loss(bad)


@needs_adalo
def test_adalo_one_loss_average_per_group_restored_by_load_state_dict():
    p1, p2 = torch.nn.Parameter(torch.randn(4)), torch.nn.Parameter(torch.randn(3))
    groups = [{"params": [p1], "betas": (0.9, 0.99)}, {"params": [p2], "betas": (0.9, 0.8), "kappa": 2.0}]
    optimizer = REGISTRY["AdaLo"].cls(groups)
    reference = REFERENCES["AdaLo"]([{**g, "params": [g["params"][0].detach()]} for g in groups])
    for step in range(5):
        grads = [torch.randn(4, dtype=F64), torch.randn(3, dtype=F64)]
        p1.grad, p2.grad = grads[0].float(), grads[1].float()
        optimizer.step(loss=loss_at(step))
        reference.step([[grads[0].float()], [grads[1].float()]], loss=loss_at(step))
    averages = [group["loss_average"] for group in optimizer.param_groups]
    for average, expected in zip(averages, reference.group_state):
        assert average == pytest.approx(expected["loss_average"], rel=1e-12)
    assert averages[0] != pytest.approx(averages[1], rel=1e-3)
    for group, expected in zip(optimizer.param_groups, reference.group_state):
        assert optimizer.step_size(group) == pytest.approx(expected["step_size"], rel=1e-12)

    buffer = io.BytesIO()
    torch.save(optimizer.state_dict(), buffer)
    buffer.seek(0)
    q1, q2 = torch.nn.Parameter(p1.detach().clone()), torch.nn.Parameter(p2.detach().clone())
    fresh = REGISTRY["AdaLo"].cls([{"params": [q1]}, {"params": [q2]}])
    fresh.load_state_dict(torch.load(buffer, weights_only=True))
    assert [g["loss_average"] for g in fresh.param_groups] == averages
    assert [g["loss_count"] for g in fresh.param_groups] == [5, 5]
    assert [g["betas"] for g in fresh.param_groups] == [(0.9, 0.99), (0.9, 0.8)]


@needs_adalo
def test_adalo_step_without_a_new_loss_keeps_the_average():
    optimizer, params = _adalo()
    for p in params:
        p.grad = torch.ones_like(p)
    optimizer.step(loss=1.0)
    average = optimizer.param_groups[0]["loss_average"]
    before = params[0].detach().clone()
    optimizer.step()  # a loss reached the optimizer before: no error, the average is kept
    assert optimizer.param_groups[0]["loss_average"] == average
    assert optimizer.param_groups[0]["loss_count"] == 1
    assert not torch.equal(params[0], before)


@needs_adalo
def test_adalo_lr_multiplies_the_step_and_schedulers_act_on_it():
    """lr = 1 is the published method; a scheduler's lr scales every step, eps floor included."""
    runs = {}
    for lr, schedule in ((1.0, None), (0.5, None), (1.0, "halve")):
        torch.manual_seed(0)
        optimizer, params = _adalo(lr=lr, eps=1e-3)
        scheduler = None if schedule is None else torch.optim.lr_scheduler.LambdaLR(optimizer, lambda e: 0.5)
        effective_lr = 0.5 if schedule or lr != 1.0 else 1.0
        reference = REFERENCES["AdaLo"]([p.detach() for p in params], lr=effective_lr, eps=1e-3)
        for step in range(4):
            grads = [torch.randn(p.shape, dtype=F64) for p in params]
            for p, g in zip(params, grads):
                p.grad = g.float()
            optimizer.step(loss=loss_at(step))
            reference.step([[g.float() for g in grads]], loss=loss_at(step))
            assert optimizer.last_step_sizes == [pytest.approx(reference.group_state[0]["step_size"], rel=1e-12)]
            if scheduler is not None:
                scheduler.step()
        assert_params_match([params], reference, TOL[F32])
        runs[(lr, schedule)] = [p.detach().clone() for p in params]
    assert all(torch.equal(a, b) for a, b in zip(runs[(0.5, None)], runs[(1.0, "halve")]))
    assert not any(torch.equal(a, b) for a, b in zip(runs[(0.5, None)], runs[(1.0, None)]))


@needs_adalo
def test_adalo_group_without_grads_needs_no_loss():
    optimizer, params = _adalo()
    optimizer.step()  # nothing has a gradient: nothing to do, no error
    assert all(len(optimizer.state.get(p, {})) == 0 for p in params)


@needs_adalo
def test_adalo_state_dict_saved_before_lr_scaled_the_step_keeps_its_steps():
    """A checkpoint from before lr multiplied the step (groups without the marker, lr=1e-8): loading it warns
    and keeps ignoring lr, so its steps neither shrink 1e8-fold nor follow a saved scheduler's base_lrs."""
    from lightning_opt.optim.adalo import LR_SCALES_STEP

    torch.manual_seed(0)
    old, old_params = _adalo()
    for p in old_params:
        p.grad = torch.randn_like(p)
    old.step(loss=1.0)
    saved = copy.deepcopy(old.state_dict())  # state_dict() shares the state tensors
    for group in saved["param_groups"]:  # what the previous version saved
        del group[LR_SCALES_STEP]
        group["lr"] = 1e-8
    resumed, resumed_params = _adalo()
    with torch.no_grad():
        for p, q in zip(resumed_params, old_params):
            p.copy_(q)
    with pytest.warns(UserWarning, match=r"lr did not affect AdaLo's steps \(lr=1e-08\); they keep ignoring lr"):
        resumed.load_state_dict(saved)
    assert resumed.param_groups[0][LR_SCALES_STEP] is False
    assert resumed.step_size(resumed.param_groups[0]) == old.step_size(old.param_groups[0])
    for p, q in zip(resumed_params, old_params):
        p.grad = q.grad.clone()
    old.step(loss=2.0)
    resumed.step(loss=2.0)
    assert all(torch.equal(p, q) for p, q in zip(resumed_params, old_params))
    current = old.state_dict()  # saved by this version: loads without a warning, lr in force
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        resumed.load_state_dict(current)
    assert resumed.param_groups[0][LR_SCALES_STEP] is True


# ============================================================================================ bounds
BOUNDS = [  # (name, kwargs, argument, the bound the message must state)
    ("Adafactor", {"lr": 1e7, "clip_threshold": 2.0}, "lr", "lr * clip_threshold with clip_threshold=2 = 2e+07 must"),
    ("Adafactor", {"weight_decay": 200.0}, "weight_decay", "1 - 0.01 * weight_decay = -1 must stay in [0, 1]"),
    ("AdaLo", {"kappa": 1e-320}, "kappa", "1 / kappa = inf must be below 2**24 = 16777216"),
    ("AdaLo", {"lr": 1e8}, "lr", "lr / kappa with kappa=3 = 3.333e+07 must be below 2**24"),
    ("AdaLo", {"eps": 6557}, "eps", "expected < 1 / (2 * kappa) = 0.1667"),
    ("AdaLo", {"weight_decay": 3.97e6}, "weight_decay", "must stay in [0, 1]: expected 1 / 3 * weight_decay <= 1"),
    ("AdaLo", {"lr": 10**400}, "lr", "expected a finite number"),
    ("AdamAtan2", {"lr": 1e300}, "lr", "lr * a * pi / 2 with a=1.27 = 1.995e+300 must be below 2**24"),
    ("AdamAtan2", {"a": 1e39}, "a", "expected <= 3.4028234663852886e+38"),
    ("AdamAtan2", {"lr": 0.5, "weight_decay": 3.0}, "weight_decay", "1 - 0.5 * weight_decay = -0.5 must stay in [0,"),
    ("NSGDA", {"lr": 1.5e16}, "lr", "the largest step size lr = 1.5e+16 must be below 2**24 = 16777216"),
    ("NSGDA", {"eps": 3.5e38}, "eps", "expected <= 3.4028234663852886e+38"),
    ("NSGDA", {"agc_clipping": 3.5e38}, "agc_clipping", "expected <= 3.4028234663852886e+38"),
]


@pytest.mark.parametrize(("name", "kwargs", "argument", "bound"), [b for b in BOUNDS if b[0] in REGISTRY])
def test_values_that_cannot_train_are_refused_with_the_bound(name, kwargs, argument, bound):
    """At construction, as a group's own value (constructor groups and add_param_group), naming the group."""
    cls = REGISTRY[name].cls
    with pytest.raises(ValueError, match=rf"^Invalid {argument}: ") as info:
        cls([torch.nn.Parameter(torch.randn(2))], **kwargs)
    assert bound in str(info.value)
    with pytest.raises(ValueError, match=rf"^Invalid {argument}: .*\[parameter group 1\]$") as info:
        first, second = torch.nn.Parameter(torch.ones(2)), torch.nn.Parameter(torch.ones(2))
        cls([{"params": [first]}, {"params": [second], **kwargs}])
    assert bound in str(info.value)
    optimizer = cls([torch.nn.Parameter(torch.randn(2))])
    with pytest.raises(ValueError, match=rf"^Invalid {argument}: .*\[parameter group 1\]$"):
        optimizer.add_param_group({"params": [torch.nn.Parameter(torch.randn(2))], **kwargs})
    assert len(optimizer.param_groups) == 1


@pytest.mark.parametrize("name", NAMES)
def test_an_lr_raised_past_the_bound_after_construction_fails_clearly_before_any_change(name):
    """A scheduler (here: a direct write) that pushes lr past the bound gets a ValueError naming lr and the
    group at the next step, before any parameter, state or loss average changes."""
    optimizer = REGISTRY[name].cls([torch.nn.Parameter(torch.randn(4))])
    params = optimizer.param_groups[0]["params"]
    params[0].grad = torch.ones(4)
    package_step(optimizer, name, 0)
    optimizer.param_groups[0]["lr"] = 1e300
    before = params[0].detach().clone()
    state = copy.deepcopy(optimizer.state_dict())
    with pytest.raises(ValueError, match=r"^Invalid lr: 1e\+300 .*2\*\*24.*\[parameter group 0\]$"):
        package_step(optimizer, name, 1)
    assert torch.equal(params[0], before)
    after = optimizer.state_dict()
    after["param_groups"][0]["lr"] = state["param_groups"][0]["lr"]
    assert after["param_groups"] == state["param_groups"]
    for key, value in after["state"][0].items():
        assert torch.equal(torch.as_tensor(value), torch.as_tensor(state["state"][0][key]))


def test_huge_integers_and_nested_transform_lists_name_the_argument():
    from lightning_opt.transforms.gradient import check_grad_transforms
    from lightning_opt.validation import check_float

    with pytest.raises(ValueError, match=r"^Invalid lr: 1000+ \(expected a finite number\)$"):
        check_float("lr", 10**400, low=0.0)
    with pytest.raises(ValueError, match=r"^Invalid grad_transforms: \[\['soft_clip'\]\] .*got \['soft_clip'\]"):
        check_grad_transforms([["soft_clip"]])
