"""Output fits where it goes: a terminal's width on a terminal, 80 columns into a pipe with no
terminal anywhere (a CI log, a file), as rich makes it; `watch` lines are cut to a terminal's
width only."""

from __future__ import annotations

import fcntl
import os
import pty
import re
import struct
import subprocess
import sys
import termios
from pathlib import Path

import pytest

from tests.cli.conftest import environment, run
from tests.support import ROOT

# A failure message longer than any width: the Failed state's message in the history.
REASON = " ".join(f"word{number}" for number in range(60))
FAILING = f"""
from stateward import flow

@flow(name="fails-wordily", flow_run_name="wordy-run")
def fails_wordily():
    raise ValueError({REASON!r})

fails_wordily(return_state=True)
"""
NO_COLUMNS = {"COLUMNS": ""}  # rich's own choice of width, as a user's shell leaves it
ANSI = re.compile(r"\x1b\[[0-9;?]*[A-Za-z]")


@pytest.fixture(scope="module")
def home(tmp_path_factory: pytest.TempPathFactory) -> Path:
    home = tmp_path_factory.mktemp("widths")
    done = run([sys.executable, "-c", FAILING], home)
    assert done.returncode == 0, done.stderr
    return home


def stateward_piped(home: Path, *args: str) -> subprocess.CompletedProcess[str]:
    """`stateward ARGS` with no terminal at all: stdin, stdout and stderr are not one."""
    return subprocess.run(
        [sys.executable, "-m", "stateward", *args],
        stdin=subprocess.DEVNULL,
        capture_output=True,
        text=True,
        env=environment(home, NO_COLUMNS),
        timeout=60,
        cwd=ROOT,
    )


def stateward_on_terminal(home: Path, *args: str, columns: int) -> list[str]:
    """The lines `stateward ARGS` shows on a terminal `columns` wide (colours taken out)."""
    leader, follower = pty.openpty()
    fcntl.ioctl(follower, termios.TIOCSWINSZ, struct.pack("HHHH", 50, columns, 0, 0))
    process = subprocess.Popen(
        [sys.executable, "-m", "stateward", *args],
        stdin=subprocess.DEVNULL,
        stdout=follower,
        stderr=follower,
        env=environment(home, NO_COLUMNS),
        cwd=ROOT,
    )
    os.close(follower)
    shown = b""
    while True:
        try:
            chunk = os.read(leader, 65536)
        except OSError:  # EIO: the process ended and closed the terminal
            break
        if not chunk:
            break
        shown += chunk
    os.close(leader)
    assert process.wait(timeout=60) == 0, shown
    return [ANSI.sub("", line) for line in shown.decode().replace("\r\n", "\n").splitlines()]


def test_inspect_into_a_pipe_with_no_terminal_fits_80_columns_and_keeps_the_message(home):
    done = stateward_piped(home, "flow-run", "inspect", "wordy-run")
    assert done.returncode == 0, done.stderr
    lines = done.stdout.splitlines()
    assert max(len(line) for line in lines) <= 80, done.stdout
    assert "History" in done.stdout
    words = re.findall(r"word\d+", done.stdout)
    assert words == REASON.split(), done.stdout  # folded in its cell, all of it, in order


def test_inspect_on_a_terminal_uses_the_terminal_s_width(home):
    lines = stateward_on_terminal(home, "flow-run", "inspect", "wordy-run", columns=132)
    assert 80 < max(len(line) for line in lines) <= 132, "\n".join(lines)
    assert re.findall(r"word\d+", "\n".join(lines)) == REASON.split()


def test_watch_into_a_pipe_prints_each_transition_whole(home):
    process = subprocess.Popen(
        [sys.executable, "-m", "stateward", "watch", "--from-start"],
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        text=True,
        env=environment(home, NO_COLUMNS),
        cwd=ROOT,
    )
    try:
        assert process.stdout is not None
        for line in process.stdout:  # the replayed transitions, oldest first
            if "→ Failed" in line:
                assert line.rstrip("\n").endswith(f"ValueError: {REASON}"), line
                break
        else:
            pytest.fail("watch ended before the Failed transition")
    finally:
        process.terminate()
        process.wait(timeout=30)
