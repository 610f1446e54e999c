"""Run logs end to end: what get_run_logger() and log_prints record inside flow runs and task
runs reaches the server in batches and is read back in order by `stateward flow-run logs` and
`task-run logs` from another process after the flow's process exited (a real server and the
embedded default), `--follow` shows lines as they come and stops when the run ends; the server
keeps the newest lines (retention); a server that is away never slows logging, and the buffer
drops its oldest lines with a counted warning; bad WriteLogs calls are refused."""

from __future__ import annotations

import json
import logging
import os
import re
import subprocess
import sys
import threading
import uuid
from datetime import UTC, datetime

import pytest

from stateward import flow
from stateward._run_logs import INTERVAL, LogShipper
from stateward.client import Client
from stateward.exceptions import InvalidArgument, NotFound, ServerUnavailable
from stateward.runs import LogEntry
from tests.sdk.conftest import python, spawn
from tests.support import ROOT, running_server, wait_until

pytestmark = pytest.mark.usefixtures("sdk_server")

LOGGING_FLOW = """
    import json, sys
    from stateward import flow, get_run_logger, task
    from stateward.runtime import flow_run

    @task(task_run_name="step-{n}", log_prints=True)
    def step(n):
        print(f"task line {n}")
        return n

    @flow(name="{name}", log_prints=True)
    def story():
        logger = get_run_logger()
        logger.info("first line")
        step(1)
        print("printed line")
        logger.warning("last line")
        return flow_run.id

    print(json.dumps(story()), flush=True)
    """


def cli(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "stateward", *args],
        capture_output=True,
        text=True,
        cwd=ROOT,
        env={**os.environ, **(env or {})},
        timeout=60,
    )


def lines_of(output: str, *needles: str) -> list[str]:
    """The needles in the order the output shows them."""
    found = []
    for line in output.splitlines():
        found.extend(needle for needle in needles if needle in line)
    return found


def test_a_flows_log_lines_are_read_by_the_cli_after_its_process_exited(client):
    name = f"sdk-logs-{uuid.uuid4().hex[:6]}"
    result = python(LOGGING_FLOW.replace("{name}", name))
    assert result.returncode == 0, result.stderr
    run_id = json.loads(result.stdout.splitlines()[-1])
    shown = cli("flow-run", "logs", run_id)
    assert shown.returncode == 0, shown.stderr
    needles = ("first line", "task line 1", "printed line", "last line")
    assert lines_of(shown.stdout, *needles) == list(needles)
    assert "WARNING" in next(line for line in shown.stdout.splitlines() if "last line" in line)
    # The engine's state lines are the run's story too.
    assert "Completed" in shown.stdout
    (task_run,) = client.list_task_runs(flow_run_ids=[run_id])
    task_lines = cli("task-run", "logs", task_run.id)
    assert task_lines.returncode == 0, task_lines.stderr
    assert lines_of(task_lines.stdout, *needles) == ["task line 1"]
    entries = client.list_logs(run_id)
    assert [e.id for e in entries] == sorted(e.id for e in entries)
    assert {e.task_run_id for e in entries} == {"", task_run.id}


def test_a_killed_process_loses_at_most_its_last_half_second_of_lines(client):
    """Lines are sent while the process runs (every half second), not only as it exits: those
    sent before a SIGKILL, which leaves it no time to flush, stay on the server."""
    name = f"sdk-logs-killed-{uuid.uuid4().hex[:6]}"
    owner = spawn(
        f"""
        import sys
        from stateward import flow, get_run_logger
        from stateward.runtime import flow_run

        @flow(name="{name}")
        def dies():
            get_run_logger().info("said before dying")
            print(flow_run.id, flush=True)
            sys.stdin.readline()  # killed while it waits for a word that never comes

        dies()
        """
    )
    try:
        run_id = owner.stdout.readline().strip()
        assert run_id, owner.stderr.read()
        wait_until(
            lambda: any("said before dying" in e.message for e in client.list_logs(run_id)),
            timeout=30,
            what="the line sent while the process runs",
        )
        assert owner.poll() is None  # sent by the live process, before any exit
    finally:
        owner.kill()
        owner.wait(30)
    assert owner.returncode == -9
    shown = cli("flow-run", "logs", run_id)
    assert shown.returncode == 0, shown.stderr
    assert "said before dying" in shown.stdout


