"""What the CLI shows of a run whose process is gone, on the embedded default with no server
or `stateward ui` to crash it: it stays Running, and `inspect` and the listings say its lease
lapsed; a running run's run time is the time so far."""

from __future__ import annotations

import re
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

from tests.cli.conftest import environment, stateward
from tests.support import ROOT, wait_until

KILLED = """
import time
from stateward import flow, task
from stateward.runtime import flow_run

@task
def forever():
    print(flow_run.id, flush=True)  # the flow run and its task run are Running
    time.sleep(3600)

@flow(name="killed-here")
def doomed():
    forever()

doomed()
"""


def killed(home: Path, program: str, ready: Callable[[str], bool] = lambda run_id: True) -> str:
    """Run `program` (it prints its flow run's id first) with a lease of 1 s, kill it with
    SIGKILL once `ready(run_id)` (nothing renews the lease then, nothing here crashes the run);
    the run's id."""
    owner = subprocess.Popen(
        [sys.executable, "-c", program],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=environment(home, {"STATEWARD_LEASE_SECONDS": "1"}),
        cwd=ROOT,
    )
    try:
        assert owner.stdout is not None
        run_id = owner.stdout.readline().strip()
        wait_until(lambda: ready(run_id), timeout=60, what="the run to be ready")
    finally:
        owner.kill()
        owner.wait()
    return run_id


def inspected(home: Path, run_id: str) -> str:
    done = stateward(home, "flow-run", "inspect", run_id, env={"COLUMNS": "200"})
    assert done.returncode == 0, done.stderr
    return done.stdout


def test_inspect_and_listings_say_a_killed_runs_lease_lapsed_and_count_its_run_time(
    home: Path,
) -> None:
    run_id = killed(home, KILLED)
    wait_until(lambda: "lapsed" in inspected(home, run_id), timeout=60, what="the lease to lapse")
    shown = inspected(home, run_id)
    assert re.search(
        r"lease +lapsed \d+ s ago: its process is gone; a server or `stateward ui` crashes it",
        shown,
    ), shown
    assert "Running" in shown
    seconds = float(re.search(r"run time +([\d.]+)s so far", shown).group(1))  # type: ignore[union-attr]
    assert seconds >= 1.0, shown  # the lease (1 s) lapsed: it ran at least that long
    for listing in (["flow-run", "ls"], ["task-run", "ls"]):
        listed = stateward(home, *listing, env={"COLUMNS": "200"})
        assert "Running (lease lapsed)" in listed.stdout, listed.stdout


PAUSED = """
from stateward import flow, pause_flow_run
from stateward.runtime import flow_run

@flow(name="paused-here")
def waits():
    print(flow_run.id, flush=True)
    pause_flow_run(timeout=3600)

waits()
"""


def test_a_paused_run_whose_process_is_gone_is_not_resumed(home: Path) -> None:
    """kill -9 while paused, on the embedded default with nothing to crash the run: a resume
    would answer "is Running" and leave a Running run that nothing runs. It is refused in one
    line, and the run stays as it was."""
    run_id = killed(home, PAUSED, lambda run_id: "Paused" in inspected(home, run_id))
    wait_until(lambda: "lapsed" in inspected(home, run_id), timeout=60, what="the lease to lapse")
    resumed = stateward(home, "flow-run", "resume", run_id)
    assert resumed.returncode != 0
    assert "its process is gone" in resumed.stderr, resumed.stderr
    assert len(resumed.stderr.strip().splitlines()) == 1, resumed.stderr
    assert "Paused" in inspected(home, run_id)
