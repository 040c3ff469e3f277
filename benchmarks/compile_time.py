"""Cold compile time of the compiled optimizers against the number of tensors, on the CPU or a GPU.

For each optimizer (registry names: AdaLo, AdamAtan2, NSGDA, all with ``compile=True``) and each tensor count,
a fresh child process builds ``many-small`` parameters (that many tensors of 256 elements) and times its first
step, which includes ``torch.compile``, then the median of ``--steps`` later steps. Every cell is a cold
compile: its own process, with an empty inductor cache directory (``TORCHINDUCTOR_CACHE_DIR``, and
``TRITON_CACHE_DIR`` inside it) and inductor's FX graph and AOTAutograd caches off
(``TORCHINDUCTOR_FX_GRAPH_CACHE=0``, ``TORCHINDUCTOR_AUTOGRAD_CACHE=0``), so nothing compiled for one cell is
reused by another. The table gives each first step's ratio to the same optimizer's first step at the
smallest count: the cost a model's tensor count adds to compiling. ``--repeats N`` runs every cell N times,
round-robin, and reports medians.

Usage::

    .venv/bin/python benchmarks/compile_time.py                          # 50 and 500 tensors, all three
    .venv/bin/python benchmarks/compile_time.py --tensors 50 150 500 2000 --only AdaLo AdamAtan2
    .venv/bin/python benchmarks/compile_time.py --device cuda --repeats 3

Results go to ``benchmarks/results/compile_time.json`` (``compile_time_<device>.json`` off the CPU), with the
git commit measured. A cell that runs past ``--timeout`` seconds is stopped and shown as ``> T (stopped)``; one
that fails is shown with its last error line, and the exit status is then 1. Bad arguments stop the script
before anything runs (exit status 2, one line).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import torch
import torch._functorch.config
import torch._inductor.config

sys.path.insert(0, str(Path(__file__).resolve().parent))

from common import (  # noqa: E402
    OneLineArgumentParser,
    device_problem,
    fail,
    git_commit,
    machine_info,
    make_params,
    markdown_table,
    median_ms,
    shapes_named,
    timed,
    write_json,
)
from step_speed import candidates, step  # noqa: E402

from lightning_opt.registry import REGISTRY  # noqa: E402

PROG = "compile_time.py"
OPTIMIZERS = ("AdaLo", "AdamAtan2", "NSGDA")
"""The optimizers timed by default (registry names, compiled)."""
ELEMENTS = 256  # elements per tensor of the ``many-small`` set

COLD_CACHE_ENV = {"TORCHINDUCTOR_FX_GRAPH_CACHE": "0", "TORCHINDUCTOR_AUTOGRAD_CACHE": "0"}
"""Environment of a child besides its fresh cache directories: inductor's FX graph and AOTAutograd caches off."""


def build_parser() -> argparse.ArgumentParser:
    parser = OneLineArgumentParser(prog=PROG, description=__doc__.splitlines()[0])
    parser.add_argument(
        "--tensors", type=int, nargs="+", default=[50, 500], metavar="N",
        help="tensor counts of the many-small set (default: 50 500)",
    )
    parser.add_argument(
        "--only", nargs="+", choices=list(REGISTRY), metavar="NAME",
        help=f"optimizers to time, compiled (default: {' '.join(OPTIMIZERS)}; any of {', '.join(REGISTRY)})",
    )
    parser.add_argument("--device", default="cpu", help="where the parameters live: cpu (default), cuda, cuda:1...")
    parser.add_argument("--repeats", type=int, default=1, help="cold compiles per cell; medians reported (default 1)")
    parser.add_argument("--steps", type=int, default=10, help="timed steps after the first two (default 10)")
    parser.add_argument(
        "--timeout", type=float, default=1800.0, help="seconds one cell may take before it is stopped (default 1800)"
    )
    parser.add_argument(
        "--out", type=Path,
        help="where the JSON results go (default: benchmarks/results/compile_time[_DEVICE].json)",
    )
    parser.add_argument("--child", action="store_true", help=argparse.SUPPRESS)  # one cell, in a fresh process
    return parser


