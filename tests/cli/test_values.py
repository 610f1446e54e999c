"""Kind 4 of the first day: a value that cannot be right is refused where it enters, in one
line that names it and says what is allowed; nothing runs with it."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

from tests.cli.conftest import one_line, run, stateward


@pytest.mark.parametrize(
    ("args", "expected"),
    [
        (["flow-run", "ls", "--limit", "-1"], "--limit"),
        (["task-run", "ls", "--limit", "0"], "--limit"),
        (["watch", "--after", "-5"], "--after"),
        (["concurrency-limit", "create", "db", "--", "-1"], "limit"),
        (["flow-run", "ls", "--state", "DONE"], "COMPLETED"),
    ],
)
def test_client_flags_out_of_range_are_refused(home: Path, args: list[str], expected: str) -> None:
    done = stateward(home, *args)
    assert done.returncode == 2, done
    assert expected in one_line(done.stderr)
    assert done.stdout == ""
    assert not (home / "stateward.db").exists()  # refused before anything opened the database


@pytest.mark.parametrize(
    ("variable", "value", "expected"),
    [
        ("STATEWARD_API_URL", "http://127.0.0.1:8470", "host:port, without a scheme"),
        ("STATEWARD_API_URL", "localhost", "host:port with a port from 1 to 65535"),
        ("STATEWARD_API_URL", "127.0.0.1:99999", "port from 1 to 65535"),
        ("STATEWARD_REQUEST_TIMEOUT", "soon", "must be a number greater than 0"),
        ("STATEWARD_REQUEST_TIMEOUT", "-3", "must be a number greater than 0"),
        ("STATEWARD_TLS_CA", "/nonexistent/ca.pem", "cannot be read"),
    ],
)
def test_client_settings_that_cannot_be_right_are_one_line(
    home: Path, variable: str, value: str, expected: str
) -> None:
    env = {variable: value}
    if variable != "STATEWARD_API_URL":
        env["STATEWARD_API_URL"] = "127.0.0.1:8470"
    done = stateward(home, "flow-run", "ls", env=env)
    assert done.returncode == 1
    line = one_line(done.stderr)
    assert variable in line and expected in line
    assert done.seconds < 15


@pytest.mark.parametrize(
    ("variable", "value", "expected"),
    [
        ("STATEWARD_API_URL", "http://127.0.0.1:8470", "without a scheme (e.g. 127.0.0.1:8470)"),
        ("STATEWARD_LEASE_SECONDS", "0", "greater than 0"),
        ("STATEWARD_MAX_RESULT_BYTES", "2MB", "a whole number"),
        ("STATEWARD_LOGGING_LEVEL", "LOUD", "DEBUG, INFO, WARNING, ERROR, CRITICAL"),
    ],
)
def test_the_sdk_refuses_settings_that_cannot_be_right(
    home: Path, variable: str, value: str, expected: str
) -> None:
    program = "from stateward import flow\n\n@flow\ndef hello():\n    return 1\n\nhello()\n"
    done = run([sys.executable, "-c", program], home, env={variable: value})
    assert done.returncode == 1
    last = done.stderr.strip().splitlines()[-1]
    assert last.startswith("stateward.exceptions.InvalidSetting: ")
    assert variable in last and expected in last


@pytest.mark.parametrize(
    ("args", "expected"),
    [
        (["--port", "99999"], "0 to 65535"),
        (["--sqlite-synchronous", "bogus"], "OFF, NORMAL, FULL, EXTRA"),
    ],
)
def test_server_flags_out_of_range_are_refused(home: Path, args: list[str], expected: str) -> None:
    done = stateward(home, "server", "start", "--db", str(home / "s.db"), *args)
    assert done.returncode == 2
    assert expected in one_line(done.stderr)
    assert not (home / "s.db").exists()