def test_follow_shows_lines_as_they_come_and_stops_when_the_run_ends(client):
    name = f"sdk-logs-follow-{uuid.uuid4().hex[:6]}"
    owner = spawn(
        f"""
        import sys
        from stateward import flow, get_run_logger
        from stateward.runtime import flow_run

        @flow(name="{name}")
        def slow():
            get_run_logger().info("before the word")
            print(flow_run.id, flush=True)
            sys.stdin.readline()  # the test's word
            get_run_logger().info("after the word")

        slow()
        """
    )
    follower = None
    try:
        run_id = owner.stdout.readline().strip()
        follower = subprocess.Popen(
            [sys.executable, "-m", "stateward", "flow-run", "logs", run_id, "--follow"],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            cwd=ROOT,
        )
        seen: list[str] = []
        while "before the word" not in "".join(seen):
            line = follower.stdout.readline()
            assert line, follower.stderr.read()
            seen.append(line)
        owner.stdin.write("go\n")
        owner.stdin.flush()
        rest, err = follower.communicate(timeout=60)
        assert follower.returncode == 0, err
        assert "after the word" in rest
        assert owner.wait(timeout=30) == 0
    finally:
        for process in (owner, follower):
            if process is not None and process.poll() is None:
                process.kill()


def test_logs_on_the_embedded_default(tmp_path):
    env = {"STATEWARD_API_URL": "", "STATEWARD_HOME": str(tmp_path)}
    result = python(LOGGING_FLOW.replace("{name}", "embedded-logs"), env=env)
    assert result.returncode == 0, result.stderr
    run_id = json.loads(result.stdout.splitlines()[-1])
    shown = cli("flow-run", "logs", run_id, env=env)
    assert shown.returncode == 0, shown.stderr
    needles = ("first line", "task line 1", "printed line", "last line")
    assert lines_of(shown.stdout, *needles) == list(needles)


FORKED_LOGGING_FLOW = """
    import json, multiprocessing, os
    from stateward import flow, get_run_logger, task
    from stateward.runtime import flow_run

    def work(n):  # a plain function, run in a forked worker of a pool
        get_run_logger().info("child logger line %d", n)
        print(f"child printed {n}")
        if n == 1:  # and in a child of that child
            pid = os.fork()
            if pid == 0:
                get_run_logger().info("grandchild line")
                os._exit(0)
            os.waitpid(pid, 0)
        return n

    @task(log_prints=True)
    def fan_out():
        with multiprocessing.get_context("fork").Pool(2) as pool:
            return pool.map(work, [1, 2])

    @flow(log_prints=True)
    def forking():
        fan_out()
        with multiprocessing.get_context("fork").Pool(1) as pool:
            pool.map(work, [3])
        return flow_run.id

    print(json.dumps(forking()), flush=True)
    """
FORKED_LINES = (
    "Task run 'fan_out-0' - child logger line 1",
    "Task run 'fan_out-0' - child printed 1",
    "Task run 'fan_out-0' - grandchild line",
    "Task run 'fan_out-0' - child logger line 2",
    "Task run 'fan_out-0' - child printed 2",
    "- child logger line 3",
    "- child printed 3",
)


