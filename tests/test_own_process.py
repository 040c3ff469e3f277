"""tests/conftest.py runs tests marked ``own_process`` or ``cuda`` in a child pytest process and reports its
outcome: a pass, a failure with the child's output, a skip with its reason."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

pytest_plugins = ["pytester"]

CONFTEST = Path(__file__).with_name("conftest.py")


@pytest.mark.own_process
def test_an_own_process_test_runs_in_a_child_named_after_it(request: pytest.FixtureRequest) -> None:
    assert os.environ.get("LIGHTNING_OPT_OWN_PROCESS_TEST") == request.node.nodeid


def test_the_parent_reports_the_childs_pass_failure_and_skip(pytester: pytest.Pytester) -> None:
    pytester.makeconftest(CONFTEST.read_text())
    pytester.makeini("[pytest]\nmarkers =\n    own_process: x\n    cuda: x\n")
    pytester.makepyfile(
        test_children="""
        import os
        import pytest

        @pytest.mark.own_process
        def test_passes():
            assert os.environ["LIGHTNING_OPT_OWN_PROCESS_TEST"].endswith("::test_passes")

        @pytest.mark.cuda
        def test_fails():
            assert 1 + 1 == 3, "a failure printed by the child"

        @pytest.mark.own_process
        def test_skips():
            pytest.skip("a reason given in the child")

        def test_in_the_parent():
            assert "LIGHTNING_OPT_OWN_PROCESS_TEST" not in os.environ
        """
    )
    result = pytester.runpytest_subprocess("-p", "no:cacheprovider", "-rs")

    result.assert_outcomes(passed=2, failed=1, skipped=1)
    result.stdout.fnmatch_lines(
        [
            "*test_children.py::test_fails failed in its own process (exit status 1)*",
            "*a failure printed by the child*",
            "*in its own process: a reason given in the child*",
        ]
    )
