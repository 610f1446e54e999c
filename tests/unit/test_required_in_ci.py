"""The suite's own rule (tests/conftest.py): a test marked `required_in_ci` that skips fails
under CI=true. `make test` runs the suite on pytest-xdist's workers, so the rule is checked
there: a pytest of its own, on one worker, runs a test that skips (where CI is not true it
is a skip, as a run of tests/browser without Chromium shows)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from tests.support import ROOT

SKIPPING = """
import pytest

@pytest.mark.required_in_ci
def test_that_needs_a_tool():
    pytest.skip("the tool is missing")

def test_that_needs_nothing():
    pass
"""


def test_a_required_test_that_skips_on_a_worker_fails_under_ci(tmp_path: Path) -> None:
    (tmp_path / "test_skipping.py").write_text(SKIPPING)
    result = subprocess.run(
        [sys.executable, "-m", "pytest", "-c", str(ROOT / "pyproject.toml"), "-p", "tests.conftest",
         "-p", "no:cacheprovider", "-n", "1", "--dist", "loadgroup", "-rf",
         str(tmp_path / "test_skipping.py")],
        capture_output=True,
        text=True,
        timeout=120,
        cwd=ROOT,
        env={**os.environ, "CI": "true"},
    )  # fmt: skip
    output = result.stdout + result.stderr
    assert "1 worker [2 items]" in output, output  # the tests ran on a worker of xdist's
    assert result.returncode == 1, output
    assert "1 failed, 1 passed" in output, output
    assert "skipped under CI=true, where it must run: Skipped: the tool is missing" in output
