"""Run a study's cells, each a ``lightning-opt fit`` in its own process, skipping those already saved.

Each cell runs as ``python -m lightning_opt.cli fit --config ... --optimizer NAME <setting> --seed_everything SEED
--trainer.accelerator ACC`` with its own directory (``--trainer.default_root_dir``, and the logger's ``save_dir``
when the config names a logger class) and a :class:`~lightning_opt.studies.probe.StudyProbe` that writes what the
tables need. Its output goes to ``fit.log`` in that directory; checkpoints it wrote are deleted once its result is
saved. One line is printed per finished cell: the metric, the time the cell took and how many remain.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, Optional, TextIO

import yaml

from lightning_opt.studies.cells import Cell, FitBase, ResultStore, cell_key

PROBE = "lightning_opt.studies.probe.StudyProbe"

Executor = Callable[[Cell, Path], dict[str, Any]]
"""Runs one cell in a directory and returns its record (``status`` ``"ok"`` or ``"failed"``)."""

_LOG_TAIL_LINES = 15


def prepared_configs(base: FitBase, work: Path) -> list[str]:
    """The config paths to pass: each as given, or, if it sets ``optimizer`` or ``lr_scheduler`` (which the study
    sets itself), a copy without them under ``work/configs`` (jsonargparse would carry the config's optimizer
    arguments over to the study's optimizer class)."""
    paths = []
    for index, config in enumerate(base.configs):
        values = yaml.safe_load(Path(config).read_text()) or {}
        if isinstance(values, dict) and ({"optimizer", "lr_scheduler"} & set(values)):
            values = {key: value for key, value in values.items() if key not in ("optimizer", "lr_scheduler")}
            copy = work / f"{index}_{Path(config).name}"
            copy.parent.mkdir(parents=True, exist_ok=True)
            copy.write_text(yaml.safe_dump(values, sort_keys=False))
            paths.append(str(copy))
        else:
            paths.append(str(config))
    return paths


def _names_logger_class(configs: Sequence[str]) -> bool:
    """Whether the last config that sets ``trainer.logger`` gives it as a class (``class_path``)."""
    found = False
    for config in configs:
        values = yaml.safe_load(Path(config).read_text()) or {}
        trainer = values.get("trainer") if isinstance(values, dict) else None
        if isinstance(trainer, dict) and "logger" in trainer:
            logger = trainer["logger"]
            found = isinstance(logger, dict) and "class_path" in logger
    return found


def fit_command(cell: Cell, base: FitBase, configs: Sequence[str], run_dir: Path) -> list[str]:
    """The command line of ``cell``'s run in ``run_dir``.

    Example:
        >>> from lightning_opt.studies.cells import Setting
        >>> cell = Cell("AdamW", "torch.optim.AdamW", Setting({"lr": 0.01}, ("--optimizer.lr", "0.01")), 2)
        >>> from lightning_opt.recipes import find_config
        >>> config = find_config("digits")
        >>> command = fit_command(cell, FitBase((config,), ("0",)), [config], Path("runs/x"))
        >>> command[1:4], command[6:10]
        (['-m', 'lightning_opt.cli', 'fit'], ['--optimizer', 'torch.optim.AdamW', '--optimizer.lr', '0.01'])
        >>> command[-2:]  # the config names a logger class: its save_dir goes to the cell's directory too
        ['--trainer.logger.init_args.save_dir', 'runs/x']
    """
    probe = json.dumps({"class_path": PROBE, "init_args": {"path": str(run_dir / "probe.json")}})
    command = [sys.executable, "-m", "lightning_opt.cli", "fit"]
    for config in configs:
        command += ["--config", config]
    command += ["--optimizer", cell.class_path, *cell.setting.args]
    command += ["--seed_everything", str(cell.seed), "--trainer.accelerator", base.accelerator]
    command += ["--trainer.default_root_dir", str(run_dir), f"--trainer.callbacks+={probe}"]
    if _names_logger_class(configs):
        command += ["--trainer.logger.init_args.save_dir", str(run_dir)]
    return command + list(base.fit_args)


def subprocess_executor(
    base: FitBase, configs: Sequence[str], collect: Optional[Callable[[Path], dict[str, Any]]] = None
) -> Executor:
    """An executor that runs a cell as ``lightning-opt fit`` in its own process (see :func:`fit_command`).

    Args:
        base: what the cells share.
        configs: the config paths to pass (:func:`prepared_configs`).
        collect: reads what a study needs from a finished cell's directory besides the probe (saved as the
            record's ``collected``); an error it raises marks the cell failed, with the error in ``log_tail``.
    """

    def execute(cell: Cell, run_dir: Path) -> dict[str, Any]:
        if run_dir.exists():
            shutil.rmtree(run_dir)  # a cell rerun after an interruption or a failure starts clean
        run_dir.mkdir(parents=True)
        command = fit_command(cell, base, configs, run_dir)
        log_path = run_dir / "fit.log"
        with log_path.open("w") as log:
            returncode = subprocess.run(command, stdout=log, stderr=subprocess.STDOUT, check=False).returncode
        probe_path = run_dir / "probe.json"
        probe = json.loads(probe_path.read_text()) if probe_path.exists() else None
        for checkpoint in run_dir.rglob("*.ckpt"):
            checkpoint.unlink()
        record: dict[str, Any] = {"status": "ok" if returncode == 0 and probe is not None else "failed"}
        record.update(returncode=returncode, probe=probe, command=command[1:])
        if record["status"] == "failed":
            record["log_tail"] = log_path.read_text(errors="replace").splitlines()[-_LOG_TAIL_LINES:]
        elif collect is not None:
            try:
                record["collected"] = collect(run_dir)
            except (OSError, ValueError) as error:
                record.update(status="failed", log_tail=[f"reading the run's logs failed: {error}"])
        return record

    return execute


def run_cells(
    name: str,
    cells: Sequence[Cell],
    base: FitBase,
    store: ResultStore,
    runs_dir: Path,
    execute: Executor,
    describe: Callable[[dict[str, Any]], str],
    retry_failed: bool = False,
    stream: Optional[TextIO] = None,
) -> list[tuple[Cell, dict[str, Any]]]:
    """Run the cells of ``cells`` that ``store`` lacks, saving each result as soon as it is known.

    Args:
        name: the study's name, for the progress lines.
        cells: every cell of the study, in order.
        base: what the cells share (part of each key).
        store: the saved results; a cell whose key is in it is skipped (a failed one too, unless ``retry_failed``).
        runs_dir: where each cell gets its directory, ``runs_dir/<key>``.
        execute: runs one cell (:func:`subprocess_executor`).
        describe: the short text of a record for its progress line (the metric).
        retry_failed: run again the cells saved as failed.
        stream: where the progress lines go (standard output by default).

    Returns:
        ``(cell, record)`` of every cell of ``cells``, in order.

    An interruption (``KeyboardInterrupt``) propagates; the cells finished before it are saved.
    """
    out = sys.stdout if stream is None else stream
    keys = [cell_key(cell, base) for cell in cells]
    todo = [index for index, key in enumerate(keys) if _needs_run(store.get(key), retry_failed)]
    done_before = len(cells) - len(todo)
    print(
        f"{name}: {len(cells)} cells" + (f", {done_before} already done ({store.path})" if done_before else "")
        + f", {len(todo)} to run",
        file=out,
        flush=True,
    )
    durations: list[float] = []
    for position, index in enumerate(todo, start=1):
        cell, key = cells[index], keys[index]
        started = time.perf_counter()
        record = execute(cell, runs_dir / key)
        seconds = time.perf_counter() - started
        record.update(
            key=key,
            optimizer=cell.optimizer,
            class_path=cell.class_path,
            setting=dict(cell.setting.values),
            setting_args=list(cell.setting.args),
            seed=cell.seed,
            configs=list(base.configs),
            fit_args=list(base.fit_args),
            cell_seconds=seconds,
            finished=time.strftime("%Y-%m-%dT%H:%M:%S"),
        )
        store.put(key, record)
        durations.append(seconds)
        left = len(todo) - position
        eta = f", about {_duration(left * sum(durations) / len(durations))} left" if left else ""
        outcome = describe(record) if record["status"] == "ok" else f"FAILED (exit {record.get('returncode')})"
        print(
            f"[{done_before + position}/{len(cells)}] {cell.label()}: {outcome} ({seconds:.1f} s); "
            f"{left} to go{eta}",
            file=out,
            flush=True,
        )
        if record["status"] != "ok":
            for line in record.get("log_tail", [])[-5:]:
                print(f"    {line}", file=out, flush=True)
    return [(cell, store.get(key) or {}) for cell, key in zip(cells, keys)]


def _needs_run(record: Optional[dict[str, Any]], retry_failed: bool) -> bool:
    return record is None or (retry_failed and record.get("status") != "ok")


def _duration(seconds: float) -> str:
    """``42 s``, ``3.5 min``, ``1.2 h``.

    Example:
        >>> _duration(42), _duration(210), _duration(7200)
        ('42 s', '3.5 min', '2.0 h')
    """
    if seconds < 90:
        return f"{seconds:.0f} s"
    if seconds < 5400:
        return f"{seconds / 60:.1f} min"
    return f"{seconds / 3600:.1f} h"


__all__ = ["Executor", "fit_command", "prepared_configs", "run_cells", "subprocess_executor"]
