"""Optimizer-state bytes per parameter for every registered optimizer, beside torch baselines.

Each optimizer takes one step on the standard 20.9M-parameter set (so its lazy state exists); the
bytes of every tensor in its state (parameter-sized buffers and per-tensor counters alike) are summed
and divided by the number of parameters.

Usage::

    .venv/bin/python benchmarks/state_memory.py
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))

from common import STANDARD_SHAPES, machine_info, make_params, markdown_table, write_json  # noqa: E402

from lightning_opt.registry import REGISTRY  # noqa: E402


def state_bytes(optimizer: torch.optim.Optimizer) -> int:
    """Bytes of every tensor held in ``optimizer.state``."""
    return sum(
        value.numel() * value.element_size()
        for per_param in optimizer.state.values()
        for value in per_param.values()
        if isinstance(value, torch.Tensor)
    )


def adafactor_peers() -> list[tuple[str, object]]:
    """pytorch_optimizer's AdaFactor with its defaults (a first moment kept in bfloat16) and without a first
    moment (``betas=(None, 0.999)``, as lightning-opt's defaults), and lightning-opt's with ``beta1=0.9``."""
    from lightning_opt import Adafactor

    peers: list[tuple[str, object]] = [("Adafactor beta1 0.9", lambda p: Adafactor(p, beta1=0.9))]
    try:
        from pytorch_optimizer import AdaFactor
    except ImportError:
        return peers
    return peers + [
        ("AdaFactor (pytorch_optimizer)", lambda p: AdaFactor(p)),
        ("AdaFactor no momentum (pytorch_optimizer)", lambda p: AdaFactor(p, lr=None, betas=(None, 0.999))),
    ]


def smmf_peers() -> list[tuple[str, object]]:
    """The SMMF authors' code (eai-lab/SMMF, package ``SMMF``; pytorch_optimizer has no SMMF) where it is
    installed: its sign is one ``bool`` byte per parameter, lightning-opt's one bit."""
    try:
        from SMMF import SMMF as AuthorsSMMF
    except ImportError:
        return []
    return [("SMMF (authors, eai-lab)", lambda p: AuthorsSMMF(p))]


def memory_light_peers() -> list[tuple[str, object]]:
    """pytorch_optimizer's SM3 and Amos (defaults: SM3 keeps a momentum buffer even without momentum), and
    lightning-opt's SM3 and Amos with momentum (a buffer of the parameter's shape each)."""
    from lightning_opt import SM3, Amos

    peers: list[tuple[str, object]] = [
        ("SM3 momentum 0.9", lambda p: SM3(p, momentum=0.9)),
        ("Amos momentum 0.9", lambda p: Amos(p, momentum=0.9)),
    ]
    try:
        import pytorch_optimizer
    except ImportError:
        return peers
    return peers + [
        ("SM3 (pytorch_optimizer)", lambda p: pytorch_optimizer.SM3(p)),
        ("Amos (pytorch_optimizer)", lambda p: pytorch_optimizer.Amos(p)),
        ("Amos momentum 0.9 (pytorch_optimizer)", lambda p: pytorch_optimizer.Amos(p, momentum=0.9)),
    ]


def adam_family_peers() -> list[tuple[str, object]]:
    """pytorch_optimizer's DiffGrad, AdaNorm, PNM and AdaPNM with their defaults (AdaPNM keeps the AMSGrad
    maximum, as lightning-opt's), next to the presets of lightning-opt's Adam family."""
    try:
        import pytorch_optimizer
    except ImportError:
        return []
    return [
        (f"{name} (pytorch_optimizer)", getattr(pytorch_optimizer, name))
        for name in ("DiffGrad", "AdaNorm", "PNM", "AdaPNM")
    ]


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=Path("benchmarks/results/state_memory.json"))
    args = parser.parse_args(argv)

    builders: list[tuple[str, object]] = [
        ("AdamW (torch)", lambda p: torch.optim.AdamW(p)),
        ("SGD momentum (torch)", lambda p: torch.optim.SGD(p, lr=0.1, momentum=0.9)),
        ("Adafactor (torch)", lambda p: torch.optim.Adafactor(p)),
    ]
    builders += [(spec.name, spec.cls) for spec in REGISTRY.values()]
    builders += adam_family_peers()
    builders += memory_light_peers()
    builders += smmf_peers()
    builders += adafactor_peers()
    numel = sum(torch.Size(shape).numel() for shape in STANDARD_SHAPES)
    adamw_bytes = None
    rows, records = [], []
    for name, build in builders:
        params = make_params()
        optimizer = build(params)  # type: ignore[operator]
        if hasattr(optimizer, "set_loss"):
            optimizer.set_loss(1.0)
        optimizer.step()
        total = state_bytes(optimizer)
        adamw_bytes = adamw_bytes or total
        spec = REGISTRY.get(name)
        record = {
            "optimizer": name,
            "state_bytes": total,
            "bytes_per_param": total / numel,
            "x_adamw": total / adamw_bytes,
            "declared_buffers": None if spec is None else spec.state_buffers,
        }
        records.append(record)
        rows.append([name, f"{total / 2**20:.1f}", f"{total / numel:.2f}", f"{total / adamw_bytes:.2f}"])
    print(f"{len(STANDARD_SHAPES)} fp32 tensors, {numel / 1e6:.1f}M parameters")
    print(markdown_table(["optimizer", "state MiB", "bytes / param", "x AdamW"], rows))
    write_json(
        args.out, {"machine": machine_info(), "numel": numel, "created": time.strftime("%F %T"), "results": records}
    )
    print(f"\nwrote {args.out}")


if __name__ == "__main__":
    main()
