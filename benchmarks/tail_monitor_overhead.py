"""Training-time overhead of ``GradientTailMonitor`` at its default settings, on the digits recipe.

The recipe as ``configs/digits.yaml`` runs it (``DigitsClassifier(hidden_dims=(128, 64))``, batch 32,
AdaLo with ``LossFeeder``, ``deterministic=True``, ``log_every_n_steps=10``, a ``TensorBoardLogger``
and default checkpointing into a temporary directory, one CPU thread), without the console progress bar
and model summary, trained for ``--epochs`` epochs: without the monitor, with ``GradientTailMonitor()``
at its defaults (statistics every 10 optimizer steps, histograms every 200) and, for information, with
histograms at every logged step too; the baseline also runs twice per round, as two variants, so that
the table shows how far identical runs land apart on the machine at hand (the noise floor).

Each round trains every variant once, in an order rotated from round to round, after one untimed
warm-up run. The overhead of a variant is the median over rounds of its time over the baseline's in the
same round (pairs close in time cancel the machine's drift); the table also gives median wall-clock and
process CPU seconds (CPU time includes TensorBoard's writer thread) and the share of the run spent inside
the monitor's hook (its direct cost; the rest of the overhead is the writer thread's checksums and the
caches the hook leaves cold for the training step after it).

Usage::

    .venv/bin/python benchmarks/tail_monitor_overhead.py        # 20 epochs, 5 rounds
    .venv/bin/python benchmarks/tail_monitor_overhead.py --epochs 5 --repeats 3
"""

from __future__ import annotations

import argparse
import logging
import statistics
import sys
import tempfile
import time
import warnings
from pathlib import Path
from typing import Any

import lightning.pytorch as pl
import torch
from lightning.pytorch.loggers import TensorBoardLogger
from typing_extensions import override

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from common import machine_info, markdown_table, timed, write_json  # noqa: E402

from lightning_opt import LossFeeder  # noqa: E402
from lightning_opt.callbacks.tail_monitor import GradientTailMonitor  # noqa: E402
from lightning_opt.recipes.digits import DigitsClassifier, DigitsDataModule  # noqa: E402

