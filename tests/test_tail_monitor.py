"""``GradientTailMonitor`` in real Lightning runs on CPU, read back from the files it writes.

The LightningModule's loss is ``(weight * target).sum() + ...``, so that every gradient equals a known
tensor exactly (a fixed Student-t sample for the main weight): the logged statistics are compared with
:func:`tail_statistics` of those tensors, and the histograms with direct numpy counts.
"""

from __future__ import annotations

import csv
import math
import warnings
from pathlib import Path
from typing import Any

import lightning.pytorch as pl
import numpy as np
import pytest
import torch
from lightning.pytorch.loggers import CSVLogger, TensorBoardLogger
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from lightning_opt.callbacks.tail_monitor import (
    LOG10_ABS_BUCKET_LIMITS,
    MAX_HISTOGRAM_BINS,
    GradientTailMonitor,
    _log10_counts_numpy,
    _log10_counts_torch,
    _range_histograms_numpy,
    _range_histograms_torch,
)
from lightning_opt.tails import tags
from lightning_opt.tails.statistics import tail_statistics

pytestmark = [
    pytest.mark.filterwarnings("ignore:.*does not have many workers:UserWarning"),
    pytest.mark.filterwarnings("ignore:.*smaller than the logging interval:UserWarning"),
    pytest.mark.filterwarnings("ignore:.*isinstance\\(treespec, LeafSpec\\)"),  # lightning on torch 2.13
]

NU = 3.0
WEIGHT_SIZE = 100_000  # enough for Hill's estimate to land near nu (k = 1000 order statistics)
SCALAR_RTOL = 1e-6  # TensorBoard stores scalars as float32


def student_t(size: int, seed: int) -> torch.Tensor:
    return torch.from_numpy(np.random.default_rng(seed).standard_t(NU, size)).float()


def log10_bucket_centres() -> np.ndarray:
    return np.asarray(LOG10_ABS_BUCKET_LIMITS) - 0.05


class KnownGradients(pl.LightningModule):
    """Parameters whose gradients are fixed tensors (the loss is linear in them).

    ``weight`` gets a Student-t sample (times ``scale``); ``bias`` gets magnitudes at chosen ``log10``
    bucket centres, zeros and out-of-range values; ``frozen`` (no ``requires_grad``) and ``unused`` (not in
    the loss) have no gradient.
    """

    def __init__(self, scale: float = 1.0, dtype: torch.dtype = torch.float32) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.zeros(WEIGHT_SIZE, dtype=dtype))
        self.bias = nn.Parameter(torch.zeros(64, dtype=dtype))
        self.frozen = nn.Parameter(torch.zeros(50, dtype=dtype), requires_grad=False)
        self.unused = nn.Parameter(torch.zeros(30, dtype=dtype))
        centres = log10_bucket_centres()
        magnitudes = np.concatenate([10.0 ** centres[[0, 5, 70, 70, 100, 109]], [1e-12, 1e3], np.zeros(4)])
        bias_target = np.resize(magnitudes * np.array([1.0, -1.0] * 6), 64)
        self.register_buffer("target", (scale * student_t(WEIGHT_SIZE, seed=0)).to(dtype))
        self.register_buffer("bias_target", torch.from_numpy(bias_target).to(dtype))

    def training_step(self, batch: Any, batch_idx: int) -> torch.Tensor:
        return (self.weight * self.target).sum() + (self.bias * self.bias_target).sum()

    def configure_optimizers(self) -> torch.optim.Optimizer:
        return torch.optim.SGD([self.weight, self.bias, self.unused], lr=0.0)

    def train_dataloader(self) -> DataLoader:
        return DataLoader(TensorDataset(torch.zeros(64, 1)), batch_size=1)


def fit(module: pl.LightningModule, monitor: GradientTailMonitor, tmp_path: Path, **options: Any) -> pl.Trainer:
    settings: dict[str, Any] = dict(
        accelerator="cpu",
        devices=1,
        max_steps=6,
        logger=TensorBoardLogger(tmp_path, name="tb", version=0),
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
    )
    settings.update(options)
    trainer = pl.Trainer(callbacks=[monitor], **settings)
    trainer.fit(module)
    return trainer


def read_events(trainer: pl.Trainer) -> EventAccumulator:
    accumulator = EventAccumulator(trainer.logger.log_dir, size_guidance={"histograms": 0, "scalars": 0})
    accumulator.Reload()
    return accumulator


