"""``StudyProbe``: the callback a study adds to each of its ``lightning-opt fit`` runs, to write what it measured.

It records, into one JSON file, independently of the run's logger:

- at every validation (not the sanity check): the seconds since the start of training (``time.perf_counter``,
  so process start-up and data preparation are not counted), the optimizer step, the epoch and every scalar of
  ``trainer.callback_metrics``;
- the number of training steps whose loss was NaN or infinite (counted on the loss's device, read at each
  validation, so no host sync per step);
- at the end of training: the optimizer state's bytes (every tensor in ``optimizer.state``) and the number of
  trainable parameters, the peak resident memory of the process (``ru_maxrss``) and, on CUDA, the peak memory
  allocated by torch.

The file is rewritten after each validation, so a run cut short still leaves its history.
"""

from __future__ import annotations

import json
import math
import os
import sys
import time
from pathlib import Path
from typing import Any, Optional

import torch
from lightning.pytorch import Callback, LightningModule, Trainer
from typing_extensions import override


class StudyProbe(Callback):
    """Write a run's validation history, non-finite losses, optimizer-state bytes and peak memory to ``path``.

    Args:
        path: the JSON file to write (its folder is created).

    Example::

        lightning-opt fit --config digits \\
            --trainer.callbacks+='{"class_path": "lightning_opt.studies.probe.StudyProbe",
                                   "init_args": {"path": "run.json"}}'
    """

    def __init__(self, path: str) -> None:
        if not isinstance(path, (str, os.PathLike)) or not str(path):
            raise ValueError(f"Invalid path: {path!r} (expected a file path)")
        self.path = Path(path)
        self._started: Optional[float] = None
        self._nonfinite: Optional[torch.Tensor] = None
        self.record: dict[str, Any] = {"validations": [], "nonfinite_losses": 0}

    @override
    def on_train_start(self, trainer: Trainer, pl_module: LightningModule) -> None:
        self._started = time.perf_counter()

    @override
    def on_train_batch_end(
        self, trainer: Trainer, pl_module: LightningModule, outputs: Any, batch: Any, batch_idx: int
    ) -> None:
        loss = outputs.get("loss") if isinstance(outputs, dict) else outputs
        if not isinstance(loss, torch.Tensor):
            return
        bad = (~torch.isfinite(loss.detach())).sum()
        self._nonfinite = bad if self._nonfinite is None else self._nonfinite + bad

    @override
    def on_validation_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        if trainer.sanity_checking or self._started is None:
            return
        self.record["validations"].append(
            {
                "seconds": time.perf_counter() - self._started,
                "step": trainer.global_step,
                "epoch": trainer.current_epoch,
                "metrics": _scalars(trainer.callback_metrics),
            }
        )
        self._count_nonfinite()
        self._write(trainer)

    @override
    def on_train_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        self._count_nonfinite()
        state, params = 0, 0
        for optimizer in trainer.optimizers:
            state += optimizer_state_bytes(optimizer)
            params += sum(p.numel() for p in _unique_params(optimizer))
        self.record.update(
            seconds=None if self._started is None else time.perf_counter() - self._started,
            steps=trainer.global_step,
            epochs=trainer.current_epoch,
            state_bytes=state,
            parameters=params,
            peak_rss_bytes=peak_rss_bytes(),
            cuda_peak_bytes=torch.cuda.max_memory_allocated() if pl_module.device.type == "cuda" else None,
            optimizers=[type(optimizer).__name__ for optimizer in trainer.optimizers],
            final_metrics=_scalars(trainer.callback_metrics),
        )
        self._write(trainer)

    def _count_nonfinite(self) -> None:
        if self._nonfinite is not None:
            self.record["nonfinite_losses"] += int(self._nonfinite.item())
            self._nonfinite = None

    def _write(self, trainer: Trainer) -> None:
        if not trainer.is_global_zero:
            return
        self.path.parent.mkdir(parents=True, exist_ok=True)
        temporary = self.path.with_name(self.path.name + ".tmp")
        temporary.write_text(json.dumps(self.record, indent=1))
        os.replace(temporary, self.path)


def optimizer_state_bytes(optimizer: torch.optim.Optimizer) -> int:
    """Bytes of every tensor held in ``optimizer.state`` (nested lists and dicts included; a tensor counted once).

    Example:
        >>> p = torch.zeros(10, requires_grad=True)
        >>> optimizer = torch.optim.Adam([p])
        >>> p.grad = torch.ones(10)
        >>> optimizer.step()
        >>> optimizer_state_bytes(optimizer)  # exp_avg and exp_avg_sq (4 bytes each) and the 0-d step
        84
    """
    seen: set[int] = set()

    def walk(value: Any) -> int:
        if isinstance(value, torch.Tensor):
            if id(value) in seen:
                return 0
            seen.add(id(value))
            return value.numel() * value.element_size()
        if isinstance(value, dict):
            return sum(walk(item) for item in value.values())
        if isinstance(value, (list, tuple)):
            return sum(walk(item) for item in value)
        return 0

    return sum(walk(per_param) for per_param in optimizer.state.values())


def peak_rss_bytes() -> Optional[int]:
    """The peak resident memory of this process in bytes (``getrusage``), or ``None`` where it is unavailable.

    Example:
        >>> peak_rss_bytes() is None or peak_rss_bytes() > 0
        True
    """
    try:
        import resource
    except ImportError:  # Windows
        return None
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return int(peak) if sys.platform == "darwin" else int(peak) * 1024  # bytes on macOS, KiB on Linux


def _unique_params(optimizer: torch.optim.Optimizer) -> list[torch.Tensor]:
    found: dict[int, torch.Tensor] = {}
    for group in optimizer.param_groups:
        for param in group["params"]:
            found.setdefault(id(param), param)
    return list(found.values())


def _scalars(metrics: dict[str, Any]) -> dict[str, float]:
    shown = {}
    for name, value in metrics.items():
        if isinstance(value, torch.Tensor) and value.numel() == 1:
            shown[name] = float(value)
        elif isinstance(value, (int, float)) and not isinstance(value, bool):
            shown[name] = float(value)
    return {name: (value if math.isfinite(value) else repr(value)) for name, value in shown.items()}


__all__ = ["StudyProbe", "optimizer_state_bytes", "peak_rss_bytes"]