@pytest.mark.parametrize("where", ["server", "embedded"])
def test_lines_logged_in_forked_children_are_the_runs_lines(where, tmp_path):
    """What a forked worker's code logs about the run that called it (get_run_logger, and
    prints under log_prints) is stored with that run, as in the parent process: it reached
    the console only (the child has no connection of its own)."""
    env = {} if where == "server" else {"STATEWARD_API_URL": "", "STATEWARD_HOME": str(tmp_path)}
    result = python(FORKED_LOGGING_FLOW, env=env, timeout=120)
    assert result.returncode == 0, result.stderr[-3000:]
    run_id = json.loads(result.stdout.splitlines()[-1])
    shown = cli("flow-run", "logs", run_id, env=env)
    assert shown.returncode == 0, shown.stderr
    for line in FORKED_LINES:
        assert line in shown.stdout, (line, shown.stdout)
    flow_lines = [line for line in shown.stdout.splitlines() if "child" in line]
    assert all("Flow run '" in line for line in flow_lines[-2:]), shown.stdout
    assert len(flow_lines) == len(FORKED_LINES), shown.stdout  # each once


def test_async_flows_log_too(client):
    import asyncio

    from stateward import get_run_logger, task

    @task
    async def inner() -> None:
        get_run_logger().info("async task line")

    @flow(name="sdk-logs-async")
    async def outer() -> str:
        get_run_logger().info("async flow line")
        await inner()
        from stateward.runtime import flow_run

        assert flow_run.id is not None
        return flow_run.id

    run_id = asyncio.run(outer())

    def both() -> bool:
        messages = " ".join(e.message for e in client.list_logs(run_id))
        return "async flow line" in messages and "async task line" in messages

    wait_until(both, timeout=20, what="the async run's lines on the server")


def test_unknown_runs_and_malformed_lines_are_refused(client):
    now = datetime.now(UTC)
    with pytest.raises(NotFound):
        client.write_logs([LogEntry(str(uuid.uuid4()), "", now, 20, "x", "lost")])
    with pytest.raises(InvalidArgument, match="flow_run_id or task_run_id"):
        client.write_logs([LogEntry("", "", now, 20, "x", "whose?")])
    with pytest.raises(NotFound):
        client.list_logs(str(uuid.uuid4()))


def test_the_server_keeps_the_newest_lines(tmp_path):
    args = ["--run-log-retention", "5", "--log-prune-interval", "0.2"]
    with running_server(tmp_path, args=args) as server, Client(server.target) as connected:
        run = connected.create_flow_run("retention")
        now = datetime.now(UTC)
        connected.write_logs([LogEntry(run.id, "", now, 20, "x", f"line {i}") for i in range(12)])

        def pruned() -> bool:
            return len(connected.list_logs(run.id)) == 5

        wait_until(pruned, timeout=20, what="the run's logs to be pruned to 5")
        assert [e.message for e in connected.list_logs(run.id)] == [
            f"line {i}" for i in range(7, 12)
        ]


def test_a_flush_as_the_sending_thread_starts_sends_at_once():
    # A flow run's end flushes its lines at once; the thread that sends them may have started
    # only just (with the run's first line). Held out of its wait while the flush asks, it
    # must send at once, not wait out its half-second interval (a first flow's result came
    # half a second late).
    sent: list[LogEntry] = []
    shipper = LogShipper(sent.extend, capacity=100)
    entry = LogEntry(str(uuid.uuid4()), "", datetime.now(UTC), 20, "x", "the only line")
    with shipper._lock:  # the new thread cannot reach its wait before the flush asks
        shipper.add(entry)
        assert shipper.flush(INTERVAL / 2)
    assert sent == [entry]