def scalar_steps(accumulator: EventAccumulator, tag: str) -> list[int]:
    return [event.step for event in accumulator.Scalars(tag)]


def histogram_steps(accumulator: EventAccumulator, tag: str) -> list[int]:
    return [event.step for event in accumulator.Histograms(tag)]


def assert_statistics(logged: dict[str, float], expected: dict[str, float]) -> None:
    for statistic in tags.STATISTICS:
        if math.isnan(expected[statistic]):
            assert math.isnan(logged[statistic]), statistic
        else:
            assert logged[statistic] == pytest.approx(expected[statistic], rel=SCALAR_RTOL), statistic


def test_statistics_equal_a_direct_computation_on_the_known_gradients(tmp_path: Path) -> None:
    module = KnownGradients()
    trainer = fit(module, GradientTailMonitor(every_n_steps=3), tmp_path, max_steps=9)
    accumulator = read_events(trainer)
    statistic_tags = {tag for tag in accumulator.Tags()["scalars"] if tag.startswith(tags.STATISTIC_PREFIX)}
    expected_tags = {tags.statistic_tag(s, n) for s in tags.STATISTICS for n in ("weight", "bias", tags.WHOLE_MODEL)}
    assert statistic_tags == expected_tags | {tags.NONFINITE_TAG}  # frozen and unused have no gradient
    assert scalar_steps(accumulator, tags.NONFINITE_TAG) == [2, 5, 8]  # optimizer steps 3, 6, 9

    targets = {"weight": module.target, "bias": module.bias_target}
    targets[tags.WHOLE_MODEL] = torch.cat([module.target, module.bias_target])
    for name, target in targets.items():
        expected = tail_statistics(target)
        for step_index in range(3):
            logged = {s: accumulator.Scalars(tags.statistic_tag(s, name))[step_index].value for s in tags.STATISTICS}
            assert_statistics(logged, expected)
    hill = accumulator.Scalars(tags.statistic_tag("hill_alpha", "weight"))[0].value
    assert abs(hill - NU) < 0.3  # a 1e5-sample Student-t(3): k = 1000, estimate 2.95 here
    assert all(event.value == 0 for event in accumulator.Scalars(tags.NONFINITE_TAG))


def test_steps_count_optimizer_steps_under_gradient_accumulation(tmp_path: Path) -> None:
    module = KnownGradients()
    trainer = fit(
        module,
        GradientTailMonitor(every_n_steps=2, histogram_every_n_steps=3),
        tmp_path,
        max_steps=6,
        accumulate_grad_batches=2,
    )
    assert trainer.global_step == 6  # 12 batches
    accumulator = read_events(trainer)
    assert scalar_steps(accumulator, tags.statistic_tag("kurtosis", "weight")) == [1, 3, 5]
    # Every third optimizer step, and the first logged one (optimizer step 2).
    assert histogram_steps(accumulator, tags.log_abs_grad_histogram_tag(tags.WHOLE_MODEL)) == [1, 2, 5]
    # Two micro-batches of loss / 2 each: the accumulated gradient is the target again.
    logged = {s: accumulator.Scalars(tags.statistic_tag(s, "weight"))[0].value for s in tags.STATISTICS}
    assert_statistics(logged, tail_statistics(module.target))


def test_default_cadence_follows_log_every_n_steps(tmp_path: Path) -> None:
    trainer = fit(KnownGradients(), GradientTailMonitor(), tmp_path, max_steps=41, log_every_n_steps=2)
    accumulator = read_events(trainer)
    assert scalar_steps(accumulator, tags.NONFINITE_TAG) == list(range(1, 41, 2))
    # Histograms: at the first logged step, then 20x the Trainer's cadence unless every_n_steps or
    # histogram_every_n_steps is given.
    assert histogram_steps(accumulator, tags.grad_histogram_tag("weight")) == [1, 39]


def test_a_run_shorter_than_the_histogram_cadence_gets_histograms_of_its_first_logged_step(tmp_path: Path) -> None:
    """The README's snippet with the default cadence (histograms every 20 x 50 steps) in a short run."""
    trainer = fit(KnownGradients(), GradientTailMonitor(exclude="*.bias"), tmp_path, max_steps=120)
    accumulator = read_events(trainer)
    assert scalar_steps(accumulator, tags.NONFINITE_TAG) == [49, 99]
    for tag in (tags.grad_histogram_tag("weight"), tags.log_abs_grad_histogram_tag(tags.WHOLE_MODEL)):
        assert histogram_steps(accumulator, tag) == [49]


