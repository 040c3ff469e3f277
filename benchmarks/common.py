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



def gpt2_small_shapes() -> tuple[tuple[int, ...], ...]:
    """GPT-2 small's 148 parameter tensors, 124.4M parameters (Radford et al., 2019; Hugging Face's layout):
    token and position embeddings, 12 blocks of two layer norms, the fused QKV projection, the attention
    output projection and the two MLP matrices with their biases, and the final layer norm."""
    width = 768
    block = (
        (width,), (width,),  # ln_1
        (width, 3 * width), (3 * width,),  # attn.c_attn
        (width, width), (width,),  # attn.c_proj
        (width,), (width,),  # ln_2
        (width, 4 * width), (4 * width,),  # mlp.c_fc
        (4 * width, width), (width,),  # mlp.c_proj
    )
    return ((50257, width), (1024, width)) + block * 12 + ((width,), (width,))


def many_small_shapes(count: int = 500) -> tuple[tuple[int, ...], ...]:
    """``count`` tensors of 256 elements: where the per-tensor host work of a step, not memory, is the cost."""
    return ((16, 16),) * count


SHAPE_SETS = ("standard", "gpt2-small", "many-small")
"""The parameter sets the benchmarks know, by name (see :func:`shapes_named`)."""


def shapes_named(name: str, tensors: int = 500) -> tuple[tuple[int, ...], ...]:
    """The shapes of the parameter set ``name`` (one of :data:`SHAPE_SETS`); ``tensors`` sizes ``many-small``."""
    if name == "standard":
        return STANDARD_SHAPES
    if name == "gpt2-small":
        return gpt2_small_shapes()
    if name == "many-small":
        return many_small_shapes(tensors)
    raise ValueError(f"Invalid shapes: {name!r} (expected one of {', '.join(SHAPE_SETS)})")


def make_params(
    shapes: Sequence[tuple[int, ...]] = STANDARD_SHAPES, seed: int = 0, device: str | torch.device = "cpu"
) -> list[torch.Tensor]:
    """Parameters with fixed random values and fixed random gradients (scale 1e-3), on ``device``."""
    generator = torch.Generator().manual_seed(seed)
    params = [torch.randn(shape, generator=generator).to(device).requires_grad_() for shape in shapes]
    for param in params:
        param.grad = (torch.randn(param.shape, generator=generator) * 1e-3).to(device)
    return params


class BandwidthProbe:
    """Measures memory bandwidth in bytes per second (read + write) on fp32 buffers of ``numel`` elements.

    A sample is the faster of an out-of-place copy (``dst.copy_(src)``) and an in-place scale
    (``src.mul_(1.0)``, the access pattern of an optimizer's in-place updates, which avoids the
    write-allocate reads of a fresh destination).
    """

    def __init__(self, numel: int, device: str | torch.device = "cpu") -> None:
        self.numel = numel
        self.device = torch.device(device)
        self.src = torch.randn(numel, device=self.device)
        self.dst = torch.empty_like(self.src)
        self.sample()

    def sample(self) -> float:
        copy_s = timed(lambda: self.dst.copy_(self.src), self.device)
        scale_s = timed(lambda: self.src.mul_(1.0), self.device)
        return 2 * 4 * self.numel / min(copy_s, scale_s)


def median_ms(samples: Sequence[float]) -> float:
    return statistics.median(samples) * 1e3


def markdown_table(headers: Sequence[str], rows: Sequence[Sequence[Any]]) -> str:
    lines = ["| " + " | ".join(headers) + " |", "|" + "|".join("---" for _ in headers) + "|"]
    lines += ["| " + " | ".join(str(cell) for cell in row) + " |" for row in rows]
    return "\n".join(lines)


def machine_info(device: str | torch.device = "cpu") -> dict[str, Any]:
    info = {
        "torch": torch.__version__,
        "threads": torch.get_num_threads(),
        "processor": platform.processor() or platform.machine(),
        "python": platform.python_version(),
    }
    if torch.device(device).type == "cuda":
        info["gpu"] = torch.cuda.get_device_name(device)
    return info


def write_json(path: Path, payload: dict[str, Any]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(payload, indent=2))


def timed(fn: Callable[[], Any], device: str | torch.device | None = None) -> float:
    """Wall seconds of ``fn()``; on a CUDA ``device``, until its queued kernels have finished too."""
    cuda = device is not None and torch.device(device).type == "cuda"
    if cuda:
        torch.cuda.synchronize(device)
    start = time.perf_counter()
    fn()
    if cuda:
        torch.cuda.synchronize(device)
    return time.perf_counter() - start