RESULTS = Path(__file__).resolve().parent / "results" / "tail_monitor_overhead.json"
LOG_EVERY_N_STEPS = 10  # configs/digits.yaml
BATCHES_PER_EPOCH = -(-1437 // 32)  # 1437 training images, batch 32

VARIANTS: dict[str, dict[str, Any] | None] = {
    "baseline": None,
    # The baseline again, as a separate variant: how far two identical configurations land apart (noise).
    "baseline (again)": None,
    "GradientTailMonitor()": {},
    # For information: histograms at every logged step, as GradientTailMonitor(every_n_steps=10) writes them.
    f"GradientTailMonitor(histogram_every_n_steps={LOG_EVERY_N_STEPS})": {"histogram_every_n_steps": LOG_EVERY_N_STEPS},
}


class TimedMonitor(GradientTailMonitor):
    """The monitor, unchanged, plus a clock around the one hook that does work."""

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.seconds = 0.0

    @override
    def on_before_optimizer_step(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, optimizer: torch.optim.Optimizer
    ) -> None:
        start = time.perf_counter()
        super().on_before_optimizer_step(trainer, pl_module, optimizer)
        self.seconds += time.perf_counter() - start


def train(epochs: int, monitor: dict[str, Any] | None, directory: Path) -> dict[str, float]:
    """Wall and process CPU seconds of ``Trainer.fit`` on the digits recipe, and seconds inside the monitor,
    with the monitor built from ``monitor`` (keyword arguments) or without it (``None``)."""
    pl.seed_everything(0, verbose=False)
    callbacks: list[pl.Callback] = [LossFeeder()]
    timed_monitor = TimedMonitor(**monitor) if monitor is not None else None
    if timed_monitor is not None:
        callbacks.append(timed_monitor)
    trainer = pl.Trainer(
        max_epochs=epochs,
        deterministic=True,
        log_every_n_steps=LOG_EVERY_N_STEPS,
        logger=TensorBoardLogger(save_dir=directory, name="digits"),
        default_root_dir=directory,
        callbacks=callbacks,
        enable_progress_bar=False,
        enable_model_summary=False,
    )
    model = DigitsClassifier(hidden_dims=(128, 64), dropout=0.0)
    data = DigitsDataModule(batch_size=32, val_fraction=0.2, split_seed=0)
    cpu = time.process_time()
    wall = timed(lambda: trainer.fit(model, data))
    return {
        "wall_s": wall,
        "cpu_s": time.process_time() - cpu,
        "in_callback_s": timed_monitor.seconds if timed_monitor is not None else 0.0,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--epochs", type=int, default=20, help="epochs per training run")
    parser.add_argument("--repeats", type=int, default=5, help="rounds; each trains every variant once")
    args = parser.parse_args()
    if args.epochs < 1 or args.repeats < 1:
        parser.error("--epochs and --repeats must be positive")

    torch.set_num_threads(1)  # configs/digits.yaml: num_threads: 1
    warnings.filterwarnings("ignore", ".*does not have many workers.*")
    logging.getLogger("lightning.pytorch").setLevel(logging.ERROR)

    names = list(VARIANTS)
    runs: dict[str, list[dict[str, float]]] = {name: [] for name in names}
    with tempfile.TemporaryDirectory() as tmp:
        train(1, {}, Path(tmp) / "warmup")  # imports, first-call costs, file-system caches
        for repeat in range(args.repeats):
            order = names[repeat % len(names) :] + names[: repeat % len(names)]
            for name in order:
                runs[name].append(train(args.epochs, VARIANTS[name], Path(tmp) / f"{repeat}-{names.index(name)}"))

    def ratios(name: str, key: str) -> list[float]:
        return [run[key] / base[key] - 1.0 for run, base in zip(runs[name], runs["baseline"])]

    rows, results = [], []
    for name in names:
        wall = statistics.median(run["wall_s"] for run in runs[name])
        cpu = statistics.median(run["cpu_s"] for run in runs[name])
        overhead = 100.0 * statistics.median(ratios(name, "wall_s"))
        cpu_overhead = 100.0 * statistics.median(ratios(name, "cpu_s"))
        inside = 100.0 * statistics.median(run["in_callback_s"] / run["wall_s"] for run in runs[name])
        rows.append(
            [name, f"{wall:.3f}", f"{overhead:+.1f}%", f"{cpu:.3f}", f"{cpu_overhead:+.1f}%", f"{inside:.1f}%"]
        )
        results.append(
            {
                "variant": name,
                "monitor_kwargs": VARIANTS[name],
                "median_s": wall,
                "overhead_percent": overhead,
                "median_cpu_s": cpu,
                "cpu_overhead_percent": cpu_overhead,
                "in_callback_percent": inside,
                "runs": runs[name],
            }
        )
    steps = args.epochs * BATCHES_PER_EPOCH
    command = f"python benchmarks/tail_monitor_overhead.py --epochs {args.epochs} --repeats {args.repeats}"
    print(
        f"digits recipe, {args.epochs} epochs ({steps} optimizer steps, log_every_n_steps={LOG_EVERY_N_STEPS}), "
        f"{args.repeats} rounds; overheads are medians of per-round ratios to the baseline\n"
    )
    headers = ["variant", "median s", "overhead", "median CPU s", "CPU overhead", "inside the hook"]
    print(markdown_table(headers, rows))
    write_json(
        RESULTS,
        {
            "command": command,
            "epochs": args.epochs,
            "repeats": args.repeats,
            "optimizer_steps": steps,
            "log_every_n_steps": LOG_EVERY_N_STEPS,
            "machine": machine_info(),
            "results": results,
        },
    )
    print(f"\nwritten to {RESULTS}")


if __name__ == "__main__":
    main()
