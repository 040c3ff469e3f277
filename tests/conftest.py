"""Fixtures shared by the test modules, and the running of ``own_process`` and ``cuda`` tests in a child process.

A test marked ``own_process`` or ``cuda`` runs in a fresh ``python -m pytest <its node id>`` instead of in the
pytest process, which only reports the child's outcome. Two reasons, both about CUDA on a machine with a GPU:

- ``ddp_fork`` cannot fork once CUDA is initialised in the process (Lightning refuses), and the pytest
  process is not guaranteed to be CUDA-free: third-party code (a compile, a Trainer an earlier test forgot
  to keep on the CPU) may initialise it. A fresh interpreter never has.
- A ``cuda`` test must not initialise CUDA in the pytest process, or every later ``ddp_fork`` test would
  fail there; in its own process it cannot.

Inside the child (the environment variable :data:`OWN_PROCESS_ENV` names the test), the test runs as usual.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
import tempfile
from collections.abc import Iterator

import pytest
import torch

OWN_PROCESS_ENV = "LIGHTNING_OPT_OWN_PROCESS_TEST"
"""Set, to the test's node id, in the child process that runs an ``own_process`` or ``cuda`` test."""

OWN_PROCESS_TIMEOUT_S = 1800
"""The longest a child process may run (compiling every optimizer on a GPU takes minutes)."""

_OUTPUT_TAIL = 8000


@pytest.fixture
def one_thread() -> Iterator[None]:
    """Run on one CPU thread, as the digits config does (a 17k-parameter MLP is several times faster so),
    and give the rest of the session its thread count back afterwards."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.hookimpl(tryfirst=True)
def pytest_pyfunc_call(pyfuncitem: pytest.Function) -> bool | None:
    """Run an ``own_process`` or ``cuda`` test in a child pytest process (see the module docstring)."""
    if not any(pyfuncitem.get_closest_marker(name) for name in ("own_process", "cuda")):
        return None
    if os.environ.get(OWN_PROCESS_ENV) == pyfuncitem.nodeid:
        return None  # this is the child: run the test here
    with tempfile.TemporaryDirectory(prefix="own_process_") as basetemp:
        command = [
            sys.executable, "-m", "pytest", pyfuncitem.nodeid,
            "-q", "-rs", "-p", "no:cacheprovider", f"--basetemp={basetemp}",
        ]  # fmt: skip
        try:
            result = subprocess.run(
                command,
                cwd=pyfuncitem.config.rootpath,
                env={**os.environ, OWN_PROCESS_ENV: pyfuncitem.nodeid},
                capture_output=True,
                text=True,
                timeout=OWN_PROCESS_TIMEOUT_S,
                check=False,
            )
        except subprocess.TimeoutExpired as error:
            pytest.fail(f"{pyfuncitem.nodeid}: its own process ran past {error.timeout} s", pytrace=False)
    output = result.stdout + result.stderr
    if result.returncode != 0:
        pytest.fail(
            f"{pyfuncitem.nodeid} failed in its own process (exit status {result.returncode}):\n"
            + output[-_OUTPUT_TAIL:],
            pytrace=False,
        )
    skipped = re.search(r"^SKIPPED \[\d+\] [^\n]*?: (.*)$", output, re.MULTILINE)
    if skipped:
        pytest.skip(f"in its own process: {skipped.group(1)}")
    if not re.search(r"\b1 passed\b", output):
        pytest.fail(f"{pyfuncitem.nodeid}: its own process did not report a pass:\n{output[-_OUTPUT_TAIL:]}")
    return True
