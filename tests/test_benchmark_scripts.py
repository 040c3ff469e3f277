"""The benchmark scripts' command lines (run as the README says, without running a benchmark)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

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
