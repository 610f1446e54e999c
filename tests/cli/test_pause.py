"""A pause that waits for input, as a newcomer following the README meets it: the hint the run
logs says how to resume it with input (`--input '<json>'`), and `stateward flow-run resume`
without the input it waits for names the flag one types, not the RPC's field."""

from __future__ import annotations

import contextlib
import json
import re
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

from tests.cli.conftest import Lines, environment, one_line, stateward
from tests.support import ROOT, wait_until


@contextlib.contextmanager
def flow_process(home: Path, program: str) -> Iterator[tuple[subprocess.Popen[str], str, Lines]]:
    """`program` (it prints its flow run's id first) in a process on `home`: the process, the
    run's id and the lines of its console; killed at the end if it still runs."""
    owner = subprocess.Popen(
        [sys.executable, "-c", program],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=environment(home),
        cwd=ROOT,
    )
    try:
        assert owner.stdout is not None and owner.stderr is not None
        yield owner, owner.stdout.readline().strip(), Lines(owner.stderr)
    finally:
        if owner.poll() is None:
            owner.kill()


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
    with flow_process(home, PROGRAM) as (owner, run_id, console):
        hint = f"resume it with `stateward flow-run resume {run_id} --input '<json>'`"
        wait_until(lambda: bool(console.matching(hint)), timeout=60, what="the pause's hint")
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
    with flow_process(home, NO_INPUT) as (owner, run_id, console):
        wait_until(lambda: bool(console.matching("paused")), timeout=60, what="the pause")
        assert not console.matching("--input")  # nothing to give: the hint offers no input
        inspected = stateward(home, "flow-run", "inspect", run_id, env={"COLUMNS": "200"})
        assert f"resume with  stateward flow-run resume {run_id}\n" in inspected.stdout
        assert "waits for" not in inspected.stdout
        refused = stateward(home, "flow-run", "resume", run_id, "--input", "{}")
        assert refused.returncode == 1
        line = one_line(refused.stderr)
        assert "without --input" in line and "run_input" not in line
        assert stateward(home, "flow-run", "resume", run_id).returncode == 0
        owner.communicate(timeout=60)
    assert owner.returncode == 0


DESCRIBED = """
from stateward import flow, pause_flow_run
from stateward.input import RunInput
from stateward.runtime import flow_run

class Approval(RunInput):
    approver: str

@flow(name="described")
def described():
    print(flow_run.id, flush=True)
    wanted = Approval.with_initial_data(description="Approve the v2 release to production")
    pause_flow_run(wait_for_input=wanted, key="release", timeout=600, poll_interval=30)

described()
"""


def test_inspect_shows_what_a_paused_run_waits_for_and_how_to_resume_it(home: Path) -> None:
    """The Paused state has no message (neither has the reference's): inspect shows what it
    carries instead, its timeout and key, the description of the input it waits for (what the
    reference's resume form shows) and the command that resumes it."""
    with flow_process(home, DESCRIBED) as (owner, run_id, console):
        wait_until(lambda: bool(console.matching("paused")), timeout=60, what="the pause")
        inspected = stateward(home, "flow-run", "inspect", run_id, env={"COLUMNS": "200"})
        assert inspected.returncode == 0, inspected.stderr
        facts = {
            line.split(maxsplit=1)[0]: line.split(maxsplit=1)[1]
            for line in inspected.stdout.splitlines()[1:]
            if line.startswith("  ") and len(line.split(maxsplit=1)) == 2
        }
        assert re.fullmatch(
            r"until \d{4}-\d\d-\d\d \d\d:\d\d:\d\d\.\d{3}, key 'release'", facts["paused"].strip()
        ), facts
        assert "waits for    input: Approve the v2 release to production" in inspected.stdout
        assert (
            f"resume with  stateward flow-run resume {run_id} --input '<json>'" in inspected.stdout
        )
        resumed = stateward(home, "flow-run", "resume", run_id, "--input", '{"approver": "ann"}')
        assert resumed.returncode == 0, resumed.stderr
        owner.communicate(timeout=60)
    assert owner.returncode == 0
