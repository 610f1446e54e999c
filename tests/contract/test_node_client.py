"""The Node.js example (examples/node) against a real server: a client built from protos/ by
another language's gRPC stack gets the answers it narrates, and the server holds the histories it
claims to have written."""

from __future__ import annotations

import os
import re
import shutil
import sqlite3
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from stateward.client import Client
from tests.support import ROOT, ServerProcess, running_server

EXAMPLE = ROOT / "examples" / "node"
ENTRY = EXAMPLE / "index.js"
# What decides how a client connects (and whether a server wants a key or TLS): this test runs
# the plain set-up whatever the developer's shell exports.
CONNECTION_VARIABLES = (
    "STATEWARD_API_URL",
    "STATEWARD_API_KEY",
    "STATEWARD_TLS_CA",
    "STATEWARD_TLS_CERT",
    "STATEWARD_TLS_KEY",
    "STATEWARD_SERVER_TLS_CERT",
    "STATEWARD_SERVER_TLS_KEY",
    "STATEWARD_SERVER_TLS_CLIENT_CA",
)
UUID = r"[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}"

pytestmark = pytest.mark.skipif(
    shutil.which("node") is None or shutil.which("npm") is None,
    reason="the Node.js client example needs `node` and `npm` on PATH",
)


def install_dependencies() -> None:
    """`npm ci` unless node_modules already matches package-lock.json. npm rewrites its hidden
    lockfile inside node_modules on every install, so it is newer than the lock when up to date."""
    installed = EXAMPLE / "node_modules" / ".package-lock.json"
    lock = EXAMPLE / "package-lock.json"
    if installed.exists() and installed.stat().st_mtime >= lock.stat().st_mtime:
        return
    done = subprocess.run(
        ["npm", "ci", "--no-audit", "--no-fund"],
        cwd=EXAMPLE,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 0, f"npm ci failed:\n{done.stdout}\n{done.stderr}"


@pytest.fixture
def plain_server(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[ServerProcess]:
    """A server of the test's own with no API key and no TLS."""
    for name in CONNECTION_VARIABLES:
        monkeypatch.delenv(name, raising=False)
    with running_server(tmp_path) as server:
        yield server


def run_example(server: ServerProcess, cwd: Path) -> str:
    env = {name: value for name, value in os.environ.items() if name not in CONNECTION_VARIABLES}
    env["STATEWARD_API_URL"] = server.target
    done = subprocess.run(
        ["node", str(ENTRY)], cwd=cwd, env=env, capture_output=True, text=True, timeout=120
    )
    assert done.returncode == 0, (
        f"the Node.js example exited with {done.returncode}:\n{done.stdout}\n{done.stderr}"
        f"\nserver log:\n{server.output()}"
    )
    return done.stdout


def logged_sequences(db: Path) -> list[int]:
    with sqlite3.connect(f"file:{db}?mode=ro", uri=True) as conn:
        return [row[0] for row in conn.execute("SELECT sequence FROM transitions ORDER BY 1")]


def names(client: Client, run_id: str) -> list[str]:
    return [state.name for state in client.list_states(run_id)]


@pytest.mark.timeout(600)  # a first `npm ci` downloads the packages
def test_node_example_gets_every_answer_and_writes_what_it_claims(plain_server, tmp_path):
    install_dependencies()
    # From an unrelated directory: the example finds protos/ from its own location.
    output = run_example(plain_server, cwd=tmp_path)

    found = re.search(rf"^\s*flow run id: ({UUID})$", output, re.MULTILINE)
    assert found, output
    flow_run_id = found.group(1)
    for expected in (
        r"SetState RUNNING -> ACCEPT: now Running",
        r"SetState FAILED -> REJECT \(.+\): now AwaitingRetry .*, a SCHEDULED state",
        r"SetState RUNNING -> ACCEPT: now Retrying",
        r"SetState RUNNING -> ABORT \(.+\)",
        r"ABORT reason: \S",
        r"SetState CANCELLED -> ACCEPT: now Cancelled",
        r"SetState RUNNING -> WAIT \d+\.\d+ s",
        r"resume check OK",
    ):
        assert re.search(expected, output), f"{expected!r} not in the output:\n{output}"

    with Client(plain_server.target) as client:
        assert names(client, flow_run_id) == ["Pending", "Running", "Completed"]
        tasks = {run.task_key: run for run in client.list_task_runs(flow_run_ids=[flow_run_id])}
        assert sorted(tasks) == ["fetch-orders", "restricted", "scheduled-report"]
        retried = client.list_states(tasks["fetch-orders"].id)
        assert [s.name for s in retried] == [
            "Pending", "Running", "AwaitingRetry", "Retrying", "Completed",
        ]  # fmt: skip
        assert retried[2].message == "ConnectionError: the orders service timed out"
        assert retried[-1].result() == {"orders": 2, "total": 42}
        # ABORT wrote nothing; the example then gave the run up, so that none is left Pending.
        restricted = client.list_states(tasks["restricted"].id)
        assert [s.name for s in restricted] == ["Pending", "Cancelled"]
        assert restricted[-1].message.startswith("not run: tag 'node-example-")
        assert all(run.state.is_final() for run in tasks.values())
        assert names(client, tasks["scheduled-report"].id) == [
            "Scheduled", "Pending", "Running", "Completed",
        ]  # fmt: skip
        assert client.list_concurrency_limits() == []  # the example deletes its limit

    # The database is the test's own: the live stream printed every transition the log holds,
    # in order, and the replay printed them again.
    sequences = logged_sequences(plain_server.db)
    assert len(sequences) == 3 + 5 + 2 + 4
    live = [int(n) for n in re.findall(r"\[watch\] #(\d+) ", output)]
    replayed = [int(n) for n in re.findall(r"\[replay\] #(\d+) ", output)]
    assert live == sequences
    assert replayed == sequences
