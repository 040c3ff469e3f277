"""On a CUDA GPU: the optimizers, a mixed-precision Trainer and the tail monitor's accelerator path.

Every test here is marked ``cuda``: skipped where CUDA is not available, and run in its own process
(tests/conftest.py), so that the pytest process never initialises CUDA (``ddp_fork`` tests could not fork
after that). The checks reuse the CPU suites' helpers and references:

- every optimizer in the registry: eager == compiled == the float64 CPU reference of tests/references.py,
  at float32 tolerance, over a 0-d, 1-D, 2-D and 4-D (conv) tensor, four tensors of one small shape and
  a 2-D tensor of 131,072 entries, under hyper-parameters that change at every step;
- a real ``Trainer(precision="16-mixed")`` (a CUDA ``GradScaler``) with the ``LossFeeder`` and AdaLo, eager and
  compiled: the exact losses fed, a skipped overflow step, and the digits recipe training;
- ``GradientTailMonitor`` and the tail statistics: the accelerator algorithms on CUDA against the CPU ones.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import lightning.pytorch as pl  # first: it makes torch.cuda.is_available() the fork-safe NVML check
import pytest
import torch
from lightning.pytorch.plugins.precision import MixedPrecision

from lightning_opt import AdaLo, LossFeeder
from lightning_opt.callbacks.tail_monitor import (
    LOG10_ABS_BINS_PER_DECADE,
    GradientTailMonitor,
    _log10_counts,
    _range_histograms,
)
from lightning_opt.recipes.digits import DigitsClassifier, DigitsDataModule
from lightning_opt.registry import REGISTRY
from lightning_opt.tails import tags
from lightning_opt.tails.statistics import batched_tail_statistics, layerwise_tail_statistics

try:  # pytest's default "prepend" import mode puts tests/ itself on sys.path
    from tests.references import REFERENCES
    from tests.test_loss_feeder import INIT_SCALE, Classifier, loss_averages, window_means
    from tests.test_loss_feeder import fit as fit_classifier
    from tests.test_optimizers_common import TOL, compiled_kwargs, loss_at, merged_hyperparameters, vary_hyperparameters
    from tests.test_tail_monitor import KnownGradients, histogram_tensors, read_events
    from tests.test_tail_monitor import fit as fit_monitored
    from tests.test_tail_statistics import RTOL, reference, samples
except ImportError:
    from references import REFERENCES
    from test_loss_feeder import INIT_SCALE, Classifier, loss_averages, window_means
    from test_loss_feeder import fit as fit_classifier
    from test_optimizers_common import TOL, compiled_kwargs, loss_at, merged_hyperparameters, vary_hyperparameters
    from test_tail_monitor import KnownGradients, histogram_tensors, read_events
    from test_tail_monitor import fit as fit_monitored
    from test_tail_statistics import RTOL, reference, samples

DEVICE = torch.device("cuda")
"""Where the tests run (a GPU; the parents' references stay on the CPU)."""

pytestmark = [
    pytest.mark.cuda,
    pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU (torch.cuda.is_available() is False)"),
    pytest.mark.filterwarnings("ignore:.*does not have many workers:UserWarning"),
    pytest.mark.filterwarnings("ignore:.*smaller than the logging interval:UserWarning"),
    pytest.mark.filterwarnings("ignore:.*isinstance\\(treespec, LeafSpec\\)"),  # lightning on torch 2.13
]

F32, F64 = torch.float32, torch.float64

# ============================================================================================ optimizers
SHAPES: list[tuple[int, ...]] = [(), (7,), (5, 3), (8, 3, 3, 3), (16,), (16,), (16,), (16,), (512, 256)]
"""0-d, 1-D, 2-D, a conv weight, four tensors of one small shape, and one of 131,072 entries."""
LARGE = 10_000
"""Tensors at least this large get gradients whose sign is fixed per entry and whose magnitude is at least
0.5 (see :func:`gradients`)."""
STEPS = 4


def lr_factor(step: int) -> float:
    """What a scheduler would do to ``lr``: a different value at every step."""
    return (1.5 if step % 2 else 1.0) / (1.0 + 0.25 * step)


def gradients(step: int) -> list[torch.Tensor]:
    """The float32 CPU gradients of one step: standard normal draws, except for the tensors of at least
    :data:`LARGE` entries, whose entries keep one sign at every step with magnitudes in [0.5, 1.5).

    A decision taken on a sign (a cautious mask ``u g > 0``) flips between float32 and float64 where a
    momentum or a centralised gradient lies within rounding of zero; over 131,072 entries some would, and a
    flipped mask moves that entry by a whole ``lr * u``. Bounded-away, fixed-sign gradients keep every
    momentum entry away from zero there; the small tensors still get random signs, so the masks act.
    """
    largest = max(math.prod(shape) for shape in SHAPES)
    signs = torch.randint(0, 2, (largest,), generator=torch.Generator().manual_seed(7))
    generator = torch.Generator().manual_seed(100 + step)
    grads = []
    for shape in SHAPES:
        size = math.prod(shape)
        if size >= LARGE:
            magnitude = 0.5 + torch.rand(shape, generator=generator)
            grads.append(magnitude * (2.0 * signs[:size].reshape(shape).float() - 1.0))
        else:
            grads.append(torch.randn(shape, generator=generator))
    return grads


@pytest.mark.parametrize("name", list(REGISTRY))
def test_eager_compiled_and_the_float64_cpu_reference_agree(name: str) -> None:
    """The kwargs of the CPU compiled test (every flag that any test keyword set turns on); lr, betas /
    momentum and weight decay change at every step, as schedulers would change them."""
    spec = REGISTRY[name]
    kwargs = compiled_kwargs(name)
    base = merged_hyperparameters(name, kwargs)
    generator = torch.Generator().manual_seed(3)
    values = [torch.randn(shape, generator=generator, dtype=F64) for shape in SHAPES]
    eager_params = [torch.nn.Parameter(v.to(DEVICE, F32)) for v in values]
    compiled_params = [torch.nn.Parameter(v.to(DEVICE, F32)) for v in values]
    eager = spec.cls(eager_params, **kwargs)
    compiled = spec.cls(compiled_params, compile=True, **kwargs)
    ref = REFERENCES[name](values, **kwargs)
    groups = (eager.param_groups[0], compiled.param_groups[0], ref.groups[0])

    for step in range(STEPS):
        for group in groups:
            vary_hyperparameters(group, base, step)
            group["lr"] = base["lr"] * lr_factor(step)
        grads = gradients(step)
        for params in (eager_params, compiled_params):
            for p, g in zip(params, grads):
                p.grad = g.to(DEVICE)
        loss = {"loss": loss_at(step)} if spec.loss_driven else {}
        eager.step(**loss)
        compiled.step(**loss)
        ref.step([grads], loss=loss.get("loss"))

        for i, (e, c, r) in enumerate(zip(eager_params, compiled_params, ref.params[0])):
            where = f"step {step} param {i} {tuple(c.shape)}"
            assert c.device.type == e.device.type == DEVICE.type and c.dtype == e.dtype == F32, where
            torch.testing.assert_close(c, e, **TOL[F32], msg=lambda m, where=where: f"{where} compiled vs eager: {m}")
            torch.testing.assert_close(e.cpu().double(), r, **TOL[F32], msg=lambda m, w=where: f"{w} eager vs ref: {m}")
            torch.testing.assert_close(c.cpu().double(), r, **TOL[F32], msg=lambda m, w=where: f"{w} compiled: {m}")
            assert set(compiled.state[c]) == set(eager.state[e]) == set(ref.state[(0, i)]), where
            assert int(compiled.state[c]["step"]) == int(eager.state[e]["step"]) == step + 1, where
            for key in set(eager.state[e]) - {"step"}:
                buffers = (compiled.state[c][key], eager.state[e][key])
                expected = ref.state[(0, i)][key]  # factored state (SMMF, Adafactor, SM3) has the reference's shape
                assert all(b.device == c.device and b.shape == expected.shape for b in buffers), f"{where} {key}"
                torch.testing.assert_close(*buffers, **TOL[F32], msg=f"{where} state {key}: compiled vs eager")
                got = buffers[1].cpu().double()  # SMMF's sign bytes are uint8
                torch.testing.assert_close(got, expected.double(), **TOL[F32], msg=f"{where} ref {key}")


# ============================================================================================ a mixed-precision Trainer
@pytest.mark.parametrize("compile", [False, True], ids=["eager", "compiled"])
@pytest.mark.parametrize("name", list(REGISTRY))
def test_a_step_never_waits_for_the_gpu(name: str, compile: bool) -> None:
    """No step synchronises the host with the GPU (no ``.item()``, no copy from pageable memory of the
    hyper-parameters or bias corrections): CUDA's sync debug mode turns any such wait into an error. A
    synchronising step would keep the host from queueing kernels ahead, so host work and kernel time would
    add up instead of overlapping."""
    spec = REGISTRY[name]
    params = [torch.nn.Parameter(torch.randn(shape, device=DEVICE)) for shape in SHAPES]
    optimizer = spec.cls(params, compile=compile, **compiled_kwargs(name))
    loss = {"loss": 1.0} if spec.loss_driven else {}
    for step in range(3):
        for p, g in zip(params, gradients(step)):
            p.grad = g.to(DEVICE)
        if step == 0:  # the first step may compile and allocate state
            optimizer.step(**loss)
            continue
        torch.cuda.synchronize()
        torch.cuda.set_sync_debug_mode("error")
        try:
            optimizer.step(**loss)
        finally:
            torch.cuda.set_sync_debug_mode("default")


def test_grad_scaler_on_cuda_feeds_the_unscaled_loss_and_a_skipped_step_changes_nothing() -> None:
    """tests/test_loss_feeder.py's GradScaler test on the GPU: ``precision="16-mixed"`` with a CUDA GradScaler
    whose initial scale, 2**12, leaves the float16 gradients finite except where an inf is put."""
    scaler = torch.amp.GradScaler(DEVICE.type, init_scale=INIT_SCALE, growth_interval=1000)
    module = Classifier(inf_grad_batches=(3,))  # the second window (batches 2 and 3) overflows
    trainer = fit_classifier(
        module,
        accelerator="cuda",
        plugins=[MixedPrecision("16-mixed", DEVICE.type, scaler=scaler)],
        accumulate_grad_batches=2,
        max_steps=3,
    )
    optimizer = trainer.optimizers[0]

    assert trainer.precision_plugin.scaler is scaler
    assert module.layer.weight.device.type == DEVICE.type
    assert len(module.losses) == 6 and all(math.isfinite(loss) for loss in module.losses)
    expected = window_means(module.losses, 2)
    assert optimizer.fed == pytest.approx(expected, rel=1e-6, abs=0.0)  # unscaled: not 4096x larger
    assert scaler.get_scale() == INIT_SCALE / 2  # it saw the inf and skipped that step
    assert optimizer.averages == pytest.approx(loss_averages([expected[0], expected[2]]), rel=1e-6, abs=0.0)
    weights = module.weights_after_batch
    assert not torch.equal(weights[1], weights[0])
    assert torch.equal(weights[3], weights[1])  # the skipped step changed nothing
    assert not torch.equal(weights[5], weights[3])
    (step_size,) = optimizer.last_step_sizes
    assert step_size is not None and step_size > 0


class FastDigits(DigitsClassifier):
    """The digits MLP with an AdaLo whose loss average warms up in about 100 steps instead of 1000 (and ``lr``
    3): 3 epochs then reach about 70% validation accuracy, where the defaults need tens of epochs."""

    def __init__(self, compile: bool) -> None:
        super().__init__()
        self.compile_optimizer = compile

    def configure_optimizers(self) -> AdaLo:
        return AdaLo(self.parameters(), lr=3.0, betas=(0.9, 0.99), compile=self.compile_optimizer)


@pytest.mark.parametrize("compiled", [False, True], ids=["eager", "compiled"])
def test_digits_recipe_trains_under_16_mixed_with_the_loss_feeder_and_adalo(tmp_path: Path, compiled: bool) -> None:
    pl.seed_everything(0, verbose=False)
    model = FastDigits(compile=compiled)
    feeder = LossFeeder()
    trainer = pl.Trainer(
        accelerator="cuda",
        devices=1,
        precision="16-mixed",
        callbacks=[feeder],
        max_epochs=3,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        default_root_dir=tmp_path,
    )
    trainer.fit(model, DigitsDataModule(batch_size=32))

    optimizer = trainer.optimizers[0]
    assert isinstance(optimizer, AdaLo) and isinstance(trainer.precision_plugin.scaler, torch.amp.GradScaler)
    assert all(p.device.type == DEVICE.type and p.dtype == F32 for p in model.parameters())
    assert trainer.global_step == 3 * 45  # 1437 training images in batches of 32
    metrics = {key: float(value) for key, value in trainer.callback_metrics.items()}
    assert all(math.isfinite(value) for value in metrics.values()), metrics
    assert metrics["val_acc"] > 0.5 and metrics["val_loss"] < 2.0, metrics  # untrained: 0.1 and ln(10) = 2.3
    (step_size,) = optimizer.last_step_sizes
    assert step_size is not None and math.isfinite(step_size) and step_size > 0
    # every step taken got the fed loss (the GradScaler skips a few while it lowers its scale from 2**16)
    assert trainer.global_step - 10 <= optimizer.param_groups[0]["loss_count"] <= trainer.global_step
    assert feeder.last_fed_loss is not None and math.isfinite(feeder.last_fed_loss)


# ============================================================================================ tail statistics
@pytest.mark.parametrize("dtype", [F32, torch.bfloat16], ids=["float32", "bfloat16"])
@pytest.mark.parametrize("cap", [None, 2000], ids=["all-entries", "capped"])
def test_layerwise_statistics_on_cuda_equal_the_cpu_path(dtype: torch.dtype, cap: int | None) -> None:
    """The accelerator algorithm (sorted batches, left on the device) against the numpy CPU path, with
    non-finite entries, and uncapped against the independent numpy/scipy reference too."""
    tensors = [torch.from_numpy(x).to(dtype) for x in samples().values()]
    tensors[1][::50] = float("inf")
    tensors[2][::300] = float("nan")

    cpu_rows, cpu_nonfinite = layerwise_tail_statistics(tensors, max_elements=cap)
    rows, nonfinite = layerwise_tail_statistics([t.to(DEVICE) for t in tensors], max_elements=cap)

    assert rows.device.type == DEVICE.type and rows.dtype == F64
    torch.testing.assert_close(rows.cpu(), cpu_rows, rtol=RTOL, atol=1e-12, equal_nan=True)
    assert int(nonfinite) == int(cpu_nonfinite) == 401 + 14
    batched = batched_tail_statistics([t.to(DEVICE) for t in tensors])
    torch.testing.assert_close(batched.cpu(), batched_tail_statistics(tensors), rtol=RTOL, atol=1e-12, equal_nan=True)
    if cap is None:
        for t, row in zip(tensors, rows.cpu()):
            expected = torch.tensor(list(reference(t.double().numpy()).values()), dtype=F64)
            torch.testing.assert_close(row, expected, rtol=RTOL, atol=1e-12, equal_nan=True)


def away_from_log10_edges(t: torch.Tensor) -> torch.Tensor:
    """``t`` without the entries whose ``log10 |x|`` lies within 1e-3 of a bucket edge, where float32
    ``log10`` on the GPU and in numpy may round to different sides (zeros and non-finite entries stay)."""
    position = t.double().abs().log10() * LOG10_ABS_BINS_PER_DECADE
    fraction = position - position.floor()
    return t[~torch.isfinite(position) | ((fraction > 1e-3) & (fraction < 1.0 - 1e-3))]


@pytest.mark.parametrize("finite", [True, False], ids=["finite", "with-nan-and-inf"])
def test_histogram_paths_on_cuda_equal_the_cpu_paths(finite: bool) -> None:
    """tests/test_tail_monitor.py's histogram tensors: the torch paths on CUDA against the CPU's (numpy where
    every entry is finite, torch otherwise)."""
    tensors = [away_from_log10_edges(t) for t in histogram_tensors()]
    if not finite:
        tensors[0][[20, 500]] = torch.tensor([float("nan"), float("-inf")])
    on_device = [t.to(DEVICE) for t in tensors]

    assert torch.equal(_log10_counts(on_device).cpu(), _log10_counts(tensors))
    for cpu, cuda in zip(_range_histograms(tensors, 8), _range_histograms(on_device, 8)):
        assert cpu is not None and cuda is not None
        exact = ("min", "max", "num", "bucket_limits", "bucket_counts")
        assert {key: cpu[key] for key in exact} == {key: cuda[key] for key in exact}
        assert (cpu["sum"], cpu["sum_squares"]) == pytest.approx((cuda["sum"], cuda["sum_squares"]), rel=1e-9)


def histograms(accumulator: Any) -> dict[str, list[Any]]:
    return {tag: [e.histogram_value for e in accumulator.Histograms(tag)] for tag in accumulator.Tags()["histograms"]}


@pytest.mark.parametrize("max_elements", [2**20, 20_000], ids=["all-entries", "capped"])
def test_tail_monitor_logs_the_same_on_cuda_as_on_the_cpu(tmp_path: Path, max_elements: int) -> None:
    """Two real runs of tests/test_tail_monitor.py's KnownGradients (whose gradients are fixed tensors), on
    the CPU and on the GPU: the same statistics (TensorBoard keeps float32), the same range histograms, and
    ``log10 |g|`` histograms that differ at most by entries moved to a neighbouring bucket."""
    runs = {}
    for accelerator in ("cpu", "cuda"):
        monitor = GradientTailMonitor(every_n_steps=2, histogram_every_n_steps=2, max_elements=max_elements)
        trainer = fit_monitored(KnownGradients(), monitor, tmp_path / accelerator, max_steps=4, accelerator=accelerator)
        runs[accelerator] = read_events(trainer)
    cpu, cuda = runs["cpu"], runs["cuda"]

    scalar_tags = cpu.Tags()["scalars"]
    assert sorted(scalar_tags) == sorted(cuda.Tags()["scalars"])
    assert tags.NONFINITE_TAG in scalar_tags and tags.statistic_tag("hill_alpha", "weight") in scalar_tags
    for tag in scalar_tags:
        on_cpu, on_cuda = ([(e.step, e.value) for e in run.Scalars(tag)] for run in (cpu, cuda))
        assert [step for step, _ in on_cpu] == [step for step, _ in on_cuda] == [1, 3], tag
        for (_, a), (_, b) in zip(on_cpu, on_cuda):
            assert (math.isnan(a) and math.isnan(b)) or a == pytest.approx(b, rel=1e-6), (tag, a, b)

    cpu_histograms, cuda_histograms = histograms(cpu), histograms(cuda)
    assert sorted(cpu_histograms) == sorted(cuda_histograms)
    assert tags.log_abs_grad_histogram_tag(tags.WHOLE_MODEL) in cpu_histograms
    for tag, on_cpu in cpu_histograms.items():
        assert len(on_cpu) == len(cuda_histograms[tag]) == 2, tag
        for a, b in zip(on_cpu, cuda_histograms[tag]):
            assert (a.num, list(a.bucket_limit)) == (b.num, list(b.bucket_limit)), tag
            if tag.startswith(tags.LOG_ABS_GRAD_HISTOGRAM_PREFIX):
                # float32 log10 on the GPU and in numpy may round an entry at a bucket edge differently
                moved = torch.tensor(a.bucket).cumsum(0) - torch.tensor(b.bucket).cumsum(0)
                assert float(moved.abs().max()) <= 10, tag
            else:
                assert (a.min, a.max, list(a.bucket)) == (b.min, b.max, list(b.bucket)), tag
                assert (a.sum, a.sum_squares) == pytest.approx((b.sum, b.sum_squares), rel=1e-6), tag
