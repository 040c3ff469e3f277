"""Optimizer step speed on a parameter set (the standard 20.9M, GPT-2 small, or many small tensors), on the
CPU or a GPU, with ratios to baselines from the same run.

For every registered optimizer, eager and compiled (``compile=True``), beside torch's AdamW (per-tensor
loop, foreach, fused) and public implementations of the same algorithm where one is installed
(lucidrains' ``adam-atan2-pytorch``). Candidates are timed round-robin, so that the machine's noise
hits all of them alike, and reported as medians. The bandwidth floor of each optimizer is the bytes
its ideal fused step must read and write divided by the copy bandwidth measured in the same run.

Usage::

    .venv/bin/python benchmarks/step_speed.py                 # all candidates, 30 timed steps each
    .venv/bin/python benchmarks/step_speed.py --steps 10 --only AdaLo AdamW-fused
    .venv/bin/python benchmarks/step_speed.py --help          # lists the candidates
    .venv/bin/python benchmarks/step_speed.py --shapes many-small --tensors 2000 --only AdamW-fused AdaLo-compiled
    .venv/bin/python benchmarks/step_speed.py --device cuda --shapes gpt2-small

``--shapes`` picks the parameter set: ``standard`` (50 tensors, 20.9M parameters, the default),
``gpt2-small`` (148 tensors, 124.4M) or ``many-small`` (``--tensors`` tensors of 256 elements, 500 by
default: the per-tensor host work of a step). On a CUDA ``--device`` every timing waits for the GPU.
``benchmarks/gpu.py`` runs the GPU table (this script on the standard set and on GPT-2 small's shapes, then
``compile_time.py``) in one command; ``compile_time.py`` times cold compiles against the tensor count.

An unknown name after ``--only`` stops the script (exit status 2, one line listing the candidates) before
anything runs or the saved results are overwritten.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import textwrap
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
import torch._inductor.config

sys.path.insert(0, str(Path(__file__).resolve().parent))

from common import (  # noqa: E402
    SHAPE_SETS,
    BandwidthProbe,
    device_problem,
    machine_info,
    make_params,
    markdown_table,
    median_ms,
    shapes_named,
    timed,
    write_json,
)

from lightning_opt.registry import REGISTRY  # noqa: E402
from lightning_opt.transforms.gradient import soft_clip_  # noqa: E402

ADAMW_ACCESSES = 7  # reads p, g, m, v; writes p, m, v
TRANSFORM_ACCESSES = 2  # a fused step with unit-wise gradient transforms first reads g and p once for the norms
TRANSFORMS = ("centralize", "soft_clip")


class SoftClippedAdamW(torch.optim.AdamW):
    """torch's fused AdamW after soft-clipping every gradient in place: what the SoftClip callback costs."""

    @torch.no_grad()
    def step(self, closure=None):  # type: ignore[override]
        for group in self.param_groups:
            for param in group["params"]:
                if param.grad is not None:
                    soft_clip_(param.grad, param)
        return super().step(closure)


@dataclass
class Candidate:
    name: str
    algorithm: str
    path: str
    build: Callable[[list[torch.Tensor]], torch.optim.Optimizer]
    memory_accesses: int
    loss_driven: bool = False
    samples: list[float] = field(default_factory=list)
    first_step_s: float = 0.0

    def floor_ms(self, numel: int, bandwidth: float) -> float:
        """The bandwidth floor of one step on ``numel`` fp32 parameters: the bytes of :attr:`memory_accesses`
        parameter-sized reads and writes at ``bandwidth`` bytes per second, in milliseconds."""
        return self.memory_accesses * 4 * numel / bandwidth * 1e3


