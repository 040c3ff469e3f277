"""``lightning-opt study NAME``: the statistics, the cells' keys, the results file and resuming, the tables and
figures, the argument errors, and real runs of tiny studies on the digits recipe (each cell a real
``lightning-opt fit`` in its own process)."""

from __future__ import annotations

import json
import math
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import torch

from lightning_opt.cli import main
from lightning_opt.recipes import find_config
from lightning_opt.studies import STUDIES, accumulation, norm, tails
from lightning_opt.studies.base import StudyOptions, diverged, final_metric
from lightning_opt.studies.cells import Cell, FitBase, ResultStore, Setting, cell_key
from lightning_opt.studies.command import StudyArgumentError, build_options, build_parser, plan_cells, write_report
from lightning_opt.studies.knobs import StepKnob
from lightning_opt.studies.runner import run_cells
from lightning_opt.studies.stats import first_reaching, good_band, summarize, within_band

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
DIGITS = find_config("digits")
TINY_FIT = ["--trainer.max_epochs", "2", "--trainer.limit_train_batches", "4", "--trainer.limit_val_batches", "2"]
"""``fit`` options that make a digits cell a few seconds (2 epochs of 4 batches, 2 validation batches)."""


# ------------------------------------------------------------------------------------------------ statistics
def test_summary_of_three_seeds_gives_mean_sample_std_and_range() -> None:
    summary = summarize([0.90, 0.94, 0.95])
    assert summary.n == 3 and summary.nonfinite == 0
    assert summary.mean == pytest.approx(0.93)
    assert summary.std == pytest.approx(math.sqrt(((0.03) ** 2 + 0.01**2 + 0.02**2) / 2))
    assert (summary.low, summary.high) == (0.90, 0.95)
    assert summary.format() == "0.93 ± 0.026 (0.9–0.95)"


def test_summary_leaves_out_and_counts_non_finite_and_missing_values() -> None:
    summary = summarize([1.0, float("nan"), None, 3.0, float("inf")])
    assert (summary.n, summary.nonfinite, summary.mean) == (2, 3, 2.0)
    assert summary.format().endswith("+3 non-finite")
    assert summarize([float("nan")]).format() == "n/a +1 non-finite"


def test_good_band_counts_the_points_within_the_band_and_its_width_in_decades() -> None:
    means = {1e-4: 0.50, 1e-3: 0.962, 3e-3: 0.97, 1e-2: 0.968, 1e-1: float("nan")}
    band = good_band(means, {value: value / 1e-3 for value in means}, best=0.97, band=0.01, mode="max")
    assert band.good == (1e-3, 3e-3, 1e-2) and band.points == 5
    assert band.decades == pytest.approx(1.0)
    # an inverse knob (AdaLo's kappa: a larger kappa, a smaller step): the width is the same in step terms
    kappas = {30.0: 0.5, 3.0: 0.965, 0.3: 0.97}
    inverse = good_band(kappas, {k: 3.0 / k for k in kappas}, best=0.97, band=0.01, mode="max")
    assert inverse.good == (3.0, 0.3) and inverse.decades == pytest.approx(1.0)
    assert math.isnan(good_band({1.0: 0.1}, {1.0: 1.0}, best=0.97, band=0.01, mode="max").decades)
    # smaller is better: within 5 % above the best loss
    assert within_band(1.04, 1.0, 0.05, "min") and not within_band(1.06, 1.0, 0.05, "min")


def test_first_reaching_gives_the_first_validation_at_the_target() -> None:
    history = [
        {"seconds": 1.5, "step": 45, "metrics": {"val_loss": 0.9}},
        {"seconds": 3.0, "step": 90, "metrics": {"val_loss": "nan"}},
        {"seconds": 4.5, "step": 135, "metrics": {"val_loss": 0.4}},
        {"seconds": 6.0, "step": 180, "metrics": {"val_loss": 0.3}},
    ]
    assert first_reaching(history, "val_loss", 0.5, "min") == (4.5, 135)
    assert first_reaching(history, "val_loss", 0.1, "min") is None
    assert first_reaching(history, "val_acc", 0.5, "max") is None


