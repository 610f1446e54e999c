"""`make run`'s first step, as a newcomer sees it: the Makefile's editable install prints no
setuptools notice. Run with this checkout's pip and setuptools (no download: no dependencies,
no build isolation) on a copy of the sources, into a throwaway prefix."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest

from tests.support import ROOT

pytestmark = pytest.mark.slow


def test_the_editable_install_of_make_run_says_nothing(tmp_path: Path) -> None:
    recipe = subprocess.run(
        ["make", "-n", "-B", ".venv/.installed-run"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    [install] = [line for line in recipe.splitlines() if line.endswith("pip install --quiet -e .")]
    source = tmp_path / "source"
    ignored = shutil.ignore_patterns("__pycache__", "*.egg-info")
    for folder in ("client", "service"):
        shutil.copytree(ROOT / folder, source / folder, ignore=ignored)
    for name in ("pyproject.toml", "README.md"):
        shutil.copy(ROOT / name, source / name)
    python = str(ROOT / ".venv" / "bin" / "python")
    offline = f"--no-deps --no-build-isolation --prefix {tmp_path / 'prefix'} -e ."
    command = install.replace(".venv/bin/python", python).replace("-e .", offline)
    done = subprocess.run(
        command, shell=True, cwd=source, capture_output=True, text=True, timeout=300
    )
    assert done.returncode == 0, done.stdout + done.stderr
    assert done.stdout + done.stderr == ""
