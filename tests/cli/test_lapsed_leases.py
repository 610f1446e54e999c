"""What the CLI shows of a run whose process is gone, on the embedded default with no server
or `stateward ui` to crash it: it stays Running, and `inspect` and the listings say its lease
lapsed; a running run's run time is the time so far."""

from __future__ import annotations

import re
import subprocess
import sys
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


def test_inspect_and_listings_say_a_killed_runs_lease_lapsed_and_count_its_run_time(
    home: Path,
) -> None:
    owner = subprocess.Popen(
        [sys.executable, "-c", KILLED],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=environment(home, {"STATEWARD_LEASE_SECONDS": "1"}),
        cwd=ROOT,
    )
    try:
        assert owner.stdout is not None
        run_id = owner.stdout.readline().strip()
    finally:
        owner.kill()  # SIGKILL: nothing renews the lease, nothing here crashes the run
        owner.wait()

    def inspected() -> str:
        done = stateward(home, "flow-run", "inspect", run_id, env={"COLUMNS": "200"})
        assert done.returncode == 0, done.stderr
        return done.stdout

    wait_until(lambda: "lapsed" in inspected(), timeout=60, what="the lease to lapse")
    shown = inspected()
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
