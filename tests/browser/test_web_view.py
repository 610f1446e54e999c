"""The web view's page in headless Chromium against a real server: the runs list, a flow run
appearing and changing state live while it runs, the filters, a run's page with its history and
task runs, cancelling a running flow from the page, and a reconnection after a server restart
that misses nothing."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from stateward.v1 import orchestration_pb2 as pb
from stateward.v1 import runs_pb2
from tests.support import ROOT, ST, ServerProcess, new_flow_run, propose, running_server, state

pytestmark = pytest.mark.required_in_ci

FLOW_SCRIPT = """
import pathlib, sys, time
from stateward import flow, task

gate = pathlib.Path(sys.argv[2])

@task
def extract():
    return [1, 2, 3]

@task
def wait_at_the_gate(rows):
    while not gate.exists():  # the test opens it
        time.sleep(0.05)
    return len(rows)

@flow(name=sys.argv[1])
def gated():
    return wait_at_the_gate(extract())

gated()
"""


def expect(locator: Any) -> Any:
    from playwright.sync_api import expect as playwright_expect

    return playwright_expect(locator)


@pytest.fixture
def flow_process(ui_server: ServerProcess, tmp_path: Path) -> Iterator[Any]:
    """Start a real flow (the SDK in a subprocess) that waits at a gate; yields a starter."""
    started: list[subprocess.Popen[bytes]] = []

    def start(flow_name: str, gate: Path) -> subprocess.Popen[bytes]:
        env = {
            **os.environ,
            "STATEWARD_API_URL": ui_server.target,
            "STATEWARD_HOME": str(tmp_path),
        }
        process = subprocess.Popen(
            [sys.executable, "-c", FLOW_SCRIPT, flow_name, str(gate)],
            env=env,
            cwd=ROOT,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
        )
        started.append(process)
        return process

    yield start
    for process in started:
        if process.poll() is None:
            process.kill()
        process.wait()


def row_of(page: Any, flow_name: str) -> Any:
    return page.locator("#runs tr", has=page.get_by_role("cell", name=flow_name, exact=True))


def test_a_run_appears_live_and_changes_state_while_its_flow_runs(
    page, ui_server, flow_process, tmp_path
) -> None:
    older = new_flow_run(ui_server.stub(), flow_name=f"older-{uuid.uuid4().hex[:6]}")
    page.goto(ui_server.ui_url)
    expect(page.locator(f'#runs tr[data-run-id="{older.id}"]')).to_be_visible()
    expect(page.locator("#live")).to_have_attribute("data-status", "live")

    flow_name = f"gated-{uuid.uuid4().hex[:6]}"
    gate = tmp_path / "gate"
    process = flow_process(flow_name, gate)
    row = row_of(page, flow_name)
    expect(row).to_have_attribute("data-state", "RUNNING", timeout=30_000)
    expect(row.locator(".state")).to_have_text("Running")
    # Newest first: the new run sits above the older one, without a reload.
    assert page.locator("#runs tr").first.get_attribute("data-run-id") == row.get_attribute(
        "data-run-id"
    )
    gate.touch()
    expect(row).to_have_attribute("data-state", "COMPLETED", timeout=30_000)
    expect(row.locator(".state")).to_have_text("Completed")
    assert process.wait(30) == 0

    # Its page: the history and the task runs, the JSON result.
    row.get_by_role("link").click()
    expect(page.locator("#run-state .state")).to_have_text("Completed")
    expect(page.locator("#history li .state")).to_have_text(["Pending", "Running", "Completed"])
    tasks = page.locator("#task-runs tbody tr")
    expect(tasks).to_have_count(2)
    expect(tasks.nth(0)).to_contain_text("extract")
    expect(tasks.nth(1)).to_contain_text("wait_at_the_gate")
    expect(tasks.locator(".state")).to_have_text(["Completed", "Completed"])
    expect(page.locator("#gantt .gantt-bar")).to_have_count(2)
    expect(page.locator("#result")).to_have_text("3")
    page.locator("#back").click()
    expect(page.locator("#runs tr").first).to_be_visible()


def test_the_filters_narrow_the_list(page, ui_server) -> None:
    stub = ui_server.stub()
    suffix = uuid.uuid4().hex[:6]
    tag = f"team-{suffix}"
    etl = new_flow_run(stub, flow_name=f"etl-{suffix}", tags=[tag])
    propose(stub, etl.id, ST.STATE_TYPE_RUNNING)
    report = new_flow_run(stub, flow_name=f"report-{suffix}", tags=[tag])
    untagged = new_flow_run(stub, flow_name=f"etl-{suffix}")
    page.goto(ui_server.ui_url)
    expect(page.locator(f'#runs tr[data-run-id="{untagged.id}"]')).to_be_visible()

    page.get_by_label("Tag").fill(tag)
    page.get_by_label("Tag").press("Enter")
    rows = page.locator("#runs tr")
    expect(rows).to_have_count(2)
    expect(page.locator("#summary")).to_have_text("2 flow runs, newest first.")

    page.get_by_label("Flow").fill(f"etl-{suffix}")
    page.get_by_label("State").select_option("RUNNING")
    page.get_by_role("button", name="Filter").click()
    expect(rows).to_have_count(1)
    expect(rows.first).to_have_attribute("data-run-id", etl.id)
    assert "state=RUNNING" in page.url and f"tag={tag}" in page.url

    # A run created after a time in the future never shows; clearing shows everything again.
    page.get_by_label("Created from").fill("2999-01-01T00:00")
    page.get_by_role("button", name="Filter").click()
    expect(page.locator("#summary")).to_have_text("No flow runs match.")
    page.get_by_role("button", name="Clear").click()
    expect(page.locator(f'#runs tr[data-run-id="{report.id}"]')).to_be_visible()


def test_cancelling_a_running_flow_from_its_page(page, ui_server, flow_process, tmp_path) -> None:
    flow_name = f"cancelled-{uuid.uuid4().hex[:6]}"
    process = flow_process(flow_name, tmp_path / "never-opened")
    page.goto(ui_server.ui_url)
    row = row_of(page, flow_name)
    expect(row).to_have_attribute("data-state", "RUNNING", timeout=30_000)
    row.get_by_role("link").click()
    # Wait for the task that waits at the gate to be running, then cancel from the keyboard:
    # the page asks first (as the reference's UI does); declined, nothing is sent.
    expect(page.locator("#task-runs tbody tr")).to_have_count(2)
    asked: list[str] = []

    def answer(accept: bool):
        def reply(dialog) -> None:
            asked.append(dialog.message)
            dialog.accept() if accept else dialog.dismiss()

        return reply

    page.once("dialog", answer(False))
    page.locator("#cancel").focus()
    page.keyboard.press("Enter")
    expect(page.locator("#cancel")).to_be_enabled()  # a sent request disables it at once
    assert len(asked) == 1 and asked[0].startswith("Cancel flow run "), asked
    assert asked[0].endswith(f"({flow_name})? Its code is stopped, and the run ends Cancelled.")
    expect(page.locator("#action-message")).to_have_text("")
    page.once("dialog", answer(True))
    page.keyboard.press("Enter")
    expect(page.locator("#run-state .state")).to_have_text("Cancelled", timeout=30_000)
    expect(page.locator("#history li .state").last).to_have_text("Cancelled")
    expect(page.locator("#history li .state")).to_contain_text(["Cancelling"])
    expect(page.locator("#cancel")).to_be_hidden()  # nothing to cancel in a final state
    assert process.wait(30) is not None


FAILING_SCRIPT = """
import sys
from stateward import flow

