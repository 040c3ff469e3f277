"""SoftClip, GradientCentralization, AdaptiveGradientClipping and GradientNormalization as callbacks on Trainers.

The test module's loss is ``sum(p * target)`` for every parameter, so each gradient is exactly a known
``target``; torch's SGD with ``lr=1`` then moves each parameter by exactly the gradient it was given,
which shows what the callbacks (and the Trainer's own clipping after them) did to it.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import lightning.pytorch as pl
import pytest
import torch
from lightning.pytorch.plugins.precision import MixedPrecision
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from lightning_opt import (
    PNM,
    AdamAtan2,
    AdaptiveGradientClipping,
    GradientCentralization,
    GradientNormalization,
    SoftClip,
)
from lightning_opt.callbacks import GradientTransformCallback
from tests.references import (
    adaptive_clip_reference,
    centralize_reference,
    normalize_reference,
    soft_clip_reference,
    unit_rows,
)

F64 = torch.float64
SHAPES = {"conv.weight": (3, 2, 3, 3), "linear.weight": (4, 6), "linear.bias": (4,), "gain": ()}


class KnownGradients(pl.LightningModule):
    """Parameters of several shapes whose gradients are fixed targets (heavy-tailed, some rows large)."""

    def __init__(self, make_optimizer: Callable[[Any], torch.optim.Optimizer] | None = None, scale: float = 1.0):
        super().__init__()
        generator = torch.Generator().manual_seed(0)
        self.conv = nn.Conv2d(2, 3, 3, bias=False)
        self.linear = nn.Linear(6, 4)
        self.gain = nn.Parameter(torch.tensor(0.7))
        self.targets = {}
        for name, param in self.named_parameters():
            with torch.random.fork_rng():  # the same targets in every instance
                torch.manual_seed(len(self.targets))
                target = torch.distributions.StudentT(2.0).sample(param.shape) if param.dim() else torch.tensor(3.0)
            if param.dim() > 1:  # rows of very different sizes: some units clip, some do not
                target = target * torch.logspace(-2, 0.5, param.shape[0]).reshape(-1, *[1] * (param.dim() - 1))
            self.targets[name] = (target * scale).float()
            with torch.no_grad():
                param.copy_(torch.randn(param.shape, generator=generator) * 0.5)
        self.make_optimizer = make_optimizer or (lambda params: torch.optim.SGD(params, lr=1.0))

    def training_step(self, batch: Any, batch_idx: int) -> torch.Tensor:
        return sum((param * self.targets[name]).sum() for name, param in self.named_parameters())

    def configure_optimizers(self) -> torch.optim.Optimizer:
        return self.make_optimizer(self.parameters())

    def train_dataloader(self) -> DataLoader:
        return DataLoader(TensorDataset(torch.zeros(8, 1)), batch_size=1)


def fit(module: pl.LightningModule, callbacks: Sequence[pl.Callback], max_steps: int = 1, **trainer: Any) -> None:
    pl.Trainer(
        max_steps=max_steps,
        callbacks=list(callbacks),
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        accelerator="cpu",
        devices=1,
        **trainer,
    ).fit(module)


def applied_gradients(
    module: KnownGradients, callbacks: Sequence[pl.Callback], **trainer: Any
) -> dict[str, torch.Tensor]:
    """What SGD(lr=1) applied to each parameter in one optimizer step: the final gradient, in float64."""
    before = {name: p.detach().clone().to(F64) for name, p in module.named_parameters()}
    fit(module, callbacks, **trainer)
    return {name: before[name] - p.detach().to(F64) for name, p in module.named_parameters()}


REFERENCES: dict[str, Callable[[torch.Tensor, torch.Tensor], torch.Tensor]] = {
    "SoftClip": lambda g, p: soft_clip_reference(g, p),
    "GradientCentralization": lambda g, p: centralize_reference(g),
    "AdaptiveGradientClipping": lambda g, p: adaptive_clip_reference(g, p, 0.05),
    "GradientNormalization": lambda g, p: normalize_reference(g),
}


def make_callback(name: str, **kwargs: Any) -> GradientTransformCallback:
    if name == "AdaptiveGradientClipping":
        return AdaptiveGradientClipping(clipping=0.05, **kwargs)
    return {
        "SoftClip": SoftClip,
        "GradientCentralization": GradientCentralization,
        "GradientNormalization": GradientNormalization,
    }[name](**kwargs)


def expected_gradients(module: KnownGradients, initial: dict[str, torch.Tensor], name: str, skip=()) -> dict:
    return {
        n: module.targets[n].to(F64) if n in skip else REFERENCES[name](module.targets[n].to(F64), initial[n])
        for n in SHAPES
    }


def initial_values(module: nn.Module) -> dict[str, torch.Tensor]:
    return {name: p.detach().clone().to(F64) for name, p in module.named_parameters()}


@pytest.mark.parametrize("name", list(REFERENCES))
def test_callback_transforms_every_gradient_as_the_reference_does(name):
    module = KnownGradients()
    initial = initial_values(module)
    applied = applied_gradients(module, [make_callback(name)])
    expected = expected_gradients(module, initial, name)
    changed = 0.0
    for param_name in SHAPES:
        torch.testing.assert_close(applied[param_name], expected[param_name], rtol=1e-5, atol=1e-6)
        changed = max(changed, float((expected[param_name] - module.targets[param_name]).abs().max()))
    assert changed > 0.1, "the test gradients must be changed by the transform, or this test proves nothing"


@pytest.mark.parametrize("name", list(REFERENCES))
def test_include_and_exclude_select_parameters_by_name(name):
    module = KnownGradients()
    initial = initial_values(module)
    applied = applied_gradients(module, [make_callback(name, include=["*.weight", "gain"], exclude="conv.*")])
    expected = expected_gradients(module, initial, name, skip=("conv.weight", "linear.bias"))
    for param_name in SHAPES:
        torch.testing.assert_close(applied[param_name], expected[param_name], rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(applied["conv.weight"], module.targets["conv.weight"].to(F64))


def test_trainer_gradient_clipping_comes_after_the_callbacks():
    """Order: callbacks first, then Trainer(gradient_clip_val) on the transformed gradients."""
    module = KnownGradients()
    initial = initial_values(module)
    applied = applied_gradients(module, [SoftClip()], gradient_clip_val=0.5, gradient_clip_algorithm="norm")
    soft = {n: soft_clip_reference(module.targets[n].to(F64), initial[n]) for n in SHAPES}
    total = torch.linalg.vector_norm(torch.stack([torch.linalg.vector_norm(g) for g in soft.values()]))
    assert total > 0.5, "the Trainer's clipping must be active for this test to mean anything"
    clipped_after = {n: g * (0.5 / (float(total) + 1e-6)) for n, g in soft.items()}
    raw_total = torch.linalg.vector_norm(torch.stack([module.targets[n].to(F64).norm() for n in SHAPES]))
    clipped_first = {
        n: soft_clip_reference(module.targets[n].to(F64) * min(1.0, 0.5 / float(raw_total)), initial[n]) for n in SHAPES
    }
    for n in SHAPES:
        torch.testing.assert_close(applied[n], clipped_after[n], rtol=1e-4, atol=1e-6)
    assert max(float((clipped_after[n] - clipped_first[n]).abs().max()) for n in SHAPES) > 1e-3


def test_callbacks_run_in_the_order_given():
    module = KnownGradients(scale=3.0)
    initial = initial_values(module)
    applied = applied_gradients(module, [GradientCentralization(), AdaptiveGradientClipping(clipping=0.05)])
    for n in SHAPES:
        expected = adaptive_clip_reference(centralize_reference(module.targets[n].to(F64)), initial[n], 0.05)
        torch.testing.assert_close(applied[n], expected, rtol=1e-5, atol=1e-6)


def test_under_a_grad_scaler_the_callback_sees_unscaled_gradients():
    """SoftClip's threshold is absolute (the parameter's RMS): on scaled gradients it would clip far more."""
    module = KnownGradients()
    initial = initial_values(module)
    scaler = torch.amp.GradScaler("cpu", init_scale=2.0**12, growth_interval=1000)
    applied = applied_gradients(module, [SoftClip()], plugins=[MixedPrecision("16-mixed", "cpu", scaler=scaler)])
    expected = expected_gradients(module, initial, "SoftClip")
    for n in SHAPES:
        torch.testing.assert_close(applied[n], expected[n], rtol=1e-5, atol=1e-6)
    on_scaled = soft_clip_reference(module.targets["linear.weight"].to(F64) * 2.0**12, initial["linear.weight"])
    assert (on_scaled / 2.0**12 - expected["linear.weight"]).abs().max() > 1e-2


def test_under_accumulation_the_window_gradient_is_transformed_once():
    module = KnownGradients()
    initial = initial_values(module)
    applied = applied_gradients(module, [SoftClip()], accumulate_grad_batches=4)
    expected = expected_gradients(module, initial, "SoftClip")  # the mean of 4 equal micro-batch gradients
    for n in SHAPES:
        torch.testing.assert_close(applied[n], expected[n], rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize(
    ("callback", "transforms", "optimizer"),
    [
        (lambda: SoftClip(), ("soft_clip",), AdamAtan2),
        (
            lambda: [GradientCentralization(), AdaptiveGradientClipping(clipping=0.05)],
            ("centralize", "adaptive_clip"),
            AdamAtan2,
        ),
        (lambda: GradientNormalization(), ("normalize",), PNM),  # SGD-type: Adam would not see a tensor's scale
    ],
    ids=["soft_clip", "gc+agc", "normalize"],
)
def test_callback_and_optimizer_flag_give_the_same_training(callback, transforms, optimizer):
    """The same transform used as a callback on p.grad and inside the optimizer: same weights after 5 steps."""
    made = callback()
    callbacks = made if isinstance(made, list) else [made]
    by_callback = KnownGradients(lambda params: optimizer(params, lr=0.05))
    by_flag = KnownGradients(lambda params: optimizer(params, lr=0.05, grad_transforms=transforms, agc_clipping=0.05))
    plain = KnownGradients(lambda params: optimizer(params, lr=0.05))
    fit(by_callback, callbacks, max_steps=5)
    fit(by_flag, [], max_steps=5)
    fit(plain, [], max_steps=5)
    difference_to_plain = 0.0
    for (name, a), b, c in zip(by_callback.named_parameters(), by_flag.parameters(), plain.parameters()):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6, msg=name)
        difference_to_plain = max(difference_to_plain, float((a - c).detach().abs().max()))
    assert difference_to_plain > 1e-3


def test_the_optimizer_flag_leaves_p_grad_alone():
    param = nn.Parameter(torch.randn(4, 3))
    grad = torch.randn(4, 3) * 10
    param.grad = grad.clone()
    AdamAtan2([param], grad_transforms=["centralize", "soft_clip"]).step()
    assert torch.equal(param.grad, grad)


def test_a_filter_that_selects_nothing_warns():
    with pytest.warns(UserWarning, match="selects no parameter"):
        fit(KnownGradients(), [SoftClip(include="encoder.*")])


def test_sparse_gradients_raise_a_clear_error():
    class SparseModule(KnownGradients):
        def __init__(self):
            super().__init__()
            self.embedding = nn.Embedding(5, 3, sparse=True)

        def training_step(self, batch, batch_idx):
            return self.embedding(torch.tensor([1, 2])).sum()

    with pytest.raises(RuntimeError, match="sparse gradient of 'embedding.weight'"):
        fit(SparseModule(), [SoftClip()])


@pytest.mark.parametrize(
    ("make", "argument"),
    [
        (lambda: SoftClip(eps=0.0), "eps"),
        (lambda: AdaptiveGradientClipping(clipping=-1.0), "clipping"),
        (lambda: AdaptiveGradientClipping(eps=float("nan")), "eps"),
        (lambda: GradientCentralization(include=[3]), "include"),
        (lambda: SoftClip(exclude=""), "exclude"),
        (lambda: GradientNormalization(eps=0.0), "eps"),
        (lambda: GradientNormalization(eps=3.5e38), "eps"),
    ],
)
def test_invalid_arguments_are_named(make, argument):
    with pytest.raises(ValueError, match=rf"Invalid {argument}: "):
        make()


def test_clipping_callbacks_log_the_share_of_units_they_clipped():
    module = KnownGradients()
    initial = initial_values(module)
    rows = {n: (unit_rows(module.targets[n].to(F64)), unit_rows(initial[n])) for n in SHAPES}
    soft = sum(int((g.pow(2).mean(1) > p.pow(2).mean(1)).sum()) for g, p in rows.values())
    agc = sum(int((g.norm(dim=1) > 0.05 * p.norm(dim=1).clamp_min(1e-3)).sum()) for g, p in rows.values())
    units = sum(g.shape[0] for g, _ in rows.values())
    assert 0 < soft < units and 0 < agc < units, "some units must clip and some not"
    trainer = pl.Trainer(
        max_steps=1, logger=False, enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False,
        callbacks=[SoftClip(), AdaptiveGradientClipping(clipping=0.05), GradientCentralization()], accelerator="cpu",
    )
    trainer.fit(module)
    metrics = trainer.callback_metrics
    assert float(metrics["SoftClip/clipped_units"]) == pytest.approx(soft / units)
    # AGC acts after SoftClip here: count on the soft-clipped gradients.
    after_soft = {n: unit_rows(soft_clip_reference(module.targets[n].to(F64), initial[n])) for n in SHAPES}
    agc_after = sum(
        int((after_soft[n].norm(dim=1) > 0.05 * rows[n][1].norm(dim=1).clamp_min(1e-3)).sum()) for n in SHAPES
    )
    assert float(metrics["AdaptiveGradientClipping/clipped_units"]) == pytest.approx(agc_after / units)
    assert not any(key.startswith("GradientCentralization") for key in metrics)


def test_two_instances_of_one_callback_log_and_checkpoint_apart(tmp_path):
    """SoftClip(include="conv.*") and SoftClip(include="linear.*") in one Trainer: two logged keys with each
    instance's own share, two state_keys, and a checkpoint round trip that restores both run totals."""
    module = KnownGradients()
    initial = initial_values(module)
    rows = {n: (unit_rows(module.targets[n].to(F64)), unit_rows(initial[n])) for n in SHAPES}
    clipped = {n: int((g.pow(2).mean(1) > p.pow(2).mean(1)).sum()) for n, (g, p) in rows.items()}
    units = {n: g.shape[0] for n, (g, _) in rows.items()}
    groups = {"conv.*": ["conv.weight"], "linear.*": ["linear.weight", "linear.bias"]}

    def callbacks():
        return [SoftClip(include=pattern) for pattern in groups]

    first = callbacks()
    assert len({c.state_key for c in first}) == 2
    assert [c.name for c in first] == [f"SoftClip[include={p}]" for p in groups]
    trainer = pl.Trainer(
        max_steps=2, logger=False, enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False,
        callbacks=first, accelerator="cpu", devices=1,
    )
    trainer.fit(module)
    for callback, names in zip(first, groups.values()):
        assert f"{callback.name}/clipped_units" in trainer.callback_metrics
        assert callback.units_seen == 2 * sum(units[n] for n in names)
    # The first step's shares, per instance, from the known gradients and the initial weights.
    assert first[0].units_clipped >= clipped["conv.weight"] > 0
    path = tmp_path / "two.ckpt"
    trainer.save_checkpoint(path)
    saved = torch.load(path, weights_only=False)["callbacks"]
    assert {c.state_key for c in first} <= set(saved)

    resumed = callbacks()
    trainer = pl.Trainer(
        max_steps=3, logger=False, enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False,
        callbacks=resumed, accelerator="cpu", devices=1,
    )
    trainer.fit(module, ckpt_path=path)
    for before, after, names in zip(first, resumed, groups.values()):
        assert after.units_seen == before.units_seen + sum(units[n] for n in names)  # restored, then one more step
        assert after.units_clipped >= before.units_clipped
        assert after.clipped_fraction == after.units_clipped / after.units_seen


