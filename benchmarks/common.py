"""Shared pieces of the benchmark scripts: the standard parameter set, timing, tables."""

from __future__ import annotations

import json
import platform
import statistics
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import torch

# 50 fp32 tensors, 20.9M parameters: the shapes of a small transformer-ish model.
STANDARD_SHAPES: tuple[tuple[int, ...], ...] = (
    ((1024, 1024),) * 8
    + ((512, 2048),) * 4
    + ((2048, 512),) * 2
    + ((4096, 256),) * 2
    + ((768, 768),) * 4
    + ((256, 1024),) * 6
    + ((64, 64, 3, 3),) * 4
    + ((4096,),) * 10
    + ((1024,),) * 10
)


def make_params(shapes: Sequence[tuple[int, ...]] = STANDARD_SHAPES, seed: int = 0) -> list[torch.Tensor]:
    """Parameters with fixed random values and fixed random gradients (scale 1e-3)."""
    generator = torch.Generator().manual_seed(seed)
    params = [torch.randn(shape, generator=generator).requires_grad_() for shape in shapes]
    for param in params:
        param.grad = torch.randn(param.shape, generator=generator) * 1e-3
    return params


class BandwidthProbe:
    """Measures memory bandwidth in bytes per second (read + write) on fp32 buffers of ``numel`` elements.

    A sample is the faster of an out-of-place copy (``dst.copy_(src)``) and an in-place scale
    (``src.mul_(1.0)``, the access pattern of an optimizer's in-place updates, which avoids the
    write-allocate reads of a fresh destination).
    """

    def __init__(self, numel: int) -> None:
        self.numel = numel
        self.src = torch.randn(numel)
        self.dst = torch.empty_like(self.src)
        self.sample()

    def sample(self) -> float:
        copy_s = timed(lambda: self.dst.copy_(self.src))
        scale_s = timed(lambda: self.src.mul_(1.0))
        return 2 * 4 * self.numel / min(copy_s, scale_s)


def median_ms(samples: Sequence[float]) -> float:
    return statistics.median(samples) * 1e3


def markdown_table(headers: Sequence[str], rows: Sequence[Sequence[Any]]) -> str:
    lines = ["| " + " | ".join(headers) + " |", "|" + "|".join("---" for _ in headers) + "|"]
    lines += ["| " + " | ".join(str(cell) for cell in row) + " |" for row in rows]
    return "\n".join(lines)


def machine_info() -> dict[str, Any]:
    return {
        "torch": torch.__version__,
        "threads": torch.get_num_threads(),
        "processor": platform.processor() or platform.machine(),
        "python": platform.python_version(),
    }


def write_json(path: Path, payload: dict[str, Any]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(payload, indent=2))


def timed(fn: Callable[[], Any]) -> float:
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start
