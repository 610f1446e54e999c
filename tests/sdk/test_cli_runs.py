"""The run commands of the CLI, on runs the SDK made, and the quickstart `make run` runs."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

from stateward import flow, task
from tests.support import ROOT

pytestmark = pytest.mark.usefixtures("sdk_server")


def stateward_cli(
    *args: str, env: dict[str, str] | None = None
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "stateward", *args],
        capture_output=True,
        text=True,
        cwd=ROOT,
        env={**os.environ, **(env or {})},
        timeout=60,
    )


def test_flow_run_ls_inspect_and_task_run_ls(client):
    @task(name="cli-step")
    def step(x):
        return x

    @flow(name="cli-listed", retries=0)
    def listed():
        step(1)
        step(2)

    listed()
    run = next(client.list_flow_runs(flow_names=["cli-listed"], limit=1))

    listing = stateward_cli("flow-run", "ls", "--flow", "cli-listed")
    assert listing.returncode == 0, listing.stderr
    assert run.id[:8] in listing.stdout and "Completed" in listing.stdout  # the short id

    inspected = stateward_cli("flow-run", "inspect", run.id)
    assert inspected.returncode == 0, inspected.stderr
    out = inspected.stdout
    assert run.name in out and "cli-listed" in out
    history = out[out.index("History") :]
    assert history.index("Pending") < history.index("Running") < history.index("Completed")
    assert "cli-step-0" in out and "cli-step-1" in out  # its task runs, named after the task

    tasks = stateward_cli("task-run", "ls", "--flow-run", run.id)
    assert tasks.returncode == 0 and tasks.stdout.count("cli-step-") == 2


def test_cli_errors_are_clear(client):
    missing = stateward_cli("flow-run", "inspect", "00000000-0000-4000-8000-000000000000")
    assert missing.returncode == 1
    assert "no flow run has id" in missing.stderr
    bad_state = stateward_cli("flow-run", "ls", "--state", "sleeping")
    assert bad_state.returncode != 0 and "not a state type" in bad_state.stderr
    nowhere = stateward_cli("flow-run", "ls", env={"STATEWARD_API_URL": "127.0.0.1:9"})
    assert nowhere.returncode == 1 and "cannot reach a Stateward server" in nowhere.stderr


def test_the_quickstart_shows_a_retry_a_hook_and_a_cache_hit(tmp_path):
    env = {k: v for k, v in os.environ.items() if k != "STATEWARD_API_URL"}
    result = subprocess.run(
        [sys.executable, "examples/quickstart.py"],
        capture_output=True,
        text=True,
        cwd=ROOT,
        env={**env, "STATEWARD_HOME": str(tmp_path)},
        timeout=120,
    )
    assert result.returncode == 0, result.stderr
    out = result.stdout
    assert "on_failure hook" in out and "result: 84" in out
    assert "Pending -> Running -> AwaitingRetry -> Retrying -> Completed" in out
    assert "Pending -> Running -> Failed" in out and "Pending -> Cached" in out
    # Its console speaks of runs only: which process runs the home's loops is a DEBUG line.
    first = next(line for line in result.stderr.splitlines() if " | " in line)
    assert "Task run 'fetch_orders-0'" in first, first
    assert "leads" not in result.stderr and "loops" not in result.stderr
    debug = subprocess.run(
        [sys.executable, "examples/quickstart.py"],
        capture_output=True,
        text=True,
        cwd=ROOT,
        env={**env, "STATEWARD_HOME": str(tmp_path / "debug"), "STATEWARD_LOGGING_LEVEL": "DEBUG"},
        timeout=120,
    )
    assert debug.returncode == 0, debug.stderr
    assert "| DEBUG   | this process leads the background checks" in debug.stderr