class WithMetaParameters(KnownGradients):
    """A module that gains a sub-module on the meta device once the Trainer has placed it (a layer left to be
    materialised later), held by the optimizer; like DDP users who want every parameter to have a gradient,
    it gives every gradient-less parameter a zero gradient (meta, for the meta ones)."""

    def on_fit_start(self) -> None:
        self.ghost = nn.Linear(30, 30, device="meta")
        self.trainer.optimizers[0].add_param_group({"params": list(self.ghost.parameters())})

    def on_after_backward(self) -> None:
        for parameter in self.parameters():
            if parameter.grad is None and parameter.requires_grad:
                parameter.grad = torch.zeros_like(parameter)

    def on_train_end(self) -> None:
        del self.ghost  # the Trainer's teardown moves the module to the CPU, which a meta tensor cannot do


def test_meta_parameters_are_skipped_with_one_warning(tmp_path: Path) -> None:
    module = WithMetaParameters()
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        trainer = fit(module, GradientTailMonitor(every_n_steps=1, include=["weight", "ghost.*"]), tmp_path)
    assert trainer.global_step == 6
    mine = [str(w.message) for w in caught if "GradientTailMonitor" in str(w.message)]
    assert len(mine) == 1
    assert "skips 2 parameter(s) on the meta device" in mine[0] and "ghost.weight, ghost.bias" in mine[0]
    accumulator = read_events(trainer)
    assert scalar_steps(accumulator, tags.NONFINITE_TAG) == list(range(6))
    assert not [tag for tag in accumulator.Tags()["scalars"] if "ghost" in tag]
    logged = {s: accumulator.Scalars(tags.statistic_tag(s, tags.WHOLE_MODEL))[5].value for s in tags.STATISTICS}
    assert_statistics(logged, tail_statistics(module.target))  # the whole model: the weight alone
    assert histogram_steps(accumulator, tags.log_abs_grad_histogram_tag(tags.WHOLE_MODEL)) == list(range(6))


def test_histograms_of_values_gradients_and_log10_magnitudes(tmp_path: Path) -> None:
    module = KnownGradients()
    trainer = fit(module, GradientTailMonitor(every_n_steps=2, histogram_bins=16), tmp_path, max_steps=4)
    accumulator = read_events(trainer)
    names = ["weight", "bias"]
    expected = (
        {tags.param_histogram_tag(n) for n in names}
        | {tags.grad_histogram_tag(n) for n in names}
        | {tags.log_abs_grad_histogram_tag(n) for n in [*names, tags.WHOLE_MODEL]}
    )
    assert set(accumulator.Tags()["histograms"]) == expected
    assert histogram_steps(accumulator, tags.grad_histogram_tag("weight")) == [1, 3]

    # The gradient histogram: 16 equal buckets from the gradient's min to its max.
    target = module.target.double().numpy()
    grad = accumulator.Histograms(tags.grad_histogram_tag("weight"))[0].histogram_value
    counts, edges = np.histogram(target, bins=16, range=(target.min(), target.max()))
    assert (grad.min, grad.max, grad.num) == (target.min(), target.max(), target.size)
    assert list(grad.bucket) == counts.tolist()
    assert list(grad.bucket_limit) == pytest.approx(edges[1:].tolist(), rel=1e-12)
    assert grad.sum == pytest.approx(target.sum(), rel=1e-9, abs=1e-9)
    assert grad.sum_squares == pytest.approx(np.square(target).sum(), rel=1e-9)
    # The parameter is all zeros: one bucket holds everything, in [-1, 1] as torch.histc would put it.
    param = accumulator.Histograms(tags.param_histogram_tag("weight"))[0].histogram_value
    assert (param.min, param.max, param.num, sum(param.bucket)) == (-1.0, 1.0, WEIGHT_SIZE, WEIGHT_SIZE)

    # log10 |g| in fixed buckets; the bias target was built at known bucket centres.
    bias = accumulator.Histograms(tags.log_abs_grad_histogram_tag("bias"))[0].histogram_value
    assert list(bias.bucket_limit) == list(LOG10_ABS_BUCKET_LIMITS)
    assert (bias.min, bias.max) == (-10.0, 1.0)
    magnitudes = np.abs(module.bias_target.double().numpy())
    nonzero = magnitudes[magnitudes > 0]
    buckets = np.clip(np.floor((np.log10(nonzero) + 10.0) * 10.0), 0, 109).astype(int)
    assert list(bias.bucket) == np.bincount(buckets, minlength=110).tolist()
    assert bias.num == nonzero.size < magnitudes.size  # exact zeros are left out
    assert bias.bucket[0] > 0 and bias.bucket[109] > 0  # 1e-12 and 1e3 are clamped into the end buckets

    weight = accumulator.Histograms(tags.log_abs_grad_histogram_tag("weight"))[0].histogram_value
    whole = accumulator.Histograms(tags.log_abs_grad_histogram_tag(tags.WHOLE_MODEL))[0].histogram_value
    assert list(whole.bucket_limit) == list(LOG10_ABS_BUCKET_LIMITS)
    assert list(whole.bucket) == [w + b for w, b in zip(weight.bucket, bias.bucket)]
    log10 = np.log10(np.abs(target))
    direct = np.bincount(np.clip(np.floor((log10 + 10.0) * 10.0), 0, 109).astype(int), minlength=110)
    assert np.abs(np.asarray(weight.bucket) - direct).sum() <= 2  # float32 vs float64 log10 at bucket edges


