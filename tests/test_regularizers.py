"""Norm Loss and CPR as a parameter group's ``regularizer``, with optimizers of the package, eager and compiled.

Each regularised step is checked against its rule written here in float64 around the same optimizer without a
regulariser (the optimizer itself is checked against its reference elsewhere): Norm Loss scales each unit by
``1 - 2 lr f (1 - 1 / (||unit|| + 1e-8))`` before the update; CPR, after the update, sets ``kappa = ||p||^2``
at the warm-start step, then takes ``lambda <- max(0, lambda + mu / n (||p||^2 - kappa))`` and
``p <- p (1 - 2 lambda)``. pytorch_optimizer's Ranger21 is the oracle of the Norm Loss term.
"""

from __future__ import annotations

import copy
import io
import pickle
import warnings

import pytest
import torch
from pytorch_optimizer import Ranger21

from lightning_opt import NSGDA, SMMF, Adafactor, AdaLo, AdamAtan2
from lightning_opt.engine.compiled import shared_runner
from lightning_opt.transforms import norm_loss_

F64 = torch.float64
SHAPES = [(), (7,), (5, 3), (5, 3), (4, 2, 3, 3), (2, 3, 4), (200, 100), (0,), (3, 0)]
"""0-d, 1-D, two small matrices (stacked together), a 4-D and a 3-D tensor, one large enough to run in place
(more than 16,384 elements; SMMF's most square view, 125 x 160, splits its rows), and two empty tensors."""
OPTIMIZERS = {
    "AdaLo": (AdaLo, {"lr": 0.5, "weight_decay": 1e-2}),
    "AdamAtan2": (AdamAtan2, {"lr": 3e-2, "weight_decay": 1e-2}),
    # a view that splits units (the most square matrix): Norm Loss runs in the units view before the graph
    "SMMF": (SMMF, {"lr": 3e-2, "weight_decay": 1e-2}),
    # several phases: the regularisers run in the last (the one that writes the parameter), so the earlier ones
    # read the parameter before Norm Loss; without NSGDA's L2 term and Adafactor's parameter scale they read none
    "NSGDA": (NSGDA, {"lr": 3e-2, "weight_decay": 0.0}),
    "Adafactor": (Adafactor, {"lr": 3e-2, "weight_decay": 1e-2, "scale_parameter": False}),
}
LOSS = 0.7
"""The loss the closure reports (AdaLo's step size reads it)."""


def _params(dtype=F64, seed=0):
    generator = torch.Generator().manual_seed(seed)
    return [torch.randn(shape, generator=generator, dtype=F64).to(dtype).requires_grad_() for shape in SHAPES]


def _grads(params, step):
    """Gradients that push every entry away from zero (so ||p||^2 grows and CPR's multiplier acts), with noise."""
    generator = torch.Generator().manual_seed(1000 + step)
    return [
        (-p.detach().double().sign() + 0.3 * torch.randn(p.shape, generator=generator, dtype=F64)).to(p.dtype)
        for p in params
    ]


def _step(optimizer, params, grads):
    for param, grad in zip(params, grads):
        param.grad = grad.clone()
    optimizer.step(lambda: torch.tensor(LOSS))


def _units_norm64(p):
    if p.dim() >= 2:
        return p.reshape(p.shape[0], -1).pow(2).sum(dim=1).sqrt().view(-1, *[1] * (p.dim() - 1))
    return p.pow(2).sum().sqrt()


GROUP = {"norm_loss": {"norm_loss_factor": 0.2}, "cpr": {"cpr_mu": 0.5, "cpr_warm_start": 3}}


