"""The GPU benchmark in one command: step speed on the standard set and GPT-2 small's shapes, then cold compile
time against the tensor count, all on CUDA.

It runs, one after the other, with every table printed and every result written under ``benchmarks/results/``:

1. ``step_speed.py --device cuda --shapes standard`` (50 tensors, 20.9M parameters) and
2. ``step_speed.py --device cuda --shapes gpt2-small`` (148 tensors, 124.4M parameters), each with torch's
   AdamW (fused, foreach) and AdaLo, NSGDA, AdamAtan2 eager and compiled, and cautious AdamAtan2 compiled
   (``step_speed_<shapes>_cuda.json``);
3. ``compile_time.py --device cuda --tensors 50 500`` (cold first steps of the compiled optimizers on 50 and
   500 tensors of 256 elements; ``compile_time_cuda.json``), a cell stopped (and shown as ``> 90``) after
   ``--cell-timeout`` seconds, 90 by default, so that a slow compile cannot stretch the run.

On an H200 the whole run is meant to take about five minutes, most of it compiling. Without CUDA it stops at
once with one line on stderr (exit status 2); if a stage fails the others still run and the exit status is 1.

Usage::

    .venv/bin/python benchmarks/gpu.py                     # on a machine with an NVIDIA GPU
    .venv/bin/python benchmarks/gpu.py --device cuda:1 --steps 50
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))

from common import OneLineArgumentParser, device_problem, fail  # noqa: E402

PROG = "gpu.py"
HERE = Path(__file__).resolve().parent
STEP_SPEED_CANDIDATES = (
    "AdamW-fused", "AdamW-foreach", "AdaLo", "AdaLo-compiled", "NSGDA", "NSGDA-compiled",
    "AdamAtan2", "AdamAtan2-compiled", "AdamAtan2-compiled+cautious",
)
"""The rows of the README's GPU table (``step_speed.py`` candidate names)."""


def build_parser() -> argparse.ArgumentParser:
    parser = OneLineArgumentParser(prog=PROG, description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cuda", help="the CUDA device (default: cuda)")
    parser.add_argument("--steps", type=int, default=30, help="timed steps per step_speed candidate (default 30)")
    parser.add_argument(
        "--cell-timeout", type=int, default=90,
        help="seconds one cold compile_time cell may take before it is stopped and shown as '> T' (default 90)",
    )
    return parser


def stages(device: str, steps: int, cell_timeout: int) -> list[list[str]]:
    """The commands the benchmark runs, in order (arguments after ``python``)."""
    step_speed = [str(HERE / "step_speed.py"), "--device", device, "--steps", str(steps), "--warmup", "3"]
    return [
        [*step_speed, "--shapes", "standard", "--only", *STEP_SPEED_CANDIDATES],
        [*step_speed, "--shapes", "gpt2-small", "--only", *STEP_SPEED_CANDIDATES],
        [
            str(HERE / "compile_time.py"), "--device", device, "--tensors", "50", "500",
            "--timeout", str(cell_timeout),
        ],
    ]


def main(argv: list[str] | None = None) -> None:
    args = build_parser().parse_args(argv)
    if not torch.cuda.is_available():
        fail(PROG, f"CUDA is not available here (torch {torch.__version__}); the GPU benchmark needs an NVIDIA GPU")
    problem = device_problem(args.device)
    if problem is None and torch.device(args.device).type != "cuda":
        problem = f"--device {args.device!r}: the GPU benchmark runs on a CUDA device"
    if problem is None and (args.steps < 1 or args.cell_timeout < 1):
        problem = f"--steps {args.steps} --cell-timeout {args.cell_timeout}: both must be >= 1"
    if problem is not None:
        fail(PROG, problem)

    start, failed = time.perf_counter(), []
    print(f"GPU benchmark on {torch.cuda.get_device_name(args.device)}, torch {torch.__version__}", flush=True)
    for command in stages(args.device, args.steps, args.cell_timeout):
        print(f"\n$ python benchmarks/{Path(command[0]).name} {' '.join(command[1:])}", flush=True)
        stage_start = time.perf_counter()
        result = subprocess.run([sys.executable, *command], cwd=HERE.parent, check=False)
        print(f"({time.perf_counter() - stage_start:.0f} s, exit status {result.returncode})", flush=True)
        if result.returncode != 0:
            failed.append(Path(command[0]).name)
    print(f"\nGPU benchmark done in {time.perf_counter() - start:.0f} s; results in benchmarks/results/")
    if failed:
        print(f"{PROG}: failed stages: {', '.join(failed)}", file=sys.stderr)
        sys.exit(1)


if __name__ == "__main__":
    main()
