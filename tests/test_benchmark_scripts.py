"""The benchmark scripts' command lines (run as the README says, without running a benchmark)."""

from __future__ import annotations

import json
import math
import re
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from lightning_opt import REGISTRY

BENCHMARKS = Path(__file__).resolve().parents[1] / "benchmarks"
STEP_SPEED = BENCHMARKS / "step_speed.py"
COMPILE_TIME = BENCHMARKS / "compile_time.py"
GPU = BENCHMARKS / "gpu.py"
ENGINE_TARGETS = BENCHMARKS / "engine_targets.py"
MEMORY_ACCURACY = BENCHMARKS / "memory_accuracy.py"
HOST_WORK = BENCHMARKS / "host_work.py"


def _run(*args: str, cwd: Path, script: Path = STEP_SPEED) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, str(script), *args], capture_output=True, text=True, timeout=300, check=False, cwd=cwd
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
    for name in (
        "AdamW-loop", "AdamW-foreach", "AdamW-fused", "AdamW-fused+SoftClip", "AdaLo+gc+softclip",
        "AdamAtan2+cautious", "AdamAtan2-compiled+cautious", *REGISTRY,
    ):
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


def test_compile_time_times_cold_compiles_in_fresh_processes_and_writes_its_table(tmp_path: Path) -> None:
    out = tmp_path / "compile_time.json"
    result = _run(
        "--tensors", "3", "--only", "NSGDA", "--steps", "1", "--out", str(out), cwd=tmp_path, script=COMPILE_TIME
    )

    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    assert lines[0].startswith("cold first steps, many-small (256 elements a tensor)")
    assert "| optimizer | tensors | first step s | x 3 tensors | steady ms/step |" in lines
    (row,) = [line for line in lines if line.startswith("| NSGDA |")]
    assert row.split(" | ")[1] == "3" and row.split(" | ")[3] == "1.00"
    saved = json.loads(out.read_text())
    assert re.fullmatch(r"[0-9a-f]{7,}(\+dirty-[0-9a-f]{8})?", saved["machine"]["commit"])
    (record,) = saved["results"]
    assert (record["optimizer"], record["tensors"], record["x_smallest"]) == ("NSGDA", 3, 1.0)
    (run,) = record["runs"]
    assert run["first_step_s"] > 0 and run["steady_ms"] > 0 and run["graphs"] >= 1
    # Cold: the child had a fresh inductor cache directory (removed afterwards), no FX graph or AOTAutograd cache.
    assert Path(run["caches"]["dir"]).name.startswith("inductor-cold-") and not Path(run["caches"]["dir"]).exists()
    assert run["caches"]["fx_graph_cache"] is False and run["caches"]["autograd_cache"] is False


def test_compile_time_stops_a_cell_past_its_timeout_and_shows_it(tmp_path: Path) -> None:
    out = tmp_path / "compile_time.json"
    result = _run("--tensors", "7", "--only", "AdaLo", "--timeout", "0.01", "--out", str(out), cwd=tmp_path,
                  script=COMPILE_TIME)

    assert result.returncode == 0, result.stderr  # a measurement (the compile takes longer), not a failure
    assert "  AdaLo, 7 tensors, repeat 1/1: stopped after 0.01 s (--timeout)" in result.stdout.splitlines()
    assert "| AdaLo | 7 | > 0.01 (stopped) |  |  |" in result.stdout.splitlines()
    (record,) = json.loads(out.read_text())["results"]
    assert record["timeout_s"] == 0.01 and "first_step_s" not in record