@pytest.mark.parametrize(
    ("name", "compile"),
    [
        ("AdaLo", False), ("AdaLo", True), ("AdamAtan2", False), ("AdamAtan2", True), ("SMMF", False),
        ("SMMF", True), ("NSGDA", False), ("NSGDA", True), ("Adafactor", False), ("Adafactor", True),
    ],
    ids=lambda value: value if isinstance(value, str) else ("compiled" if value else "eager"),
)
@pytest.mark.parametrize("regularizer", ["norm_loss", "cpr"])
def test_regularised_steps_match_the_float64_rule_around_the_plain_optimizer(name, regularizer, compile):
    cls, kwargs = OPTIMIZERS[name]
    ours = _params()
    group = {"params": ours, "regularizer": regularizer, **GROUP[regularizer]}
    optimizer = cls([group], **kwargs, compile=compile)
    plain_params = [p.detach().clone().requires_grad_() for p in ours]
    plain = cls(plain_params, **kwargs)  # the update alone, eager, at the points the rule gives it
    reference = [p.detach().clone() for p in ours]
    lagrange = [0.0] * len(ours)
    kappa = [0.0] * len(ours)
    lr = kwargs["lr"]
    for step in range(1, 7):
        grads = _grads(ours, step)
        if regularizer == "norm_loss":
            before = [p * (1 - 2 * lr * 0.2 * (1 - 1 / (_units_norm64(p) + 1e-8))) for p in reference]
        else:
            before = reference
        with torch.no_grad():
            for plain_param, value in zip(plain_params, before):
                plain_param.copy_(value)
        _step(plain, plain_params, grads)
        reference = [p.detach().clone() for p in plain_params]
        if regularizer == "cpr":
            for i, p in enumerate(reference):
                if p.numel() == 0:
                    continue
                squared = float(p.pow(2).sum())
                if step == 3:
                    kappa[i] = squared
                if step > 3:
                    lagrange[i] = max(0.0, lagrange[i] + 0.5 / p.numel() * (squared - kappa[i]))
                reference[i] = p * (1 - 2 * lagrange[i])
        _step(optimizer, ours, grads)
        for p, expected in zip(ours, reference):
            torch.testing.assert_close(p.detach(), expected, rtol=1e-9, atol=1e-12)
    if regularizer == "cpr":
        for p, lam, bound in zip(ours, lagrange, kappa):
            if p.numel() == 0:
                continue
            state = optimizer.state[p]
            assert state["cpr_lagrange"].dtype == F64 and state["cpr_lagrange"].numel() == 1
            torch.testing.assert_close(float(state["cpr_kappa"]), bound, rtol=1e-10, atol=0.0)
            torch.testing.assert_close(float(state["cpr_lagrange"]), lam, rtol=1e-9, atol=1e-15)
        assert any(lam > 0 for lam in lagrange), "the multiplier never acted: the test would not see it"


def test_norm_loss_matches_ranger21s_term():
    """Ranger21 with and without its norm loss, one step from the same parameters and state: the difference
    is its norm-loss term alone (weight decay off, its lr schedule off), which must equal ours."""
    factor, lr = 0.05, 0.1
    generator = torch.Generator().manual_seed(3)
    shapes = [(), (9,), (6, 4), (3, 2, 3, 3)]  # Ranger21 takes a 3-D tensor's norms over dim 1 only: left out
    params = [torch.randn(shape, generator=generator, dtype=F64) * 2 for shape in shapes]
    grads = [torch.randn(shape, generator=generator, dtype=F64) for shape in shapes]
    ours = [p.clone().requires_grad_() for p in params]
    optimizer = AdamAtan2([{"params": ours, "regularizer": "norm_loss", "norm_loss_factor": factor}], lr=lr,
                          weight_decay=0.0)
    plain_params = [p.clone().requires_grad_() for p in params]
    plain = AdamAtan2(plain_params, lr=lr, weight_decay=0.0)
    for step in range(3):  # several points: each of our regularised iterates in turn
        start = [p.detach().clone() for p in ours]
        runs = []
        for norm_loss_factor in (factor, 0.0):
            copies = [p.clone().requires_grad_() for p in start]
            for c, g in zip(copies, grads):
                c.grad = g.clone()
            ranger = Ranger21(copies, num_iterations=100, lr=lr, weight_decay=0.0, norm_loss_factor=norm_loss_factor,
                              disable_lr_scheduler=True)
            ranger.step()
            runs.append([c.detach() for c in copies])
        theirs = [with_term - without for with_term, without in zip(*runs)]
        # our step's term: the regularised step minus the same optimizer's step from the same point
        with torch.no_grad():
            for plain_param, value in zip(plain_params, start):
                plain_param.copy_(value)
        _step(plain, plain_params, grads)
        _step(optimizer, ours, grads)
        engine_term = [p.detach() - q.detach() for p, q in zip(ours, plain_params)]
        function_term = [norm_loss_(p.clone(), lr * factor) - p for p in start]
        for t, e, f in zip(theirs, engine_term, function_term):
            assert t.abs().max() > 1e-4  # the term is there, well above rounding
            torch.testing.assert_close(e, t, rtol=1e-9, atol=1e-13)
            torch.testing.assert_close(f, t, rtol=1e-9, atol=1e-13)


