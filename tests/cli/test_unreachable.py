"""Kind 1 of the first day: nothing at STATEWARD_API_URL is said within seconds, not after
minutes of silence; `watch` says it once, keeps trying, and says when it is connected."""

from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path

from tests.cli.conftest import Lines, environment, free_port, one_line, run, stateward
from tests.support import ROOT, ServerProcess, wait_until

FLOW = """
from stateward import flow

@flow
def hello():
    return 1

hello()
"""


def test_the_sdk_fails_within_seconds_naming_the_address_and_the_setting(home: Path) -> None:
    address = f"127.0.0.1:{free_port()}"
    done = run([sys.executable, "-c", FLOW], home, env={"STATEWARD_API_URL": address})
    assert done.returncode == 1
    last = done.stderr.strip().splitlines()[-1]
    assert "ServerUnavailable" in last and address in last and "STATEWARD_API_URL" in last
    assert "connection refused" in last
    assert "lost" not in done.stderr and "crash" not in done.stderr
    assert done.seconds < 20  # a 5 s first-contact window, plus start-up on a loaded machine


def test_a_command_says_in_one_line_that_nothing_listens(home: Path) -> None:
    address = f"127.0.0.1:{free_port()}"
    done = stateward(home, "flow-run", "ls", env={"STATEWARD_API_URL": address})
    assert done.returncode == 1
    line = one_line(done.stderr)
    assert address in line and "STATEWARD_API_URL" in line and "stateward server start" in line
    assert done.seconds < 15


def test_watch_says_once_what_it_cannot_reach_then_says_when_it_connects(
    home: Path, tmp_path: Path
) -> None:
    port = free_port()
    address = f"127.0.0.1:{port}"
    watch = subprocess.Popen(
        [sys.executable, "-m", "stateward", "watch"],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
        env=environment(home, {"STATEWARD_API_URL": address}),
        cwd=ROOT,
    )
    server = ServerProcess(tmp_path / "server.db", port=port)
    try:
        started = time.monotonic()
        err = Lines(watch.stderr)
        wait_until(lambda: bool(err.matching("cannot reach")), timeout=20)
        assert time.monotonic() - started < 20
        (said,) = err.matching("cannot reach")
        assert address in said and "retrying" in said
        server.start()  # it kept trying, and finds the server once it listens
        wait_until(lambda: bool(err.matching("watching transitions")), timeout=30)
        assert "reconnected" in err.matching("watching transitions")[0]
        assert len(err.matching("cannot reach")) == 1
        assert watch.poll() is None
    finally:
        watch.terminate()
        watch.wait(10)
        server.stop()
