"""The benchmark scripts' command lines (run as the README says, without running a benchmark)."""

from __future__ import annotations

import json
import math
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from lightning_opt import REGISTRY

STEP_SPEED = Path(__file__).resolve().parents[1] / "benchmarks" / "step_speed.py"


def _run(*args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, str(STEP_SPEED), *args], capture_output=True, text=True, timeout=300, check=False, cwd=cwd
    )


def test_unknown_only_name_exits_2_with_the_candidates_and_keeps_saved_results(tmp_path: Path) -> None:
    saved = tmp_path / "step_speed.json"
    saved.write_text('{"results": ["an earlier run"]}')

    result = _run("--steps", "1", "--only", "Foo", "AdaLo", "--out", str(saved), cwd=tmp_path)

    assert result.returncode == 2
    (line,) = result.stderr.strip().splitlines()
    assert "unknown --only 'Foo'" in line and "'AdaLo'" not in line.split("candidates")[0]
    assert all(name in line for name in ("AdamW-fused", *REGISTRY))
    assert result.stdout == ""  # nothing ran
    assert saved.read_text() == '{"results": ["an earlier run"]}'


def test_help_lists_the_candidates(tmp_path: Path) -> None:
    result = _run("--help", cwd=tmp_path)

    assert result.returncode == 0, result.stderr
    candidates = " ".join(result.stdout.split("candidates:", 1)[1].split())
    for name in ("AdamW-loop", "AdamW-foreach", "AdamW-fused", "AdamW-fused+SoftClip", "AdaLo+gc+softclip", *REGISTRY):
        assert name in candidates.replace(",", " ").split(), name


def test_many_small_tensors_run_and_say_what_ran(tmp_path: Path) -> None:
    out = tmp_path / "many.json"
    result = _run(
        "--shapes", "many-small", "--tensors", "40", "--steps", "2", "--warmup", "1",
        "--only", "AdamW-fused", "AdaLo", "--out", str(out), cwd=tmp_path,
    )

    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith("many-small: 40 fp32 tensors")
    saved = json.loads(out.read_text())
    assert (saved["shapes"], saved["tensors"], saved["device"]) == ("many-small", 40, "cpu")
    assert [record["name"] for record in saved["results"]] == ["AdamW-fused", "AdaLo"]


@pytest.mark.parametrize(
    ("args", "expected"),
    [
        (("--tensors", "3"), "--tensors 3 needs --shapes many-small"),
        (("--shapes", "many-small", "--tensors", "0"), "--tensors 0 needs --shapes many-small and a count > 0"),
        (("--device", "nowhere"), "--device 'nowhere' is not a device"),
    ],
)
def test_a_setup_that_cannot_run_exits_2_with_one_line(tmp_path: Path, args: tuple[str, ...], expected: str) -> None:
    result = _run(*args, "--out", str(tmp_path / "never.json"), cwd=tmp_path)

    assert result.returncode == 2
    (line,) = result.stderr.strip().splitlines()
    assert expected in line
    assert not (tmp_path / "never.json").exists()


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the message on a machine without CUDA")
def test_cuda_without_a_gpu_exits_2_with_one_line(tmp_path: Path) -> None:
    result = _run("--device", "cuda", cwd=tmp_path)

    assert result.returncode == 2
    assert result.stderr.strip() == "step_speed.py: error: --device 'cuda', but CUDA is not available here"


def test_gpt2_small_has_its_148_tensors_and_124m_parameters() -> None:
    sys.path.insert(0, str(STEP_SPEED.parent))
    try:
        from common import SHAPE_SETS, shapes_named
    finally:
        sys.path.remove(str(STEP_SPEED.parent))

    shapes = shapes_named("gpt2-small")
    assert len(shapes) == 148
    assert sum(math.prod(shape) for shape in shapes) == 124_439_808  # GPT-2 small, tied head counted once
    assert len(shapes_named("many-small", 2000)) == 2000 and set(shapes_named("many-small")) == {(16, 16)}
    assert SHAPE_SETS == ("standard", "gpt2-small", "many-small")
