"""`stateward.input.RunInput` as the reference's `prefect.input.RunInput`: what a paused flow
run waits for, with initial data that a resume may leave out, unknown fields refused, and a
description said with the pause. Real flows on a real server (the session's), and on the
embedded default resumed from the CLI."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
import uuid

import pydantic
import pytest

from stateward import flow, pause_flow_run, resume_flow_run
from stateward.exceptions import InvalidArgument
from stateward.input import RunInput
from stateward.runtime import flow_run
from stateward.states import StateType
from tests.sdk.conftest import spawn
from tests.support import ROOT, wait_until

pytestmark = pytest.mark.usefixtures("sdk_server")


class Approval(RunInput):
    approver: str
    level: int = 1


def paused_run(client, flow_name: str):
    found = []

    def check() -> bool:
        runs = list(client.list_flow_runs(flow_names=[flow_name], limit=1))
        if runs and runs[0].state and runs[0].state.type is StateType.PAUSED:
            found.append(runs[0])
            return True
        return False

    wait_until(check, timeout=30, what=f"a paused run of {flow_name}")
    return found[-1]


def test_initial_data_fills_what_the_resume_leaves_out(client):
    name = f"sdk-run-input-{uuid.uuid4().hex[:6]}"
    seen: dict[str, object] = {}

    def resume() -> None:
        run = paused_run(client, name)
        seen["schema"] = json.loads(run.state.details.run_input_schema)
        with pytest.raises(InvalidArgument):
            resume_flow_run(run.id, {"approver": "ann", "unknown": 1})  # extra fields refused
        resume_flow_run(run.id, {"level": 3})  # approver: its initial data

    @flow(name=name)
    def asks() -> tuple[str, str, int, str]:
        wanted = Approval.with_initial_data(description="Who approves the release?", approver="ann")
        answer = pause_flow_run(wait_for_input=wanted, timeout=60, poll_interval=30)
        return type(answer).__name__, answer.approver, answer.level, str(flow_run.id)

    resumer = threading.Thread(target=resume, daemon=True)
    resumer.start()
    kind, approver, level, _ = asks()
    resumer.join(10)
    assert (kind, approver, level) == ("Approval", "ann", 3)
    assert isinstance(seen["schema"], dict)
    assert seen["schema"]["description"] == "Who approves the release?"
    assert seen["schema"]["properties"]["approver"]["default"] == "ann"
    assert seen["schema"]["additionalProperties"] is False


def test_a_run_inputs_docstring_is_its_description_and_fields_stay_required(client):
    class Reason(RunInput):
        """Why should this go on?"""

        reason: str

    made = Reason.with_initial_data()
    assert made.model_json_schema()["description"] == "Why should this go on?"
    assert made.model_json_schema()["required"] == ["reason"]
    with pytest.raises(ValueError):
        Reason(reason="x", other=1)  # type: ignore[call-arg]


def test_initial_data_that_does_not_fit_its_field_is_refused_at_once():
    # A default pydantic does not check: the model's schema offered it (a resume leaving the
    # field out got it), and its instances held it, an int field holding 'many'.
    class Order(RunInput):
        count: int
        size: int = pydantic.Field(default=1, gt=0)

    with pytest.raises(ValueError, match="count='many' does not fit the field count: Input"):
        Order.with_initial_data(count="many")
    with pytest.raises(ValueError, match="greater than 0"):
        Order.with_initial_data(size=0)
    made = Order.with_initial_data(count="3")  # what the field's type makes of it
    assert made().count == 3
    assert made.model_json_schema()["properties"]["count"]["default"] == 3


def test_run_input_on_the_embedded_default_resumed_from_the_cli(tmp_path):
    env = {"STATEWARD_API_URL": "", "STATEWARD_HOME": str(tmp_path)}

    def cli(*args: str) -> subprocess.CompletedProcess[str]:
        full_env = {**os.environ, **env}
        del full_env["STATEWARD_API_URL"]  # the embedded default
        return subprocess.run(
            [sys.executable, "-m", "stateward", *args],
            capture_output=True,
            text=True,
            cwd=ROOT,
            env=full_env,
            timeout=60,
        )

    owner = spawn(
        """
        from stateward import flow, pause_flow_run
        from stateward.input import RunInput
        from stateward.runtime import flow_run

        class Approval(RunInput):
            '''Who approves the release?'''

            approver: str

        @flow
        def release():
            print(flow_run.id, flush=True)
            answer = pause_flow_run(wait_for_input=Approval, timeout=120, poll_interval=30)
            return f"approved by {answer.approver}"

        print(release(), flush=True)
        """,
        env=env,
    )
    try:
        run_id = owner.stdout.readline().strip()

        def resumed() -> bool:  # "not paused" until the pause is written: try again
            answer = cli("flow-run", "resume", run_id, "--input", '{"approver": "ann"}')
            return answer.returncode == 0

        wait_until(resumed, timeout=60, what="the CLI to resume the run")
        out, err = owner.communicate(timeout=60)
    finally:
        if owner.poll() is None:
            owner.kill()
    assert owner.returncode == 0, err
    assert out.strip().splitlines()[-1] == "approved by ann"
    logs = cli("flow-run", "logs", run_id)
    assert logs.returncode == 0, logs.stderr
    assert "it waits for input: Who approves the release?" in logs.stdout
