"""What the wheel installs, and the command line's ``--version`` and ``--config NAME`` that rely on it.

The wheel must install one import package, ``lightning_opt`` (no top-level ``recipes`` that would collide
with a user's), with the repository's ``recipes/`` as ``lightning_opt.recipes`` and ``configs/`` as
``lightning_opt/configs``, so that ``lightning-opt fit --config digits`` works outside a checkout.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import zipfile
from importlib.metadata import version
from pathlib import Path

import pytest

import lightning_opt
from lightning_opt.cli import main
from lightning_opt.recipes import CONFIG_DIR, config_names, find_config, resolve_config_arguments

ROOT = Path(__file__).resolve().parent.parent
NOT_SOURCES = shutil.ignore_patterns(
    ".git", ".venv", "build", "dist", "site", "logs", "lightning_logs", "*.egg-info", "__pycache__", ".pytest_cache"
)


@pytest.fixture(scope="module")
def wheel(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The wheel built from a copy of the sources (setuptools' build/ folder could hold stale modules)."""
    source = tmp_path_factory.mktemp("source") / "lightning-opt"
    shutil.copytree(ROOT, source, ignore=NOT_SOURCES)
    out = tmp_path_factory.mktemp("wheel")
    command = [sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q", "-w", str(out), "."]
    subprocess.run(command, cwd=source, check=True, capture_output=True, timeout=120)
    (built,) = out.glob("lightning_opt-*.whl")
    return built


def test_wheel_installs_only_lightning_opt_with_the_recipes_and_configs_inside(wheel: Path) -> None:
    names = set(zipfile.ZipFile(wheel).namelist())
    dist_info = f"lightning_opt-{version('lightning-opt')}.dist-info"
    assert {name.split("/")[0] for name in names} == {"lightning_opt", dist_info}
    expected = {path.relative_to(ROOT).as_posix() for path in (ROOT / "lightning_opt").rglob("*.py")}
    expected |= {"lightning_opt/" + path.relative_to(ROOT).as_posix() for path in (ROOT / "recipes").rglob("*.py")}
    expected |= {"lightning_opt/" + path.relative_to(ROOT).as_posix() for path in (ROOT / "configs").rglob("*.yaml")}
    expected |= {"lightning_opt/py.typed", f"{dist_info}/licenses/LICENSE"}
    assert expected <= names, f"missing from the wheel: {sorted(expected - names)}"
    with zipfile.ZipFile(wheel) as archive:
        assert archive.read(f"{dist_info}/top_level.txt").decode().split() == ["lightning_opt"]
        metadata = archive.read(f"{dist_info}/METADATA").decode()
        assert "License-Expression: Apache-2.0" in metadata and "Classifier: Typing :: Typed" in metadata
        assert archive.read(f"{dist_info}/licenses/LICENSE") == (ROOT / "LICENSE").read_bytes()


def test_installed_wheel_trains_the_packaged_digits_config_outside_a_checkout(wheel: Path, tmp_path: Path) -> None:
    site = tmp_path / "site"
    zipfile.ZipFile(wheel).extractall(site)
    work = tmp_path / "elsewhere"  # no configs/ and no recipes/ here
    work.mkdir()
    script = f"""
import importlib.util, sys
import lightning_opt, lightning_opt.recipes
from pathlib import Path
site = Path({str(site)!r})
assert Path(lightning_opt.__file__).is_relative_to(site), lightning_opt.__file__
assert lightning_opt.recipes.CONFIG_DIR == site / "lightning_opt" / "configs", lightning_opt.recipes.CONFIG_DIR
assert importlib.util.find_spec("recipes") is None, "the wheel installed a top-level 'recipes'"
from lightning_opt.cli import main
assert main(["--version"]) == 0
sys.exit(main(["fit", "--config", "digits", "--trainer.fast_dev_run", "true", "--trainer.accelerator", "cpu"]))
"""
    env = {**os.environ, "PYTHONPATH": str(site)}
    result = subprocess.run(
        [sys.executable, "-c", script], cwd=work, env=env, capture_output=True, text=True, timeout=240
    )
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    assert f"lightning-opt {version('lightning-opt')}" in result.stdout
    assert "fit finished: " in result.stdout and "optimizer:  AdaLo(" in result.stdout


def test_version_prints_the_installed_distribution_version(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["--version"]) == 0
    assert capsys.readouterr().out == f"lightning-opt {version('lightning-opt')}\n"
    assert lightning_opt.__version__ == version("lightning-opt")


def test_version_does_not_import_lightning() -> None:
    script = "import sys; from lightning_opt.cli import main; main(['--version']); print('lightning' in sys.modules)"
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120, check=True)
    assert result.stdout.splitlines() == [f"lightning-opt {version('lightning-opt')}", "False"]


def test_config_names_are_the_yaml_files_of_the_configs_folder() -> None:
    assert CONFIG_DIR == ROOT / "configs"  # the editable install of a checkout reads the checkout's configs/
    files = CONFIG_DIR.rglob("*.yaml")
    assert config_names() == sorted(path.relative_to(CONFIG_DIR).with_suffix("").as_posix() for path in files)
    assert {"digits", "digits_vae_adalo", "callbacks/softclip_then_tails"} <= set(config_names())


def test_config_name_resolves_to_the_packaged_file_and_a_real_file_wins(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    packaged = str(CONFIG_DIR / "digits.yaml")
    for value in ("digits", "digits.yaml", "configs/digits.yaml"):
        assert find_config(value) == packaged
    assert find_config("callbacks/agc_then_tails") == str(CONFIG_DIR / "callbacks" / "agc_then_tails.yaml")
    (tmp_path / "digits.yaml").write_text("seed_everything: 1\n")
    assert find_config("digits.yaml") == "digits.yaml"  # the user's file, not the packaged one
    for untouched in ('{"seed_everything": 1}', "seed_everything: 1", "/no/such/absolute.yaml", "../x.yaml"):
        assert find_config(untouched) == untouched  # left to LightningCLI
    assert resolve_config_arguments(["fit", "-c", "digits", "--config=digits", "--trainer.max_epochs", "1"]) == [
        "fit", "-c", packaged, f"--config={packaged}", "--trainer.max_epochs", "1"
    ]


def test_unknown_config_name_exits_2_listing_the_packaged_names(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.chdir(tmp_path)
    with pytest.raises(ValueError, match=r"--config 'digitz': no such file.*digits, digits_tails"):
        find_config("digitz")
    assert main(["fit", "--config", "digitz"]) == 2
    error = capsys.readouterr().err
    assert error.startswith("lightning-opt: error: --config 'digitz': no such file")
    assert all(name in error for name in config_names())