def test_a_server_away_never_slows_logging_and_the_oldest_lines_go_first(caplog):
    attempts: list[int] = []
    answer = threading.Event()  # the first send hangs until the test has logged every line

    def unreachable(batch: object) -> None:
        attempts.append(1)
        if len(attempts) == 1:
            answer.wait(60)
        raise ServerUnavailable("nothing listens there")

    shipper = LogShipper(unreachable, capacity=100)
    now = datetime.now(UTC)

    def line(i: int) -> LogEntry:
        return LogEntry(str(uuid.uuid4()), "", now, 20, "x", f"line {i}")

    with caplog.at_level(logging.WARNING, logger="stateward"):
        shipper.add(line(0))
        wait_until(lambda: attempts == [1], timeout=20, what="the first send")
        for i in range(1, 1000):
            shipper.add(line(i))
        # 999 lines queued while the first send still hangs: no line waited for the server.
        assert attempts == [1]
        answer.set()
        wait_until(lambda: len(attempts) >= 2, timeout=20, what="two failed sends")
        assert shipper.queued() <= 100
        wait_until(lambda: shipper.dropped_total >= 900, timeout=20, what="the drops counted")
        wait_until(lambda: "dropped" in caplog.text, timeout=20, what="the drop warning")
    assert "could not send run logs" in caplog.text
    kept: list[LogEntry] = []
    shipper.send = kept.extend  # the server is back
    assert shipper.flush(20)
    assert [e.message for e in kept] == [f"line {i}" for i in range(900, 1000)]


UNSENDABLE_LINES_FLOW = r"""
    import json, multiprocessing
    from stateward import flow, get_run_logger
    from stateward._embedded import get_client
    from stateward.runtime import flow_run

    def work(n):  # in a forked worker: a long line of control characters, then a lone surrogate
        get_run_logger().info("controls " + "\x01" * 60_000)
        get_run_logger().info("child name \udcff from bytes")
        return n

    @flow
    def odd_texts():
        # A file name decoded with surrogateescape, say: its text cannot be encoded as UTF-8.
        get_run_logger().info("name \udcff from bytes")
        with multiprocessing.get_context("fork").Pool(1) as pool:
            pool.map(work, [1])
        get_run_logger().info("after the odd lines")
        return flow_run.id

    run_id = odd_texts()  # its end sends the lines waiting
    print(json.dumps([entry.message for entry in get_client().list_logs(run_id)]), flush=True)
    """


@pytest.mark.parametrize("where", ["server", "embedded"])
def test_lines_no_utf8_can_hold_are_stored_escaped_and_the_lines_after_them_too(where, tmp_path):
    """A line with a lone surrogate (text no UTF-8 encodes) is stored with it escaped, and
    every later line of the process too: it stopped the process's run logs (each send of the
    batch holding it failed, again and again), and a forked child's line dropped it. A forked
    child's line over the relay's datagram in its JSON (control characters are escaped to six
    bytes each) is cut, not dropped."""
    env = {} if where == "server" else {"STATEWARD_API_URL": "", "STATEWARD_HOME": str(tmp_path)}
    result = python(UNSENDABLE_LINES_FLOW, env=env, timeout=120)
    assert result.returncode == 0, result.stderr[-3000:]
    assert "Logging error" not in result.stderr and "dropped" not in result.stderr
    messages = json.loads(result.stdout.splitlines()[-1])
    assert any(m.endswith("name \\udcff from bytes") for m in messages), messages
    assert any(m.endswith("child name \\udcff from bytes") for m in messages), messages
    assert any(m.endswith("after the odd lines") for m in messages), messages
    (controls,) = [m for m in messages if "controls " in m]
    assert "\x01" * 20_000 in controls and "characters more]" in controls


