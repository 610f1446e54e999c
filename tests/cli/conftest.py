"""The command line as a newcomer meets it: each test runs the real `stateward` command (or a
Python program) in a subprocess, on a home of its own, and checks exit status, output and time."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.support import ROOT


@dataclass
class Finished:
    """A finished command: its exit status, its output and how long it took."""

    returncode: int
    stdout: str
    stderr: str
    seconds: float


def environment(home: Path, env: dict[str, str] | None = None) -> dict[str, str]:
    """The test's environment for a command: its own home, no server named unless `env` names
    one; a value of "" unsets the variable."""
    full = {**os.environ, "STATEWARD_HOME": str(home), "STATEWARD_API_URL": "", **(env or {})}
    full["COLUMNS"] = full.get("COLUMNS", "80")
    return {key: value for key, value in full.items() if value != ""}


def stateward(
    home: Path, *args: str, env: dict[str, str] | None = None, timeout: float = 60
) -> Finished:
    """`stateward ARGS...`, run to its end."""
    return run([sys.executable, "-m", "stateward", *args], home, env=env, timeout=timeout)


def run(
    command: Sequence[str], home: Path, *, env: dict[str, str] | None = None, timeout: float = 60
) -> Finished:
    started = time.monotonic()
    done = subprocess.run(
        list(command),
        capture_output=True,
        text=True,
        env=environment(home, env),
        timeout=timeout,
        cwd=ROOT,
    )
    return Finished(done.returncode, done.stdout, done.stderr, time.monotonic() - started)


class Lines:
    """The lines a process writes to a pipe, collected by a thread as they come."""

    def __init__(self, pipe: object) -> None:
        self.lines: list[str] = []
        self._thread = threading.Thread(target=self._read, args=(pipe,), daemon=True)
        self._thread.start()

    def _read(self, pipe: object) -> None:
        for line in pipe:  # type: ignore[attr-defined]
            self.lines.append(line.rstrip("\n"))

    def matching(self, text: str) -> list[str]:
        return [line for line in self.lines if text in line]


def free_port() -> int:
    """A loopback port nothing listens on (it was free a moment ago)."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def one_line(text: str) -> str:
    """The text, which must be exactly one line (no traceback, no wrapping)."""
    lines = text.strip().splitlines()
    assert len(lines) == 1, text
    assert "Traceback" not in text
    return lines[0]


@pytest.fixture
def home(tmp_path: Path) -> Path:
    path = tmp_path / "home"
    path.mkdir()
    return path
