"""Optimizer-state memory against accuracy: the digits classifier and the digits VAE, trained with each
optimizer's defaults through ``lightning-opt fit``, beside torch's AdamW.

For every optimizer, in its own process:

1. the digits recipe (``configs/digits.yaml``: 60 epochs, seed 0) with ``--optimizer NAME``;
2. the digits VAE (``configs/digits_vae_adamw.yaml``'s model, data and trainer, 150 epochs, seed 0) with
   ``--optimizer NAME``; the config's own optimizer section (AdamW's lr and weight decay) is left out, so that
   every optimizer runs with its defaults (jsonargparse would otherwise carry ``lr`` over to the new class);

the final and best ``val_acc`` and the final VAE losses are read back from the runs' TensorBoard event files.
The memory columns are the bytes of optimizer state per parameter after one step, on each recipe's own model
and on the standard 20.9M-parameter set (``state_memory.py``): small models have small matrices, whose factored
states cost relatively more. Results go to ``benchmarks/results/memory_accuracy.json`` and a markdown table.

Usage::

    .venv/bin/python benchmarks/memory_accuracy.py                          # about 10 minutes on 2 cores
    .venv/bin/python benchmarks/memory_accuracy.py --only Adafactor SM3     # some optimizers
    .venv/bin/python benchmarks/memory_accuracy.py --epochs 2 --vae-epochs 2  # a smoke run
"""

from __future__ import annotations

import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import torch
import yaml

sys.path.insert(0, str(Path(__file__).resolve().parent))

from common import OneLineArgumentParser, machine_info, make_params, markdown_table, write_json  # noqa: E402
from state_memory import state_bytes  # noqa: E402

from lightning_opt.recipes.digits import DigitsClassifier  # noqa: E402
from lightning_opt.recipes.digits_vae import DigitsVAE  # noqa: E402
from lightning_opt.registry import REGISTRY  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
CONFIGS = ROOT / "configs"
OUT = ROOT / "benchmarks" / "results" / "memory_accuracy.json"


@dataclass(frozen=True)
class Candidate:
    """One optimizer: its row label, its ``--optimizer`` value, and how to build it on a list of tensors."""

    label: str
    cli_name: str
    build: Callable[[list[torch.Tensor]], torch.optim.Optimizer]


def candidates() -> list[Candidate]:
    """torch's AdamW (its defaults: lr 1e-3, weight decay 0.01) and the memory-light family, each with its
    defaults."""
    chosen = [Candidate("AdamW (torch)", "torch.optim.AdamW", lambda params: torch.optim.AdamW(params))]
    for name in ("Adafactor", "SM3", "Amos", "SMMF"):
        cls = REGISTRY[name].cls
        chosen.append(Candidate(name, f"{cls.__module__.split('.optim')[0]}.{name}", cls))
    return chosen


def bytes_per_param(candidate: Candidate, params: list[torch.Tensor]) -> float:
    """State bytes per parameter after one step on ``params`` (given gradients)."""
    optimizer = candidate.build(params)
    if hasattr(optimizer, "set_loss"):
        optimizer.set_loss(1.0)
    optimizer.step()
    return state_bytes(optimizer) / sum(p.numel() for p in params)


def model_params(module: torch.nn.Module) -> list[torch.Tensor]:
    """``module``'s parameters, detached, each with a random gradient (seeded)."""
    generator = torch.Generator().manual_seed(0)
    params = [p.detach().clone().requires_grad_() for p in module.parameters()]
    for param in params:
        param.grad = torch.randn(param.shape, generator=generator) * 1e-3
    return params


def scalars(log_dir: Path) -> dict[str, list[float]]:
    """Every scalar tag of the TensorBoard run under ``log_dir``, values in step order."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    (events,) = sorted(log_dir.rglob("events.out.tfevents.*"))[-1:]
    accumulator = EventAccumulator(str(events.parent), size_guidance={"scalars": 0})
    accumulator.Reload()
    return {tag: [event.value for event in accumulator.Scalars(tag)] for tag in accumulator.Tags()["scalars"]}


def fit(config: Path, candidate: Candidate, save_dir: Path, name: str, epochs: int) -> dict[str, list[float]]:
    """Run ``lightning-opt fit`` in its own process; return the run's scalars."""
    command = [
        sys.executable, "-m", "lightning_opt.cli", "fit", "--config", str(config),
        "--optimizer", candidate.cli_name,
        "--trainer.accelerator", "cpu", "--trainer.max_epochs", str(epochs),
        "--trainer.enable_checkpointing", "false", "--trainer.enable_progress_bar", "false",
        "--trainer.logger.init_args.save_dir", str(save_dir), "--trainer.logger.init_args.name", name,
    ]
    started = time.perf_counter()
    result = subprocess.run(command, capture_output=True, text=True, cwd=save_dir, check=False)
    if result.returncode != 0:
        raise RuntimeError(f"{candidate.label} on {config.name} failed:\n{result.stderr[-3000:]}")
    print(f"  {candidate.label}, {name}: {time.perf_counter() - started:.0f} s", flush=True)
    return scalars(save_dir / name)


