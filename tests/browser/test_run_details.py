"""A run's details in headless Chromium against a real server: a failed task run's page (its
history and exception, reached from its flow run's page), a run's logs (escaped, newest in view,
live, paged back), and a subflow's link to its parent flow run."""

from __future__ import annotations

import os
import subprocess
import sys
import uuid
from typing import Any

import httpx
import pytest

from tests.support import (
    ROOT,
    ST,
    ServerProcess,
    new_flow_run,
    new_task_run,
    propose,
    state,
    write_lines,
)

pytestmark = pytest.mark.required_in_ci

# A flow that logs (with markup in its text), runs a subflow, then a task that fails.
FAILING_TASK_SCRIPT = """
import sys
from stateward import flow, get_run_logger, task

@task
def check_limits(rows):
    get_run_logger().warning("checking %d rows <b>against</b> the limit", len(rows))
    raise ValueError(f"{len(rows)} rows is over the limit of 2")

@flow(name=sys.argv[2])
def load_rows():
    get_run_logger().info("loading rows")
    return [1, 2, 3]

@flow(name=sys.argv[1])
def nightly():
    get_run_logger().info("starting <img src=x onerror=alert(1)> & more")
    check_limits(load_rows())

nightly(return_state=True)
"""


def expect(locator: Any) -> Any:
    from playwright.sync_api import expect as playwright_expect

    return playwright_expect(locator)


