"""``lightning-opt tails``: the report read back from real event files written by GradientTailMonitor."""

from __future__ import annotations

import math
from pathlib import Path

import lightning.pytorch as pl
import pytest
import torch
from lightning.pytorch.loggers import TensorBoardLogger
from matplotlib.image import imread
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from lightning_opt.callbacks import GradientTailMonitor
from lightning_opt.cli import main
from lightning_opt.tails import tags
from lightning_opt.tails.report import format_table, heaviest_layers, load_runs, nearest_step
from lightning_opt.tails.statistics import tail_statistics


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


def fit(tmp_path: Path, version: str, scale: float = 1.0) -> Path:
    logger = TensorBoardLogger(tmp_path, name="runs", version=version)
    pl.Trainer(
        max_steps=6,
        logger=logger,
        callbacks=[GradientTailMonitor(every_n_steps=2, histogram_every_n_steps=2)],
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