def test_norm_loss_steers_units_towards_unit_norm():
    """Without gradients of consequence, Norm Loss alone brings every row's norm (and a vector's) to 1."""
    generator = torch.Generator().manual_seed(5)
    weight = (torch.randn(6, 10, generator=generator) * torch.linspace(0.1, 3.0, 6).view(6, 1)).requires_grad_()
    bias = (torch.randn(4, generator=generator) * 3).requires_grad_()
    optimizer = AdamAtan2([{"params": [weight, bias], "regularizer": "norm_loss", "norm_loss_factor": 1.0}],
                          lr=0.1, weight_decay=0.0)
    for _ in range(200):
        weight.grad, bias.grad = torch.zeros_like(weight), torch.zeros_like(bias)
        optimizer.step()
    torch.testing.assert_close(weight.detach().norm(dim=1), torch.ones(6), rtol=1e-4, atol=1e-4)
    torch.testing.assert_close(bias.detach().norm(), torch.tensor(1.0), rtol=1e-4, atol=1e-4)


def test_cpr_kappa_is_taken_at_the_warm_start_step_and_then_fixed():
    weight = torch.ones(3, 4, requires_grad=True)
    optimizer = AdamAtan2([{"params": [weight], "regularizer": "cpr", "cpr_warm_start": 4, "cpr_mu": 1.0}],
                          lr=0.1, weight_decay=0.0)
    history = []
    for _ in range(8):
        weight.grad = -torch.ones_like(weight)  # pushes every entry up: ||p||^2 grows
        optimizer.step()
        state = optimizer.state[weight]
        history.append((float(state["cpr_kappa"]), float(state["cpr_lagrange"]), float(weight.detach().pow(2).sum())))
    kappas = [k for k, _, _ in history]
    assert kappas[:3] == [0.0, 0.0, 0.0]
    # at step 4, kappa is ||p||^2 right after the update (nothing else changes p at that step)
    assert kappas[3] == pytest.approx(history[3][2], rel=1e-6)
    assert len(set(kappas[3:])) == 1, "kappa stays fixed after the warm start"
    assert [lam for _, lam, _ in history[:4]] == [0.0] * 4
    assert history[4][1] > 0, "the tensor grew past kappa at step 5: the multiplier acts from then on"


@pytest.mark.parametrize("dtype", [F64, torch.float32, torch.bfloat16], ids=str)
@pytest.mark.parametrize("regularizer", ["norm_loss", "cpr"])
def test_resume_is_bit_identical_with_weights_only(regularizer, dtype):
    cls, kwargs = OPTIMIZERS["AdamAtan2"]
    group_options = {"regularizer": regularizer, **GROUP[regularizer]}

    def make(params):
        return cls([{"params": params, **group_options}], **kwargs)

    straight = _params(dtype)
    optimizer = make(straight)
    for step in range(1, 9):
        _step(optimizer, straight, _grads(straight, step))

    resumed = _params(dtype)
    first = make(resumed)
    for step in range(1, 5):
        _step(first, resumed, _grads(resumed, step))
    buffer = io.BytesIO()
    torch.save({"optimizer": first.state_dict(), "params": [p.detach() for p in resumed]}, buffer)
    buffer.seek(0)
    checkpoint = torch.load(buffer, weights_only=True)
    resumed = [p.clone().requires_grad_() for p in checkpoint["params"]]
    second = cls(resumed, **kwargs)  # the group's regulariser comes back from the checkpoint
    second.load_state_dict(checkpoint["optimizer"])
    assert second.param_groups[0]["regularizer"] == regularizer
    for step in range(5, 9):
        _step(second, resumed, _grads(resumed, step))
    for a, b in zip(straight, resumed):
        assert torch.equal(a.detach(), b.detach())
    if regularizer == "cpr":
        for a, b in zip(straight, resumed):
            if a.numel():
                for name in ("cpr_lagrange", "cpr_kappa"):
                    saved = second.state[b][name]
                    assert saved.dtype == (F64 if dtype == F64 else torch.float32)
                    assert torch.equal(optimizer.state[a][name], saved)
        assert any(float(second.state[b]["cpr_lagrange"]) > 0 for b in resumed if b.numel())


def test_options_survive_pickling_copy_and_load_state_dict():
    params = _params()
    optimizer = AdaLo([{"params": params[:3], "regularizer": "cpr", "cpr_mu": 0.25, "cpr_warm_start": 7},
                       {"params": params[3:], "regularizer": "norm_loss", "norm_loss_factor": 0.3}])
    expected = [
        {"regularizer": "cpr", "cpr_mu": 0.25, "cpr_warm_start": 7},
        {"regularizer": "norm_loss", "norm_loss_factor": 0.3},
    ]
    for other in (copy.deepcopy(optimizer), pickle.loads(pickle.dumps(optimizer))):
        for group, options in zip(other.param_groups, expected):
            assert {key: group[key] for key in options} == options
    fresh = AdaLo([{"params": _params()[:3]}, {"params": _params()[3:]}])
    fresh.load_state_dict(optimizer.state_dict())
    for group, options in zip(fresh.param_groups, expected):
        assert {key: group[key] for key in options} == options