@flow(name=sys.argv[1])
def fails():
    raise ValueError("broken on purpose")

fails(return_state=True)
"""


def test_a_failed_runs_page_shows_its_exception_and_no_cancel_button(
    page, ui_server, tmp_path
) -> None:
    flow_name = f"failing-{uuid.uuid4().hex[:6]}"
    env = {**os.environ, "STATEWARD_API_URL": ui_server.target, "STATEWARD_HOME": str(tmp_path)}
    done = subprocess.run(
        [sys.executable, "-c", FAILING_SCRIPT, flow_name],
        env=env,
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 0, done.stderr
    page.goto(ui_server.ui_url)
    row_of(page, flow_name).get_by_role("link").click()
    expect(page.locator("#run-state .state")).to_have_text("Failed")
    expect(page.locator("#result")).to_have_text("ValueError: broken on purpose")
    expect(page.get_by_role("heading", name="Exception")).to_be_visible()
    expect(page.get_by_text("A pickled Python object")).to_have_count(0)
    expect(page.locator("#cancel")).to_be_hidden()


def test_after_a_server_restart_the_page_reconnects_and_misses_nothing(page, tmp_path) -> None:
    with running_server(tmp_path, ui=True) as server:
        stub = server.stub()
        first = new_flow_run(stub, flow_name="before-restart")
        page.goto(server.ui_url)
        expect(page.locator(f'#runs tr[data-run-id="{first.id}"]')).to_be_visible()
        expect(page.locator("#live")).to_have_attribute("data-status", "live")

        server.stop()
        expect(page.locator("#live")).to_have_attribute("data-status", "reconnecting")
        # Keep the page from reconnecting while the server changes runs: it must then catch
        # up from its last event, not from what is current when it reconnects. (Offline only
        # once the server was back, the page could reconnect first.)
        page.context.set_offline(True)
        server.restart()
        stub = server.stub()
        propose(stub, first.id, ST.STATE_TYPE_RUNNING)
        propose(stub, first.id, ST.STATE_TYPE_COMPLETED)
        later = [new_flow_run(stub, flow_name="after-restart").id for _ in range(3)]
        page.context.set_offline(False)

        expect(page.locator("#live")).to_have_attribute("data-status", "live", timeout=30_000)
        expect(page.locator(f'#runs tr[data-run-id="{first.id}"]')).to_have_attribute(
            "data-state", "COMPLETED", timeout=30_000
        )
        rows = page.locator("#runs tr")
        expect(rows).to_have_count(4, timeout=30_000)
        assert [rows.nth(i).get_attribute("data-run-id") for i in range(3)] == later[::-1]


def test_a_change_the_list_could_not_fetch_is_fetched_again(page, tmp_path) -> None:
    """The stream tells the list a run changed; the list fetches the run, and when that fetch
    fails (the network, a server restarting) it asks again shortly. (The change was dropped:
    a new run stayed missing from the list until the page was reloaded.)"""
    with running_server(tmp_path, ui=True) as server:
        stub = server.stub()
        first = new_flow_run(stub, flow_name="refetched")
        page.goto(server.ui_url)
        expect(page.locator(f'#runs tr[data-run-id="{first.id}"]')).to_be_visible()
        expect(page.locator("#live")).to_have_attribute("data-status", "live")
        refresh = re.compile(r"/api/flow-runs\?.*\bid=")
        failing = [True]

        def fail_refreshes(route: Any) -> None:
            if failing[0] and refresh.search(route.request.url):
                route.abort("internetdisconnected")
            else:
                route.continue_()

        page.route("**/api/flow-runs?*", fail_refreshes)
        with page.expect_event(
            "requestfailed", lambda request: refresh.search(request.url) is not None
        ):
            later = new_flow_run(stub, flow_name="refetched")
        failing[0] = False
        expect(page.locator(f'#runs tr[data-run-id="{later.id}"]')).to_be_visible(timeout=30_000)


def test_with_an_api_key_the_page_asks_for_it_once_and_stays_live(page, tmp_path) -> None:
    key = "page-key"
    with running_server(tmp_path, ui=True, env={"STATEWARD_API_KEY": key}) as server:
        stub = server.stub()
        with_key = [("authorization", f"Bearer {key}")]
        request = pb.CreateFlowRunRequest(flow_run=runs_pb2.FlowRun(flow_name="keyed"))
        request.flow_run.state.type = ST.STATE_TYPE_PENDING
        run = stub.CreateFlowRun(request, metadata=with_key).flow_run
        page.goto(server.ui_url)
        dialog = page.get_by_role("dialog")
        expect(dialog).to_be_visible()
        page.get_by_label("Key", exact=True).fill("not-the-key")
        page.get_by_label("Key", exact=True).press("Enter")
        expect(page.locator("#key-error")).to_have_text("That key was refused.")
        page.get_by_label("Key", exact=True).fill(key)
        page.get_by_role("button", name="Continue").click()
        expect(dialog).to_be_hidden()
        row = page.locator(f'#runs tr[data-run-id="{run.id}"]')
        expect(row).to_have_attribute("data-state", "PENDING")
        expect(page.locator("#live")).to_have_attribute("data-status", "live")
        running = pb.SetStateRequest(run_id=run.id, state=state(ST.STATE_TYPE_RUNNING))
        stub.SetState(running, metadata=with_key)
        expect(row).to_have_attribute("data-state", "RUNNING")


PAUSED_FOR_INPUT_SCRIPT = """
import json, sys
from pydantic import BaseModel, Field
from stateward import flow, pause_flow_run
from stateward.runtime import flow_run