def argument_problem(args: argparse.Namespace) -> str | None:
    """Why these arguments cannot run (one line), or ``None``."""
    bad = [count for count in args.tensors if count <= 0]
    if bad:
        return f"--tensors {' '.join(map(str, args.tensors))}: every count must be > 0"
    if len(set(args.tensors)) != len(args.tensors):
        return f"--tensors {' '.join(map(str, args.tensors))}: each count once"
    for name in ("repeats", "steps"):
        if getattr(args, name) < 1:
            return f"--{name} {getattr(args, name)}: must be >= 1"
    if not args.timeout > 0:
        return f"--timeout {args.timeout}: must be > 0"
    return device_problem(args.device)


def default_out(device: str) -> Path:
    """``benchmarks/results/compile_time.json`` on the CPU, ``compile_time_<device>.json`` elsewhere."""
    if torch.device(device).type == "cpu":
        return Path("benchmarks/results/compile_time.json")
    return Path(f"benchmarks/results/compile_time_{device.replace(':', '')}.json")


def run_cell_here(name: str, tensors: int, device: str, steps: int) -> dict[str, Any]:
    """Time compiled ``name`` on ``tensors`` tensors in this process: first step, then ``steps`` later steps.

    Returns ``first_step_s`` (compile included), ``build_s`` (construction), ``second_step_s`` (a recompile
    shows here), ``steady_ms`` (median of the timed steps), ``graphs`` (dynamo's unique graphs), ``commit``
    (the code measured: the engine may change on disk between cells) and ``caches`` (the inductor cache
    directory, and whether the FX graph and AOTAutograd caches were on)."""
    from torch._dynamo.utils import counters

    (candidate,) = [c for c in candidates() if c.name == f"{name}-compiled"]
    params = make_params(shapes_named("many-small", tensors), device=device)
    start = time.perf_counter()
    optimizer = candidate.build(params)
    build_s = time.perf_counter() - start
    first_step_s = timed(lambda: step(candidate, optimizer), device)
    second_step_s = timed(lambda: step(candidate, optimizer), device)
    step(candidate, optimizer)
    samples = [timed(lambda: step(candidate, optimizer), device) for _ in range(steps)]
    return {
        "first_step_s": first_step_s,
        "build_s": build_s,
        "second_step_s": second_step_s,
        "steady_ms": median_ms(samples),
        "graphs": counters["stats"]["unique_graphs"],
        "commit": git_commit(),
        "caches": {  # what made this compile cold, as the child saw it
            "dir": os.environ.get("TORCHINDUCTOR_CACHE_DIR"),
            "fx_graph_cache": torch._inductor.config.fx_graph_cache,
            "autograd_cache": torch._functorch.config.enable_autograd_cache,
        },
    }


def run_cell_cold(name: str, tensors: int, device: str, steps: int, timeout: float) -> dict[str, Any]:
    """:func:`run_cell_here` in a fresh child process with empty compile caches; ``{"error": ...}`` if it fails,
    ``{"timeout_s": timeout}`` if it runs past ``timeout`` seconds (a measurement: the compile takes longer)."""
    cache = tempfile.mkdtemp(prefix="inductor-cold-")
    env = {**os.environ, **COLD_CACHE_ENV, "TORCHINDUCTOR_CACHE_DIR": cache,
           "TRITON_CACHE_DIR": os.path.join(cache, "triton")}
    command = [
        sys.executable, str(Path(__file__).resolve()), "--child", "--only", name, "--tensors", str(tensors),
        "--device", device, "--steps", str(steps),
    ]
    # Its own process group, so that a stopped cell takes inductor's compile workers down with it.
    child = subprocess.Popen(
        command, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, start_new_session=True
    )
    try:
        stdout, stderr = child.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        os.killpg(child.pid, signal.SIGKILL)
        child.communicate()
        return {"timeout_s": timeout}
    finally:
        shutil.rmtree(cache, ignore_errors=True)
    lines = stdout.strip().splitlines()
    if child.returncode != 0 or not lines:
        last = (stderr.strip().splitlines() or [f"exit status {child.returncode}"])[-1]
        return {"error": last}
    return json.loads(lines[-1])


