"""The committed code in client/stateward/v1 is exactly what `make proto` makes from protos/."""

from __future__ import annotations

import filecmp
import subprocess
from pathlib import Path

from tests.support import ROOT

GENERATED = ROOT / "client" / "stateward" / "v1"


def _files(folder: Path) -> set[str]:
    return {p.name for p in folder.iterdir() if p.is_file()}


def test_generated_code_is_fresh(tmp_path):
    subprocess.run(
        ["make", "-s", "proto", f"PROTO_OUT={tmp_path}"],
        cwd=ROOT,
        check=True,
        capture_output=True,
    )
    fresh = tmp_path / "stateward" / "v1"
    assert _files(fresh) == _files(GENERATED), (
        "generated files were added or removed: run make proto"
    )
    match, mismatch, errors = filecmp.cmpfiles(
        fresh, GENERATED, sorted(_files(fresh)), shallow=False
    )
    assert not mismatch and not errors, (
        f"stale generated code in {mismatch + errors}: run make proto"
    )
    assert match


def test_buf_lint_passes():
    result = subprocess.run(
        [str(ROOT / ".venv" / "bin" / "buf"), "lint"],
        cwd=ROOT / "protos",
        capture_output=True,
        text=True,
    )
    assert result.returncode == 0, result.stdout + result.stderr
