"""``lightning-opt tails``: the report read back from real event files written by GradientTailMonitor."""

from __future__ import annotations

import math
import shutil
from pathlib import Path

import lightning.pytorch as pl
import pytest
import torch
from lightning.pytorch.loggers import TensorBoardLogger
from matplotlib.image import imread
from tensorboard.compat.tensorflow_stub import errors as tensorboard_errors
from tensorboard.compat.tensorflow_stub.pywrap_tensorflow import PyRecordReader_New
from tensorboard.compat.tensorflow_stub.pywrap_tensorflow import crc32c as tensorboard_crc32c
from torch import nn
from torch.utils.data import DataLoader, TensorDataset
from torch.utils.tensorboard import SummaryWriter

from lightning_opt.callbacks import GradientTailMonitor
from lightning_opt.cli import main
from lightning_opt.tails import tags
from lightning_opt.tails.event_files import DamagedEventFileError, _crc32c_blocks, check_event_file, crc32c
from lightning_opt.tails.report import (
    EVENT_FILE_GLOB,
    draw_distributions,
    format_table,
    heaviest_layers,
    load_runs,
    nearest_step,
    report_steps,
)
from lightning_opt.tails.statistics import tail_statistics


pytestmark = [
    pytest.mark.filterwarnings("ignore:.*does not have many workers:UserWarning"),
    pytest.mark.filterwarnings("ignore:.*smaller than the logging interval:UserWarning"),
    pytest.mark.filterwarnings("ignore:.*isinstance\\(treespec, LeafSpec\\)"),  # lightning on torch 2.13
]


class FixedTails(pl.LightningModule):
    """Three weights whose gradients are fixed samples: Student-t with 2 and 4 degrees of freedom, and a
    Gaussian. Their tail indices (2, 4, infinite) order them from heaviest to lightest."""

    def __init__(self, scale: float = 1.0) -> None:
        super().__init__()
        generator = torch.Generator().manual_seed(0)
        self.heavy = nn.Parameter(torch.zeros(300, 100))
        self.medium = nn.Parameter(torch.zeros(300, 100))
        self.gaussian = nn.Parameter(torch.zeros(300, 100))
        normal = torch.randn(3, 300, 100, generator=generator)
        chi2 = {nu: torch.randn(nu, 300, 100, generator=generator).pow(2).sum(0) for nu in (2, 4)}
        self.targets = {
            "heavy": scale * normal[0] / (chi2[2] / 2).sqrt(),
            "medium": scale * normal[1] / (chi2[4] / 4).sqrt(),
            "gaussian": scale * normal[2],
        }

    def training_step(self, batch, batch_idx):
        return sum((getattr(self, name) * target).sum() for name, target in self.targets.items())

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=1e-3)

    def train_dataloader(self):
        return DataLoader(TensorDataset(torch.zeros(8, 1)), batch_size=1)


def fit(
    tmp_path: Path, version: str, scale: float = 1.0, max_steps: int = 6, histogram_every_n_steps: int = 2
) -> Path:
    logger = TensorBoardLogger(tmp_path, name="runs", version=version)
    pl.Trainer(
        accelerator="cpu",
        max_steps=max_steps,
        logger=logger,
        callbacks=[GradientTailMonitor(every_n_steps=2, histogram_every_n_steps=histogram_every_n_steps)],
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
    ).fit(FixedTails(scale))
    return Path(logger.log_dir)