def eager_and_compiled(
    name: str, suffix: str = "", algorithm: str | None = None, extra_accesses: int = 0, **kwargs: Any
) -> list[Candidate]:
    """The eager and compiled candidates of the registered optimizer ``name`` built with ``kwargs``, named
    ``name[-compiled]suffix``; ``extra_accesses`` adds to the registry's parameter-sized accesses."""
    spec = REGISTRY[name]
    return [
        Candidate(
            f"{name}{'-compiled' if compiled else ''}{suffix}",
            algorithm or name,
            "lightning-opt compiled" if compiled else "lightning-opt eager",
            lambda p, c=compiled: spec.cls(p, compile=c, **kwargs),
            spec.memory_accesses + extra_accesses,
            spec.loss_driven,
        )
        for compiled in (False, True)
    ]


def candidates() -> list[Candidate]:
    found = [
        Candidate("AdamW-loop", "AdamW", "torch loop", lambda p: torch.optim.AdamW(p, foreach=False), ADAMW_ACCESSES),
        Candidate(
            "AdamW-foreach", "AdamW", "torch foreach", lambda p: torch.optim.AdamW(p, foreach=True), ADAMW_ACCESSES
        ),
        Candidate("AdamW-fused", "AdamW", "torch fused", lambda p: torch.optim.AdamW(p, fused=True), ADAMW_ACCESSES),
    ]
    for spec in REGISTRY.values():
        found += eager_and_compiled(spec.name)
    found += eager_and_compiled("AdaLo", "+gc+softclip", "AdaLo + grad_transforms", TRANSFORM_ACCESSES,
                                grad_transforms=TRANSFORMS)
    found += eager_and_compiled("AdamAtan2", "+cautious", "AdamAtan2, cautious mask", cautious=True)
    found.append(
        Candidate(
            "AdamW-fused+SoftClip",
            "AdamW + soft clip",
            "soft_clip_ on p.grad, torch fused",
            lambda p: SoftClippedAdamW(p, fused=True),
            ADAMW_ACCESSES + TRANSFORM_ACCESSES,
        )
    )
    try:
        from adam_atan2_pytorch import AdamAtan2 as PublicAdamAtan2
    except ImportError:
        pass
    else:
        found.append(
            Candidate(
                "AdamAtan2-lucidrains", "AdamAtan2", "adam-atan2-pytorch", lambda p: PublicAdamAtan2(p, lr=1e-3), 7
            )
        )
    try:
        import pytorch_optimizer
    except ImportError:
        pass
    else:  # SM3 and Amos as pytorch_optimizer writes them (its defaults; accesses: p, g read, p written)
        found += [
            Candidate("SM3-pytorch_optimizer", "SM3", "pytorch_optimizer", lambda p: pytorch_optimizer.SM3(p), 3),
            Candidate("Amos-pytorch_optimizer", "Amos", "pytorch_optimizer", lambda p: pytorch_optimizer.Amos(p), 3),
        ]
    found += adafactor_peers()
    found += smmf_peers()
    found += adam_family_peers()
    return found


def smmf_peers() -> list[Candidate]:
    """The SMMF authors' code (eai-lab/SMMF, package ``SMMF``) where it is installed: pytorch_optimizer has no
    SMMF. Accesses: p, g read, p written (its sign and factors are small)."""
    try:
        from SMMF import SMMF as AuthorsSMMF
    except ImportError:
        return []
    return [Candidate("SMMF-authors", "SMMF", "eai-lab/SMMF", lambda p: AuthorsSMMF(p), 3)]


def adafactor_peers() -> list[Candidate]:
    """torch's Adafactor (its single-tensor loop, the default) and pytorch_optimizer's AdaFactor without a first
    moment (``betas=(None, 0.999)``; its default keeps one in bfloat16), as lightning-opt's Adafactor defaults.
    Accesses: p, g read twice (moments, update), p written."""
    peers = [Candidate("Adafactor-torch", "Adafactor", "torch loop", lambda p: torch.optim.Adafactor(p), 5)]
    try:
        from pytorch_optimizer import AdaFactor
    except ImportError:
        return peers
    build = lambda p: AdaFactor(p, lr=None, betas=(None, 0.999))  # noqa: E731
    return peers + [Candidate("Adafactor-pytorch_optimizer", "Adafactor", "pytorch_optimizer", build, 5)]