# ------------------------------------------------------------------------------------------------ cells and store
def _cell(seed: int = 0, lr: float = 0.01) -> Cell:
    return Cell("AdamW", "torch.optim.AdamW", Setting({"lr": lr}, ("--optimizer.lr", repr(lr))), seed)


def test_cell_keys_are_stable_and_change_with_what_defines_the_run(tmp_path: Path) -> None:
    config = tmp_path / "a.yaml"
    config.write_text("trainer:\n  max_epochs: 3\n")
    base = FitBase.from_files([config])
    key = cell_key(_cell(), base)
    assert key == cell_key(_cell(), FitBase.from_files([config]))  # recomputed: the same
    # a key is a fixed digest (no process-dependent hash): pinned, so that a change of the scheme is noticed
    pinned = cell_key(_cell(), FitBase(("x.yaml",), ("0" * 64,)))
    assert pinned == cell_key(_cell(), FitBase(("elsewhere/x.yaml",), ("0" * 64,)))
    assert len(pinned) == 16 and int(pinned, 16) >= 0
    others = {
        cell_key(_cell(seed=1), base),
        cell_key(_cell(lr=0.1), base),
        cell_key(_cell(), FitBase.from_files([config], accelerator="gpu")),
        cell_key(_cell(), FitBase.from_files([config], fit_args=["--trainer.max_epochs", "2"])),
    }
    config.write_text("trainer:\n  max_epochs: 4\n")
    others.add(cell_key(_cell(), FitBase.from_files([config])))
    assert key not in others and len(others) == 5


def test_result_store_rewrites_its_file_and_refuses_a_foreign_one(tmp_path: Path) -> None:
    path = tmp_path / "out" / "cells.json"
    store = ResultStore(path)
    store.put("a", {"status": "ok", "value": 1})
    store.put("b", {"status": "failed"})
    data = json.loads(path.read_text())
    assert data["format"] == 1 and set(data["cells"]) == {"a", "b"}
    assert ResultStore(path).get("a") == {"status": "ok", "value": 1}
    assert not (tmp_path / "out" / "cells.json.tmp").exists()
    path.write_text("[1, 2]")
    with pytest.raises(ValueError, match="is not a study results file"):
        ResultStore(path)
    path.write_text("{not json")
    with pytest.raises(ValueError, match="is not a study results file"):
        ResultStore(path)


def _fake_record(final: float, seconds: float = 1.0) -> dict[str, Any]:
    """A record as a real cell's probe writes it (two validations)."""
    validations = [
        {"seconds": seconds / 2, "step": 45, "epoch": 0, "metrics": {"val_acc": final / 2, "val_loss": 1.0}},
        {"seconds": seconds, "step": 90, "epoch": 1, "metrics": {"val_acc": final, "val_loss": 0.5}},
    ]
    probe = {
        "validations": validations, "nonfinite_losses": 0, "state_bytes": 800, "parameters": 100,
        "peak_rss_bytes": 300 * 2**20, "cuda_peak_bytes": None, "steps": 90,
    }  # fmt: skip
    return {"status": "ok", "returncode": 0, "probe": probe}