def test_non_finite_gradients_are_counted_and_left_out(tmp_path: Path) -> None:
    module = KnownGradients()
    clean = module.target.clone()
    module.target[::1000] = float("inf")
    module.target[7] = float("nan")
    module.bias_target[3] = float("-inf")
    trainer = fit(module, GradientTailMonitor(every_n_steps=2), tmp_path, max_steps=4)
    accumulator = read_events(trainer)
    assert [event.value for event in accumulator.Scalars(tags.NONFINITE_TAG)] == [102.0, 102.0]
    logged = {s: accumulator.Scalars(tags.statistic_tag(s, "weight"))[0].value for s in tags.STATISTICS}
    finite = clean[torch.isfinite(module.target)]
    assert_statistics(logged, tail_statistics(finite))
    grad = accumulator.Histograms(tags.grad_histogram_tag("weight"))[0].histogram_value
    assert grad.num == WEIGHT_SIZE - 101
    assert (grad.min, grad.max) == (float(finite.min()), float(finite.max()))
    log10 = accumulator.Histograms(tags.log_abs_grad_histogram_tag("weight"))[0].histogram_value
    assert sum(log10.bucket) == WEIGHT_SIZE - 101


def test_bfloat16_parameters(tmp_path: Path) -> None:
    module = KnownGradients(dtype=torch.bfloat16)
    trainer = fit(module, GradientTailMonitor(every_n_steps=2), tmp_path, max_steps=2)
    assert module.weight.grad is not None and module.weight.grad.dtype == torch.bfloat16
    accumulator = read_events(trainer)
    logged = {s: accumulator.Scalars(tags.statistic_tag(s, "weight"))[0].value for s in tags.STATISTICS}
    assert_statistics(logged, tail_statistics(module.target))  # the bf16 target, read exactly in float64
    assert accumulator.Histograms(tags.grad_histogram_tag("weight"))[0].histogram_value.num == WEIGHT_SIZE


def test_bf16_true_precision(tmp_path: Path) -> None:
    module = KnownGradients()
    trainer = fit(module, GradientTailMonitor(every_n_steps=1), tmp_path, max_steps=1, precision="bf16-true")
    assert module.weight.dtype == torch.bfloat16
    accumulator = read_events(trainer)
    logged = {s: accumulator.Scalars(tags.statistic_tag(s, "weight"))[0].value for s in tags.STATISTICS}
    assert_statistics(logged, tail_statistics(module.target))


