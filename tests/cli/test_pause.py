"""A pause that waits for input, as a newcomer following the README meets it: the hint the run
logs says how to resume it with input (`--input '<json>'`), and `stateward flow-run resume`
without the input it waits for names the flag one types, not the RPC's field."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

from tests.cli.conftest import Lines, environment, one_line, stateward
from tests.support import ROOT, wait_until

PROGRAM = """
import json
from pydantic import BaseModel
from stateward import flow, pause_flow_run
from stateward.runtime import flow_run

class Approval(BaseModel):
    approver: str

@flow(name="asks")
def asks():
    print(flow_run.id, flush=True)
    return pause_flow_run(wait_for_input=Approval, timeout=120, poll_interval=30).approver

print(json.dumps(asks()), flush=True)
"""


def test_a_pause_waiting_for_input_says_to_resume_it_with_input(home: Path) -> None:
    owner = subprocess.Popen(
        [sys.executable, "-c", PROGRAM],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=environment(home),
        cwd=ROOT,
    )
    try:
        assert owner.stdout is not None and owner.stderr is not None
        run_id = owner.stdout.readline().strip()
        console = Lines(owner.stderr)
        hint = f"resume it with `stateward flow-run resume {run_id} --input '<json>'`"
        wait_until(lambda: console.matching(hint), timeout=60, what="the pause's hint")
        # The run's logs get the line when the process's shipper sends it (every half second),
        # which may be after the console showed it.
        wait_until(
            lambda: hint in " ".join(stateward(home, "flow-run", "logs", run_id).stdout.split()),
            timeout=30,
            what="the pause's hint in the run's logs",
        )

        missing = stateward(home, "flow-run", "resume", run_id)
        assert missing.returncode == 1
        line = one_line(missing.stderr)
        assert "--input '<json>'" in line and "run_input" not in line
        assert '"approver"' in line  # the schema it waits for

        resumed = stateward(home, "flow-run", "resume", run_id, "--input", '{"approver": "ann"}')
        assert resumed.returncode == 0, resumed.stderr
        out, err = owner.communicate(timeout=60)
    finally:
        if owner.poll() is None:
            owner.kill()
    assert owner.returncode == 0, err
    assert json.loads(out.splitlines()[-1]) == "ann"


NO_INPUT = """
from stateward import flow, pause_flow_run
from stateward.runtime import flow_run

@flow(name="waits")
def waits():
    print(flow_run.id, flush=True)
    pause_flow_run(timeout=120, poll_interval=30)

waits()
"""


def test_input_to_a_pause_that_waits_for_none_names_the_flag(home: Path) -> None:
    owner = subprocess.Popen(
        [sys.executable, "-c", NO_INPUT],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=environment(home),
        cwd=ROOT,
    )
    try:
        assert owner.stdout is not None and owner.stderr is not None
        run_id = owner.stdout.readline().strip()
        console = Lines(owner.stderr)
        wait_until(lambda: console.matching("paused"), timeout=60, what="the pause")
        assert not console.matching("--input")  # nothing to give: the hint offers no input
        refused = stateward(home, "flow-run", "resume", run_id, "--input", "{}")
        assert refused.returncode == 1
        line = one_line(refused.stderr)
        assert "without --input" in line and "run_input" not in line
        assert stateward(home, "flow-run", "resume", run_id).returncode == 0
        owner.communicate(timeout=60)
    finally:
        if owner.poll() is None:
            owner.kill()
    assert owner.returncode == 0