def test_run_cells_saves_each_result_and_skips_the_saved_ones_when_rerun(tmp_path: Path) -> None:
    cells = [_cell(seed) for seed in range(3)]
    base = FitBase(("c.yaml",), ("0" * 64,))
    store = ResultStore(tmp_path / "cells.json")
    ran: list[int] = []

    def execute(cell: Cell, run_dir: Path) -> dict[str, Any]:
        ran.append(cell.seed)
        if cell.seed == 1 and len(ran) == 2:
            raise KeyboardInterrupt  # interrupted while the second cell runs
        return _fake_record(0.9 + cell.seed / 100)

    with pytest.raises(KeyboardInterrupt):
        run_cells("lr", cells, base, store, tmp_path / "runs", execute, lambda r: "ok")
    assert len(ResultStore(tmp_path / "cells.json").records) == 1  # the first cell was saved before it
    progress = tmp_path / "progress.txt"
    with progress.open("w") as stream:
        results = run_cells(
            "lr", cells, base, ResultStore(tmp_path / "cells.json"), tmp_path / "runs", execute, lambda r: "ok",
            stream=stream,
        )  # fmt: skip
    assert ran == [0, 1, 1, 2]
    assert [record["seed"] for _, record in results] == [0, 1, 2]
    assert [final_metric(record, "val_acc") for _, record in results] == pytest.approx([0.9, 0.91, 0.92])
    text = progress.read_text()
    assert "lr: 3 cells, 1 already done" in text and "2 to run" in text and "[3/3] AdamW lr=0.01 seed 2" in text
    ran.clear()
    run_cells("lr", cells, base, ResultStore(tmp_path / "cells.json"), tmp_path / "runs", execute, str)
    assert ran == []  # everything saved: nothing runs


def test_failed_cells_are_kept_and_rerun_only_when_asked(tmp_path: Path) -> None:
    cells = [_cell(0)]
    base = FitBase(("c.yaml",), ("0" * 64,))
    outcomes = iter([{"status": "failed", "returncode": 1, "log_tail": ["boom"]}, _fake_record(0.9)])

    def execute(cell: Cell, run_dir: Path) -> dict[str, Any]:
        return next(outcomes)

    store = ResultStore(tmp_path / "cells.json")
    (first,) = run_cells("lr", cells, base, store, tmp_path, execute, str, stream=sys.stderr)
    assert first[1]["status"] == "failed" and math.isnan(final_metric(first[1], "val_acc"))
    (again,) = run_cells("lr", cells, base, store, tmp_path, execute, str, stream=sys.stderr)
    assert again[1]["status"] == "failed"
    (retried,) = run_cells("lr", cells, base, store, tmp_path, execute, str, retry_failed=True, stream=sys.stderr)
    assert retried[1]["status"] == "ok"


# ------------------------------------------------------------------------------------------------ tables, figures
def _options(study: str, optimizers: tuple[str, ...] = ("AdamW", "AdaLo"), **overrides: Any) -> StudyOptions:
    args = build_parser(list(STUDIES)).parse_args([study, "--optimizers", *optimizers, "--points", "3"])
    options = build_options(STUDIES[study], args, [DIGITS])
    for name, value in overrides.items():
        setattr(options, name, value)
    return options


def _synthetic_results(study: str, options: StudyOptions) -> list[tuple[Cell, dict[str, Any]]]:
    """Records for every cell of a study: final val_acc from the cell's position; one failed, one diverged."""
    results = []
    for index, cell in enumerate(plan_cells(STUDIES[study], options)):
        record = _fake_record(0.80 + (index % 7) / 50, seconds=1.0 + index % 3)
        if index == 1:
            record = {"status": "failed", "returncode": 1, "probe": None, "log_tail": ["Traceback"]}
        if index == 2:
            record["probe"]["nonfinite_losses"] = 3
        if study == "tails" and record["status"] == "ok":
            record["collected"] = {
                "statistics": {name: [[4, 1.0 + index], [9, None], [14, 2.0 + index]] for name in tails.STATISTICS}
            }
            record["probe"]["final_metrics"] = {"SoftClip/clipped_units": 0.125}
        results.append((cell, record))
    return results