@pytest.mark.parametrize(
    ("args", "expected"),
    [
        (("--tensors", "50", "0"), "compile_time.py: error: --tensors 50 0: every count must be > 0"),
        (("--tensors", "5", "5"), "compile_time.py: error: --tensors 5 5: each count once"),
        (("--repeats", "0"), "compile_time.py: error: --repeats 0: must be >= 1"),
        (("--only", "Foo"), "compile_time.py: error: argument --only: invalid choice: 'Foo'"),
        (("--tensors", "many"), "compile_time.py: error: argument --tensors: invalid int value: 'many'"),
        (("--device", "nowhere"), "compile_time.py: error: --device 'nowhere' is not a device"),
    ],
)
def test_compile_time_bad_arguments_exit_2_with_one_line(tmp_path: Path, args: tuple[str, ...], expected: str) -> None:
    result = _run(*args, "--out", str(tmp_path / "never.json"), cwd=tmp_path, script=COMPILE_TIME)

    assert result.returncode == 2
    (line,) = result.stderr.strip().splitlines()
    assert line.startswith(expected)
    assert result.stdout == "" and not (tmp_path / "never.json").exists()


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the message on a machine without CUDA")
@pytest.mark.parametrize("script", [GPU, COMPILE_TIME], ids=["gpu", "compile_time"])
def test_the_gpu_benchmarks_stop_at_once_without_cuda(tmp_path: Path, script: Path) -> None:
    args = () if script == GPU else ("--device", "cuda")
    result = _run(*args, cwd=tmp_path, script=script)

    assert result.returncode == 2
    (line,) = result.stderr.strip().splitlines()
    assert line == {
        GPU: f"gpu.py: error: CUDA is not available here (torch {torch.__version__}); the GPU benchmark needs an "
        "NVIDIA GPU",
        COMPILE_TIME: "compile_time.py: error: --device 'cuda', but CUDA is not available here",
    }[script]
    assert result.stdout == "" and not (tmp_path / "benchmarks").exists()


def test_the_gpu_benchmark_runs_the_readme_table_candidates() -> None:
    sys.path.insert(0, str(BENCHMARKS))
    try:
        from gpu import STEP_SPEED_CANDIDATES, stages
        from step_speed import candidates
    finally:
        sys.path.remove(str(BENCHMARKS))

    names = {candidate.name for candidate in candidates()}
    assert set(STEP_SPEED_CANDIDATES) <= names
    commands = stages("cuda", 30, 150)
    assert [Path(command[0]).name for command in commands] == ["step_speed.py", "step_speed.py", "compile_time.py"]
    assert [command[command.index("--shapes") + 1] for command in commands[:2]] == ["standard", "gpt2-small"]
    assert all(command[command.index("--device") + 1] == "cuda" for command in commands)


def test_the_engine_targets_run_real_candidates_and_refuse_bad_arguments(tmp_path: Path) -> None:
    sys.path.insert(0, str(BENCHMARKS))
    try:
        from engine_targets import MANY_SMALL_CANDIDATES, STANDARD_CANDIDATES
        from step_speed import candidates
    finally:
        sys.path.remove(str(BENCHMARKS))
    names = {candidate.name for candidate in candidates()}
    assert set(MANY_SMALL_CANDIDATES) | set(STANDARD_CANDIDATES) <= names

    result = _run("--steps", "3", cwd=tmp_path, script=ENGINE_TARGETS)
    assert result.returncode == 2
    (line,) = result.stderr.strip().splitlines()
    assert line.startswith("engine_targets.py: error: unrecognized arguments: --steps 3")


def test_memory_accuracy_trains_both_recipes_with_defaults_and_reads_the_runs_back(tmp_path: Path) -> None:
    out = tmp_path / "memory_accuracy.json"
    result = _run(
        "--only", "SM3", "--epochs", "1", "--vae-epochs", "1", "--out", str(out), cwd=tmp_path, script=MEMORY_ACCURACY
    )

    assert result.returncode == 0, result.stderr[-2000:]
    (record,) = json.loads(out.read_text())["results"]
    assert record["optimizer"] == "SM3"
    assert 0.0 < record["bytes_per_param_standard"] < 0.05  # the SM3 memory target
    assert record["bytes_per_param_standard"] < record["bytes_per_param_digits"] < 1.0  # small matrices cost more
    assert 0.1 < record["digits_final_val_acc"] <= record["digits_best_val_acc"] <= 1.0  # 1 epoch: above chance
    assert math.isclose(record["vae_val_loss"], record["vae_val_recon"] + record["vae_val_kl"], rel_tol=1e-4)
    assert "| `SM3` |" in result.stdout


