"""`make run`'s first step, as a newcomer sees it: the Makefile's editable install prints no
setuptools notice. The install line's environment (from `make -n`) is given to setuptools'
build backend, building the editable wheel of a copy of the sources as pip does: nothing is
installed or uninstalled, nothing downloaded, nothing written in the checkout."""

from __future__ import annotations

import os
import shlex
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from tests.support import ROOT

pytestmark = pytest.mark.slow

BUILD_EDITABLE = (
    "import sys; from setuptools import build_meta; build_meta.build_editable(sys.argv[1])"
)


def test_the_editable_install_of_make_run_says_nothing(tmp_path: Path) -> None:
    recipe = subprocess.run(
        ["make", "-n", "-B", ".venv/.installed-run"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    [install] = [line for line in recipe.splitlines() if line.endswith("pip install --quiet -e .")]
    words = shlex.split(install)
    settings = dict(word.split("=", 1) for word in words[: words.index(".venv/bin/python")])
    source = tmp_path / "source"
    ignored = shutil.ignore_patterns("__pycache__", "*.egg-info")
    for folder in ("client", "service"):
        shutil.copytree(ROOT / folder, source / folder, ignore=ignored)
    for name in ("pyproject.toml", "README.md"):
        shutil.copy(ROOT / name, source / name)
    done = subprocess.run(
        [sys.executable, "-c", BUILD_EDITABLE, str(tmp_path / "wheel")],
        cwd=source,
        env={**os.environ, **settings},
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    assert list((tmp_path / "wheel").glob("*.whl"))
    assert "Editable installation" not in done.stderr, done.stderr
    assert "Please be careful" not in done.stderr