@pytest.mark.parametrize("study", ["lr", "warmup", "norm", "accumulation", "tails", "time", "memory"])
def test_every_study_writes_its_markdown_table_and_png(study: str, tmp_path: Path) -> None:
    options = _options(study)
    results = _synthetic_results(study, options)
    table, figure = write_report(STUDIES[study], options, results, tmp_path / "out", "digits")
    assert table == tmp_path / "out" / "digits.md" and figure == tmp_path / "out" / "digits.png"
    assert figure.read_bytes()[:8] == PNG_MAGIC and figure.stat().st_size > 5000
    text = table.read_text()
    assert text.startswith(f"# Study `{study}` on `digits`") and "![" in text
    rows = [line for line in text.splitlines() if line.startswith("| `AdamW`") or line.startswith("| `AdaLo`")]
    assert rows, text
    assert "± " in text  # three seeds: mean ± std


def test_lr_table_reports_the_good_band_of_each_optimizer(tmp_path: Path) -> None:
    options = _options("lr", seeds=(0, 1, 2))
    finals = {3.16e-05: 0.5, 0.001: 0.965, 0.0316: 0.97}  # AdamW's 3-point grid over 3 decades
    results = []
    for cell in plan_cells(STUDIES["lr"], options):
        value = cell.setting.values[options.knobs[cell.optimizer].name]
        final = finals.get(value, 0.2) + cell.seed / 1000  # AdaLo: every kappa bad
        results.append((cell, _fake_record(final)))
    text = STUDIES["lr"].table(options, results)
    adamw = next(line for line in text.splitlines() if line.startswith("| `AdamW` | lr |"))
    adalo = next(line for line in text.splitlines() if line.startswith("| `AdaLo` | kappa"))
    assert "| 2/3 | lr 0.001–0.0316 | 1.5 | 0 |" in adamw
    assert "| 0/3 | none | n/a | 0 |" in adalo


def test_a_diverged_run_is_one_with_a_non_finite_loss_or_a_final_metric_past_the_threshold() -> None:
    options = _options("warmup")
    assert options.diverged == 0.5  # the digits default
    record = _fake_record(0.9)
    assert not diverged(record, options)
    record["probe"]["nonfinite_losses"] = 1
    assert diverged(record, options)
    assert diverged(_fake_record(0.3), options)


