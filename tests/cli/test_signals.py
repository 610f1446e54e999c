"""Kind 2 of the first day: a server whose output went into a pipe that closed (`stateward
server start 2>&1 | head -3`) still stops on SIGTERM; signal handling never waits on printing."""

from __future__ import annotations

import signal
import subprocess
import sys
import time
from pathlib import Path

from tests.cli.conftest import environment
from tests.support import ROOT


def test_sigterm_stops_a_server_whose_output_pipe_was_closed(home: Path) -> None:
    server = subprocess.Popen(
        [sys.executable, "-m", "stateward", "server", "start", "--port", "0",
         "--db", str(home / "piped.db"), "--no-ui"],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        env=environment(home),
        cwd=ROOT,
    )  # fmt: skip
    try:
        assert server.stdout is not None
        first = [server.stdout.readline() for _ in range(3)]  # what `head -3` shows
        assert any(b"listening on" in line for line in first)
        server.stdout.close()  # the reader is gone: the next write fails with EPIPE
        started = time.monotonic()
        server.send_signal(signal.SIGTERM)
        assert server.wait(timeout=30) == 0
        assert time.monotonic() - started < 30
    finally:
        if server.poll() is None:
            server.kill()
            server.wait()
