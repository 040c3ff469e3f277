"""The engine's CPU targets (issue "an engine as fast on GPUs and with hundreds of tensors"), measured in one run.

Runs, one after the other, each in its own process:

1. ``compile_time.py``: the cold first step of compiled AdaLo and AdamAtan2 with 50 and 500 small tensors;
2. ``step_speed.py --shapes many-small`` with 500 and with 2,000 tensors: eager and compiled AdaLo, NSGDA and
   AdamAtan2 against torch's foreach and fused AdamW;
3. ``step_speed.py`` on the standard set: compiled AdaLo and NSGDA against their bandwidth floor;

then prints one table: each target, the value measured, the limit, and whether it is met. Every ratio
compares candidates timed in the same process (round-robin), never across processes. The results (and
the scripts' own JSON files) go to ``benchmarks/results/engine_targets*.json``.

Usage::

    .venv/bin/python benchmarks/engine_targets.py            # about 10 minutes on a 2-core CPU
    .venv/bin/python benchmarks/engine_targets.py --quick    # fewer timed steps (a smoke run)
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

from common import OneLineArgumentParser, machine_info, markdown_table, write_json  # noqa: E402

HERE = Path(__file__).resolve().parent
RESULTS = HERE / "results"
OPTIMIZERS = ("AdaLo", "NSGDA", "AdamAtan2")
COMPILE_LIMIT_S = 30.0
COMPILE_GROWTH_LIMIT = 1.5
COMPILED_VS_FUSED_LIMIT = 1.3
EAGER_VS_FOREACH_LIMIT = 1.0
FLOOR_LIMIT = 1.5
MANY_SMALL_CANDIDATES = ("AdamW-foreach", "AdamW-fused", *(f"{n}{c}" for n in OPTIMIZERS for c in ("", "-compiled")))
STANDARD_CANDIDATES = ("AdamW-fused", "AdaLo-compiled", "NSGDA-compiled")


def run(label: str, script: str, *args: str) -> dict[str, Any]:
    """Run a benchmark script in its own process, its progress shown as it goes; return its JSON results
    (also kept as ``results/engine_targets_<label>.json``)."""
    out = RESULTS / f"engine_targets_{label}.json"
    command = [sys.executable, str(HERE / script), *args, "--out", str(out)]
    print("$", " ".join(command[1:]), flush=True)
    subprocess.run(command, check=True)
    return json.loads(out.read_text())


def by_name(results: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {row["name"]: row for row in results["results"]}


def targets(steps: int) -> list[list[Any]]:
    """Measure everything; return the table's rows: target, measured, limit, met."""
    rows: list[list[Any]] = []
    compile_times = run("compile_time", "compile_time.py", "--tensors", "50", "500", "--only", "AdaLo", "AdamAtan2")
    cells = {(row["optimizer"], row["tensors"]): row for row in compile_times["results"]}
    for name in ("AdaLo", "AdamAtan2"):
        first, last = cells[(name, 50)]["first_step_s"], cells[(name, 500)]["first_step_s"]
        rows.append([f"{name} compiled, first step with 500 tensors (s)", f"{last:.1f}", f"<= {COMPILE_LIMIT_S:.0f}"])
        growth = f"{last / first:.2f}"
        rows.append([f"{name} compiled, first step 500 / 50 tensors", growth, f"<= {COMPILE_GROWTH_LIMIT}"])
    for tensors in (500, 2000):
        speed = by_name(
            run(
                f"many_small_{tensors}", "step_speed.py", "--shapes", "many-small", "--tensors", str(tensors),
                "--steps", str(steps), "--only", *MANY_SMALL_CANDIDATES,
            )
        )
        for name in OPTIMIZERS:
            rows.append([
                f"{name} compiled / AdamW fused, {tensors} tensors",
                f"{speed[f'{name}-compiled']['x_AdamW-fused']:.2f}", f"<= {COMPILED_VS_FUSED_LIMIT}",
            ])
            rows.append([
                f"{name} eager / AdamW foreach, {tensors} tensors",
                f"{speed[name]['x_AdamW-foreach']:.2f}", f"<= {EAGER_VS_FOREACH_LIMIT}",
            ])
    standard = by_name(
        run("standard", "step_speed.py", "--steps", str(steps), "--only", *STANDARD_CANDIDATES)
    )
    for name in ("AdaLo", "NSGDA"):
        rows.append([
            f"{name} compiled / its bandwidth floor, standard set",
            f"{standard[f'{name}-compiled']['x_floor']:.2f}", f"<= {FLOOR_LIMIT}",
        ])
    for row in rows:
        row.append("met" if float(row[1]) <= float(row[2].removeprefix("<= ")) else "MISSED")
    return rows


def main(argv: list[str] | None = None) -> None:
    parser = OneLineArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="5 timed steps per candidate instead of 20")
    args = parser.parse_args(argv)
    RESULTS.mkdir(parents=True, exist_ok=True)
    for old in RESULTS.glob("engine_targets_*.json"):
        old.unlink()
    rows = targets(steps=5 if args.quick else 20)
    table = markdown_table(["target", "measured", "limit", ""], rows)
    print("\n" + table)
    write_json(RESULTS / "engine_targets.json", {"machine": machine_info(), "rows": rows})


if __name__ == "__main__":
    main()