@pytest.fixture(scope="module")
def two_runs(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("tails")
    fit(root, "unit")
    fit(root, "tenth", scale=0.1)
    return root / "runs"


def test_runs_are_found_and_read_back(two_runs):
    runs = load_runs([two_runs])
    assert [run.name for run in runs] == ["tenth", "unit"]
    run = runs[1]
    assert run.steps == [1, 3, 5]
    assert set(run.layers) == {"heavy", "medium", "gaussian"}
    expected = tail_statistics(FixedTails().targets["heavy"])
    for statistic in tags.STATISTICS:
        assert run.statistics[(statistic, "heavy")][3] == pytest.approx(expected[statistic], rel=1e-5)
    histograms = run.log_abs_histograms[tags.WHOLE_MODEL]
    assert [h.step for h in histograms] == [1, 3, 5]
    assert histograms[0].total == 3 * 300 * 100
    assert len(histograms[0].edges) == len(histograms[0].counts) + 1


def test_heaviest_layers_follow_the_tail_index(two_runs):
    run = load_runs([two_runs / "unit"])[0]
    assert heaviest_layers(run) == ["heavy", "medium", "gaussian"]
    assert heaviest_layers(run, sort_by="kurtosis")[0] == "heavy"
    assert heaviest_layers(run, top=1) == ["heavy"]
    with pytest.raises(ValueError, match="Invalid sort_by: 'alpha'"):
        heaviest_layers(run, sort_by="alpha")


def test_table_lists_the_model_then_the_heaviest_layers_at_the_chosen_steps(two_runs):
    run = load_runs([two_runs / "unit"])[0]
    table = format_table(run, steps=[0, 5], top=2)
    lines = table.splitlines()
    assert "alpha@1" in lines[1] and "alpha@5" in lines[1] and "@3" not in lines[1]
    assert [line.split("|")[1].strip() for line in lines[3:]] == [tags.WHOLE_MODEL, "heavy", "medium"]
    alpha = run.statistics[("hill_alpha", "heavy")][5]
    assert f"{alpha:.3g}" in lines[4]


def test_command_prints_tables_and_draws_the_runs(two_runs, tmp_path, capsys):
    output = tmp_path / "picture" / "tails.png"
    assert main(["tails", str(two_runs / "unit"), str(two_runs / "tenth"), "--output", str(output)]) == 0
    printed = capsys.readouterr().out
    assert printed.count("heaviest-tailed layers") == 2
    assert f"wrote {output}" in printed
    image = imread(output)
    assert image.shape[0] > 200 and image.shape[1] > 3 * image.shape[0] / 2  # three panels side by side
    assert main(["tails", str(two_runs), "--no-plot", "--steps", "3"]) == 0
    assert "alpha@3" in capsys.readouterr().out


def test_scaling_moves_the_distribution_by_one_decade(two_runs):
    """The fixed log10|g| buckets make runs comparable: a tenth of the gradients, one decade lower."""
    runs = {run.name: run for run in load_runs([two_runs])}

    def mean_log10(run):
        histogram = run.log_abs_histograms[tags.WHOLE_MODEL][0]
        centres = [(a + b) / 2 for a, b in zip(histogram.edges, histogram.edges[1:])]
        return sum(c * n for c, n in zip(centres, histogram.counts)) / histogram.total

    assert mean_log10(runs["unit"]) - mean_log10(runs["tenth"]) == pytest.approx(1.0, abs=0.02)


@pytest.mark.parametrize(
    ("arguments", "message"),
    [
        (["/no/such/dir"], "no such log directory"),
        (["EMPTY"], "no gradient-tail statistics"),
        (["RUNS", "--top", "0"], "Invalid --top: 0"),
        (["RUNS", "--layer", "nope"], "no run has log10|g| histograms for layer 'nope'"),
    ],
)
def test_bad_arguments_exit_with_status_2(two_runs, tmp_path, capsys, arguments, message):
    (tmp_path / "empty").mkdir()
    arguments = [{"EMPTY": str(tmp_path / "empty"), "RUNS": str(two_runs)}.get(a, a) for a in arguments]
    with pytest.raises(SystemExit) as exit_info:
        main(["tails", *arguments, "--output", str(tmp_path / "x.png")])
    assert exit_info.value.code == 2
    assert message in capsys.readouterr().err


def test_nearest_step_prefers_the_earlier_on_a_tie():
    assert nearest_step([10, 20], 15) == 10
    assert math.isclose(nearest_step([7], 1000), 7)


# ------------------------------------------------------------------ the same steps in the tables and the PNG
@pytest.fixture(scope="module")
def sparse_histograms(tmp_path_factory) -> Path:
    """Two runs with identical gradients (their curves coincide): statistics every 2 optimizer steps,
    histograms every 6 and at the first logged step, so at steps 1, 5, 11 and statistics at 1, 3, ..., 11."""
    root = tmp_path_factory.mktemp("sparse")
    fit(root, "first", max_steps=12, histogram_every_n_steps=6)
    fit(root, "second", max_steps=12, histogram_every_n_steps=6)
    return root / "runs"


def table_steps(table: str) -> list[int]:
    header = table.splitlines()[1]
    return [int(cell.strip().split("@")[1]) for cell in header.split("|") if cell.strip().startswith("alpha@")]


def drawn_steps(figure) -> dict[str, list[int]]:
    """Each run's steps as drawn, panel by panel (from the curves' gid ``"<run>@<step>"``)."""
    steps: dict[str, list[int]] = {}
    for axis in figure.axes:
        for patch in axis.patches:
            run, step = patch.get_gid().rsplit("@", 1)
            steps.setdefault(run, []).append(int(step))
    return steps


@pytest.mark.parametrize("wanted", [None, [3, 7], [0, 100]])
def test_tables_and_picture_show_the_same_steps(sparse_histograms, tmp_path, capsys, wanted):
    """Statistics are logged at more steps than histograms: the table used to pick @3 where the PNG drew
    step 1. Both now come from report_steps, which only picks steps that have both."""
    runs = load_runs([sparse_histograms])
    assert runs[0].steps == [1, 3, 5, 7, 9, 11]
    assert [h.step for h in runs[0].log_abs_histograms[tags.WHOLE_MODEL]] == [1, 5, 11]
    chosen = report_steps(runs, wanted)
    expected = {None: [1, 5, 11], (3, 7): [1, 5], (0, 100): [1, 11]}[tuple(wanted) if wanted else None]
    assert chosen == [expected, expected]

    output = tmp_path / "tails.png"
    steps_option = ["--steps", *map(str, wanted)] if wanted else []
    assert main(["tails", str(sparse_histograms), *steps_option, "--output", str(output)]) == 0
    tables = capsys.readouterr().out.split("\n\n")
    figure = draw_distributions(runs, wanted)
    drawn = drawn_steps(figure)
    assert set(drawn) == {"first", "second"}
    for table in tables[:2]:
        run_name = table.split(":", 1)[0]
        assert table_steps(table) == drawn[run_name] == expected
    assert [axis.get_title() for axis in figure.axes] == [f"step {step}" for step in expected]
    assert imread(output).shape[1] > imread(output).shape[0]


def test_coinciding_runs_stay_distinguishable_and_the_legend_does_not_repeat_the_step(sparse_histograms):
    runs = load_runs([sparse_histograms])
    figure = draw_distributions(runs)
    for axis in figure.axes:
        first, second = axis.patches
        assert first.get_linestyle() != second.get_linestyle()
        assert first.get_linewidth() > second.get_linewidth()  # the thick one shows under the thin one
        labels = [text.get_text() for text in axis.get_legend().get_texts()]
        assert [label.split(" ")[0] for label in labels] == ["first", "second"]
        assert not any("step" in label for label in labels)  # the panel's title says it once


def test_a_run_with_a_later_step_says_so_in_its_label(sparse_histograms, two_runs):
    runs = [load_runs([sparse_histograms])[0], load_runs([two_runs / "unit"])[0]]  # steps 1, 5, 11 and 1, 3, 5
    assert report_steps(runs, [11]) == [[11], [5]]
    figure = draw_distributions(runs, [11])
    labels = [text.get_text() for text in figure.axes[0].get_legend().get_texts()]
    assert "step" not in labels[0] and labels[1].endswith("at step 5)")


# -------------------------------------------------------------------------------- runs without histograms
def test_the_readme_snippet_then_the_report(tmp_path, capsys):
    """GradientTailMonitor() with the Trainer's defaults (statistics every 50 steps, histograms every 1000)
    in a run of 120 steps: the histograms of the first logged step are there for the report."""
    logger = TensorBoardLogger(tmp_path / "logs")
    pl.Trainer(
        accelerator="cpu",
        max_steps=120,
        logger=logger,
        callbacks=[GradientTailMonitor(exclude="*.bias")],
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
    ).fit(FixedTails())
    output = tmp_path / "tails.png"
    assert main(["tails", str(tmp_path / "logs"), "--output", str(output)]) == 0
    out = capsys.readouterr().out
    assert table_steps(out) == [49] and output.exists()


def test_no_histograms_the_message_says_which_option_to_change(tmp_path, capsys):
    """Statistics without histograms (a monitor that never reached its histogram cadence, before histograms
    were also written at the first logged step), written with TensorBoard's SummaryWriter."""
    with SummaryWriter(tmp_path / "run") as writer:
        for step in (49, 99, 149):
            for statistic in tags.STATISTICS:
                writer.add_scalar(tags.statistic_tag(statistic, tags.WHOLE_MODEL), 1.0, step)
    with pytest.raises(SystemExit) as exit_info:
        main(["tails", str(tmp_path / "run"), "--output", str(tmp_path / "x.png")])
    assert exit_info.value.code == 2
    message = capsys.readouterr().err
    assert "no run has log10|g| histograms for layer 'model'" in message
    assert "up to step 149" in message and "GradientTailMonitor(histogram_every_n_steps=N) with N <= 150" in message


# --------------------------------------------------------------------------------- damaged event files
def tensorboard_reads(path: Path) -> tuple[int, str | None]:
    """How many records TensorBoard's own record reader returns before it stops, and the error that stopped
    it (``None`` at a clean end of file). TensorBoard's event loader swallows that error."""
    reader = PyRecordReader_New(str(path))
    records = 0
    while True:
        try:
            reader.GetNext()
        except tensorboard_errors.OutOfRangeError:
            return records, None
        except tensorboard_errors.DataLossError as error:
            return records, str(error)
        records += 1


def copy_of(runs: Path, tmp_path: Path) -> tuple[Path, Path]:
    """A copy of the runs and the path of the copied event file of the run ``unit``."""
    copy = tmp_path / "runs"
    shutil.copytree(runs, copy)
    return copy, next((copy / "unit").glob(EVENT_FILE_GLOB))


def assert_stops_with_one_line(capsys, runs: Path, event: Path, records: int, problem: str) -> None:
    with pytest.raises(SystemExit) as exit_info:
        main(["tails", str(runs), "--no-plot"])
    assert exit_info.value.code == 2
    captured = capsys.readouterr()
    assert captured.out == "" and captured.err.count("\n") == 1
    assert captured.err.startswith(f"lightning-opt tails: error: damaged event file {event}: record {records + 1} ")
    assert problem in captured.err and f"; {records} records read before it" in captured.err
    assert "pass --allow-damaged" in captured.err


def test_a_truncated_event_file_stops_the_report(two_runs, tmp_path, capsys):
    runs, event = copy_of(two_runs, tmp_path)
    intact_records, error = tensorboard_reads(event)
    assert error is None and check_event_file(event).records == intact_records
    size = event.stat().st_size
    with open(event, "r+b") as handle:
        handle.truncate(size // 2)
    records, error = tensorboard_reads(event)
    assert error is not None and "truncated record" in error  # not cut between two records
    assert 0 < records < intact_records
    assert_stops_with_one_line(capsys, runs, event, records, "cut short")

    # --allow-damaged: what TensorBoard reads before the damage, said under the table and on stderr.
    assert main(["tails", str(runs), "--no-plot", "--allow-damaged"]) == 0
    captured = capsys.readouterr()
    assert f"warning: damaged event file {event}" in captured.err
    assert f"partial data: damaged event file {event}" in captured.out
    partial = {run.name: run for run in load_runs([runs], allow_damaged=True)}
    intact = {run.name: run for run in load_runs([two_runs])}
    assert 0 < len(partial["unit"].steps) < len(intact["unit"].steps)
    assert partial["unit"].steps == intact["unit"].steps[: len(partial["unit"].steps)]
    assert partial["tenth"].steps == intact["tenth"].steps and not partial["tenth"].damaged
    with pytest.raises(DamagedEventFileError, match="damaged event file .*cut short"):
        load_runs([runs])


def test_flipped_bytes_stop_the_report(two_runs, tmp_path, capsys):
    runs, event = copy_of(two_runs, tmp_path)
    data = bytearray(event.read_bytes())
    middle = len(data) // 2
    data[middle : middle + 64] = bytes(b ^ 0xFF for b in data[middle : middle + 64])
    event.write_bytes(bytes(data))
    records, error = tensorboard_reads(event)
    assert error is not None and "crc32 check" in error
    assert_stops_with_one_line(capsys, runs, event, records, "checksum")


def test_the_check_agrees_with_tensorboards_reader_on_every_cut_and_every_flipped_byte(tmp_path):
    """Every truncation and every single corrupted byte of a real event file: the damage is found exactly when
    TensorBoard's reader stops with an error, after the same number of records."""
    with SummaryWriter(tmp_path / "run") as writer:
        writer.add_scalar("loss", 0.5, 0)
        writer.add_histogram_raw("weights", 0, 2, 3, 3, 5, [1, 2], [1, 2], global_step=0)
        writer.add_scalar("loss", 0.25, 1)
    event = next((tmp_path / "run").glob(EVENT_FILE_GLOB))
    original = event.read_bytes()
    damaged = tmp_path / "damaged" / event.name
    damaged.parent.mkdir()
    variants = [original[:cut] for cut in range(len(original))]
    variants += [original[:i] + bytes([original[i] ^ 0x5A]) + original[i + 1 :] for i in range(len(original))]
    problems = set()
    for variant in variants:
        damaged.write_bytes(variant)
        records, error = tensorboard_reads(damaged)
        check = check_event_file(damaged)
        assert (check.records, check.damaged) == (records, error is not None), (len(variant), error)
        if check.damaged:
            assert check.size == len(variant) and check.intact_bytes < check.size
            problems.add(check.problem.split(" ", 2)[2])
    assert problems == {
        "cut short in its length",
        "cut short in its length checksum",
        "cut short in its data",
        "cut short in its data checksum",
        "has a length that fails its checksum",
        "has data that fail their checksum",
    }


def test_crc32c_equals_tensorboards():
    generator = torch.Generator().manual_seed(0)
    buffer = torch.randint(0, 256, (300_000,), dtype=torch.uint8, generator=generator).numpy()
    for length in [*range(70), 255, 256, 257, 4096, 70_001, 300_000]:
        assert crc32c(buffer[:length].tobytes()) == tensorboard_crc32c(buffer[:length].tobytes()), length
    starts = torch.randint(0, 200_000, (300,), generator=generator).numpy()
    lengths = torch.randint(0, 5000, (300,), generator=generator).numpy()
    lengths[:6] = [0, 1, 2, 3, 4, 90_000]
    checksums = _crc32c_blocks(buffer, starts, lengths)
    for start, length, checksum in zip(starts, lengths, checksums):
        assert checksum == tensorboard_crc32c(buffer[start : start + length].tobytes())