def test_without_a_logger_one_warning_and_nothing_computed(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    calls: list[int] = []
    monkeypatch.setattr(GradientTailMonitor, "_log", lambda self, *args: calls.append(1))
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        fit(KnownGradients(), GradientTailMonitor(every_n_steps=1), tmp_path, logger=False, max_steps=3)
    mine = [w for w in caught if "GradientTailMonitor" in str(w.message)]
    assert len(mine) == 1 and "logger" in str(mine[0].message)
    assert calls == []
    assert not list(tmp_path.rglob("events.out.tfevents.*"))


def test_csv_logger_gets_the_statistics(tmp_path: Path) -> None:
    module = KnownGradients()
    trainer = fit(module, GradientTailMonitor(every_n_steps=2), tmp_path, logger=CSVLogger(tmp_path), max_steps=4)
    with open(Path(trainer.logger.log_dir) / "metrics.csv") as handle:
        rows = [row for row in csv.DictReader(handle) if row.get(tags.NONFINITE_TAG)]
    assert [int(row["step"]) for row in rows] == [1, 3]
    assert not any(name.startswith(("param/", "grad/", "grad_log10")) for name in rows[0])
    expected = tail_statistics(torch.cat([module.target, module.bias_target]))
    logged = {s: float(rows[1][tags.statistic_tag(s, tags.WHOLE_MODEL)]) for s in tags.STATISTICS}
    for statistic in tags.STATISTICS:
        assert logged[statistic] == pytest.approx(expected[statistic], rel=1e-9)


def test_every_logger_is_served(tmp_path: Path) -> None:
    loggers = [CSVLogger(tmp_path / "csv"), TensorBoardLogger(tmp_path / "tb", name="tb", version=0)]
    trainer = fit(KnownGradients(), GradientTailMonitor(every_n_steps=2), tmp_path, logger=loggers, max_steps=2)
    with open(Path(loggers[0].log_dir) / "metrics.csv") as handle:
        assert any(row.get(tags.NONFINITE_TAG) for row in csv.DictReader(handle))
    accumulator = EventAccumulator(loggers[1].log_dir, size_guidance={"histograms": 0, "scalars": 0})
    accumulator.Reload()
    assert tags.NONFINITE_TAG in accumulator.Tags()["scalars"]
    assert tags.log_abs_grad_histogram_tag(tags.WHOLE_MODEL) in accumulator.Tags()["histograms"]
    assert trainer.global_step == 2


def test_filter_and_histogram_cap(tmp_path: Path) -> None:
    module = KnownGradients()
    monitor = GradientTailMonitor(
        every_n_steps=2,
        include=["weight", "bias", "unused"],
        exclude="unu*",
        max_histograms=1,
        log_param_histograms=False,
    )
    trainer = fit(module, monitor, tmp_path, max_steps=2)
    accumulator = read_events(trainer)
    assert {tag.split("/", 1)[1] for tag in accumulator.Tags()["scalars"] if tag.startswith("grad_tail_")} == {
        "weight",
        "bias",
        tags.WHOLE_MODEL,
    }
    # One histogrammed parameter (the first in module order), no parameter histograms; the whole-model
    # log10 |g| histogram still counts every watched gradient entry.
    assert set(accumulator.Tags()["histograms"]) == {
        tags.grad_histogram_tag("weight"),
        tags.log_abs_grad_histogram_tag("weight"),
        tags.log_abs_grad_histogram_tag(tags.WHOLE_MODEL),
    }
    whole = accumulator.Histograms(tags.log_abs_grad_histogram_tag(tags.WHOLE_MODEL))[0].histogram_value
    assert whole.num == WEIGHT_SIZE + int((module.bias_target != 0).sum())

    only_bias = GradientTailMonitor(every_n_steps=2, include="b*")
    accumulator = read_events(fit(KnownGradients(), only_bias, tmp_path / "bias", max_steps=2))
    expected = tail_statistics(KnownGradients().bias_target)
    for name in ("bias", tags.WHOLE_MODEL):  # the whole model is the watched parameters only
        logged = {s: accumulator.Scalars(tags.statistic_tag(s, name))[0].value for s in tags.STATISTICS}
        assert_statistics(logged, expected)


def test_no_per_parameter_histograms(tmp_path: Path) -> None:
    module = KnownGradients()
    trainer = fit(module, GradientTailMonitor(every_n_steps=2, max_histograms=0), tmp_path, max_steps=2)
    accumulator = read_events(trainer)
    assert accumulator.Tags()["histograms"] == [tags.log_abs_grad_histogram_tag(tags.WHOLE_MODEL)]
    assert tags.statistic_tag("kurtosis", "bias") in accumulator.Tags()["scalars"]


def test_statistics_off_when_the_trainer_does_not_log(tmp_path: Path) -> None:
    monitor = GradientTailMonitor(histogram_every_n_steps=2)
    with pytest.warns(UserWarning, match="log_every_n_steps=0 .* no statistics"):
        trainer = fit(KnownGradients(), monitor, tmp_path, max_steps=4, log_every_n_steps=0)
    accumulator = read_events(trainer)
    assert not [tag for tag in accumulator.Tags()["scalars"] if tag.startswith(tags.STATISTIC_PREFIX)]
    assert histogram_steps(accumulator, tags.grad_histogram_tag("weight")) == [1, 3]


def test_no_matching_parameter_warns(tmp_path: Path) -> None:
    with pytest.warns(UserWarning, match="watches no parameter"):
        fit(KnownGradients(), GradientTailMonitor(every_n_steps=1, include="nothing*"), tmp_path, max_steps=1)


def histogram_tensors() -> list[torch.Tensor]:
    """Finite float32 tensors for the histogram paths: heavy tails over 14 decades with zeros (900 entries), 40
    entries, a single one, and a constant; also used on CUDA by tests/test_cuda.py."""
    rng = np.random.default_rng(7)
    tensors = [torch.from_numpy(rng.standard_t(2.0, n) * 10.0 ** rng.uniform(-12, 2, n)).float() for n in (900, 40, 1)]
    tensors[0][:10] = 0.0
    tensors.append(torch.full((7,), 0.25))
    return tensors


def test_accelerator_and_cpu_histogram_paths_agree() -> None:
    """The torch paths (used on accelerators, and on the CPU when entries are not finite) and the numpy
    paths give the same histograms."""
    tensors = histogram_tensors()
    sizes = [t.numel() for t in tensors]
    flat = torch.cat(tensors)
    assert torch.equal(_log10_counts_numpy(flat, sizes), _log10_counts_torch(flat, sizes))
    with_bad = flat.clone()
    with_bad[[20, 500]] = torch.tensor([float("nan"), float("-inf")])
    assert torch.equal(_log10_counts_numpy(with_bad, sizes), _log10_counts_torch(with_bad, sizes))
    counted = _log10_counts_numpy(with_bad, sizes).view(len(sizes), 111)[:, :110]  # the 111th: zeros, inf, nan
    assert counted.sum(1).tolist() == [900 - 10 - 2, 40, 1, 7]
    numpy_summaries = _range_histograms_numpy(tensors, 8)
    torch_summaries = _range_histograms_torch(tensors, 8)
    assert numpy_summaries is not None and len(numpy_summaries) == len(torch_summaries)
    for from_numpy, from_torch in zip(numpy_summaries, torch_summaries):
        assert from_numpy is not None and from_torch is not None
        assert from_numpy[:3] == from_torch[:3] and from_numpy[5] == from_torch[5]  # low, high, num, counts
        assert from_numpy[3:5] == pytest.approx(from_torch[3:5], rel=1e-9)  # sum, sum of squares
    assert _range_histograms_numpy([with_bad], 8) is None  # left to the torch path, which drops them


@pytest.mark.parametrize(
    ("argument", "value"),
    [
        ("every_n_steps", 0),
        ("every_n_steps", -3),
        ("every_n_steps", 2.5),
        ("every_n_steps", True),
        ("histogram_every_n_steps", 0),
        ("include", []),
        ("include", 3),
        ("include", ["net.*", ""]),
        ("exclude", 5),
        ("max_histograms", -1),
        ("max_histograms", True),
        ("log_param_histograms", "yes"),
        ("histogram_bins", 0),
        ("histogram_bins", 10**7),
        ("histogram_bins", 2.0),
        ("max_elements", 10),
        ("max_elements", None),
    ],
)
def test_invalid_arguments_name_the_argument(argument: str, value: Any) -> None:
    with pytest.raises(ValueError, match=f"Invalid {argument}: "):
        GradientTailMonitor(**{argument: value})


def test_histogram_bins_are_bounded() -> None:
    """``histogram_bins=10**7`` cost 17 s and 3 GB per histogram step: refused, with the bound."""
    with pytest.raises(ValueError, match=r"^Invalid histogram_bins: 10000000 \(expected an integer from 1 to 1024"):
        GradientTailMonitor(histogram_bins=10**7)
    with pytest.raises(ValueError, match=r"^Invalid histogram_bins: 1025 "):
        GradientTailMonitor(histogram_bins=MAX_HISTOGRAM_BINS + 1)
    assert GradientTailMonitor(histogram_bins=MAX_HISTOGRAM_BINS).histogram_bins == 1024


def test_patterns_from_a_config_file() -> None:
    """LightningCLI builds callbacks with jsonargparse: plain strings and lists must do."""
    from jsonargparse import ArgumentParser

    parser = ArgumentParser()
    parser.add_class_arguments(GradientTailMonitor, "monitor")
    config = parser.parse_string(
        "monitor:\n  include: [net.*.weight, '*.bias']\n  exclude: net.0.*\n  every_n_steps: 5\n"
    )
    monitor = parser.instantiate(config).monitor
    assert monitor.include == ("net.*.weight", "*.bias") and monitor.exclude == ("net.0.*",)
    assert monitor.every_n_steps == 5
