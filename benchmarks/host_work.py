"""Where a step's time goes: the kernels, or the host work around them (Python, dynamo's guards, launches).

Each candidate (the names of ``step_speed.py``) is timed on two parameter sets, round-robin with the copy-bandwidth
probe: the standard set, and its *host twin*, where every tensor that the engine runs alone and in place (more than
``STACK_NUMEL`` elements) is replaced by one just above that size, with its sizes of 1 kept. The twin keeps the
step's plan (the same stacks, chunks and compiled calls, so the same host work per step) while its kernels move
about 1/38 of the bytes (0.54M parameters against 20.9M). So the twin's step time bounds the host work from above,
and the standard step minus the twin's is about the kernels' time, compared here with the bandwidth floor.

With ``--guarded``, every round also times a step of each candidate whose compiled calls all go through dynamo's
guards (``lightning_opt.engine.replay.ENABLED = False``; after it, one untimed step lets the replay resume), so the
table shows, in the same run, what skipping the guards saves (on torch's optimizers, nothing).

Usage::

    .venv/bin/python benchmarks/host_work.py                                  # AdamW fused, AdaLo, NSGDA, AdamAtan2
    .venv/bin/python benchmarks/host_work.py --only NSGDA-compiled AdamW-fused --steps 30
    .venv/bin/python benchmarks/host_work.py --guarded                        # and each step through dynamo's guards
"""

from __future__ import annotations

import math
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))

from common import (  # noqa: E402
    STANDARD_SHAPES,
    BandwidthProbe,
    OneLineArgumentParser,
    device_problem,
    fail,
    machine_info,
    make_params,
    markdown_table,
    median_ms,
    timed,
    write_json,
)
from step_speed import candidates, step, unknown_names_message  # noqa: E402

from lightning_opt.engine import replay  # noqa: E402
from lightning_opt.engine.stacks import STACK_NUMEL  # noqa: E402

DEFAULT_CANDIDATES = ("AdamW-fused", "AdaLo-compiled", "NSGDA-compiled", "AdamAtan2-compiled")


def host_twin(shape: tuple[int, ...], threshold: int = STACK_NUMEL) -> tuple[int, ...]:
    """The shape standing in for ``shape`` in the host twin: ``shape`` itself if it has at most ``threshold``
    elements (a stacked tensor), else the same number of dimensions, its sizes of 1 kept, every other size 2
    but the last, which takes the size that makes just over ``threshold`` elements (still run alone, in place).

    Example:
        >>> host_twin((1024, 1024)), host_twin((64, 64, 3, 3)), host_twin((1, 50000)), host_twin((4096,))
        ((2, 8193), (2, 2, 2, 2049), (1, 16385), (4096,))
    """
    if math.prod(shape) <= threshold:
        return shape
    sizes = [1 if size == 1 else 2 for size in shape]
    last = max(i for i, size in enumerate(shape) if size != 1)
    others = math.prod(sizes[:last] + sizes[last + 1 :])
    sizes[last] = threshold // others + 1
    return tuple(sizes)


