"""Kind 6 of the first day: finding and reading runs. Runs are named by an id prefix (the short
ids the tables show) or by name; tables and watch lines fit 80 columns; empty and cut lists say
so; task runs can be inspected with their history; --since; --version."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest

from tests.cli.conftest import Lines, environment, run, stateward
from tests.support import ROOT, wait_until

PROGRAM = """
from stateward import flow, task, get_client
from stateward.states import State, StateType

attempts = []

@task(retries=1, retry_delay_seconds=0)
def flaky():
    attempts.append(1)
    if len(attempts) == 1:
        raise ValueError("the first attempt fails on purpose")
    return 2

@flow(flow_run_name="twin")
def twins():
    return 1

@flow(flow_run_name="only-one")
def solo():
    return flaky()

twins()
twins()
solo()
get_client().create_flow_run("later", name="to-cancel", state=State(StateType.SCHEDULED))
"""


@pytest.fixture(scope="module")
def runs_home(tmp_path_factory: pytest.TempPathFactory) -> Path:
    home = tmp_path_factory.mktemp("finding")
    done = run([sys.executable, "-c", PROGRAM], home)
    assert done.returncode == 0, done.stderr
    return home


def short_ids(listing: str) -> list[str]:
    return re.findall(r"^│ ([0-9a-f]{8}) ", listing, flags=re.M)


def test_tables_fit_80_columns_with_short_ids_and_say_how_many_more(runs_home: Path) -> None:
    listing = stateward(runs_home, "flow-run", "ls", "--limit", "2")
    assert listing.returncode == 0, listing.stderr
    lines = listing.stdout.splitlines()
    assert all(len(line) <= 80 for line in lines), listing.stdout
    assert len(short_ids(listing.stdout)) == 2
    assert "… and 2 more flow runs (show them with --limit 4)." in listing.stdout


def test_empty_lists_say_so(runs_home: Path, home: Path) -> None:
    filtered = stateward(runs_home, "flow-run", "ls", "--flow", "nothing-by-this-name")
    assert (
        filtered.returncode == 0 and filtered.stdout.strip() == "No flow runs match these filters."
    )
    fresh = stateward(home, "task-run", "ls")
    assert fresh.returncode == 0 and fresh.stdout.strip() == "No task runs yet."
    limits = stateward(home, "concurrency-limit", "ls")
    assert limits.returncode == 0 and limits.stdout.startswith("No concurrency limits yet")


def test_a_run_is_found_by_its_short_id_or_its_name_and_ambiguity_is_listed(
    runs_home: Path,
) -> None:
    by_name = stateward(runs_home, "flow-run", "inspect", "only-one")
    assert by_name.returncode == 0, by_name.stderr
    full_id = re.search(r"id +([0-9a-f-]{36})", by_name.stdout)
    assert full_id is not None
    by_prefix = stateward(runs_home, "flow-run", "inspect", full_id.group(1)[:8])
    assert by_prefix.returncode == 0 and full_id.group(1) in by_prefix.stdout
    twins = stateward(runs_home, "flow-run", "inspect", "twin")
    assert twins.returncode == 1 and twins.stdout == ""
    assert "'twin' matches 2 flow runs" in twins.stderr and "give more of the id" in twins.stderr
    assert len(re.findall(r"[0-9a-f]{8} twin", twins.stderr)) == 2
    missing = stateward(runs_home, "flow-run", "inspect", "no-such-run")
    assert missing.returncode == 1 and "no flow run has an id starting with" in missing.stderr
    cancelled = stateward(runs_home, "flow-run", "cancel", "to-cancel")
    assert cancelled.returncode == 0, cancelled.stderr
    assert "to-cancel" in cancelled.stdout and "Cancelled" in cancelled.stdout


def test_task_run_inspect_shows_the_history_with_messages(runs_home: Path) -> None:
    listing = stateward(runs_home, "task-run", "ls", "--flow-run", "only-one")
    (task_run,) = short_ids(listing.stdout)
    inspected = stateward(runs_home, "task-run", "inspect", task_run, env={"COLUMNS": "200"})
    assert inspected.returncode == 0, inspected.stderr
    out = inspected.stdout
    assert re.search(r"^  task +flaky", out, re.M)
    assert re.search(r"^  flow run +only-one \(solo\)", out, re.M)
    history = out[out.index("History") :]
    assert history.index("Retrying") < history.index("Completed")
    assert "the first attempt fails on purpose" in history


LONG_NAMES = """
from stateward import flow, task

@task(retries=1, retry_delay_seconds=0, tags=["nightly", "warehouse"])
def fetch_the_customer_records_from_the_warehouse(n: int) -> int:
    raise ValueError("the warehouse answered 503 Service Unavailable for the third time today")

@flow(name="a-rather-long-flow-name-for-the-nightly-export", flow_run_name="long-one")
def nightly(region: str = "eu-west-1", batch_size: int = 5000):
    return fetch_the_customer_records_from_the_warehouse(1, return_state=True)