def test_groups_without_a_regulariser_are_untouched_and_keep_no_regulariser_state():
    params = _params()
    optimizer = AdamAtan2([{"params": params[:4], "regularizer": "cpr"}, {"params": params[4:]}], lr=1e-2)
    plain_params = [p.detach().clone().requires_grad_() for p in params[4:]]
    plain = AdamAtan2(plain_params, lr=1e-2)
    for step in range(1, 4):
        grads = _grads(params, step)
        _step(optimizer, params, grads)
        _step(plain, plain_params, grads[4:])
    for p, q in zip(params[4:], plain_params):
        assert torch.equal(p.detach(), q.detach())
        assert "cpr_lagrange" not in optimizer.state[p]
    assert all("cpr_kappa" in optimizer.state[p] for p in params[:4])


@pytest.mark.parametrize(
    ("group", "message"),
    [
        ({"regularizer": "l2"}, "Invalid regularizer: 'l2'"),
        ({"regularizer": 1}, "Invalid regularizer: 1"),
        ({"regularizer": "norm_loss", "norm_loss_factor": -0.1}, "Invalid norm_loss_factor: -0.1"),
        ({"regularizer": "norm_loss", "norm_loss_factor": float("nan")}, "Invalid norm_loss_factor: nan"),
        ({"regularizer": "cpr", "cpr_mu": 0.0}, "Invalid cpr_mu: 0.0"),
        ({"regularizer": "cpr", "cpr_mu": "1"}, "Invalid cpr_mu: '1'"),
        ({"regularizer": "cpr", "cpr_warm_start": 0}, "Invalid cpr_warm_start: 0"),
        ({"regularizer": "cpr", "cpr_warm_start": 2.5}, "Invalid cpr_warm_start: 2.5"),
        ({"regularizer": "cpr", "cpr_warm_start": True}, "Invalid cpr_warm_start: True"),
        ({"regularizer": "cpr", "cpr_warm_start": 2**25}, "Invalid cpr_warm_start: 33554432"),
    ],
)
def test_invalid_options_are_refused_when_the_group_is_added(group, message):
    with pytest.raises(ValueError, match=rf"{message}.*\[parameter group 1\]"):
        AdamAtan2([{"params": [torch.zeros(2, requires_grad=True)]}, {"params": _params()[:2], **group}])
    optimizer = AdaLo([torch.zeros(2, requires_grad=True)])
    with pytest.raises(ValueError, match=message):
        optimizer.add_param_group({"params": _params()[:2], **group})
    assert len(optimizer.param_groups) == 1


def test_norm_loss_needs_a_number_lr():
    """Adafactor's relative step (lr=None) gives Norm Loss no step size: refused, naming the value."""
    with pytest.raises(ValueError, match=r"Invalid regularizer: 'norm_loss' .* lr is None; .*\[parameter group 0\]"):
        Adafactor([{"params": _params()[:2], "regularizer": "norm_loss"}])
    Adafactor([{"params": _params()[:2], "regularizer": "cpr"}])  # CPR does not read the lr


def test_a_group_changed_after_construction_is_checked_before_the_step():
    param = torch.zeros(3, requires_grad=True)
    optimizer = AdamAtan2([param])
    optimizer.param_groups[0]["regularizer"] = "cpr"
    optimizer.param_groups[0]["cpr_warm_start"] = -1
    param.grad = torch.ones(3)
    with pytest.raises(ValueError, match=r"Invalid cpr_warm_start: -1 .*\[parameter group 0\]"):
        optimizer.step()
    assert torch.equal(param.detach(), torch.zeros(3))


def test_compiled_regulariser_runs_in_the_updates_graph_without_falling_back():
    """The compiled path compiles the regulariser into the update's runner (no eager fallback warning) and the
    runner's key names it, so a group without it runs another graph."""
    params = [torch.randn(8, 8, dtype=torch.float32, requires_grad=True), torch.randn(8, requires_grad=True)]
    optimizer = AdamAtan2([{"params": params, "regularizer": "cpr", "cpr_warm_start": 1}], lr=0.1, compile=True)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        for _ in range(3):
            for p in params:
                p.grad = torch.ones_like(p)
            optimizer.step()
    assert all(float(optimizer.state[p]["cpr_kappa"]) > 0 for p in params)
    from lightning_opt.engine import compiled

    keys = [key for key in compiled._shared_runners if key[0] is AdamAtan2.update]
    assert any(key[-1] == ("cpr",) for key in keys)
    assert not isinstance(shared_runner(next(key for key in keys if key[-1] == ("cpr",))), str)