@pytest.fixture(scope="module")
def failed_flow(ui_server: ServerProcess, tmp_path_factory: pytest.TempPathFactory) -> dict:
    """Run FAILING_TASK_SCRIPT once (the SDK in a subprocess); its flow run and subflow run,
    as the web API lists them."""
    name = f"nightly-{uuid.uuid4().hex[:6]}"
    child = f"load-rows-{uuid.uuid4().hex[:6]}"
    env = {
        **os.environ,
        "STATEWARD_API_URL": ui_server.target,
        "STATEWARD_HOME": str(tmp_path_factory.mktemp("home")),
    }
    done = subprocess.run(
        [sys.executable, "-c", FAILING_TASK_SCRIPT, name, child],
        env=env,
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 0, done.stderr
    with httpx.Client(base_url=ui_server.ui_url, timeout=10) as http:
        (parent,) = http.get("/api/flow-runs", params={"flow": name}).json()["flow_runs"]
        (subflow,) = http.get("/api/flow-runs", params={"flow": child}).json()["flow_runs"]
    return {"parent": parent, "subflow": subflow}


def test_a_failed_task_runs_row_leads_to_its_history_and_exception(
    page, ui_server, failed_flow
) -> None:
    parent = failed_flow["parent"]
    page.goto(f"{ui_server.ui_url}#/runs/{parent['id']}")
    row = page.locator("#task-runs tbody tr", has_text="check_limits")
    expect(row).to_have_attribute("data-state", "FAILED")
    row.get_by_role("link", name="check_limits-0").click()

    expect(page.locator("#run-name")).to_have_text("check_limits-0")
    expect(page.locator("#run-state .state")).to_have_text("Failed")
    expect(page.get_by_role("heading", name="Exception")).to_be_visible()
    expect(page.locator("#result")).to_have_text("ValueError: 3 rows is over the limit of 2")
    expect(page.locator("#history li .state")).to_have_text(["Pending", "Running", "Failed"])
    expect(page.locator("#history li").last.locator(".message")).to_have_text(
        "ValueError: 3 rows is over the limit of 2"
    )
    # Back to its flow run.
    page.locator("#flow-run-link").click()
    expect(page.locator("#run-name")).to_have_text(parent["name"])


def test_a_runs_logs_show_level_logger_and_text_as_text(page, ui_server, failed_flow) -> None:
    parent = failed_flow["parent"]
    page.goto(f"{ui_server.ui_url}#/runs/{parent['id']}")
    lines = page.locator("#log-lines tr")
    # The flow run's page: its own lines and its task runs', not its subflow's, oldest first.
    expect(lines.locator(".log-level")).to_have_text(["INFO", "WARNING", "ERROR", "ERROR"])
    expect(lines.locator(".log-logger")).to_have_text(
        ["stateward.flow_runs", "stateward.task_runs", "stateward.task_runs", "stateward.flow_runs"]
    )
    expect(lines.first.locator(".log-message")).to_have_text(
        f"Flow run '{parent['name']}' - starting <img src=x onerror=alert(1)> & more"
    )
    expect(lines.first.locator(".log-time time")).to_have_count(1)
    expect(page.locator("#logs img, #logs b")).to_have_count(0)  # text, never markup

    page.goto(f"{ui_server.ui_url}#/task-runs/{_task_run_id(ui_server, parent['id'])}")
    expect(page.locator("#run-name")).to_have_text("check_limits-0")
    messages = lines.locator(".log-message")
    expect(messages).to_have_count(2)
    expect(messages.first).to_have_text(
        "Task run 'check_limits-0' - checking 3 rows <b>against</b> the limit"
    )
    # The failure's line carries the traceback, as `stateward task-run logs` prints it.
    expect(messages.last).to_contain_text("Traceback (most recent call last)")
    expect(messages.last).to_contain_text("ValueError: 3 rows is over the limit of 2")
    expect(page.locator("#logs b")).to_have_count(0)


def _task_run_id(server: ServerProcess, flow_run_id: str) -> str:
    with httpx.Client(base_url=server.ui_url, timeout=10) as http:
        runs = http.get("/api/task-runs", params={"flow_run_id": flow_run_id}).json()
    (found,) = [run["id"] for run in runs["task_runs"] if run["task_key"] == "check_limits"]
    return found


def test_a_subflows_page_links_to_its_parent_flow_run(page, ui_server, failed_flow) -> None:
    parent, subflow = failed_flow["parent"], failed_flow["subflow"]
    page.goto(f"{ui_server.ui_url}#/runs/{subflow['id']}")
    expect(page.locator("#run-name")).to_have_text(subflow["name"])
    expect(page.locator("#parent-task-run")).to_have_text(subflow["parent_task_run_id"])
    expect(page.locator("#parent-flow-run")).to_have_text(parent["name"])
    page.locator("#parent-flow-run").click()
    expect(page.locator("#run-name")).to_have_text(parent["name"])
    assert page.url.endswith(f"#/runs/{parent['id']}")


def test_a_running_runs_new_lines_appear_without_a_reload(page, ui_server) -> None:
    stub = ui_server.stub()
    run = new_flow_run(stub, flow_name=f"logging-{uuid.uuid4().hex[:6]}")
    propose(stub, run.id, ST.STATE_TYPE_RUNNING)
    write_lines(stub, run.id, ["first line"])
    page.goto(f"{ui_server.ui_url}#/runs/{run.id}")
    lines = page.locator("#log-lines tr .log-message")
    expect(lines).to_have_text(["first line"])
    write_lines(stub, run.id, ["second line", "third line"])
    expect(lines).to_have_text(["first line", "second line", "third line"])
    page.locator("#logs").scroll_into_view_if_needed()
    expect(lines.last).to_be_in_viewport()


def test_a_run_with_100000_lines_shows_its_newest_and_pages_back(page, ui_server) -> None:
    stub = ui_server.stub()
    run = new_flow_run(stub, flow_name=f"loud-{uuid.uuid4().hex[:6]}")
    write_lines(stub, run.id, [f"line {i}" for i in range(100_000)])
    page.goto(f"{ui_server.ui_url}#/runs/{run.id}")
    lines = page.locator("#log-lines tr .log-message")
    expect(lines.last).to_have_text("line 99999")
    page.locator("#logs").scroll_into_view_if_needed()  # the page's end: the box's own scroll
    expect(lines.last).to_be_in_viewport()  # is at its newest line
    expect(lines).to_have_count(200)
    expect(lines.first).to_have_text("line 99800")
    page.locator("#log-earlier").click()
    expect(lines).to_have_count(400)
    expect(lines.first).to_have_text("line 99600")


def test_a_burst_of_lines_while_watching_shows_the_newest_not_all(page, ui_server) -> None:
    stub = ui_server.stub()
    run = new_flow_run(stub, flow_name=f"bursting-{uuid.uuid4().hex[:6]}")
    propose(stub, run.id, ST.STATE_TYPE_RUNNING)
    write_lines(stub, run.id, ["before the burst"])
    page.goto(f"{ui_server.ui_url}#/runs/{run.id}")
    lines = page.locator("#log-lines tr .log-message")
    expect(lines).to_have_text(["before the burst"])
    write_lines(stub, run.id, [f"burst {i}" for i in range(5000)])
    expect(lines.last).to_have_text("burst 4999")
    expect(lines).to_have_count(200)  # the newest, as when the page loads
    expect(lines.first).to_have_text("burst 4800")
    page.locator("#log-earlier").click()
    expect(lines.first).to_have_text("burst 4600")


def test_earlier_lines_asked_for_stay_while_new_ones_arrive(page, ui_server) -> None:
    """Lines the user brought back with "Show earlier lines" and is reading (scrolled up) stay
    when a new line arrives; the page trims its oldest lines only while its newest are in
    view. Before, the next new line past 1,000 dropped the oldest rows, those just asked for."""
    stub = ui_server.stub()
    run = new_flow_run(stub, flow_name=f"reading-{uuid.uuid4().hex[:6]}")
    propose(stub, run.id, ST.STATE_TYPE_RUNNING)
    write_lines(stub, run.id, [f"line {i}" for i in range(1000)])
    page.goto(f"{ui_server.ui_url}#/runs/{run.id}")
    lines = page.locator("#log-lines tr .log-message")
    expect(lines).to_have_count(200)
    for shown in (400, 600, 800, 1000):
        page.locator("#log-earlier").click()
        expect(lines).to_have_count(shown)
    expect(lines.first).to_have_text("line 0")
    page.locator("#logs").evaluate("box => { box.scrollTop = 0; }")  # reading the oldest
    lines.first.scroll_into_view_if_needed()
    expect(lines.first).to_be_in_viewport()
    write_lines(stub, run.id, ["a new line"])
    expect(lines.last).to_have_text("a new line")
    expect(lines.first).to_have_text("line 0")
    expect(lines.first).to_be_in_viewport()


def test_a_poll_and_a_reload_asking_together_show_each_line_once(page, ui_server) -> None:
    stub = ui_server.stub()
    run = new_flow_run(stub, flow_name=f"racing-{uuid.uuid4().hex[:6]}")
    propose(stub, run.id, ST.STATE_TYPE_RUNNING)
    task_run = new_task_run(stub, run.id, task_key="steps")
    write_lines(stub, run.id, ["first line"])
    page.clock.install()  # the page's timers run when the test says
    page.goto(f"{ui_server.ui_url}#/runs/{run.id}")
    lines = page.locator("#log-lines tr .log-message")
    expect(lines).to_have_text(["first line"])
    write_lines(stub, run.id, ["second line", "third line"])
    propose(stub, task_run.id, ST.STATE_TYPE_RUNNING)
    row = page.locator(f'#task-runs tr[data-task-run-id="{task_run.id}"]')
    expect(row).to_have_attribute("data-state", "RUNNING")
    # The reload after that transition (due in 100 ms) and the poll (due 2 s after the page
    # showed) fire together, and both ask for the lines after "first line".
    page.clock.run_for(2500)
    expect(lines).to_have_text(["first line", "second line", "third line"])
    page.clock.run_for(2500)  # and the next poll finds nothing more
    expect(lines).to_have_count(3)


def test_on_a_phone_a_log_line_wraps_within_the_screen(page, ui_server) -> None:
    stub = ui_server.stub()
    run = new_flow_run(stub, flow_name=f"phone-{uuid.uuid4().hex[:6]}")
    words = " ".join(f"word{i}" for i in range(60))
    write_lines(stub, run.id, [words], logger="a.rather.long.logger.name")
    page.set_viewport_size({"width": 390, "height": 800})
    page.goto(f"{ui_server.ui_url}#/runs/{run.id}")
    message = page.locator("#log-lines tr .log-message")
    expect(message).to_have_text(words)
    # Nothing to scroll sideways: the line's time, level and logger, then its text, fit.
    box = page.locator("#logs")
    assert box.evaluate("box => box.scrollWidth <= box.clientWidth"), box.evaluate(
        "box => [box.scrollWidth, box.clientWidth]"
    )
    assert message.bounding_box()["width"] > 300


def test_a_task_runs_page_follows_its_state_and_lines_live(page, ui_server) -> None:
    stub = ui_server.stub()
    flow_run = new_flow_run(stub, flow_name=f"live-task-{uuid.uuid4().hex[:6]}")
    propose(stub, flow_run.id, ST.STATE_TYPE_RUNNING)
    task_run = new_task_run(stub, flow_run.id, task_key="slow")
    page.goto(f"{ui_server.ui_url}#/task-runs/{task_run.id}")
    expect(page.locator("#run-state .state")).to_have_text("Pending")
    expect(page.locator("#log-status")).to_have_text("No lines logged yet.")
    expect(page.locator("#live")).to_have_attribute("data-status", "live")

    propose(stub, task_run.id, ST.STATE_TYPE_RUNNING)
    expect(page.locator("#run-state .state")).to_have_text("Running")
    write_lines(stub, flow_run.id, ["working on it"], task_run_id=task_run.id)
    expect(page.locator("#log-lines tr .log-message")).to_have_text(["working on it"])
    propose(stub, task_run.id, state(ST.STATE_TYPE_FAILED, message="KeyError: 'rows'"))
    expect(page.locator("#history li .state")).to_have_text(["Pending", "Running", "Failed"])
    expect(page.locator("#run-message")).to_have_text("KeyError: 'rows'")


def test_a_failed_read_of_the_lines_is_said_until_the_next_one_succeeds(page, ui_server) -> None:
    stub = ui_server.stub()
    run = new_flow_run(stub, flow_name=f"flaky-{uuid.uuid4().hex[:6]}")
    write_lines(stub, run.id, ["a line"])
    page.clock.install()  # the page's timers run when the test says
    page.goto(f"{ui_server.ui_url}#/runs/{run.id}")
    expect(page.locator("#log-lines tr .log-message")).to_have_text(["a line"])
    expect(page.locator("#live")).to_have_attribute("data-status", "live")

    def unavailable(route: Any) -> None:
        route.fulfill(status=503, json={"error": "the database is unavailable; try again"})

    page.route("**/logs?after=*", unavailable, times=1)
    propose(stub, run.id, ST.STATE_TYPE_RUNNING)
    expect(page.locator("#run-state .state")).to_have_text("Running")
    page.clock.run_for(500)  # the reload after that transition asks, and is refused
    status = page.locator("#log-status")
    expect(status).to_have_text("Could not read the lines: the database is unavailable; try again")
    page.clock.run_for(2500)  # the next poll is answered (no new line)
    expect(status).to_be_hidden()
    expect(page.locator("#log-lines tr .log-message")).to_have_text(["a line"])