def main(argv: list[str] | None = None) -> None:
    all_candidates = {candidate.name: candidate for candidate in candidates()}
    parser = OneLineArgumentParser(prog="host_work.py", description=__doc__.splitlines()[0])
    parser.add_argument("--only", nargs="+", metavar="NAME", default=list(DEFAULT_CANDIDATES),
                        help=f"candidates (step_speed.py's names; default: {' '.join(DEFAULT_CANDIDATES)})")
    parser.add_argument("--steps", type=int, default=20, help="timed steps per candidate and set (default 20)")
    parser.add_argument("--warmup", type=int, default=3, help="untimed steps first, compiles included (default 3)")
    parser.add_argument("--device", default="cpu", help="cpu (default) or a CUDA device")
    parser.add_argument("--guarded", action="store_true",
                        help="also time each step with every compiled call through dynamo's guards (no replay)")
    parser.add_argument("--out", type=Path, default=Path("benchmarks/results/host_work.json"))
    args = parser.parse_args(argv)
    problem = unknown_names_message(args.only, list(all_candidates), parser.prog)
    if problem is not None:
        print(problem, file=sys.stderr)
        sys.exit(2)
    if args.steps < 1 or args.warmup < 1:
        fail(parser.prog, f"--steps {args.steps} and --warmup {args.warmup} must be at least 1")
    device_message = device_problem(args.device)
    if device_message is not None:
        fail(parser.prog, device_message)
    device = torch.device(args.device)

    sets = {"standard": STANDARD_SHAPES, "twin": tuple(host_twin(shape) for shape in STANDARD_SHAPES)}
    numel = {name: sum(math.prod(shape) for shape in shapes) for name, shapes in sets.items()}
    print(f"standard set: {numel['standard'] / 1e6:.1f}M parameters; host twin: {numel['twin'] / 1e6:.2f}M")
    runs = []  # (candidate, set name, optimizer, samples)
    for name in args.only:
        candidate = all_candidates[name]
        for set_name, shapes in sets.items():
            optimizer = candidate.build(make_params(shapes, device=device))
            for _ in range(args.warmup):
                step(candidate, optimizer)
            runs.append((candidate, set_name, optimizer, [], []))
        print(f"  ready: {name}", flush=True)
    probe, bandwidths = BandwidthProbe(numel["standard"], device), []
    for _ in range(args.steps):  # round-robin: every run sees the same machine conditions
        bandwidths.append(probe.sample())
        for candidate, _, optimizer, samples, guarded_samples in runs:
            samples.append(timed(lambda: step(candidate, optimizer), device))
            if args.guarded:
                replay.ENABLED = False
                guarded_samples.append(timed(lambda: step(candidate, optimizer), device))
                replay.ENABLED = True
                step(candidate, optimizer)  # a guarded call again, after which the replay resumes
    bandwidth = sorted(bandwidths)[len(bandwidths) // 2]

    medians = {(candidate.name, set_name): median_ms(samples) for candidate, set_name, _, samples, _ in runs}
    guarded = {(candidate.name, set_name): median_ms(samples) for candidate, set_name, _, _, samples in runs
               if samples}
    rows, records = [], []
    for name in args.only:
        candidate = all_candidates[name]
        full, twin = medians[(name, "standard")], medians[(name, "twin")]
        floor = candidate.floor_ms(numel["standard"], bandwidth)
        rows.append([name, f"{full:.1f}", f"{full / floor:.2f}", f"{twin:.2f}", f"{full - twin:.1f}",
                     f"{(full - twin) / floor:.2f}"])
        records.append({"name": name, "step_ms": full, "floor_ms": floor, "twin_step_ms": twin,
                        "kernels_ms": full - twin, "x_floor": full / floor, "kernels_x_floor": (full - twin) / floor})
        if args.guarded:
            full_guarded, twin_guarded = guarded[(name, "standard")], guarded[(name, "twin")]
            rows[-1] += [f"{full_guarded:.1f}", f"{full_guarded / floor:.2f}", f"{twin_guarded:.2f}"]
            records[-1].update(guarded_step_ms=full_guarded, guarded_twin_step_ms=twin_guarded)
    print(f"\ncopy bandwidth (median of {len(bandwidths)}): {bandwidth / 1e9:.1f} GB/s; {args.steps} timed steps each")
    headers = ["candidate", "step ms", "x floor", "host twin ms", "step - twin ms", "(step - twin) x floor"]
    if args.guarded:
        headers += ["guarded step ms", "guarded x floor", "guarded host twin ms"]
    print(markdown_table(headers, rows))
    write_json(args.out, {"machine": machine_info(device), "device": str(device), "numel": numel,
                          "copy_bandwidth_bytes_per_s": bandwidth, "steps": args.steps,
                          "created": time.strftime("%Y-%m-%d %H:%M:%S"), "results": records})
    print(f"\nwrote {args.out}")


if __name__ == "__main__":
    main()
