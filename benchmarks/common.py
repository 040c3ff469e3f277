"""Shared pieces of the benchmark scripts: the standard parameter set, timing, tables."""

from __future__ import annotations

import argparse
import hashlib
import json
import platform
import statistics
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, NoReturn

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


def git_commit() -> str:
    """The checkout's ``HEAD`` commit (short hash), with ``+dirty-<digest>`` when ``lightning_opt/`` has
    uncommitted changes (the code measured is then not that commit; the digest of its ``.py`` files tells
    two such states apart); ``"unknown"`` outside git."""
    root = Path(__file__).resolve().parents[1]
    try:
        head = subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"], cwd=root, capture_output=True, text=True, check=True, timeout=30
        ).stdout.strip()
        changes = subprocess.run(
            ["git", "status", "--porcelain", "--", "lightning_opt"],
            cwd=root, capture_output=True, text=True, check=True, timeout=30,
        ).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return "unknown"
    if not changes:
        return head
    digest = hashlib.sha1()
    for path in sorted((root / "lightning_opt").rglob("*.py")):
        digest.update(str(path.relative_to(root)).encode() + b"\0" + path.read_bytes())
    return f"{head}+dirty-{digest.hexdigest()[:8]}"


def machine_info(device: str | torch.device = "cpu") -> dict[str, Any]:
    info = {
        "torch": torch.__version__,
        "threads": torch.get_num_threads(),
        "processor": platform.processor() or platform.machine(),
        "python": platform.python_version(),
        "commit": git_commit(),
    }
    if torch.device(device).type == "cuda":
        info["gpu"] = torch.cuda.get_device_name(device)
    return info


def device_problem(text: str) -> str | None:
    """Why ``--device text`` cannot be benchmarked here (one line, without the program's name), or ``None``."""
    try:
        device = torch.device(text)
    except RuntimeError:
        return f"--device {text!r} is not a device (cpu, cuda, cuda:1...)"
    if device.type not in ("cpu", "cuda"):
        return f"--device {text!r}: only cpu and cuda are benchmarked"
    if device.type == "cuda" and not torch.cuda.is_available():
        return f"--device {text!r}, but CUDA is not available here"
    return None


class OneLineArgumentParser(argparse.ArgumentParser):
    """An argument parser whose errors are one line on stderr (``prog: error: message``) and exit status 2."""

    def error(self, message: str) -> NoReturn:  # type: ignore[override]
        fail(self.prog, message)


def fail(prog: str, message: str) -> NoReturn:
    """Print ``prog: error: message`` as one line on stderr and exit with status 2 (a setup that cannot run)."""
    print(f"{prog}: error: {' '.join(message.split())}", file=sys.stderr)
    sys.exit(2)


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