@pytest.mark.slow
@pytest.mark.parametrize("regularizer", ["norm_loss", "cpr"])
def test_digits_recipe_still_trains_with_a_regulariser(regularizer, tmp_path, one_thread):
    """The digits recipe (configs/digits.yaml's trainer: 60 epochs, seed 0) with AdaLo at its defaults and the
    regulariser on the weights (biases in a group without it) still trains (seed 0: 0.956 with Norm Loss, 0.953
    with CPR)."""
    import lightning.pytorch as pl

    from lightning_opt import LossFeeder
    from lightning_opt.recipes.digits import DigitsClassifier, DigitsDataModule

    class Regularised(DigitsClassifier):
        def configure_optimizers(self):
            weights = [p for p in self.parameters() if p.dim() >= 2]
            others = [p for p in self.parameters() if p.dim() < 2]
            return AdaLo([{"params": weights, "regularizer": regularizer}, {"params": others}])

    pl.seed_everything(0, verbose=False)
    model = Regularised()
    trainer = pl.Trainer(
        callbacks=[LossFeeder()], accelerator="cpu", deterministic=True, max_epochs=60, logger=False,
        enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False, default_root_dir=tmp_path,
    )
    trainer.fit(model, DigitsDataModule(batch_size=32))
    val_acc = float(trainer.callback_metrics["val_acc"])
    print(f"digits AdaLo + {regularizer}: val_acc {val_acc:.4f}")
    optimizer = trainer.optimizers[0]
    if regularizer == "cpr":  # past the warm start (1000 steps of 2700): every weight has its bound
        assert all(float(optimizer.state[p]["cpr_kappa"]) > 0 for p in optimizer.param_groups[0]["params"])
    assert val_acc >= 0.94  # AdaLo alone: 0.953 (seed 0), 0.950-0.969 over seeds 0-4


@pytest.mark.own_process  # a process group of its own, not left behind in the pytest process
def test_a_regularised_group_refuses_sharded_dtensors(tmp_path):
    """Norm Loss and CPR take norms of rows and tensors: an elementwise optimizer that accepts FSDP2's sharded
    DTensors refuses them in a regularised group, where a shard's norm would be wrong."""
    import torch.distributed as dist
    from torch.distributed.device_mesh import init_device_mesh
    from torch.distributed.tensor import Shard, distribute_tensor

    dist.init_process_group("gloo", init_method=f"file://{tmp_path / 'store'}", rank=0, world_size=1)
    try:
        mesh = init_device_mesh("cpu", (1,))
        sharded = torch.nn.Parameter(distribute_tensor(torch.randn(4, 3), mesh, [Shard(0)]))
        for regularizer in ("norm_loss", "cpr"):
            with pytest.raises(ValueError, match=r"Invalid params: AdamAtan2 .* DTensor sharded as"):
                AdamAtan2([{"params": [sharded], "regularizer": regularizer}])
        AdamAtan2([sharded])  # without a regulariser: elementwise, accepted
    finally:
        dist.destroy_process_group()


@pytest.mark.parametrize("regularizer", ["norm_loss", "cpr"])
def test_non_contiguous_parameters_and_parameters_without_a_gradient(regularizer):
    """A transposed parameter (a stack copied alone) is regularised like its contiguous twin, unit for unit; a
    parameter without a gradient is left untouched, as by the update (its CPR state does not advance)."""
    base = torch.randn(6, 4, dtype=F64)
    transposed = base.t().contiguous().t().requires_grad_()  # shape (6, 4), not contiguous
    twin = base.clone().requires_grad_()
    idle = torch.randn(5, 3, dtype=F64, requires_grad=True)
    options = {"regularizer": regularizer, **GROUP[regularizer], "cpr_warm_start": 1}
    optimizer = AdamAtan2([{"params": [transposed, twin, idle], **options}], lr=0.05, weight_decay=0.0)
    before = idle.detach().clone()
    assert not transposed.is_contiguous()
    multipliers = []
    for step in range(1, 5):
        grad = -base.sign() + 0.1 * step
        transposed.grad, twin.grad = grad.clone(), grad.clone()
        optimizer.step()
        torch.testing.assert_close(transposed.detach(), twin.detach(), rtol=1e-12, atol=1e-14)
        if regularizer == "cpr":
            multipliers.append(float(optimizer.state[transposed]["cpr_lagrange"]))
            assert multipliers[-1] == float(optimizer.state[twin]["cpr_lagrange"])
    assert torch.equal(idle.detach(), before) and not optimizer.state[idle]
    assert regularizer != "cpr" or max(multipliers) > 0