@pytest.mark.parametrize(
    ("args", "expected"),
    [
        (("--only", "Adam"), "memory_accuracy.py: error: argument --only: invalid choice: 'Adam'"),
        (("--epochs", "0"), "memory_accuracy.py: error: --epochs and --vae-epochs must be >= 1 (got 0, 150)"),
    ],
)
def test_memory_accuracy_bad_arguments_exit_2_with_one_line(
    tmp_path: Path, args: tuple[str, ...], expected: str
) -> None:
    result = _run(*args, "--out", str(tmp_path / "never.json"), cwd=tmp_path, script=MEMORY_ACCURACY)

    assert result.returncode == 2
    (line,) = result.stderr.strip().splitlines()
    assert line.startswith(expected)
    assert not (tmp_path / "never.json").exists()


def _plan_structure(shapes: tuple[tuple[int, ...], ...]) -> list[list[tuple[object, bool]]]:
    """Each chunk of an eager NSGDA step on parameters of ``shapes``: its stacks' kinds and whether they are copied."""
    from lightning_opt import NSGDA

    sys.path.insert(0, str(BENCHMARKS))
    try:
        from common import make_params
    finally:
        sys.path.remove(str(BENCHMARKS))
    optimizer = NSGDA(make_params(shapes))
    optimizer.step()
    (plan,) = optimizer._plans.values()
    return [[(stack.kind, stack.copied) for stack in chunk] for chunks in plan.chunks.values() for chunk in chunks]


def test_the_host_twin_keeps_the_standard_sets_plan_with_a_thirty_fifth_of_its_elements() -> None:
    sys.path.insert(0, str(BENCHMARKS))
    try:
        from common import STANDARD_SHAPES
        from host_work import host_twin
    finally:
        sys.path.remove(str(BENCHMARKS))
    twin = tuple(host_twin(shape) for shape in STANDARD_SHAPES)

    assert _plan_structure(twin) == _plan_structure(STANDARD_SHAPES)  # same stacks, kinds and chunks: same host work
    assert sum(map(math.prod, twin)) * 35 < sum(map(math.prod, STANDARD_SHAPES))
    assert host_twin((3, 1, 100_000)) == (2, 1, 8193) and host_twin((7,)) == (7,)


def test_host_work_times_both_sets_and_writes_its_table(tmp_path: Path) -> None:
    out = tmp_path / "host_work.json"
    result = _run(
        "--only", "AdamW-fused", "NSGDA", "--steps", "2", "--warmup", "1", "--out", str(out),
        cwd=tmp_path, script=HOST_WORK,
    )

    assert result.returncode == 0, result.stderr
    assert "| NSGDA |" in result.stdout and "host twin ms" in result.stdout
    records = json.loads(out.read_text())["results"]
    assert [record["name"] for record in records] == ["AdamW-fused", "NSGDA"]
    for record in records:
        assert 0 < record["twin_step_ms"] and 0 < record["floor_ms"]
        assert math.isclose(record["kernels_ms"], record["step_ms"] - record["twin_step_ms"])


def test_host_work_guarded_times_each_step_through_dynamos_guards_too(tmp_path: Path) -> None:
    out = tmp_path / "host_work.json"
    result = _run(
        "--only", "AdamW-fused", "--steps", "2", "--warmup", "1", "--guarded", "--out", str(out),
        cwd=tmp_path, script=HOST_WORK,
    )

    assert result.returncode == 0, result.stderr
    assert "guarded step ms" in result.stdout
    (record,) = json.loads(out.read_text())["results"]
    assert 0 < record["guarded_step_ms"] and 0 < record["guarded_twin_step_ms"]


@pytest.mark.parametrize(
    ("args", "expected"),
    [
        (("--only", "Foo"), "host_work.py: error: unknown --only 'Foo'"),
        (("--steps", "0"), "host_work.py: error: --steps 0 and --warmup 3 must be at least 1"),
    ],
)
def test_host_work_bad_arguments_exit_2_with_one_line(tmp_path: Path, args: tuple[str, ...], expected: str) -> None:
    result = _run(*args, cwd=tmp_path, script=HOST_WORK)

    assert result.returncode == 2
    (line,) = result.stderr.strip().splitlines()
    assert line.startswith(expected)
    assert not (tmp_path / "benchmarks").exists()  # nothing ran, nothing written