def without_optimizer(config: Path, directory: Path) -> Path:
    """A copy of ``config`` without its ``optimizer`` section (so that ``--optimizer NAME`` runs defaults)."""
    values = yaml.safe_load(config.read_text())
    values.pop("optimizer", None)
    copy = directory / f"{config.stem}_no_optimizer.yaml"
    copy.write_text(yaml.safe_dump(values))
    return copy


def measure(candidate: Candidate, work: Path, epochs: int, vae_epochs: int) -> dict[str, Any]:
    digits = fit(CONFIGS / "digits.yaml", candidate, work, f"digits_{candidate.label.split()[0]}", epochs)
    vae_config = without_optimizer(CONFIGS / "digits_vae_adamw.yaml", work)
    vae = fit(vae_config, candidate, work, f"vae_{candidate.label.split()[0]}", vae_epochs)
    return {
        "optimizer": candidate.label,
        "bytes_per_param_standard": bytes_per_param(candidate, make_params()),
        "bytes_per_param_digits": bytes_per_param(candidate, model_params(DigitsClassifier(hidden_dims=[128, 64]))),
        "bytes_per_param_vae": bytes_per_param(candidate, model_params(DigitsVAE(hidden_dims=[128, 64]))),
        "digits_final_val_acc": digits["val_acc"][-1],
        "digits_best_val_acc": max(digits["val_acc"]),
        "vae_val_loss": vae["val_loss"][-1],
        "vae_val_recon": vae["val_recon"][-1],
        "vae_val_kl": vae["val_kl"][-1],
    }


def per_param(value: float) -> str:
    """Bytes per parameter: two significant digits below 1 (Amos keeps 4e-5), else two decimals."""
    return f"{value:.2g}" if value < 1 else f"{value:.2f}"


def table(records: list[dict[str, Any]]) -> str:
    rows = [
        [
            f"`{r['optimizer']}`", per_param(r["bytes_per_param_standard"]), per_param(r["bytes_per_param_digits"]),
            f"{r['digits_final_val_acc']:.3f}", f"{r['digits_best_val_acc']:.3f}",
            per_param(r["bytes_per_param_vae"]), f"{r['vae_val_loss']:.2f}", f"{r['vae_val_recon']:.2f}",
            f"{r['vae_val_kl']:.2f}",
        ]
        for r in records
    ]
    headers = [
        "optimizer (defaults)", "state B/param, standard set", "digits: B/param", "final val_acc", "best val_acc",
        "VAE: B/param", "val loss", "val recon", "val KL",
    ]
    return markdown_table(headers, rows)


def main(argv: list[str] | None = None) -> None:
    labels = [candidate.label.split()[0] for candidate in candidates()]
    parser = OneLineArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--only", nargs="+", choices=labels, metavar="NAME", help=f"some of: {', '.join(labels)}")
    parser.add_argument("--epochs", type=int, default=60, help="digits epochs (default: the config's 60)")
    parser.add_argument("--vae-epochs", type=int, default=150, help="VAE epochs (default: the config's 150)")
    parser.add_argument("--out", type=Path, default=OUT, help=f"the JSON results (default: {OUT.relative_to(ROOT)})")
    args = parser.parse_args(argv)
    if args.epochs < 1 or args.vae_epochs < 1:
        parser.error(f"--epochs and --vae-epochs must be >= 1 (got {args.epochs}, {args.vae_epochs})")
    chosen = [c for c in candidates() if not args.only or c.label.split()[0] in args.only]
    records = []
    with tempfile.TemporaryDirectory(prefix="memory-accuracy-") as directory:
        for candidate in chosen:
            records.append(measure(candidate, Path(directory), args.epochs, args.vae_epochs))
    print("\n" + table(records))
    write_json(args.out, {"machine": machine_info(), "epochs": args.epochs, "vae_epochs": args.vae_epochs,
                          "created": time.strftime("%F %T"), "results": records})
    print(f"\nwrote {args.out}")


if __name__ == "__main__":
    main()