class Approval(BaseModel):
    \"\"\"Who approves the release, and how many copies ship.\"\"\"
    approver: str
    copies: int = Field(2, description="How many copies ship")

@flow(name=sys.argv[1])
def asks():
    print(flow_run.id, flush=True)
    approval = pause_flow_run(wait_for_input=Approval, timeout=120, poll_interval=0.2)
    return approval.model_dump()

print(json.dumps(asks()), flush=True)
"""


def test_resuming_a_pause_that_waits_for_input_from_its_page(page, ui_server, tmp_path) -> None:
    """The page shows until when the pause waits, under which key, and what it waits for (the
    model's description, its fields with their types and defaults) and a JSON box prefilled
    with the defaults; an input that does not match is refused with the API's message and the
    run stays paused; a matching one resumes the run and the flow gets it. (The page posted no
    input: the pause could not be resumed from it.)"""
    env = {**os.environ, "STATEWARD_API_URL": ui_server.target, "STATEWARD_HOME": str(tmp_path)}
    owner = subprocess.Popen(
        [sys.executable, "-c", PAUSED_FOR_INPUT_SCRIPT, f"asks-{uuid.uuid4().hex[:6]}"],
        env=env,
        cwd=ROOT,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        assert owner.stdout is not None
        run_id = owner.stdout.readline().strip()
        page.goto(f"{ui_server.ui_url}#/runs/{run_id}")
        expect(page.locator("#run-state .state")).to_have_text("Paused", timeout=30_000)
        until = page.locator("#pause-timeout")  # what the Paused state carries: when it ends
        expect(until).to_contain_text('(key "pause-1")')
        expect(until.locator("time")).to_have_attribute("datetime", re.compile(r"^\d{4}-.*Z$"))
        wanted = page.locator("#run-input-wanted")
        expect(wanted).to_contain_text("Who approves the release, and how many copies ship.")
        fields = page.locator("#run-input-fields tbody tr")
        expect(fields).to_have_count(2)
        expect(fields.nth(0).locator("td")).to_have_text(["approver", "string", "required", ""])
        expect(fields.nth(1).locator("td")).to_have_text(
            ["copies", "integer", "2", "How many copies ship"]
        )
        # A required field without a default is left to type, and said: a null filled in for
        # it was sent as given ("None is not of type 'string'").
        box = page.get_by_label("Input (JSON)")
        assert json.loads(box.input_value()) == {"copies": 2}
        expect(page.locator("#run-input-required")).to_have_text(
            "Required, with no default: approver. Add it to the input."
        )
        page.locator("#resume").click()
        expect(page.locator("#action-message")).to_have_text(
            "Not done: run_input: the input does not match the pause's schema at the input: "
            "'approver' is a required property"
        )

        box.fill("{not json")
        page.locator("#resume").click()
        expect(page.locator("#action-message")).to_contain_text("Not done: the input is not JSON")

        box.fill('{"approver": 7}')
        page.locator("#resume").click()
        expect(page.locator("#action-message")).to_have_text(
            "Not done: run_input: the input does not match the pause's schema at approver: "
            "7 is not of type 'string'"
        )
        expect(page.locator("#resume")).to_be_enabled()
        expect(page.locator("#run-state .state")).to_have_text("Paused")

        box.fill('{"approver": "ann", "copies": 3}')
        page.locator("#resume").click()
        expect(page.locator("#run-state .state")).to_have_text("Completed", timeout=30_000)
        out, err = owner.communicate(timeout=60)
    finally:
        if owner.poll() is None:
            owner.kill()
            owner.wait()
    assert owner.returncode == 0, err
    assert json.loads(out.splitlines()[-1]) == {"approver": "ann", "copies": 3}


PAUSED_FOR_A_NUMBER_SCRIPT = """
import sys
from stateward import flow, pause_flow_run
from stateward.runtime import flow_run

@flow(name=sys.argv[1])
def asks():
    print(flow_run.id, flush=True)
    print(pause_flow_run(wait_for_input=int, timeout=120, poll_interval=0.2) * 2, flush=True)

asks()
"""


def test_a_pause_for_a_bare_type_starts_with_an_empty_box_saying_what_to_type(
    page, ui_server, tmp_path
) -> None:
    """`wait_for_input=int`: no null filled in, a line saying a value of the type is required,
    an empty box refused on the page, and the reference's wrapped {"value": 21} taken."""
    env = {**os.environ, "STATEWARD_API_URL": ui_server.target, "STATEWARD_HOME": str(tmp_path)}
    owner = subprocess.Popen(
        [sys.executable, "-c", PAUSED_FOR_A_NUMBER_SCRIPT, f"number-{uuid.uuid4().hex[:6]}"],
        env=env,
        cwd=ROOT,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        assert owner.stdout is not None
        run_id = owner.stdout.readline().strip()
        page.goto(f"{ui_server.ui_url}#/runs/{run_id}")
        expect(page.locator("#run-state .state")).to_have_text("Paused", timeout=30_000)
        box = page.get_by_label("Input (JSON)")
        expect(box).to_have_value("")
        expect(page.locator("#run-input-required")).to_have_text("Required: a value (integer).")
        page.locator("#resume").click()
        expect(page.locator("#action-message")).to_have_text("Not done: the input is empty.")
        box.fill('{"value": 21}')
        page.locator("#resume").click()
        expect(page.locator("#run-state .state")).to_have_text("Completed", timeout=30_000)
        out, err = owner.communicate(timeout=60)
    finally:
        if owner.poll() is None:
            owner.kill()
            owner.wait()
    assert owner.returncode == 0, err
    assert out.splitlines()[-1] == "42"