def adam_family_peers() -> list[Candidate]:
    """pytorch_optimizer's DiffGrad, AdaNorm, PNM and AdaPNM (their defaults; foreach where they support it),
    the oracles of lightning-opt's presets; accesses as the presets' ideal fused steps."""
    try:
        import pytorch_optimizer
    except ImportError:
        return []
    return [
        Candidate(f"{name}-pytorch_optimizer", name, "pytorch_optimizer", build, REGISTRY[name].memory_accesses)
        for name, build in (
            ("DiffGrad", lambda p: pytorch_optimizer.DiffGrad(p)),
            ("AdaNorm", lambda p: pytorch_optimizer.AdaNorm(p)),
            ("PNM", lambda p: pytorch_optimizer.PNM(p)),
            ("AdaPNM", lambda p: pytorch_optimizer.AdaPNM(p)),
        )
    ]


def step(candidate: Candidate, optimizer: torch.optim.Optimizer) -> None:
    if candidate.loss_driven:
        optimizer.set_loss(1.0)  # type: ignore[attr-defined]
    optimizer.step()


def build_parser(names: list[str]) -> argparse.ArgumentParser:
    """The command line; ``names`` are the candidates, listed in ``--help``."""
    # wrapped here, never inside a name: argparse's own wrapping breaks at hyphens ("AdamW-" / "fused+SoftClip")
    candidates = textwrap.fill("candidates: " + ", ".join(names), width=100, break_on_hyphens=False)
    parser = argparse.ArgumentParser(
        description=__doc__.splitlines()[0],
        epilog=candidates,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--steps", type=int, default=30, help="timed steps per candidate")
    parser.add_argument("--warmup", type=int, default=3, help="untimed steps per candidate (the first compiles)")
    parser.add_argument(
        "--only", nargs="+", metavar="NAME", help="candidate names to run (default: all; see the list below)"
    )
    parser.add_argument(
        "--shapes", choices=SHAPE_SETS, default="standard", help="the parameter set (default: standard)"
    )
    parser.add_argument("--tensors", type=int, help="how many tensors 'many-small' has (default: 500)")
    parser.add_argument("--device", default="cpu", help="where the parameters live: cpu (default), cuda, cuda:1...")
    parser.add_argument(
        "--out",
        type=Path,
        help="where the JSON results go (default: benchmarks/results/step_speed[_SHAPES_DEVICE].json)",
    )
    parser.add_argument(
        "--warm-cache",
        action="store_true",
        help="reuse inductor's on-disk caches (default: a fresh cache, so 'first step' is a cold compile)",
    )
    return parser


def unknown_names_message(only: list[str] | None, names: list[str], prog: str = "step_speed.py") -> str | None:
    """One line (from the script ``prog``) naming the ``--only`` values that are not candidates, and the
    candidates; ``None`` if all are."""
    unknown = [name for name in only or () if name not in names]
    if not unknown:
        return None
    return f"{prog}: error: unknown --only {', '.join(map(repr, unknown))}; candidates: {', '.join(names)}"


def setup_problem(args: argparse.Namespace) -> str | None:
    """One line saying why ``--shapes``, ``--tensors`` or ``--device`` cannot run here, or ``None``."""
    if args.tensors is not None and (args.shapes != "many-small" or args.tensors <= 0):
        return f"step_speed.py: error: --tensors {args.tensors} needs --shapes many-small and a count > 0"
    problem = device_problem(args.device)
    return None if problem is None else f"step_speed.py: error: {problem}"


def default_out(shapes: str, tensors: int | None, device: str) -> Path:
    """``benchmarks/results/step_speed.json`` for the standard set on the CPU, else a name saying what ran."""
    if shapes == "standard" and torch.device(device).type == "cpu":
        return Path("benchmarks/results/step_speed.json")
    count = f"{tensors or 500}" if shapes == "many-small" else ""
    return Path(f"benchmarks/results/step_speed_{shapes}{count}_{str(device).replace(':', '')}.json")


def main(argv: list[str] | None = None) -> None:
    all_candidates = candidates()
    names = [candidate.name for candidate in all_candidates]
    parser = build_parser(names)
    args = parser.parse_args(argv)
    problem = unknown_names_message(args.only, names) or setup_problem(args)
    if problem is not None:
        print(problem, file=sys.stderr)
        sys.exit(2)
    device = torch.device(args.device)
    shapes = shapes_named(args.shapes, args.tensors or 500)
    out = args.out or default_out(args.shapes, args.tensors, args.device)
    if not args.warm_cache:
        os.environ["TORCHINDUCTOR_CACHE_DIR"] = tempfile.mkdtemp(prefix="inductor-cold-")
        torch._inductor.config.fx_graph_cache = False

    chosen = [c for c in all_candidates if not args.only or c.name in args.only]
    numel = sum(torch.Size(shape).numel() for shape in shapes)
    where = torch.cuda.get_device_name(device) if device.type == "cuda" else f"{torch.get_num_threads()} CPU threads"
    print(f"{args.shapes}: {len(shapes)} fp32 tensors, {numel / 1e6:.1f}M parameters, {where}")

    states = []
    for candidate in chosen:
        params = make_params(shapes, device=device)
        optimizer = candidate.build(params)
        candidate.first_step_s = timed(lambda: step(candidate, optimizer), device)
        for _ in range(args.warmup - 1):
            step(candidate, optimizer)
        states.append((candidate, optimizer))
        print(f"  ready: {candidate.name} (first step {candidate.first_step_s:.1f} s)", flush=True)

    probe, bandwidths = BandwidthProbe(numel, device), []
    for _ in range(args.steps):  # round-robin: every candidate sees the same machine conditions
        bandwidths.append(probe.sample())
        for candidate, optimizer in states:
            candidate.samples.append(timed(lambda: step(candidate, optimizer), device))
    bandwidths.sort()
    bandwidth = bandwidths[len(bandwidths) // 2]

    by_name = {c.name: c for c in chosen}
    reference = {name: median_ms(by_name[name].samples) for name in ("AdamW-foreach", "AdamW-fused") if name in by_name}
    rows, records = [], []
    for candidate in chosen:
        ms = median_ms(candidate.samples)
        floor_ms = candidate.floor_ms(numel, bandwidth)
        record = {
            "name": candidate.name,
            "algorithm": candidate.algorithm,
            "path": candidate.path,
            "median_ms": ms,
            "floor_ms": floor_ms,
            "x_floor": ms / floor_ms,
            "first_step_s": candidate.first_step_s,
            **{f"x_{name}": ms / value for name, value in reference.items()},
        }
        records.append(record)
        rows.append(
            [
                candidate.name,
                candidate.path,
                f"{ms:.1f}",
                f"{floor_ms:.1f}",
                f"{ms / floor_ms:.2f}",
                *(f"{ms / value:.2f}" for value in reference.values()),
                f"{candidate.first_step_s:.1f}",
            ]
        )
    headers = [
        "optimizer", "path", "median ms/step", "floor ms", "x floor", *(f"x {n}" for n in reference), "first step s"
    ]
    print()
    print(f"memory bandwidth (median of {len(bandwidths)}): {bandwidth / 1e9:.1f} GB/s; {args.steps} timed steps each")
    print(markdown_table(headers, rows))
    write_json(
        out,
        {
            "machine": machine_info(device),
            "shapes": args.shapes,
            "tensors": len(shapes),
            "device": str(device),
            "numel": numel,
            "copy_bandwidth_bytes_per_s": bandwidth,
            "steps": args.steps,
            "created": time.strftime("%Y-%m-%d %H:%M:%S"),
            "results": records,
        },
    )
    print(f"\nwrote {out}")


if __name__ == "__main__":
    main()