def test_first_step_shares_are_logged_per_instance():
    module = KnownGradients()
    initial = initial_values(module)
    rows = {n: (unit_rows(module.targets[n].to(F64)), unit_rows(initial[n])) for n in SHAPES}
    trainer = pl.Trainer(
        max_steps=1, logger=False, enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False,
        callbacks=[SoftClip(include="conv.*"), SoftClip(include="linear.*", name="linear-clip")], accelerator="cpu",
    )
    trainer.fit(module)
    expected = {"SoftClip[include=conv.*]": ["conv.weight"], "linear-clip": ["linear.weight", "linear.bias"]}
    for key, names in expected.items():
        soft = sum(int((rows[n][0].pow(2).mean(1) > rows[n][1].pow(2).mean(1)).sum()) for n in names)
        units = sum(rows[n][0].shape[0] for n in names)
        assert float(trainer.callback_metrics[f"{key}/clipped_units"]) == pytest.approx(soft / units)


def test_two_instances_with_the_same_name_are_refused():
    with pytest.raises(RuntimeError, match="state_key` must be unique"):
        pl.Trainer(callbacks=[SoftClip(include="conv.*"), SoftClip(include="conv.*", eps=1e-6)], accelerator="cpu")
    assert SoftClip(exclude="*.bias").name == "SoftClip[exclude=*.bias]"
    assert AdaptiveGradientClipping(include=["a.*", "b.*"], exclude="*.bias").name == (
        "AdaptiveGradientClipping[include=a.*|b.*;exclude=*.bias]"
    )
    with pytest.raises(ValueError, match=r"^Invalid name: ''"):
        SoftClip(name="")


@pytest.mark.parametrize(
    ("make", "argument"),
    [
        (lambda: SoftClip(eps=3.5e38), "eps"),
        (lambda: AdaptiveGradientClipping(eps=3.5e38), "eps"),
        (lambda: AdaptiveGradientClipping(clipping=1e39), "clipping"),
    ],
)
def test_values_beyond_float32_are_refused_with_the_bound(make, argument):
    with pytest.raises(ValueError, match=rf"^Invalid {argument}: .*\(expected <= 3.4028234663852886e\+38\)"):
        make()