def summarise(runs: list[dict[str, Any]]) -> dict[str, Any]:
    """Medians over the repeats of one cell (``error`` or ``timeout_s`` set if any repeat failed or was stopped)."""
    for key in ("error", "timeout_s"):
        stopped = [run[key] for run in runs if key in run]
        if stopped:
            return {key: stopped[0], "runs": runs}
    keys = ("first_step_s", "build_s", "second_step_s", "steady_ms", "graphs")
    commits = sorted({run.get("commit", "unknown") for run in runs})
    return {**{key: statistics.median(run[key] for run in runs) for key in keys}, "commits": commits, "runs": runs}


def main(argv: list[str] | None = None) -> None:
    args = build_parser().parse_args(argv)
    problem = argument_problem(args)
    if problem is not None:
        fail(PROG, problem)
    names = args.only or list(OPTIMIZERS)
    if args.child:
        print(json.dumps(run_cell_here(names[0], args.tensors[0], args.device, args.steps)))
        return

    counts = list(args.tensors)
    out = args.out or default_out(args.device)
    device = torch.device(args.device)
    where = torch.cuda.get_device_name(device) if device.type == "cuda" else f"{torch.get_num_threads()} CPU threads"
    print(f"cold first steps, many-small ({ELEMENTS} elements a tensor), {where}; commit {machine_info()['commit']}")
    runs: dict[tuple[str, int], list[dict[str, Any]]] = {(name, count): [] for name in names for count in counts}
    failed = False
    for repeat in range(args.repeats):
        for name in names:
            for count in counts:
                run = run_cell_cold(name, count, args.device, args.steps, args.timeout)
                runs[name, count].append(run)
                label = f"  {name}, {count} tensors, repeat {repeat + 1}/{args.repeats}:"
                if "error" in run:
                    failed = True
                    print(f"{label} failed: {run['error']}", flush=True)
                elif "timeout_s" in run:
                    print(f"{label} stopped after {run['timeout_s']:g} s (--timeout)", flush=True)
                else:
                    print(
                        f"{label} first step {run['first_step_s']:.1f} s, then {run['steady_ms']:.2f} ms/step"
                        f" ({run['graphs']} graphs; {run.get('commit', 'unknown')})",
                        flush=True,
                    )

    smallest = min(counts)
    rows, records = [], []
    for name in names:
        cells = {count: summarise(runs[name, count]) for count in counts}
        base = cells[smallest].get("first_step_s")
        for count in counts:
            cell = cells[count]
            record = {"optimizer": name, "tensors": count, **cell}
            if "error" in cell:
                rows.append([name, count, f"failed: {cell['error']}", "", ""])
            elif "timeout_s" in cell:
                rows.append([name, count, f"> {cell['timeout_s']:g} (stopped)", "", ""])
            else:
                ratio = cell["first_step_s"] / base if base else None
                record["x_smallest"] = ratio
                rows.append([
                    name, count, f"{cell['first_step_s']:.1f}", "" if ratio is None else f"{ratio:.2f}",
                    f"{cell['steady_ms']:.2f}",
                ])
            records.append(record)
    headers = ["optimizer", "tensors", "first step s", f"x {smallest} tensors", "steady ms/step"]
    print()
    print(f"median of {args.repeats} cold compile(s) per cell; steady: median of {args.steps} steps after 2")
    print(markdown_table(headers, rows))
    write_json(
        out,
        {
            "machine": machine_info(device),
            "device": str(device),
            "elements_per_tensor": ELEMENTS,
            "repeats": args.repeats,
            "steps": args.steps,
            "cold_cache_env": COLD_CACHE_ENV,
            "created": time.strftime("%Y-%m-%d %H:%M:%S"),
            "results": records,
        },
    )
    print(f"\nwrote {out}")
    if failed:
        sys.exit(1)


if __name__ == "__main__":
    main()