nightly(return_state=True)  # Failed, as its task
"""
WHOLE_TIME = r"\d{4}-\d\d-\d\d \d\d:\d\d:\d\d\.\d{3}"


def test_inspect_fits_80_columns_with_each_fact_whole_on_its_line(home: Path) -> None:
    done = run([sys.executable, "-c", LONG_NAMES], home)
    assert done.returncode == 0, done.stderr
    flow_run = stateward(home, "flow-run", "inspect", "long-one")
    assert flow_run.returncode == 0, flow_run.stderr
    lines = flow_run.stdout.splitlines()
    assert all(len(line) <= 80 for line in lines), flow_run.stdout
    facts = "\n".join(
        line.rstrip()
        for line in lines[: lines.index(next(line for line in lines if "History" in line))]
    )
    assert re.search(r"^  flow +a-rather-long-flow-name-for-the-nightly-export$", facts, re.M)
    assert re.search(r"^  id +[0-9a-f-]{36}$", facts, re.M), facts
    assert re.search(rf"^  started +{WHOLE_TIME}$", facts, re.M), facts
    assert re.search(rf"^  ended +{WHOLE_TIME}$", facts, re.M), facts
    assert re.search(r"^  parameters +\{.*'region': 'eu-west-1'", facts, re.M), facts

    task_id = re.findall(r"^│ ([0-9a-f]{8}) ", flow_run.stdout, flags=re.M)[0]
    task_run = stateward(home, "task-run", "inspect", task_id)
    assert task_run.returncode == 0, task_run.stderr
    lines = task_run.stdout.splitlines()
    assert all(len(line) <= 80 for line in lines), task_run.stdout
    out = "\n".join(line.rstrip() for line in lines)
    assert re.search(r"^  task +fetch_the_customer_records_from_the_warehouse$", out, re.M)
    assert re.search(r"^  id +[0-9a-f-]{36}$", out, re.M), out
    assert re.search(
        r"^  flow run +long-one \(a-rather-long-flow-name-for-the-nightly-export\)$", out, re.M
    )
    assert re.search(r"^  flow run id +[0-9a-f-]{36}$", out, re.M), out
    assert re.search(r"^  tags +nightly, warehouse$", out, re.M), out
    assert re.search(rf"^  ended +{WHOLE_TIME}$", out, re.M), out
    # The history's long messages fold inside their column.
    assert "the warehouse answered 503" in out and "│ Failed" in out


def test_since_keeps_the_runs_created_since_then(runs_home: Path) -> None:
    recent = stateward(runs_home, "flow-run", "ls", "--since", "1h")
    assert recent.returncode == 0 and len(short_ids(recent.stdout)) == 4
    future = stateward(runs_home, "flow-run", "ls", "--since", "2999-01-01")
    assert future.stdout.strip() == "No flow runs match these filters."
    wrong = stateward(runs_home, "flow-run", "ls", "--since", "yesterday")
    assert wrong.returncode == 2 and "30m, 2h, 1d" in wrong.stderr
    for too_far in ("99999999d", "99999999999999d"):  # past what a date holds: no traceback
        done = stateward(runs_home, "flow-run", "ls", "--since", too_far)
        assert done.returncode == 2 and "reaches back before the year 1" in done.stderr
        assert "Traceback" not in done.stderr and "OverflowError" not in done.stderr


def test_version(home: Path) -> None:
    done = stateward(home, "--version")
    assert done.returncode == 0 and re.fullmatch(r"stateward \d+\.\d+\S*\n", done.stdout)


def test_watch_lines_fit_80_columns_and_carry_the_state_message(runs_home: Path) -> None:
    watcher = subprocess.Popen(
        [sys.executable, "-m", "stateward", "watch", "--from-start", "--flow-run", "only-one"],
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        text=True,
        env=environment(runs_home),
        cwd=ROOT,
    )
    try:
        out = Lines(watcher.stdout)
        # The replay ends with the flow run's completion.
        wait_until(lambda: any("only-one" in x and "→ Completed" in x for x in out.lines))
    finally:
        watcher.terminate()
        watcher.wait(10)
    lines = out.lines
    assert all(len(line) <= 80 for line in lines), lines
    (retry,) = [line for line in lines if "→ Retrying" in line]
    assert retry.split()[2] == "task" and "(flaky)" in retry
    assert retry.split("→ Retrying")[1].startswith(": ")  # the state's message, cut to fit


def test_logs_take_a_short_id_or_a_name_as_the_other_commands_do(runs_home: Path) -> None:
    by_name = stateward(runs_home, "flow-run", "logs", "only-one")
    assert by_name.returncode == 0, by_name.stderr
    assert "'only-one'" in by_name.stdout and "Completed" in by_name.stdout
    listing = stateward(runs_home, "task-run", "ls", "--flow-run", "only-one")
    (task_run,) = short_ids(listing.stdout)
    by_prefix = stateward(runs_home, "task-run", "logs", task_run)
    assert by_prefix.returncode == 0, by_prefix.stderr
    assert "(flaky)" in by_prefix.stdout and "Retrying" in by_prefix.stdout
    assert "(solo)" not in by_prefix.stdout  # the task run's lines only
    twins = stateward(runs_home, "flow-run", "logs", "twin")
    assert twins.returncode == 1 and twins.stdout == ""
    assert "'twin' matches 2 flow runs" in twins.stderr
    missing = stateward(runs_home, "task-run", "logs", "no-such-run")
    assert missing.returncode == 1 and "no task run has an id starting with" in missing.stderr