def test_a_line_over_the_servers_limit_is_cut_and_the_lines_beside_it_are_stored(client):
    """A line of 150,000 characters is stored as its first 100,000 (the server's limit),
    saying how long it was; the lines sent in the same call with it are stored too. The
    server refused the call (the long line's length), and all four lines were dropped."""
    result = python(
        """
        import json
        from stateward import flow, get_run_logger
        from stateward.runtime import flow_run

        @flow
        def chatty():
            logger = get_run_logger()
            logger.info("before the long line")
            logger.info("x" * 150_000)
            logger.info("after the long line")
            return flow_run.id

        print(json.dumps(chatty()))
        """
    )
    assert result.returncode == 0, result.stderr[-3000:]
    assert "dropped" not in result.stderr, result.stderr[-3000:]
    run_id = json.loads(result.stdout.splitlines()[-1])
    messages = [entry.message for entry in client.list_logs(run_id)]
    long = [message for message in messages if "xxxxx" in message]
    assert len(long) == 1 and len(long[0]) == 100_000, [len(m) for m in messages]
    # 150,000 and the prefix naming the run.
    assert re.search(r"x \[cut: the line had 150,0\d\d characters\]$", long[0]), long[0][-80:]
    assert any(message.endswith("before the long line") for message in messages), messages
    assert any(message.endswith("after the long line") for message in messages), messages


ORPHANED_CHILD_FLOW = r"""
    import os, select
    from stateward import flow, get_run_logger

    @flow
    def leaves_a_child():
        parent = os.getpid()
        if os.fork() == 0:  # the child logs once its parent is gone (its files closed)
            try:
                select.select([os.pidfd_open(parent)], [], [])
            except ProcessLookupError:
                pass  # gone already
            for n in range(5):
                get_run_logger().info("orphan line %d", n)
            os._exit(0)
        print(os.getpid(), flush=True)
        os._exit(0)  # the parent dies; the child's read ends

    leaves_a_child()
    """


def test_a_forked_child_whose_parent_is_gone_says_so_once_naming_the_parent(tmp_path):
    """Each line a forked child logged after its parent died was a warning of its own naming
    'its parent, process 1' (init, by then): the child's console doubled, blaming the wrong
    process. Now one warning names the process that ran the runs."""
    env = {"STATEWARD_API_URL": "", "STATEWARD_HOME": str(tmp_path)}
    result = python(ORPHANED_CHILD_FLOW, env=env, timeout=60)  # waits for the child's stderr
    parent = int(result.stdout.split()[0])
    said = [line for line in result.stderr.splitlines() if "WARNING" in line]
    assert len(said) == 1, result.stderr
    assert f"process {parent}, which ran the runs this forked child logs about, is gone" in said[0]


EXTRA_LOGGERS_FLOW = """
    import json, logging
    from stateward import flow, task
    from stateward.runtime import flow_run

    logging.getLogger("myapp").info("before any run")  # outside a run: not a run's line

    @task
    def load():
        logging.getLogger("myapp.db").info("task line from a child of a named logger")
        logging.getLogger("other").warning("line of a logger not named")

    @flow
    def pipeline():
        logging.getLogger("myapp").info("flow line of a named logger")
        load()
        return flow_run.id

    print(json.dumps(pipeline()), flush=True)
    """


@pytest.mark.parametrize("where", ["server", "embedded"])
def test_the_extra_loggers_lines_during_a_run_are_the_runs_lines(where, tmp_path):
    """STATEWARD_LOGGING_EXTRA_LOGGERS, as the reference's PREFECT_LOGGING_EXTRA_LOGGERS: the
    named loggers (and those under them) log into the run executing, at INFO without a level
    of their own; other loggers, and lines outside runs, are not stored."""
    env = {"STATEWARD_LOGGING_EXTRA_LOGGERS": "myapp, unused"}
    if where == "embedded":
        env.update({"STATEWARD_API_URL": "", "STATEWARD_HOME": str(tmp_path)})
    result = python(EXTRA_LOGGERS_FLOW, env=env)
    assert result.returncode == 0, result.stderr
    run_id = json.loads(result.stdout.splitlines()[-1])
    shown = cli("flow-run", "logs", run_id, env=env)
    assert shown.returncode == 0, shown.stderr
    needles = (
        "before any run",
        "flow line of a named logger",
        "task line from a child of a named logger",
        "line of a logger not named",
    )
    assert lines_of(shown.stdout, *needles) == list(needles[1:3]), shown.stdout
    assert "Task run 'load-0' - task line from a child" in shown.stdout  # the task run's line