# ------------------------------------------------------------------------------------------------ argument errors
@pytest.mark.parametrize(
    ("argv", "key"),
    [
        (["nosuch"], "NAME"),
        (["lr", "--band", "-0.5"], "--band"),
        (["lr", "--points", "1"], "--points"),
        (["lr", "--points", "many"], "--points"),
        (["lr", "--decades", "0"], "--decades"),
        (["lr", "--seeds", "0", "0"], "--seeds"),
        (["lr", "--optimizers", "NoSuchOptimizer"], "--optimizers"),
        (["lr", "--optimizers", "AdamW", "--knob", "AdamW=lr"], "--knob"),
        (["lr", "--optimizers", "AdamW", "--knob", "SGD=lr:0.1"], "--knob"),
        (["lr", "--optimizer.lr", "0.1"], "--optimizer.lr"),
        (["lr", "--optimizer", "SGD"], "--optimizer"),
        (["lr", "--trainer.callbacks", "[]"], "--trainer.callbacks"),
        (["lr", "--trainer.default_root_dir", "x"], "--trainer.default_root_dir"),
        (["lr", "--", "--seed_everything", "3"], "--seed_everything"),
        (["lr", "--config", "no_such_config"], "no_such_config"),
        (["lr", "--metric", "val_loss"], "--metric"),
        (["time", "--metric", "val_loss", "--mode", "min"], "--target"),
        (["warmup", "--scales", "1", "-1"], "--scales"),
        (["warmup", "--warmup-start", "2"], "--warmup-start"),
        (["lr", "--frobnicate"], "--frobnicate"),
        (["norm", "--norms", "none", "none"], "--norms"),
        (["norm", "--norms", "none"], "--norms"),
        (["norm", "--norm-arg", "norm"], "--norm-arg"),
        (["norm", "--model.norm", "none"], "--model.norm"),
        (["accumulation", "--accumulate", "1"], "--accumulate"),
        (["accumulation", "--batch", "0"], "--batch"),
        (["accumulation", "--trainer.accumulate_grad_batches", "2"], "--trainer.accumulate_grad_batches"),
        (["accumulation", "--data.batch_size=8"], "--data.batch_size"),
        (["tails", "--clips", "none", "gradnorm"], "--clips"),
        (["tails", "--tail-every", "0"], "--tail-every"),
    ],
)
def test_a_bad_argument_is_one_line_naming_it_and_exit_status_2(
    argv: list[str], key: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    with pytest.raises(SystemExit) as exit_info:
        main(["study", *argv, "--out", str(tmp_path / "out"), "--runs-dir", str(tmp_path / "runs")])
    assert exit_info.value.code == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("lightning-opt study: error: "), err
    assert key in err, err
    assert not (tmp_path / "out").exists()


def test_the_installed_command_exits_with_status_2_on_a_bad_study(tmp_path: Path) -> None:
    result = subprocess.run(
        [sys.executable, "-m", "lightning_opt.cli", "study", "lr", "--points", "0"],
        cwd=tmp_path, capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert result.returncode == 2
    expected = "lightning-opt study: error: Invalid --points: 0 (expected an integer >= 2)"
    assert result.stderr.strip().splitlines() == [expected]


def test_dry_run_lists_the_cells_and_the_first_command_and_runs_nothing(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "out"
    argv = ["study", "lr", "--optimizers", "AdamW", "AdaLo", "--points", "3", "--seeds", "0", "1", "2", "--dry-run"]
    assert main([*argv, "--out", str(out), "--runs-dir", str(tmp_path / "runs")]) == 0
    text = capsys.readouterr().out
    assert "lr: 18 cells, 0 already done, 18 to run" in text
    assert "AdaLo kappa=94.9 seed 2" in text and "AdamW lr=0.0316 seed 0" in text
    assert "--optimizer torch.optim.AdamW --optimizer.lr 3.16e-05 --seed_everything 0" in text
    assert not out.exists()


# ------------------------------------------------------------------------------------------------ real runs
def _study(name: str, tmp_path: Path, *extra: str) -> list[str]:
    return [
        "study", name, "--out", str(tmp_path / "out"), "--runs-dir", str(tmp_path / "runs"), *extra, *TINY_FIT,
    ]  # fmt: skip


def test_memory_study_of_one_real_cell_records_state_bytes_and_peak_memory(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    argv = _study("memory", tmp_path, "--optimizers", "AdamW", "--seeds", "0")
    assert main(argv) == 0
    out = capsys.readouterr().out
    assert "memory: 1 cells, 1 to run" in out and "[1/1] AdamW default seed 0: val_acc" in out
    cells = json.loads((tmp_path / "out" / "digits.cells.json").read_text())["cells"]
    (record,) = cells.values()
    assert record["status"] == "ok", record.get("log_tail")
    probe = record["probe"]
    parameters = 64 * 128 + 128 + 128 * 64 + 64 + 64 * 10 + 10
    assert probe["parameters"] == parameters and probe["steps"] == 8 and len(probe["validations"]) == 2
    # AdamW: exp_avg and exp_avg_sq in float32 per parameter, plus a 0-d step per tensor
    assert probe["state_bytes"] == 8 * parameters + 6 * 4
    assert probe["peak_rss_bytes"] > 50 * 2**20
    assert (tmp_path / "out" / "digits.png").read_bytes()[:8] == PNG_MAGIC
    assert "| `AdamW` | 8 |" in (tmp_path / "out" / "digits.md").read_text()
    assert main(argv) == 0  # rerun: nothing to run
    assert "memory: 1 cells, 1 already done" in capsys.readouterr().out


@pytest.mark.slow
def test_lr_study_end_to_end_on_digits_then_resumes(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    argv = _study("lr", tmp_path, "--optimizers", "AdamW", "AdaLo", "--points", "2", "--decades", "1", "--seeds", "0")
    assert main(argv) == 0
    progress = capsys.readouterr().out
    assert "lr: 4 cells, 4 to run" in progress and "[4/4] AdaLo kappa=0.949 seed 0" in progress
    out = tmp_path / "out"
    assert sorted(path.name for path in out.iterdir()) == ["digits.cells.json", "digits.md", "digits.png"]
    assert (out / "digits.png").read_bytes()[:8] == PNG_MAGIC
    cells = json.loads((out / "digits.cells.json").read_text())["cells"]
    assert len(cells) == 4 and all(record["status"] == "ok" for record in cells.values())
    assert {record["optimizer"] for record in cells.values()} == {"AdamW", "AdaLo"}
    for record in cells.values():
        validations = record["probe"]["validations"]
        assert [entry["epoch"] for entry in validations] == [0, 1]
        assert 0.0 <= validations[-1]["metrics"]["val_acc"] <= 1.0
        assert not list((tmp_path / "runs" / record["key"]).rglob("*.ckpt"))  # checkpoints deleted
    table = (out / "digits.md").read_text()
    assert "| `AdamW` | lr |" in table and "| `AdaLo` | kappa (divides the step) |" in table
    assert "(1 seed)" in table and "--optimizers AdamW AdaLo --points 2" in table
    written = (out / "digits.cells.json").stat().st_mtime_ns
    assert main(argv) == 0
    rerun = capsys.readouterr().out
    assert "lr: 4 cells, 4 already done" in rerun and "0 to run" in rerun and "[1/" not in rerun
    assert (out / "digits.cells.json").stat().st_mtime_ns == written  # no cell ran again
    argv_more = [*argv[: argv.index("--seeds") + 2], "1", *argv[argv.index("--seeds") + 2 :]]
    assert main([*argv_more, "--dry-run"]) == 0  # a new seed: only its cells are to run
    assert "lr: 8 cells, 4 already done, 4 to run" in capsys.readouterr().out


# ------------------------------------------------------------------------------------------------ norm, accumulation
def test_norm_study_sets_the_models_norm_argument_and_reports_the_gap() -> None:
    options = _options("norm", optimizers=("AdamW",), seeds=(0, 1, 2))
    cells = plan_cells(STUDIES["norm"], options)
    assert [cell.setting.args for cell in cells[::3]] == [("--model.norm", "layernorm"), ("--model.norm", "none")]
    finals = {"layernorm": 0.97, "none": 0.93}
    results = [(cell, _fake_record(finals[cell.setting.values["norm"]] + cell.seed / 1000)) for cell in cells]
    text = norm.table(options, results)
    assert "| `AdamW` | `layernorm` | 0.971 ± 0.001 (0.97–0.972) | 0/3 |  |" in text
    assert "| `AdamW` | `none` | 0.931 ± 0.001 (0.93–0.932) | 0/3 | 0.04 |" in text


def test_digits_mlp_takes_a_layer_norm_before_each_hidden_activation() -> None:
    from lightning_opt.recipes.digits import DigitsClassifier

    layers = [type(layer).__name__ for layer in DigitsClassifier(hidden_dims=(16, 8), norm="layernorm").net]
    assert layers == ["Linear", "LayerNorm", "ReLU", "Linear", "LayerNorm", "ReLU", "Linear"]
    assert "LayerNorm" not in [type(layer).__name__ for layer in DigitsClassifier().net]
    with pytest.raises(ValueError, match="Invalid norm: 'batchnorm'"):
        DigitsClassifier(norm="batchnorm")


def test_accumulation_study_compares_a_big_batch_with_accumulated_micro_batches() -> None:
    options = _options("accumulation", optimizers=("AdamW",), batch=16, accumulate=8, batch_arg="data.batch_size")
    big, accumulated, exact = accumulation.settings(options, "AdamW")
    assert big.args == ("--data.batch_size", "128")
    assert accumulated.args == ("--data.batch_size", "16", "--trainer.accumulate_grad_batches", "8")
    assert exact.args[:4] == accumulated.args and "lightning_opt.ExactAccumulation" in exact.args[4]
    gap_curves = {"big": (0.5, 0.9), "accumulated": (0.5, 0.85), "exact": (0.5, 0.9)}
    results = []
    for cell in plan_cells(STUDIES["accumulation"], options):
        record = _fake_record(0.0)
        for entry, value in zip(record["probe"]["validations"], gap_curves[cell.setting.values["mode"]]):
            entry["metrics"]["val_acc"] = value
        results.append((cell, record))
    text = accumulation.table(options, results)
    assert "| `AdamW` | big batch 128 | 0.9 ± 0 (0.9–0.9) | 90 | 0/3 | reference |" in text
    assert "| `AdamW` | 16 x 8 accumulated | 0.85 ± 0 (0.85–0.85) | 90 | 0/3 | 0.05 |" in text
    assert "| `AdamW` | 16 x 8 accumulated + ExactAccumulation | 0.9 ± 0 (0.9–0.9) | 90 | 0/3 | 0 |" in text


# ------------------------------------------------------------------------------------------------ tails
def test_tails_study_puts_the_clipping_before_the_monitor_and_names_the_packages_statistics() -> None:
    from lightning_opt.tails import tags

    assert tails.STATISTICS == tags.STATISTICS
    options = _options("tails", optimizers=("AdamW",), tail_every=7)
    none, softclip, agc = tails.settings(options, "AdamW")
    assert len(none.args) == 1 and '"every_n_steps": 7' in none.args[0]
    assert "lightning_opt.SoftClip" in softclip.args[0] and "GradientTailMonitor" in softclip.args[1]
    assert "lightning_opt.AdaptiveGradientClipping" in agc.args[0] and "GradientTailMonitor" in agc.args[1]


def test_tails_collect_refuses_a_run_without_tail_statistics(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="no gradient tail statistics were logged"):
        tails.collect(tmp_path)


@pytest.mark.slow
def test_accumulation_study_on_digits_exact_accumulation_follows_the_big_batch(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    argv = [
        "study", "accumulation", "--optimizers", "AdamW", "--seeds", "0", "--out", str(tmp_path / "out"),
        "--runs-dir", str(tmp_path / "runs"), "--trainer.max_epochs", "2",
    ]  # fmt: skip  (no limit_val_batches: the validation batch size differs between the modes)
    assert main(argv) == 0
    cells = json.loads((tmp_path / "out" / "digits.cells.json").read_text())["cells"]
    by_mode = {record["setting"]["mode"]: record for record in cells.values()}
    assert all(record["status"] == "ok" for record in by_mode.values())
    # 1437 training samples: 12 steps of 128 per epoch, and 45 micro-batches of 32 in 12 windows of 4 (the last of 1)
    assert {record["probe"]["steps"] for record in by_mode.values()} == {24}
    finals = {mode: record["probe"]["validations"][-1]["metrics"]["val_loss"] for mode, record in by_mode.items()}
    assert finals["exact"] == pytest.approx(finals["big"], rel=1e-4)
    assert abs(finals["accumulated"] - finals["big"]) > 1e-4  # the partial last window tilts plain accumulation
    assert (tmp_path / "out" / "digits.png").read_bytes()[:8] == PNG_MAGIC
    assert "accumulated + ExactAccumulation" in (tmp_path / "out" / "digits.md").read_text()


@pytest.mark.slow
def test_tails_study_on_digits_reads_the_logged_statistics_back(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    argv = _study("tails", tmp_path, "--optimizers", "AdamW", "--seeds", "0", "--clips", "none", "agc",
                  "--tail-every", "2")  # fmt: skip
    assert main(argv) == 0
    cells = json.loads((tmp_path / "out" / "digits.cells.json").read_text())["cells"]
    by_clip = {record["setting"]["clip"]: record for record in cells.values()}
    assert set(by_clip) == {"none", "agc"}
    for record in by_clip.values():
        assert record["status"] == "ok", record.get("log_tail")
        statistics = record["collected"]["statistics"]
        assert set(statistics) == set(tails.STATISTICS)
        assert [step for step, _ in statistics["kurtosis"]] == [1, 3, 5, 7]  # every 2nd of 8 optimizer steps
        assert all(value is not None and math.isfinite(value) for _, value in statistics["hill_alpha"])
    assert tails.clipped_share(by_clip["agc"]) > 0 and math.isnan(tails.clipped_share(by_clip["none"]))
    table = (tmp_path / "out" / "digits.md").read_text()
    assert "| `AdamW` | agc |" in table and "| `AdamW` | none |" in table
    assert (tmp_path / "out" / "digits.png").read_bytes()[:8] == PNG_MAGIC


def test_an_interrupted_study_exits_130_keeps_the_finished_cells_and_resumes(tmp_path: Path) -> None:
    import signal
    import time

    study = _study("time", tmp_path, "--optimizers", "AdamW", "--seeds", "0", "1")
    argv = [sys.executable, "-m", "lightning_opt.cli", *study]
    cells_file = tmp_path / "out" / "digits.cells.json"
    process = subprocess.Popen(argv, cwd=tmp_path, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 120
    while not cells_file.exists() and process.poll() is None and time.monotonic() < deadline:
        time.sleep(0.05)
    process.send_signal(signal.SIGINT)  # the second cell's fit is running
    _, err = process.communicate(timeout=120)
    assert process.returncode == 130, err[-2000:]
    assert "interrupted: 1 of 2 cells saved" in err
    assert len(json.loads(cells_file.read_text())["cells"]) == 1
    result = subprocess.run(argv, cwd=tmp_path, capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr[-2000:]
    assert "time: 2 cells, 1 already done" in result.stdout and "[2/2] AdamW default seed 1" in result.stdout


def test_a_config_without_defaults_reads_validation_loss_and_the_time_study_then_needs_a_target(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    config = tmp_path / "mine.yaml"
    config.write_text(Path(DIGITS).read_text())
    args = build_parser(list(STUDIES)).parse_args(["lr", "--optimizers", "AdamW"])
    options = build_options(STUDIES["lr"], args, [str(config)])
    assert (options.metric, options.mode, options.band, options.target) == ("val_loss", "min", 0.05, None)
    with pytest.raises(SystemExit) as exit_info:
        main(["study", "time", "--config", str(config), "--out", str(tmp_path / "out")])
    assert exit_info.value.code == 2 and "Invalid --target" in capsys.readouterr().err


class NoLrDefault(torch.optim.SGD):
    """An optimizer whose ``lr`` has no default: the lr and warm-up studies need ``--knob`` for it."""

    def __init__(self, params: Any, lr: float) -> None:
        super().__init__(params, lr=lr)


def test_only_the_studies_that_vary_the_step_need_a_step_knob_for_every_optimizer() -> None:
    name = f"{__name__}.NoLrDefault"
    parser = build_parser(list(STUDIES))
    options = build_options(STUDIES["memory"], parser.parse_args(["memory", "--optimizers", name]), [DIGITS])
    assert options.class_paths == {name: name} and options.knobs == {}
    for study in ("lr", "warmup"):
        with pytest.raises(StudyArgumentError, match=r"Invalid --optimizers: .* has no lr default .* --knob"):
            build_options(STUDIES[study], parser.parse_args([study, "--optimizers", name]), [DIGITS])
    given = parser.parse_args(["lr", "--optimizers", name, "--knob", f"{name}=lr:0.01"])
    assert build_options(STUDIES["lr"], given, [DIGITS]).knobs[name] == StepKnob("lr", 0.01)
